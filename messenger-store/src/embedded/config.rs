//! Configuration of the embedded store.

use std::path::PathBuf;
use std::time::Duration;

/// How to open an [`EmbeddedStore`](super::EmbeddedStore).
///
/// Build it from [`EmbeddedConfig::new`] (or [`Default`]) and change the fields you need:
///
/// ```
/// use messenger_store::embedded::EmbeddedConfig;
///
/// let mut config = EmbeddedConfig::new("/var/lib/messenger/messages.db");
/// config.max_batch = 512;
/// assert!(config.group_commit);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddedConfig {
    /// The SQLite database file; created with its directory-level siblings (`-wal`, `-shm`)
    /// when missing. The parent directory must exist.
    ///
    /// Default: `messenger.db` in the current directory.
    pub path: PathBuf,
    /// The most writes committed together in one transaction (one fsync).
    ///
    /// Default: 256.
    pub max_batch: usize,
    /// How many read connections serve reads concurrently (reads never wait for writes).
    ///
    /// Default: 4.
    pub read_connections: usize,
    /// Whether concurrent writes are gathered into one transaction. `false` commits every write
    /// in its own transaction (one fsync each); only useful to measure what group commit buys.
    ///
    /// Default: `true`.
    pub group_commit: bool,
    /// How long a connection waits for a lock held by another process before giving up with
    /// an `Unavailable` error.
    ///
    /// Default: 5 seconds.
    pub busy_timeout: Duration,
    /// How many writes may queue for the committer before writers wait (backpressure).
    ///
    /// Default: 4096.
    pub queue_capacity: usize,
}

impl EmbeddedConfig {
    /// The defaults, with the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("messenger.db"),
            max_batch: 256,
            read_connections: 4,
            group_commit: true,
            busy_timeout: Duration::from_secs(5),
            queue_capacity: 4096,
        }
    }
}
