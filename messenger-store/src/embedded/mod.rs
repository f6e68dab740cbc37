//! The embedded store: one SQLite file (WAL, `synchronous=FULL`) with our own group commit.
//!
//! [`Durability::Relaxed`] trades the fsync per commit for latency (`synchronous=NORMAL`): an
//! acknowledged write then survives a crash of the process but not of the machine.
//!
//! Always built; it needs no server. One committer thread owns the only write connection and
//! commits concurrent writes together in one transaction (one fsync per batch; a batch in
//! which a write fails is applied again with a SAVEPOINT per write, so the failing write is
//! rolled back alone); a small pool of read connections serves reads concurrently with
//! writes. See `docs/store.md` for the design and measured figures.
//!
//! ```
//! use messenger_store::Store;
//! use messenger_store::embedded::{EmbeddedConfig, EmbeddedStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut config = EmbeddedConfig::new(dir.path().join("messages.db"));
//! config.read_connections = 2;
//! let store = Store::new(EmbeddedStore::open_with(config)?);
//! # drop(store);
//! # Ok(())
//! # }
//! ```

mod codec;
mod committer;
mod config;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod reader;
mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use messenger_core::store::{
    AmendMessage, Amended, AppendMessage, Appended, ConversationInfo, CreateConversation, Created,
    FindMessage, GetConversation, GetHead, GetLastSeen, GetReceipts, MediaStatusSet, MessagePage,
    ReadBefore, ReadRange, ReceiptUpdated, SetLastSeen, SetMediaStatus, UpdateReceipt,
    UserConversations, VoidHoles, VoidSeq,
};
use messenger_core::{ConversationSummary, Error, Message, Receipts, Seq, Timestamp, UserId};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use self::committer::{CommitPolicy, Counters, WriteOp, WriteRequest, Written};
pub use self::config::{Durability, EmbeddedConfig};

use self::error::EmbeddedError;
use self::reader::ReadPool;
use crate::StoreBackend;
use crate::rule::Rule;

/// The embedded backend: a SQLite file with a committer thread and a pool of readers.
///
/// Wrap it in [`Store`](crate::Store) to get the tower services. Dropping the last handle
/// stops the committer thread after its current batch and closes the file.
pub struct EmbeddedStore {
    config: EmbeddedConfig,
    writes: Option<mpsc::Sender<WriteRequest>>,
    committer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    reads: Arc<ReadPool>,
}

/// What group commit did since the store was opened: see [`EmbeddedStore::commit_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CommitStats {
    /// Transactions the committer ran (one fsync each with [`Durability::Full`]).
    pub transactions: u64,
    /// Writes those transactions carried; `writes / transactions` is the mean batch.
    pub writes: u64,
    /// Batches applied a second time, with a savepoint per write, because one write failed.
    pub retried_with_savepoints: u64,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("config", &self.config)
            .field("running", &self.writes.is_some())
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` with the default [`EmbeddedConfig`].
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be opened or locked; `Unexpected` when it is not a
    /// database of this store or was written by a newer version.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::open_with(EmbeddedConfig::new(path))
    }

    /// Opens (or creates) the store described by `config`, applying any pending schema
    /// migrations, and starts its committer thread.
    ///
    /// Blocks while it opens the file; call it before serving, or from `spawn_blocking`.
    ///
    /// # Errors
    /// As [`EmbeddedStore::open`].
    pub fn open_with(config: EmbeddedConfig) -> Result<Self, Error> {
        Self::start(config).map_err(Error::from)
    }

    fn start(config: EmbeddedConfig) -> Result<Self, EmbeddedError> {
        let mut writer = Connection::open_with_flags(
            &config.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        writer.busy_timeout(config.busy_timeout)?;
        // `journal_mode` answers with the mode in force; WAL persists in the file.
        let _mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        writer.pragma_update(None, "synchronous", config.durability.synchronous())?;
        reader::stable_plans(&writer)?;
        schema::migrate(&mut writer)?;

        let reads = ReadPool::open(
            config.path.clone(),
            config.read_connections,
            config.busy_timeout,
        )?;
        let (writes, requests) = mpsc::channel(config.queue_capacity.max(1));
        let policy = CommitPolicy {
            max_batch: config.max_batch,
            group_commit: config.group_commit,
        };
        let counters = Arc::new(Counters::default());
        let committer_counters = Arc::clone(&counters);
        let committer = std::thread::Builder::new()
            .name("messenger-store-committer".to_owned())
            .spawn(move || committer::run(writer, requests, policy, committer_counters))
            .map_err(EmbeddedError::Spawn)?;
        Ok(Self {
            config,
            writes: Some(writes),
            committer: Some(committer),
            counters,
            reads,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// How many transactions the committer ran and how many writes they carried so far.
    pub fn commit_stats(&self) -> CommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        CommitStats {
            transactions: self.counters.transactions.load(Relaxed),
            writes: self.counters.writes.load(Relaxed),
            retried_with_savepoints: self.counters.retried_with_savepoints.load(Relaxed),
        }
    }

    async fn write(&self, op: WriteOp) -> Result<Written, Error> {
        let writes = self.writes.as_ref().ok_or(EmbeddedError::CommitterGone)?;
        let (reply, answer) = oneshot::channel();
        writes
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| EmbeddedError::CommitterGone)?;
        match answer.await {
            Ok(outcome) => outcome.map_err(Error::from),
            Err(_) => Err(EmbeddedError::CommitterGone.into()),
        }
    }

    async fn read<T, F>(&self, read: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, EmbeddedError> + Send + 'static,
    {
        self.reads.read(read).await.map_err(Error::from)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the channel lets the committer finish its batch and return.
        drop(self.writes.take());
        if let Some(committer) = self.committer.take() {
            if committer.join().is_err() {
                tracing::error!("the store's committer thread panicked");
            }
        }
    }
}

fn mismatched() -> Error {
    Error::from(EmbeddedError::Rule(Rule::Corrupt(
        "the committer answered with another operation's outcome".to_owned(),
    )))
}

impl StoreBackend for EmbeddedStore {
    async fn append(&self, request: AppendMessage) -> Result<Appended, Error> {
        match self.write(WriteOp::Append(request.message)).await? {
            Written::Appended(appended) => Ok(appended),
            _ => Err(mismatched()),
        }
    }

    async fn void_seq(&self, request: VoidSeq) -> Result<Arc<Message>, Error> {
        match self.write(WriteOp::Void(request)).await? {
            Written::Voided(message) => Ok(message),
            _ => Err(mismatched()),
        }
    }

    async fn void_holes(&self, request: VoidHoles) -> Result<MessagePage, Error> {
        request
            .check_span()
            .map_err(|err| err.with_backend(error::BACKEND))?;
        match self.write(WriteOp::VoidHoles(request)).await? {
            Written::VoidedHoles(page) => Ok(page),
            _ => Err(mismatched()),
        }
    }

    async fn find_message(&self, request: FindMessage) -> Result<Option<Arc<Message>>, Error> {
        self.read(move |conn| reader::find_message(conn, &request))
            .await
    }

    async fn read_range(&self, request: ReadRange) -> Result<MessagePage, Error> {
        self.read(move |conn| reader::read_range(conn, &request))
            .await
    }

    async fn read_before(&self, request: ReadBefore) -> Result<MessagePage, Error> {
        self.read(move |conn| reader::read_before(conn, &request))
            .await
    }

    async fn head(&self, request: GetHead) -> Result<Seq, Error> {
        self.read(move |conn| codec::head(conn, request.conversation.as_str()))
            .await
    }

    async fn create_conversation(&self, request: CreateConversation) -> Result<Created, Error> {
        match self.write(WriteOp::CreateConversation(request)).await? {
            Written::Created(created) => Ok(created),
            _ => Err(mismatched()),
        }
    }

    async fn conversation(
        &self,
        request: GetConversation,
    ) -> Result<Option<ConversationInfo>, Error> {
        self.read(move |conn| reader::conversation(conn, request.conversation.as_str()))
            .await
    }

    async fn user_conversations(
        &self,
        request: UserConversations,
    ) -> Result<Vec<ConversationSummary>, Error> {
        self.read(move |conn| reader::user_conversations(conn, request.user.as_str()))
            .await
    }

    async fn update_receipt(&self, request: UpdateReceipt) -> Result<ReceiptUpdated, Error> {
        match self.write(WriteOp::UpdateReceipt(request)).await? {
            Written::ReceiptUpdated(updated) => Ok(updated),
            _ => Err(mismatched()),
        }
    }

    async fn receipts(&self, request: GetReceipts) -> Result<Vec<Receipts>, Error> {
        self.read(move |conn| reader::receipts(conn, request.conversation.as_str()))
            .await
    }

    async fn set_last_seen(&self, request: SetLastSeen) -> Result<Timestamp, Error> {
        match self.write(WriteOp::SetLastSeen(request)).await? {
            Written::LastSeen(at) => Ok(at),
            _ => Err(mismatched()),
        }
    }

    async fn last_seen(
        &self,
        request: GetLastSeen,
    ) -> Result<Vec<(UserId, Option<Timestamp>)>, Error> {
        self.read(move |conn| reader::last_seen(conn, request.users))
            .await
    }

    async fn set_media_status(&self, request: SetMediaStatus) -> Result<MediaStatusSet, Error> {
        match self.write(WriteOp::SetMediaStatus(request)).await? {
            Written::MediaStatusSet(set) => Ok(set),
            _ => Err(mismatched()),
        }
    }

    async fn amend(&self, request: AmendMessage) -> Result<Amended, Error> {
        request
            .check()
            .map_err(|err| err.with_backend(error::BACKEND))?;
        match self.write(WriteOp::Amend(request)).await? {
            Written::Amended(amended) => Ok(amended),
            _ => Err(mismatched()),
        }
    }
}
