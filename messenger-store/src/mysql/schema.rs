//! The database schema and its ordered migrations, tracked in `schema_migrations`.
//!
//! MySQL and MariaDB commit DDL implicitly, so a migration cannot be one transaction. Instead
//! every statement of a migration is idempotent (`CREATE TABLE IF NOT EXISTS`, ...), the
//! version row is written only after all of them ran, and nodes starting together take the
//! advisory lock `messenger_store_migrations` (`GET_LOCK`) so only one migrates at a time.
//! A migration interrupted half-way is therefore simply run again on the next start.

use crate::rule::Rule;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::error::MysqlError;

/// The table options every table of the store uses: InnoDB (row locks, crash safety) and a
/// binary collation, so identifiers compare byte for byte.
macro_rules! table_options {
    () => {
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    };
}

/// Migration `i` brings the schema from version `i` to `i + 1`: a description and its
/// statements. Append only: never edit one that has shipped.
const MIGRATIONS: &[(&str, &[&str])] = &[(
    "the log, conversations, members, heads, receipts, last seen",
    &[
        concat!(
            "CREATE TABLE IF NOT EXISTS messages (
                conversation  VARBINARY(160)  NOT NULL,
                seq           BIGINT UNSIGNED NOT NULL,
                sender        VARBINARY(64)   NOT NULL,
                sender_device VARBINARY(64)   NOT NULL,
                client_msg_id VARBINARY(64)   NOT NULL,
                sent_at       BIGINT UNSIGNED NOT NULL,
                body          MEDIUMBLOB      NOT NULL,
                PRIMARY KEY (conversation, seq),
                UNIQUE KEY messages_by_client_msg_id (conversation, sender, client_msg_id)
            ) ",
            table_options!()
        ),
        concat!(
            "CREATE TABLE IF NOT EXISTS conversations (
                id         VARBINARY(160)  NOT NULL PRIMARY KEY,
                kind       VARCHAR(16)     NOT NULL,
                title      TEXT            NULL,
                created_by VARBINARY(64)   NOT NULL,
                created_at BIGINT UNSIGNED NOT NULL
            ) ",
            table_options!()
        ),
        concat!(
            "CREATE TABLE IF NOT EXISTS heads (
                conversation VARBINARY(160)  NOT NULL PRIMARY KEY,
                head         BIGINT UNSIGNED NOT NULL
            ) ",
            table_options!()
        ),
        concat!(
            "CREATE TABLE IF NOT EXISTS members (
                conversation VARBINARY(160) NOT NULL,
                user_id      VARBINARY(64)  NOT NULL,
                role         VARCHAR(16)    NOT NULL,
                PRIMARY KEY (conversation, user_id),
                KEY members_by_user (user_id, conversation)
            ) ",
            table_options!()
        ),
        concat!(
            "CREATE TABLE IF NOT EXISTS receipts (
                conversation  VARBINARY(160)  NOT NULL,
                user_id       VARBINARY(64)   NOT NULL,
                delivered_seq BIGINT UNSIGNED NOT NULL,
                read_seq      BIGINT UNSIGNED NOT NULL,
                PRIMARY KEY (conversation, user_id)
            ) ",
            table_options!()
        ),
        concat!(
            "CREATE TABLE IF NOT EXISTS last_seen (
                user_id VARBINARY(64)   NOT NULL PRIMARY KEY,
                seen_at BIGINT UNSIGNED NOT NULL
            ) ",
            table_options!()
        ),
    ],
)];

/// The schema version this build writes.
pub(crate) const VERSION: u64 = MIGRATIONS.len() as u64;

const LOCK_NAME: &str = "messenger_store_migrations";

/// The version recorded in `schema_migrations` (0 when the table is empty or missing).
pub(crate) async fn version(conn: &mut Conn) -> Result<u64, MysqlError> {
    let exists: Option<Row> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'",
            (),
        )
        .await?;
    if exists.is_none() {
        return Ok(0);
    }
    let row: Option<Row> = conn
        .query_first("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .await?;
    match row {
        Some(row) => Ok(mysql_async::from_row_opt::<u64>(row)?),
        None => Ok(0),
    }
}

/// Brings the database to [`VERSION`] under the migrations' advisory lock. Safe to run again
/// and from several nodes at once: a database already at the latest version is left alone.
pub(crate) async fn migrate(conn: &mut Conn, lock_timeout_secs: u64) -> Result<(), MysqlError> {
    let granted: Option<Row> = conn
        .exec_first("SELECT GET_LOCK(?, ?)", (LOCK_NAME, lock_timeout_secs))
        .await?;
    let granted = granted
        .map(mysql_async::from_row_opt::<Option<i64>>)
        .transpose()?
        .flatten();
    if granted != Some(1) {
        return Err(MysqlError::MigrationLock);
    }
    let outcome = migrate_locked(conn).await;
    let released: Result<Option<Row>, _> = conn
        .exec_first("SELECT RELEASE_LOCK(?)", (LOCK_NAME,))
        .await;
    outcome?;
    released?;
    Ok(())
}

async fn migrate_locked(conn: &mut Conn) -> Result<(), MysqlError> {
    conn.query_drop(concat!(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version     BIGINT UNSIGNED NOT NULL PRIMARY KEY,
            description VARCHAR(255)    NOT NULL,
            applied_at  TIMESTAMP       NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ",
        table_options!()
    ))
    .await?;
    let found = version(conn).await?;
    if found > VERSION {
        return Err(MysqlError::Rule(Rule::SchemaTooNew {
            found: wide(found),
            known: wide(VERSION),
        }));
    }
    for (index, (description, statements)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        for statement in *statements {
            conn.query_drop(*statement).await?;
        }
        let version = index as u64 + 1;
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
            (version, *description),
        )
        .await?;
        tracing::info!(version, description, "applied a store schema migration");
    }
    Ok(())
}

/// Fails unless the database is exactly at [`VERSION`] (used when migrations are off).
pub(crate) async fn check(conn: &mut Conn) -> Result<(), MysqlError> {
    let found = version(conn).await?;
    match found.cmp(&VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(MysqlError::Rule(Rule::SchemaTooNew {
            found: wide(found),
            known: wide(VERSION),
        })),
        std::cmp::Ordering::Less => Err(MysqlError::Rule(Rule::SchemaTooOld {
            found: wide(found),
            known: wide(VERSION),
        })),
    }
}

/// A schema version as the store's shared errors carry it.
fn wide(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}
