//! Conversions between the model of `messenger-core` and MySQL rows.

use crate::rule::Rule;
use std::str::FromStr;

use messenger_core::{
    Conversation, ConversationKind, InvalidId, Message, Role, Seq, Timestamp, UserId,
};
use mysql_async::Row;
use mysql_async::prelude::{FromValue, Queryable};

use super::error::MysqlError;

/// The columns of `messages`, in the order [`decode_message`] reads them.
pub(crate) const MESSAGE_COLUMNS: &str =
    "conversation, seq, sender, sender_device, client_msg_id, sent_at, body";

/// The columns of `conversations`, in the order [`decode_conversation`] reads them.
pub(crate) const CONVERSATION_COLUMNS: &str = "id, kind, title, created_by, created_at";

/// The largest number the store accepts: the embedded store's limit, so every backend agrees.
const MAX: u64 = i64::MAX as u64;

/// A number of the model, checked against the range every backend stores.
pub(crate) fn checked(what: &'static str, value: u64) -> Result<u64, MysqlError> {
    if value > MAX {
        return Err(MysqlError::Rule(Rule::OutOfRange { what, value }));
    }
    Ok(value)
}

/// A stored identifier back as its validated type.
pub(crate) fn parse_id<T: FromStr<Err = InvalidId>>(value: &str) -> Result<T, MysqlError> {
    value
        .parse()
        .map_err(|err: InvalidId| MysqlError::Rule(Rule::Corrupt(err.to_string())))
}

/// A stored role back as a [`Role`].
pub(crate) fn parse_role(value: &str) -> Result<Role, MysqlError> {
    Role::parse(value)
        .ok_or_else(|| MysqlError::Rule(Rule::Corrupt(format!("unknown role {value:?}"))))
}

/// Takes column `index` of `row` as a `T`.
pub(crate) fn take<T: FromValue>(row: &mut Row, index: usize) -> Result<T, MysqlError> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(err)) => Err(MysqlError::Rule(Rule::Corrupt(format!(
            "column {index}: {err}"
        )))),
        None => Err(MysqlError::Rule(Rule::Corrupt(format!(
            "column {index} is missing"
        )))),
    }
}

/// Decodes the [`MESSAGE_COLUMNS`] at the start of `row` (further columns are left alone).
pub(crate) fn decode_message(row: &mut Row) -> Result<Message, MysqlError> {
    let body: Vec<u8> = take(row, 6)?;
    Ok(Message {
        conversation: parse_id(&take::<String>(row, 0)?)?,
        seq: Seq(take(row, 1)?),
        sender: parse_id(&take::<String>(row, 2)?)?,
        sender_device: parse_id(&take::<String>(row, 3)?)?,
        client_msg_id: parse_id(&take::<String>(row, 4)?)?,
        sent_at: Timestamp(take(row, 5)?),
        body: serde_json::from_slice(&body)?,
    })
}

/// Decodes the [`CONVERSATION_COLUMNS`] at the start of `row`.
pub(crate) fn decode_conversation(row: &mut Row) -> Result<Conversation, MysqlError> {
    let id: String = take(row, 0)?;
    let kind: String = take(row, 1)?;
    let title: Option<String> = take(row, 2)?;
    let created_by: String = take(row, 3)?;
    let created_at: u64 = take(row, 4)?;
    Ok(Conversation {
        id: parse_id(&id)?,
        kind: ConversationKind::parse(&kind).ok_or_else(|| {
            MysqlError::Rule(Rule::Corrupt(format!("unknown conversation kind {kind:?}")))
        })?,
        title,
        created_by: parse_id::<UserId>(&created_by)?,
        created_at: Timestamp(created_at),
    })
}

/// The entry at `seq`, if any.
pub(crate) async fn message_at(
    conn: &mut impl Queryable,
    conversation: &str,
    seq: u64,
) -> Result<Option<Message>, MysqlError> {
    let row: Option<Row> = conn
        .exec_first(
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ? AND seq = ?"),
            (conversation, seq),
        )
        .await?;
    row.map(|mut row| decode_message(&mut row)).transpose()
}

/// The entry with this idempotency key, if any.
pub(crate) async fn message_by_key(
    conn: &mut impl Queryable,
    conversation: &str,
    sender: &str,
    client_msg_id: &str,
) -> Result<Option<Message>, MysqlError> {
    let row: Option<Row> = conn
        .exec_first(
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE conversation = ? AND sender = ? AND client_msg_id = ?"
            ),
            (conversation, sender, client_msg_id),
        )
        .await?;
    row.map(|mut row| decode_message(&mut row)).transpose()
}

/// The conversation's head (`0` when it has no entry).
pub(crate) async fn head(conn: &mut impl Queryable, conversation: &str) -> Result<Seq, MysqlError> {
    let row: Option<Row> = conn
        .exec_first(
            "SELECT head FROM heads WHERE conversation = ?",
            (conversation,),
        )
        .await?;
    match row {
        Some(mut row) => Ok(Seq(take(&mut row, 0)?)),
        None => Ok(Seq::ZERO),
    }
}

/// The conversation's facts, if it exists.
pub(crate) async fn conversation(
    conn: &mut impl Queryable,
    id: &str,
) -> Result<Option<Conversation>, MysqlError> {
    let row: Option<Row> = conn
        .exec_first(
            format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?"),
            (id,),
        )
        .await?;
    row.map(|mut row| decode_conversation(&mut row)).transpose()
}
