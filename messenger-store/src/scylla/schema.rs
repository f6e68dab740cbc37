//! The schema file (`schema.cql`), applied when the store connects, and its version.

use crate::rule::Rule;
use scylla::client::session::Session;

use super::config::ScyllaConfig;
use super::cql;
use super::error::ScyllaError;

/// The schema, as shipped in the crate.
pub(crate) const SCHEMA: &str = include_str!("schema.cql");

/// The schema version this build writes and reads.
pub(crate) const VERSION: i32 = 1;

/// The key of the one row of `schema_version`.
const SCHEMA_NAME: &str = "messenger-store";

/// The statements of [`SCHEMA`], without comments, in order.
pub(crate) fn statements() -> Vec<String> {
    let without_comments: String = SCHEMA
        .lines()
        .map(|line| match line.find("--") {
            Some(start) => &line[..start],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|statement| statement.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|statement| !statement.is_empty())
        .collect()
}

/// Whether `name` is a keyspace name CQL accepts unquoted (so it can be put in a statement).
pub(crate) fn valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Refuses a keyspace name that cannot be put in a statement unquoted.
pub(crate) fn check_keyspace(name: &str) -> Result<(), ScyllaError> {
    if valid_keyspace(name) {
        Ok(())
    } else {
        Err(ScyllaError::BadKeyspace(name.to_owned()))
    }
}

/// `CREATE KEYSPACE IF NOT EXISTS` for the configured keyspace and replication.
pub(crate) fn create_keyspace(config: &ScyllaConfig) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
        config.keyspace, config.replication
    )
}

/// Creates the keyspace (when `config.migrate`), switches `session` to it, applies the
/// schema file and records its version; with `config.migrate` off, only checks the version.
pub(crate) async fn apply(session: &Session, config: &ScyllaConfig) -> Result<(), ScyllaError> {
    check_keyspace(&config.keyspace)?;
    if config.migrate {
        session.query_unpaged(create_keyspace(config), ()).await?;
    }
    session.use_keyspace(&config.keyspace, false).await?;
    let found = if config.migrate {
        // Before any DDL: a keyspace written by a newer build is left alone.
        let found = stored_version(session, config).await.unwrap_or(None);
        check(found, true)?;
        for statement in statements() {
            session.query_unpaged(statement, ()).await?;
        }
        let upsert = cql::prepare(session, config, cql::UPSERT_SCHEMA_VERSION).await?;
        session
            .execute_unpaged(&upsert, (SCHEMA_NAME, VERSION))
            .await?;
        Some(VERSION)
    } else {
        stored_version(session, config).await?
    };
    check(found, config.migrate)
}

/// The version recorded in the keyspace (`None`: none yet).
async fn stored_version(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<Option<i32>, ScyllaError> {
    let select = cql::prepare(session, config, cql::SELECT_SCHEMA_VERSION).await?;
    let rows = session
        .execute_unpaged(&select, (SCHEMA_NAME,))
        .await?
        .into_rows_result()?;
    let row: Option<(Option<i32>,)> = rows.maybe_first_row()?;
    Ok(row.and_then(|(version,)| version))
}

/// Refuses a schema newer than this build, or (without migrations) older.
fn check(found: Option<i32>, migrate: bool) -> Result<(), ScyllaError> {
    match found {
        Some(found) if found > VERSION => Err(ScyllaError::Rule(Rule::SchemaTooNew {
            found: found.into(),
            known: VERSION.into(),
        })),
        Some(found) if found == VERSION => Ok(()),
        None if migrate => Ok(()),
        found => Err(ScyllaError::Rule(Rule::SchemaTooOld {
            found: found.unwrap_or(0).into(),
            known: VERSION.into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_parses_into_idempotent_creates() {
        let statements = statements();
        let tables: Vec<&str> = statements
            .iter()
            .map(|statement| {
                assert!(
                    statement.starts_with("CREATE TABLE IF NOT EXISTS "),
                    "{statement}"
                );
                assert!(!statement.contains("--"), "{statement}");
                statement
                    .split_whitespace()
                    .nth(5)
                    .unwrap_or_else(|| panic!("a table name in {statement}"))
            })
            .collect();
        assert_eq!(
            tables,
            [
                "schema_version",
                "messages",
                "message_keys",
                "heads",
                "conversations",
                "members",
                "members_by_user",
                "receipts",
                "last_seen"
            ]
        );
        for statement in &statements {
            assert_eq!(
                statement.matches('(').count(),
                statement.matches(')').count(),
                "{statement}"
            );
            assert!(statement.contains("PRIMARY KEY"), "{statement}");
        }
    }

    #[test]
    fn partitions_are_bounded_and_clustered_by_seq() {
        let statements = statements();
        let table = |name: &str| {
            statements
                .iter()
                .find(|statement| statement.contains(&format!("EXISTS {name} (")))
                .cloned()
                .unwrap_or_default()
        };
        let messages = table("messages");
        assert!(messages.contains("PRIMARY KEY ((conversation, bucket), seq)"));
        assert!(messages.contains("CLUSTERING ORDER BY (seq ASC)"));
        assert!(
            table("message_keys").contains("PRIMARY KEY ((conversation, sender, client_msg_id))")
        );
        assert!(table("members").contains("PRIMARY KEY ((conversation), user_id)"));
        assert!(table("members_by_user").contains("PRIMARY KEY ((user_id), conversation)"));
        assert!(table("receipts").contains("PRIMARY KEY ((conversation), user_id)"));
        assert!(table("heads").contains("conversation text PRIMARY KEY"));
        assert!(table("last_seen").contains("user_id text PRIMARY KEY"));
    }

    #[test]
    fn keyspace_names_are_checked_before_use() {
        assert!(valid_keyspace("messenger"));
        assert!(valid_keyspace("messenger_test_2"));
        assert!(!valid_keyspace(""));
        assert!(!valid_keyspace("bad-name"));
        assert!(!valid_keyspace("x; DROP KEYSPACE y"));
        assert!(!valid_keyspace(&"k".repeat(49)));
        let config = ScyllaConfig::default();
        assert_eq!(
            create_keyspace(&config),
            "CREATE KEYSPACE IF NOT EXISTS messenger WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        );
    }

    #[test]
    fn versions_newer_than_the_build_are_refused() {
        assert!(check(None, true).is_ok());
        assert!(check(Some(VERSION), false).is_ok());
        assert!(matches!(
            check(None, false),
            Err(ScyllaError::Rule(Rule::SchemaTooOld { .. }))
        ));
        assert!(matches!(
            check(Some(VERSION + 1), true),
            Err(ScyllaError::Rule(Rule::SchemaTooNew { .. }))
        ));
    }
}
