//! Conversions between the model of `messenger-core` and CQL rows.

use crate::rule::Rule;
use std::collections::HashMap;
use std::str::FromStr;

use messenger_core::{
    Conversation, ConversationKind, InvalidId, Message, Role, Seq, Timestamp, UserId,
};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use super::error::ScyllaError;

/// A row of [`MESSAGE_COLUMNS`](super::cql::MESSAGE_COLUMNS).
pub(crate) type MessageRow = (String, i64, String, String, String, i64, Vec<u8>);

/// A row of `conversations`: id, kind, title, created_by, created_at.
pub(crate) type ConversationRow = (String, String, Option<String>, String, i64);

/// The largest number the store accepts: the embedded store's limit, so every backend agrees
/// (CQL `bigint` is signed).
const MAX: u64 = i64::MAX as u64;

/// A number of the model as a CQL `bigint`, checked against the range every backend stores.
pub(crate) fn to_bigint(what: &'static str, value: u64) -> Result<i64, ScyllaError> {
    if value > MAX {
        return Err(ScyllaError::Rule(Rule::OutOfRange { what, value }));
    }
    i64::try_from(value).map_err(|_| ScyllaError::Rule(Rule::OutOfRange { what, value }))
}

/// A stored `bigint` back as a number of the model.
pub(crate) fn from_bigint(what: &str, value: i64) -> Result<u64, ScyllaError> {
    u64::try_from(value)
        .map_err(|_| ScyllaError::Rule(Rule::Corrupt(format!("negative {what}: {value}"))))
}

/// A stored identifier back as its validated type.
pub(crate) fn parse_id<T: FromStr<Err = InvalidId>>(value: &str) -> Result<T, ScyllaError> {
    value
        .parse()
        .map_err(|err: InvalidId| ScyllaError::Rule(Rule::Corrupt(err.to_string())))
}

/// A stored role back as a [`Role`].
pub(crate) fn parse_role(value: &str) -> Result<Role, ScyllaError> {
    Role::parse(value)
        .ok_or_else(|| ScyllaError::Rule(Rule::Corrupt(format!("unknown role {value:?}"))))
}

/// Decodes a [`MessageRow`].
pub(crate) fn decode_message(row: MessageRow) -> Result<Message, ScyllaError> {
    let (conversation, seq, sender, sender_device, client_msg_id, sent_at, body) = row;
    Ok(Message {
        conversation: parse_id(&conversation)?,
        seq: Seq(from_bigint("seq", seq)?),
        sender: parse_id(&sender)?,
        sender_device: parse_id(&sender_device)?,
        client_msg_id: parse_id(&client_msg_id)?,
        sent_at: Timestamp(from_bigint("sent_at", sent_at)?),
        body: serde_json::from_slice(&body)?,
    })
}

/// Decodes a [`ConversationRow`].
pub(crate) fn decode_conversation(row: ConversationRow) -> Result<Conversation, ScyllaError> {
    let (id, kind, title, created_by, created_at) = row;
    Ok(Conversation {
        id: parse_id(&id)?,
        kind: ConversationKind::parse(&kind).ok_or_else(|| {
            ScyllaError::Rule(Rule::Corrupt(format!("unknown conversation kind {kind:?}")))
        })?,
        title,
        created_by: parse_id::<UserId>(&created_by)?,
        created_at: Timestamp(from_bigint("created_at", created_at)?),
    })
}

/// The outcome of a lightweight transaction: whether it applied and, when it did not, the
/// columns of the row that made its condition false (by name).
#[derive(Debug)]
pub(crate) struct Lwt {
    pub(crate) applied: bool,
    pub(crate) existing: HashMap<String, CqlValue>,
}

impl Lwt {
    /// Reads the `[applied]` column and the existing row from a conditional write's answer.
    pub(crate) fn from_result(result: QueryResult) -> Result<Self, ScyllaError> {
        let rows = result.into_rows_result()?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        let Some(row) = rows.maybe_first_row::<Row>()? else {
            return Err(ScyllaError::Rule(Rule::Corrupt(
                "a conditional write answered no row".to_owned(),
            )));
        };
        Self::from_columns(names, row.columns)
    }

    fn from_columns(
        names: Vec<String>,
        columns: Vec<Option<CqlValue>>,
    ) -> Result<Self, ScyllaError> {
        let mut applied = None;
        let mut existing = HashMap::new();
        for (name, value) in names.into_iter().zip(columns) {
            if name == "[applied]" {
                applied = value.as_ref().and_then(CqlValue::as_boolean);
            } else if let Some(value) = value {
                existing.insert(name, value);
            }
        }
        let applied = applied.ok_or_else(|| {
            ScyllaError::Rule(Rule::Corrupt(
                "a conditional write answered without [applied]".to_owned(),
            ))
        })?;
        Ok(Self { applied, existing })
    }

    fn text(&self, column: &str) -> Result<String, ScyllaError> {
        self.existing
            .get(column)
            .and_then(CqlValue::as_text)
            .cloned()
            .ok_or_else(|| ScyllaError::Rule(Rule::Corrupt(format!("column {column} is missing"))))
    }

    /// A `bigint` column of the existing row.
    pub(crate) fn bigint(&self, column: &str) -> Result<i64, ScyllaError> {
        self.existing
            .get(column)
            .and_then(CqlValue::as_bigint)
            .ok_or_else(|| ScyllaError::Rule(Rule::Corrupt(format!("column {column} is missing"))))
    }

    /// The existing row as a message (after a refused `INSERT INTO messages`).
    pub(crate) fn message(&self) -> Result<Message, ScyllaError> {
        let body = self
            .existing
            .get("body")
            .and_then(CqlValue::as_blob)
            .cloned()
            .ok_or_else(|| ScyllaError::Rule(Rule::Corrupt("column body is missing".to_owned())))?;
        decode_message((
            self.text("conversation")?,
            self.bigint("seq")?,
            self.text("sender")?,
            self.text("sender_device")?,
            self.text("client_msg_id")?,
            self.bigint("sent_at")?,
            body,
        ))
    }

    /// The existing row as a conversation (after a refused `INSERT INTO conversations`).
    pub(crate) fn conversation(&self) -> Result<Conversation, ScyllaError> {
        let title = self
            .existing
            .get("title")
            .and_then(CqlValue::as_text)
            .cloned();
        decode_conversation((
            self.text("id")?,
            self.text("kind")?,
            title,
            self.text("created_by")?,
            self.bigint("created_at")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{Body, ConversationId};

    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn an_applied_lwt_has_no_existing_row() {
        let lwt = Lwt::from_columns(names(&["[applied]"]), vec![Some(CqlValue::Boolean(true))])
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(lwt.applied);
        assert!(lwt.existing.is_empty());
    }

    #[test]
    fn a_refused_insert_carries_the_row_that_holds_the_seq() -> Result<(), ScyllaError> {
        let body = serde_json::to_vec(&Body::text("hi"))?;
        let lwt = Lwt::from_columns(
            names(&[
                "[applied]",
                "conversation",
                "bucket",
                "seq",
                "body",
                "client_msg_id",
                "sender",
                "sender_device",
                "sent_at",
            ]),
            vec![
                Some(CqlValue::Boolean(false)),
                Some(CqlValue::Text("g:lwt".to_owned())),
                Some(CqlValue::BigInt(0)),
                Some(CqlValue::BigInt(7)),
                Some(CqlValue::Blob(body)),
                Some(CqlValue::Text("m-1".to_owned())),
                Some(CqlValue::Text("alice".to_owned())),
                Some(CqlValue::Text("phone".to_owned())),
                Some(CqlValue::BigInt(1_000)),
            ],
        )?;
        assert!(!lwt.applied);
        let message = lwt.message()?;
        assert_eq!(message.seq, Seq(7));
        assert_eq!(
            message.conversation,
            ConversationId::new("g:lwt")
                .map_err(|err| ScyllaError::Rule(Rule::Corrupt(err.to_string())))?
        );
        assert_eq!(message.sender.as_str(), "alice");
        assert_eq!(message.sent_at, Timestamp(1_000));
        Ok(())
    }

    #[test]
    fn answers_without_applied_are_refused() {
        assert!(Lwt::from_columns(names(&["seq"]), vec![Some(CqlValue::BigInt(1))]).is_err());
    }

    #[test]
    fn numbers_stay_in_the_signed_range() {
        assert_eq!(to_bigint("seq", 5).ok(), Some(5));
        assert!(to_bigint("seq", u64::MAX).is_err());
        assert!(to_bigint("seq", i64::MAX as u64).is_ok());
        assert!(from_bigint("seq", -1).is_err());
    }
}
