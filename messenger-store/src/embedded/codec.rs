//! Conversions between the model of `messenger-core` and SQLite rows.

use crate::rule::Rule;
use std::str::FromStr;

use messenger_core::{Conversation, ConversationKind, InvalidId, Message, Role, Seq, Timestamp};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::error::EmbeddedError;

/// The columns of `messages`, in the order [`RawMessage::from_row`] reads them.
pub(crate) const MESSAGE_COLUMNS: &str =
    "conversation, seq, sender, sender_device, client_msg_id, sent_at, body";

/// The columns of `conversations`, in the order [`RawConversation::from_row`] reads them.
pub(crate) const CONVERSATION_COLUMNS: &str = "id, kind, title, created_by, created_at";

/// A number of the model as SQLite's signed 64-bit integer.
pub(crate) fn to_sql(what: &'static str, value: u64) -> Result<i64, EmbeddedError> {
    i64::try_from(value).map_err(|_| EmbeddedError::Rule(Rule::OutOfRange { what, value }))
}

/// A stored integer back as a number of the model.
pub(crate) fn from_sql(what: &str, value: i64) -> Result<u64, EmbeddedError> {
    u64::try_from(value)
        .map_err(|_| EmbeddedError::Rule(Rule::Corrupt(format!("negative {what}: {value}"))))
}

/// A stored seq back as a [`Seq`].
pub(crate) fn seq_from_sql(value: i64) -> Result<Seq, EmbeddedError> {
    from_sql("seq", value).map(Seq)
}

/// A stored identifier back as its validated type.
pub(crate) fn parse_id<T: FromStr<Err = InvalidId>>(value: &str) -> Result<T, EmbeddedError> {
    value
        .parse()
        .map_err(|err: InvalidId| EmbeddedError::Rule(Rule::Corrupt(err.to_string())))
}

/// A stored role back as a [`Role`].
pub(crate) fn parse_role(value: &str) -> Result<Role, EmbeddedError> {
    Role::parse(value)
        .ok_or_else(|| EmbeddedError::Rule(Rule::Corrupt(format!("unknown role {value:?}"))))
}

/// A `messages` row as stored, decoded later outside SQLite's row callback.
pub(crate) struct RawMessage {
    conversation: String,
    seq: i64,
    sender: String,
    sender_device: String,
    client_msg_id: String,
    sent_at: i64,
    body: String,
}

impl RawMessage {
    /// Reads the [`MESSAGE_COLUMNS`] of `row`.
    pub(crate) fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            conversation: row.get(0)?,
            seq: row.get(1)?,
            sender: row.get(2)?,
            sender_device: row.get(3)?,
            client_msg_id: row.get(4)?,
            sent_at: row.get(5)?,
            body: row.get(6)?,
        })
    }

    /// Validates the row into a [`Message`].
    pub(crate) fn decode(self) -> Result<Message, EmbeddedError> {
        Ok(Message {
            conversation: parse_id(&self.conversation)?,
            seq: seq_from_sql(self.seq)?,
            sender: parse_id(&self.sender)?,
            sender_device: parse_id(&self.sender_device)?,
            client_msg_id: parse_id(&self.client_msg_id)?,
            sent_at: Timestamp(from_sql("sent_at", self.sent_at)?),
            body: serde_json::from_str(&self.body)?,
        })
    }
}

/// A `conversations` row as stored.
pub(crate) struct RawConversation {
    id: String,
    kind: String,
    title: Option<String>,
    created_by: String,
    created_at: i64,
}

impl RawConversation {
    /// Reads the [`CONVERSATION_COLUMNS`] of `row`, starting at column `first`.
    pub(crate) fn from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(first)?,
            kind: row.get(first + 1)?,
            title: row.get(first + 2)?,
            created_by: row.get(first + 3)?,
            created_at: row.get(first + 4)?,
        })
    }

    /// Validates the row into a [`Conversation`].
    pub(crate) fn decode(self) -> Result<Conversation, EmbeddedError> {
        Ok(Conversation {
            id: parse_id(&self.id)?,
            kind: ConversationKind::parse(&self.kind).ok_or_else(|| {
                EmbeddedError::Rule(Rule::Corrupt(format!(
                    "unknown conversation kind {:?}",
                    self.kind
                )))
            })?,
            title: self.title,
            created_by: parse_id(&self.created_by)?,
            created_at: Timestamp(from_sql("created_at", self.created_at)?),
        })
    }
}

/// The entry at `seq`, if any.
pub(crate) fn message_at(
    conn: &Connection,
    conversation: &str,
    seq: i64,
) -> Result<Option<Message>, EmbeddedError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ?1 AND seq = ?2"
        ))?
        .query_row(params![conversation, seq], RawMessage::from_row)
        .optional()?;
    raw.map(RawMessage::decode).transpose()
}

/// The entry with this idempotency key, if any.
pub(crate) fn message_by_key(
    conn: &Connection,
    conversation: &str,
    sender: &str,
    client_msg_id: &str,
) -> Result<Option<Message>, EmbeddedError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation = ?1 AND sender = ?2 AND client_msg_id = ?3"
        ))?
        .query_row(
            params![conversation, sender, client_msg_id],
            RawMessage::from_row,
        )
        .optional()?;
    raw.map(RawMessage::decode).transpose()
}

/// The conversation's head (`0` when it has no entry).
pub(crate) fn head(conn: &Connection, conversation: &str) -> Result<Seq, EmbeddedError> {
    let head: Option<i64> = conn
        .prepare_cached("SELECT head FROM heads WHERE conversation = ?1")?
        .query_row(params![conversation], |row| row.get(0))
        .optional()?;
    head.map_or(Ok(Seq::ZERO), seq_from_sql)
}

/// The conversation's facts, if it exists.
pub(crate) fn conversation(
    conn: &Connection,
    id: &str,
) -> Result<Option<Conversation>, EmbeddedError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"
        ))?
        .query_row(params![id], |row| RawConversation::from_row(row, 0))
        .optional()?;
    raw.map(RawConversation::decode).transpose()
}
