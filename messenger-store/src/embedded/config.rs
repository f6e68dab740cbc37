//! Configuration of the embedded store.

use std::path::PathBuf;
use std::time::Duration;

/// How to open an [`EmbeddedStore`](super::EmbeddedStore).
///
/// Build it from [`EmbeddedConfig::new`] (or [`Default`]) and change the fields you need:
///
/// ```
/// use messenger_store::embedded::{Durability, EmbeddedConfig};
///
/// let mut config = EmbeddedConfig::new("/var/lib/messenger/messages.db");
/// config.max_batch = 512;
/// assert!(config.group_commit);
/// assert_eq!(config.durability, Durability::Full);
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
    /// What an acknowledged write survives: see [`Durability`].
    ///
    /// Default: [`Durability::Full`].
    pub durability: Durability,
}

/// What an acknowledged write survives.
///
/// Both modes use SQLite's write-ahead log (WAL) and group commit, and both keep the file
/// consistent (never corrupt, never half a transaction) after any crash; they differ in *which
/// acknowledged writes* a crash can take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL`: every group commit fsyncs the WAL before any of its writes is
    /// acknowledged. An acknowledged write survives a crash of the process, of the operating
    /// system and a power loss (as far as the disk honours fsync).
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit writes the WAL without fsync; the WAL is fsynced only
    /// when it is checkpointed into the database (SQLite's automatic checkpoint, about every
    /// 1,000 pages, i.e. some 4 MB of writes). An acknowledged write survives a crash or kill
    /// of the process (the WAL is in the OS page cache, and the next open replays it). An OS
    /// crash or a power loss may take back the writes acknowledged since the last
    /// checkpoint: the file then reopens as it was at some earlier commit, consistent but
    /// missing the latest messages, receipts and membership changes. Senders that were told
    /// `sent` may find their messages gone, and a later append can reuse their seqs.
    ///
    /// For deployments that replicate elsewhere, run on battery-backed storage, or accept
    /// losing the last seconds on a machine crash in exchange for latency.
    Relaxed,
}

impl Durability {
    /// The value of SQLite's `synchronous` pragma for this mode.
    pub(crate) fn synchronous(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Relaxed => "NORMAL",
        }
    }
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
            durability: Durability::Full,
        }
    }
}
