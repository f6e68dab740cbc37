//! Configuration of the MySQL / MariaDB store.

use std::fmt;
use std::time::Duration;

/// How to connect a [`MysqlStore`](super::MysqlStore).
///
/// Build it from [`MysqlConfig::new`] (or [`Default`]) and change the fields you need:
///
/// ```
/// use messenger_store::mysql::MysqlConfig;
///
/// let mut config = MysqlConfig::new("mysql://messenger:secret@db.internal:3306/messenger");
/// config.max_connections = 64;
/// // The password never shows in logs.
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct MysqlConfig {
    /// The server and database, as `mysql://user:password@host:port/database`. URL parameters
    /// of the client crate (`mysql_async`) are accepted, e.g. `?socket=/run/mysqld.sock`.
    ///
    /// Default: `mysql://messenger@127.0.0.1:3306/messenger`.
    pub url: String,
    /// Connections the pool keeps open even when idle.
    ///
    /// Default: 1.
    pub min_connections: usize,
    /// The most connections the pool opens; further operations wait for a free one.
    ///
    /// Default: 32.
    pub max_connections: usize,
    /// Prepared statements kept per connection (the store uses about 30 distinct ones).
    ///
    /// Default: 64.
    pub statement_cache: usize,
    /// How long [`MysqlStore::connect`](super::MysqlStore::connect) waits for the first
    /// connection (and the migrations' lock) before failing with `Unavailable`.
    ///
    /// Default: 10 seconds.
    pub connect_timeout: Duration,
    /// Whether connecting applies pending schema migrations. With `false` the schema must
    /// already be at this build's version (apply it from one node, or by hand).
    ///
    /// Default: `true`.
    pub migrate: bool,
    /// How many times a write is retried when the server rolls it back for a deadlock or a
    /// lock wait timeout (both are safe to retry: the whole transaction was undone). After
    /// that the write fails with `Unavailable`.
    ///
    /// Default: 3.
    pub deadlock_retries: u32,
    /// The most appends committed together in one transaction (group commit: one redo-log
    /// flush for all of them, multi-row statements). 1 commits every append on its own.
    ///
    /// Default: 64.
    pub append_batch: usize,
    /// How many batches of appends may be committing at once, each on its own connection of
    /// the pool. While they are all busy, new appends queue and form the next batches.
    ///
    /// Default: 4.
    pub append_committers: usize,
}

impl MysqlConfig {
    /// The defaults, with the server and database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: "mysql://messenger@127.0.0.1:3306/messenger".to_owned(),
            min_connections: 1,
            max_connections: 32,
            statement_cache: 64,
            connect_timeout: Duration::from_secs(10),
            migrate: true,
            deadlock_retries: 3,
            append_batch: 64,
            append_committers: 4,
        }
    }
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &redact_url(&self.url))
            .field("min_connections", &self.min_connections)
            .field("max_connections", &self.max_connections)
            .field("statement_cache", &self.statement_cache)
            .field("connect_timeout", &self.connect_timeout)
            .field("migrate", &self.migrate)
            .field("deadlock_retries", &self.deadlock_retries)
            .field("append_batch", &self.append_batch)
            .field("append_committers", &self.append_committers)
            .finish()
    }
}

/// `url` with the password of its user info (and any `password=` parameter) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let mut redacted = url.to_owned();
    if let Some(scheme_end) = redacted.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = redacted[rest_start..]
            .find(['/', '?'])
            .map_or(redacted.len(), |end| rest_start + end);
        if let Some(at) = redacted[rest_start..authority_end].rfind('@') {
            let user_info = &redacted[rest_start..rest_start + at];
            if let Some(colon) = user_info.find(':') {
                let start = rest_start + colon + 1;
                redacted.replace_range(start..rest_start + at, "***");
            }
        }
    }
    if let Some(query_start) = redacted.find('?') {
        let (head, query) = redacted.split_at(query_start + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        redacted = format!("{head}{query}");
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://u:p%40ss@h:1/db?x=1&password=z"),
            "mysql://u:***@h:1/db?x=1&password=***"
        );
        assert_eq!(redact_url("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
