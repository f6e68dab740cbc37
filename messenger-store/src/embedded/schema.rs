//! The database schema and its ordered migrations, tracked with `PRAGMA user_version`.

use crate::rule::Rule;
use rusqlite::Connection;

use super::error::EmbeddedError;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only: never edit one
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the log, conversations, members, heads, receipts, last seen.
    "
    CREATE TABLE messages (
        conversation  TEXT    NOT NULL,
        seq           INTEGER NOT NULL,
        sender        TEXT    NOT NULL,
        sender_device TEXT    NOT NULL,
        client_msg_id TEXT    NOT NULL,
        sent_at       INTEGER NOT NULL,
        body          TEXT    NOT NULL,
        PRIMARY KEY (conversation, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_by_client_msg_id
        ON messages (conversation, sender, client_msg_id);

    CREATE TABLE conversations (
        id         TEXT    NOT NULL PRIMARY KEY,
        kind       TEXT    NOT NULL,
        title      TEXT,
        created_by TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE heads (
        conversation TEXT    NOT NULL PRIMARY KEY,
        head         INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE members (
        conversation TEXT NOT NULL,
        user         TEXT NOT NULL,
        role         TEXT NOT NULL,
        PRIMARY KEY (conversation, user)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user, conversation);

    CREATE TABLE receipts (
        conversation TEXT    NOT NULL,
        user         TEXT    NOT NULL,
        delivered    INTEGER NOT NULL,
        read         INTEGER NOT NULL,
        PRIMARY KEY (conversation, user)
    ) WITHOUT ROWID;

    CREATE TABLE last_seen (
        user TEXT    NOT NULL PRIMARY KEY,
        at   INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`VERSION`], one migration per transaction. Safe to run again: a
/// database already at the latest version is left alone.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), EmbeddedError> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > VERSION {
            return Err(EmbeddedError::Rule(Rule::SchemaTooNew {
                found,
                known: VERSION,
            }));
        }
        let Some(migration) = usize::try_from(found)
            .ok()
            .and_then(|index| MIGRATIONS.get(index))
        else {
            return Ok(());
        };
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
    }
}
