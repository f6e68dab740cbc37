//! Entry points for the fuzz targets under `fuzz/` (compiled only with `--cfg fuzzing`, as
//! cargo-fuzz builds): the embedded store's row decoding, fed with arbitrary column values.

use std::cell::RefCell;

use messenger_core::{ClientMsgId, Conversation, ConversationId, Message, Role, Seq, UserId};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use super::codec::{self, RawConversation, RawMessage};

/// One SQLite value, as a column of a stored row may hold it.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// `NULL`.
    Null,
    /// An integer.
    Integer(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// A blob.
    Blob(Vec<u8>),
}

impl From<Column> for Value {
    fn from(column: Column) -> Self {
        match column {
            Column::Null => Value::Null,
            Column::Integer(value) => Value::Integer(value),
            Column::Real(value) => Value::Real(value),
            Column::Text(value) => Value::Text(value),
            Column::Blob(value) => Value::Blob(value),
        }
    }
}

thread_local! {
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Runs `f` on a private in-memory database (opened once per thread).
fn with_connection<T>(f: impl FnOnce(&Connection) -> T) -> T {
    CONNECTION.with(|cell| {
        let mut cell = cell.borrow_mut();
        let conn = cell.get_or_insert_with(|| {
            Connection::open_in_memory()
                .unwrap_or_else(|err| panic!("fuzzing needs an in-memory SQLite: {err}"))
        });
        f(conn)
    })
}

/// A `messages` row of these column values (in `MESSAGE_COLUMNS` order), read back as the
/// store reads it: `RawMessage::from_row`, then `decode`.
///
/// # Errors
/// What the store would report.
pub fn decode_message(columns: [Column; 7]) -> Result<Message, String> {
    let raw = with_connection(|conn| {
        conn.prepare_cached("SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7")
            .and_then(|mut statement| {
                statement.query_row(
                    params_from_iter(columns.into_iter().map(Value::from)),
                    RawMessage::from_row,
                )
            })
            .map_err(|err| err.to_string())
    })?;
    raw.decode().map_err(|err| err.to_string())
}

/// A `conversations` row of these column values (in `CONVERSATION_COLUMNS` order), read back
/// as the store reads it.
///
/// # Errors
/// What the store would report.
pub fn decode_conversation(columns: [Column; 5]) -> Result<Conversation, String> {
    let raw = with_connection(|conn| {
        conn.prepare_cached("SELECT ?1, ?2, ?3, ?4, ?5")
            .and_then(|mut statement| {
                statement.query_row(
                    params_from_iter(columns.into_iter().map(Value::from)),
                    |row| RawConversation::from_row(row, 0),
                )
            })
            .map_err(|err| err.to_string())
    })?;
    raw.decode().map_err(|err| err.to_string())
}

/// `codec::parse_id` for the id types the store reads back.
pub fn parse_ids(value: &str) -> (Option<UserId>, Option<ConversationId>, Option<ClientMsgId>) {
    (
        codec::parse_id::<UserId>(value).ok(),
        codec::parse_id::<ConversationId>(value).ok(),
        codec::parse_id::<ClientMsgId>(value).ok(),
    )
}

/// `codec::parse_role`.
pub fn parse_role(value: &str) -> Option<Role> {
    codec::parse_role(value).ok()
}

/// `codec::from_sql` and `codec::seq_from_sql`.
pub fn from_sql(value: i64) -> (Option<u64>, Option<Seq>) {
    (
        codec::from_sql("value", value).ok(),
        codec::seq_from_sql(value).ok(),
    )
}

/// `codec::to_sql`.
pub fn to_sql(value: u64) -> Option<i64> {
    codec::to_sql("value", value).ok()
}
