//! The MySQL / MariaDB store: one SQL database shared by every node (feature `mysql`).
//!
//! Built on [`mysql_async`] (no TLS, pure Rust): a connection pool, prepared statements
//! cached per connection, and the schema's migrations embedded in the crate and applied when
//! the store connects (table `schema_migrations`; safe to run twice and from several nodes at
//! once). Every write is one InnoDB transaction, so the semantics are those of the embedded
//! store: see `docs/store.md` for the tables, the dialect notes (MariaDB 10.6+ and MySQL 8)
//! and how each request maps to SQL.
//!
//! Appends are group committed: concurrent appends are gathered by a few committer tasks and
//! committed together, one transaction with multi-row statements per batch
//! ([`MysqlConfig::append_batch`], [`MysqlConfig::append_committers`]), with the same
//! outcome for each append as if it had its own transaction. The store must therefore be
//! connected from within a tokio runtime, which keeps running while the store is used.
//!
//! # Cancellation safety
//! Dropping a write's future may leave its transaction committed (when COMMIT had reached the
//! server) or rolled back (the connection is dropped, and the server undoes what was not
//! committed): never half-applied. Retrying is always safe.
//!
//! ```no_run
//! use messenger_store::Store;
//! use messenger_store::mysql::{MysqlConfig, MysqlStore};
//!
//! # async fn run() -> Result<(), messenger_core::Error> {
//! let mut config = MysqlConfig::new("mysql://messenger:messenger@127.0.0.1:13306/messenger_test");
//! config.max_connections = 16;
//! let store = Store::new(MysqlStore::connect_with(config).await?);
//! # drop(store);
//! # Ok(())
//! # }
//! ```

mod appender;
mod codec;
mod config;
mod error;
mod schema;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use messenger_core::store::{
    AmendMessage, Amended, AppendMessage, Appended, ConversationInfo, CreateConversation, Created,
    FindMessage, GetConversation, GetHead, GetLastSeen, GetReceipts, MediaStatusSet, MessagePage,
    ReadBefore, ReadRange, ReceiptUpdated, SetLastSeen, SetMediaStatus, UpdateReceipt,
    UserConversations, VoidHoles, VoidSeq,
};
use messenger_core::{
    Body, ConversationSummary, Error, ErrorKind, Member, Message, ReceiptKind, Receipts, Role, Seq,
    Timestamp, UserId,
};
use mysql_async::prelude::Queryable;
use mysql_async::{
    IsolationLevel, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, TxOpts, Value,
};
use tokio::sync::{mpsc, oneshot};

use self::codec::{CONVERSATION_COLUMNS, MESSAGE_COLUMNS, checked, take};
pub use self::config::MysqlConfig;
use self::error::{MysqlError, code};
use crate::StoreBackend;
use crate::rule::Rule;

/// Statements run on every new connection: READ COMMITTED (no gap locks, so concurrent appends
/// to one conversation do not deadlock on them; every rule of the store rests on keys and
/// atomic upserts, not on snapshots) and strict mode (a value that does not fit is an error,
/// never silently truncated).
const SESSION_SETUP: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
];

/// The columns an `INSERT INTO messages` names, in the order of its values.
const INSERT_COLUMNS: &str =
    "conversation, seq, sender, sender_device, client_msg_id, sent_at, body";

const INSERT_MESSAGE: &str = "INSERT INTO messages \
     (conversation, seq, sender, sender_device, client_msg_id, sent_at, body) \
     VALUES (?, ?, ?, ?, ?, ?, ?)";

/// The MySQL / MariaDB backend: a connection pool over one database.
///
/// Wrap it in [`Store`](crate::Store) to get the tower services. Cheap to share; every node of
/// a cluster may hold one on the same database.
pub struct MysqlStore {
    pool: Pool,
    config: MysqlConfig,
    /// The queue of the append committers (group commit); `None` when `append_batch` is 1.
    appends: Option<mpsc::Sender<appender::Pending>>,
    /// Appends inside this store right now (either path).
    appending: AtomicUsize,
}

/// Counts an append in [`MysqlStore::appending`] until dropped (also when its future is).
struct Appending<'a>(&'a AtomicUsize);

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MysqlStore {
    /// Connects to the database at `url` with the default [`MysqlConfig`], applying any
    /// pending schema migrations.
    ///
    /// # Errors
    /// `InvalidRequest` for a malformed URL; `Unavailable` when no connection is made within
    /// the connect timeout (server down, refused, too many connections); `Unexpected` when the
    /// database's schema is newer than this build, or the server refused the credentials or a
    /// migration.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(MysqlConfig::new(url)).await
    }

    /// Connects as described by `config`: builds the pool, opens a first connection and
    /// applies pending migrations (or, with `config.migrate` off, checks the schema version).
    ///
    /// Pool limits, the statement cache and the session settings of `config` override the
    /// same parameters given in the URL.
    ///
    /// # Errors
    /// As [`MysqlStore::connect`].
    pub async fn connect_with(config: MysqlConfig) -> Result<Self, Error> {
        let opts = Opts::from_url(&config.url).map_err(|err| {
            Error::new(
                ErrorKind::InvalidRequest,
                format!("bad MySQL URL {}: {err}", config::redact_url(&config.url)),
            )
            .with_backend(error::BACKEND)
        })?;
        let max = config.max_connections.max(1);
        let min = config.min_connections.min(max);
        let constraints = PoolConstraints::new(min, max).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidRequest,
                format!("bad pool limits: min {min}, max {max}"),
            )
            .with_backend(error::BACKEND)
        })?;
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(PoolOpts::default().with_constraints(constraints))
            .stmt_cache_size(config.statement_cache)
            .client_found_rows(false)
            .init(SESSION_SETUP.to_vec());
        let pool = Pool::new(opts);
        let timeout = config.connect_timeout;
        let started = tokio::time::timeout(timeout, Self::prepare(&pool, &config)).await;
        match started {
            Ok(Ok(())) => {
                let appends = (config.append_batch > 1).then(|| {
                    appender::start(
                        pool.clone(),
                        appender::Batching {
                            max_batch: config.append_batch,
                            committers: config.append_committers,
                            queue_capacity: config.append_batch.saturating_mul(64),
                            deadlock_retries: config.deadlock_retries,
                        },
                    )
                });
                Ok(Self {
                    pool,
                    config,
                    appends,
                    appending: AtomicUsize::new(0),
                })
            }
            Ok(Err(err)) => {
                let _ = pool.disconnect().await;
                Err(err.into())
            }
            Err(_) => {
                let _ = tokio::time::timeout(timeout, pool.disconnect()).await;
                Err(MysqlError::ConnectTimeout(timeout).into())
            }
        }
    }

    async fn prepare(pool: &Pool, config: &MysqlConfig) -> Result<(), MysqlError> {
        let mut conn = pool.get_conn().await?;
        if config.migrate {
            schema::migrate(&mut conn, config.connect_timeout.as_secs().max(1)).await
        } else {
            schema::check(&mut conn).await
        }
    }

    /// The configuration the store was connected with.
    pub fn config(&self) -> &MysqlConfig {
        &self.config
    }

    /// The schema version this build of the store writes (the highest migration it ships).
    pub fn schema_version() -> u64 {
        schema::VERSION
    }

    /// Closes the pool's connections once they are returned. Operations after it fail with
    /// `Unavailable`.
    ///
    /// # Errors
    /// `Unavailable` when a connection could not be closed cleanly.
    pub async fn disconnect(&self) -> Result<(), Error> {
        self.pool
            .clone()
            .disconnect()
            .await
            .map_err(|err| MysqlError::from(err).into())
    }

    /// Runs a write, again when the server rolled it back for a deadlock or a lock wait
    /// timeout (the whole transaction was undone, so running it again is safe).
    async fn write<'a, T, F, Fut>(&'a self, attempt: F) -> Result<T, Error>
    where
        F: Fn() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, MysqlError>> + Send + 'a,
        T: Send,
    {
        let mut retries = 0;
        loop {
            match attempt().await {
                Err(err) if err.is_retryable() && retries < self.config.deadlock_retries => {
                    retries += 1;
                    tracing::debug!(error = %err, retries, "retrying a store write");
                }
                outcome => return outcome.map_err(Error::from),
            }
        }
    }

    async fn void_once(&self, request: &VoidSeq) -> Result<Arc<Message>, MysqlError> {
        let seq = checked("seq", request.seq.get())?;
        if seq == 0 {
            return Err(MysqlError::Rule(Rule::OutOfRange {
                what: "seq",
                value: 0,
            }));
        }
        let void = Message::void(request.conversation.clone(), request.seq, Timestamp::now());
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        insert_if_free(&mut tx, &void).await?;
        let held = codec::message_at(&mut tx, request.conversation.as_str(), seq).await?;
        tx.commit().await?;
        held.map(Arc::new).ok_or_else(|| {
            MysqlError::Rule(Rule::Corrupt(format!("seq {seq} vanished after its void")))
        })
    }

    /// Voids the free seqs of the range in one transaction, at READ COMMITTED whatever the
    /// session says (the range read back must see entries committed meanwhile): the range is
    /// read, a void is inserted at each free seq (multi-row, `ON DUPLICATE KEY UPDATE` a
    /// no-op, so an entry committed meanwhile wins; one being written makes the insert wait
    /// for it), and the range is read back before COMMIT. A seq still empty then (the entry
    /// the insert waited for was rolled back) gets its void in another round.
    async fn void_holes_once(&self, request: &VoidHoles) -> Result<MessagePage, MysqlError> {
        /// Insert rounds before giving up.
        const ROUNDS: usize = 4;
        let conversation = request.conversation.as_str();
        let mut opts = TxOpts::default();
        opts.with_isolation_level(IsolationLevel::ReadCommitted);
        let mut tx = self.pool.start_transaction(opts).await?;
        let head = codec::head(&mut tx, conversation).await?;
        let Some((first, last)) = request.covered(head) else {
            tx.commit().await?;
            return Ok(MessagePage {
                messages: Vec::new(),
                head,
            });
        };
        let (low, high) = (checked("seq", first.get())?, checked("seq", last.get())?);
        let now = Timestamp::now();
        let mut messages = messages_between(&mut tx, conversation, low, high).await?;
        for _ in 0..ROUNDS {
            let stored: std::collections::HashSet<u64> =
                messages.iter().map(|message| message.seq.get()).collect();
            let free: Vec<u64> = (low..=high).filter(|seq| !stored.contains(seq)).collect();
            if free.is_empty() {
                tx.commit().await?;
                return Ok(MessagePage { messages, head });
            }
            for chunk in free.chunks(appender::MAX_INSERT_ROWS) {
                let mut values = Vec::with_capacity(chunk.len() * 7);
                for &seq in chunk {
                    let void = Message::void(request.conversation.clone(), Seq(seq), now);
                    values.extend(appender::encode(&void)?);
                }
                let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                tx.exec_drop(
                    format!(
                        "INSERT INTO messages ({INSERT_COLUMNS}) VALUES {placeholders} \
                         ON DUPLICATE KEY UPDATE seq = seq"
                    ),
                    Params::Positional(values),
                )
                .await?;
            }
            messages = messages_between(&mut tx, conversation, low, high).await?;
        }
        tx.rollback().await?;
        Err(MysqlError::Rule(Rule::Corrupt(format!(
            "{conversation}: seqs of {low}..={high} stayed empty after {ROUNDS} rounds of voids"
        ))))
    }

    async fn create_once(&self, request: &CreateConversation) -> Result<Created, MysqlError> {
        let facts = &request.conversation;
        let created_at = checked("created_at", facts.created_at.as_millis())?;
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        tx.exec_drop(
            "INSERT INTO conversations (id, kind, title, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id",
            (
                facts.id.as_str(),
                facts.kind.as_str(),
                facts.title.as_deref(),
                facts.created_by.as_str(),
                created_at,
            ),
        )
        .await?;
        if tx.affected_rows() == 0 {
            let existing = codec::conversation(&mut tx, facts.id.as_str()).await?;
            tx.commit().await?;
            let existing = existing.ok_or_else(|| {
                MysqlError::Rule(Rule::Corrupt(format!("conversation {} vanished", facts.id)))
            })?;
            return Ok(Created {
                conversation: existing,
                created: false,
            });
        }
        upsert_members(
            &mut tx,
            facts.id.as_str(),
            request
                .members
                .iter()
                .map(|member| (member.user.as_str(), member.role)),
            MemberConflict::SetRole,
        )
        .await?;
        tx.commit().await?;
        Ok(Created {
            conversation: facts.clone(),
            created: true,
        })
    }

    async fn receipt_once(&self, request: &UpdateReceipt) -> Result<ReceiptUpdated, MysqlError> {
        let conversation = request.conversation.as_str();
        let user = request.user.as_str();
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        let head = codec::head(&mut tx, conversation).await?;
        if request.seq > head {
            tx.rollback().await?;
            return Err(MysqlError::Rule(Rule::PastHead {
                conversation: request.conversation.clone(),
                seq: request.seq,
                head,
            }));
        }
        // Make sure the row exists, then lock it: concurrent updates of one user's receipt
        // run one after the other, so `changed` and the answer are exact.
        tx.exec_drop(
            "INSERT INTO receipts (conversation, user_id, delivered_seq, read_seq) \
             VALUES (?, ?, 0, 0) ON DUPLICATE KEY UPDATE delivered_seq = delivered_seq",
            (conversation, user),
        )
        .await?;
        let stored: Option<Row> = tx
            .exec_first(
                "SELECT delivered_seq, read_seq FROM receipts \
                 WHERE conversation = ? AND user_id = ? FOR UPDATE",
                (conversation, user),
            )
            .await?;
        let (delivered, read) = match stored {
            Some(mut row) => (Seq(take(&mut row, 0)?), Seq(take(&mut row, 1)?)),
            None => {
                return Err(MysqlError::Rule(Rule::Corrupt(format!(
                    "the receipt row of {user} in {conversation} vanished"
                ))));
            }
        };
        let new_read = match request.kind {
            ReceiptKind::Read => read.max(request.seq),
            ReceiptKind::Delivered => read,
        };
        // Read implies delivered.
        let new_delivered = delivered.max(request.seq).max(new_read);
        let changed = new_delivered != delivered || new_read != read;
        if changed {
            tx.exec_drop(
                "UPDATE receipts SET delivered_seq = ?, read_seq = ? \
                 WHERE conversation = ? AND user_id = ?",
                (new_delivered.get(), new_read.get(), conversation, user),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(ReceiptUpdated {
            receipts: Receipts {
                user: request.user.clone(),
                delivered: new_delivered,
                read: new_read,
            },
            changed,
        })
    }

    async fn last_seen_once(&self, request: &SetLastSeen) -> Result<Timestamp, MysqlError> {
        let at = checked("at", request.at.as_millis())?;
        let user = request.user.as_str();
        let mut conn = self.pool.get_conn().await?;
        conn.exec_drop(
            "INSERT INTO last_seen (user_id, seen_at) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE seen_at = GREATEST(seen_at, ?)",
            (user, at, at),
        )
        .await?;
        let row: Option<Row> = conn
            .exec_first("SELECT seen_at FROM last_seen WHERE user_id = ?", (user,))
            .await?;
        match row {
            Some(mut row) => Ok(Timestamp(take(&mut row, 0)?)),
            None => Err(MysqlError::Rule(Rule::Corrupt(format!(
                "the last seen of {user} vanished"
            )))),
        }
    }

    async fn media_status_once(
        &self,
        request: &SetMediaStatus,
    ) -> Result<MediaStatusSet, MysqlError> {
        let update = &request.update;
        let media_seq = crate::media::media_seq_of(update)?;
        let conversation = update.conversation.as_str();
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        // The row lock orders concurrent completions of one media entry.
        let row: Option<Row> = tx
            .exec_first(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE conversation = ? AND seq = ? FOR UPDATE"
                ),
                (conversation, checked("seq", media_seq.get())?),
            )
            .await?;
        let Some(mut row) = row else {
            tx.rollback().await?;
            return Err(crate::media::MediaRefusal::NoEntry(media_seq).into());
        };
        let media = codec::decode_message(&mut row)?;
        let (media, applied) = match crate::media::decide(&media, update)? {
            crate::media::Decision::Refuse => (media, false),
            crate::media::Decision::Repair => {
                let logged = codec::message_by_key(
                    &mut tx,
                    conversation,
                    update.sender.as_str(),
                    update.client_msg_id.as_str(),
                )
                .await?;
                if logged.is_some() {
                    (media, false)
                } else {
                    self.insert_update(&mut tx, update).await?;
                    (media, true)
                }
            }
            crate::media::Decision::Apply(moved) => {
                self.insert_update(&mut tx, update).await?;
                tx.exec_drop(
                    "UPDATE messages SET body = ? WHERE conversation = ? AND seq = ?",
                    (
                        serde_json::to_vec(&moved.body)?,
                        conversation,
                        checked("seq", media_seq.get())?,
                    ),
                )
                .await?;
                (moved, true)
            }
        };
        tx.commit().await?;
        Ok(MediaStatusSet {
            media: Arc::new(media),
            applied,
        })
    }

    /// [`AmendMessage`] in one transaction: the update's key first (a retry answers its
    /// original and voids the new seq), then the target, locked, against the request.
    async fn amend_once(&self, request: &AmendMessage) -> Result<Amended, MysqlError> {
        let update = &request.update;
        let conversation = update.conversation.as_str();
        let target = checked("seq", request.expected.seq.get())?;
        let mut tx = self.pool.start_transaction(TxOpts::default()).await?;
        let original = codec::message_by_key(
            &mut tx,
            conversation,
            update.sender.as_str(),
            update.client_msg_id.as_str(),
        )
        .await?;
        if let Some(original) = original {
            if original.seq != update.seq {
                let void = Message::void(update.conversation.clone(), update.seq, update.sent_at);
                insert_if_free(&mut tx, &void).await?;
            }
            tx.commit().await?;
            return Ok(Amended::Duplicate {
                original: Arc::new(original),
            });
        }
        // The row lock orders concurrent amendments of one entry.
        let row: Option<Row> = tx
            .exec_first(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE conversation = ? AND seq = ? FOR UPDATE"
                ),
                (conversation, target),
            )
            .await?;
        let current = row
            .map(|mut row| codec::decode_message(&mut row))
            .transpose()?;
        let decision = crate::amend::decide(current.as_ref(), request);
        if decision == crate::amend::Decision::Changed {
            tx.rollback().await?;
            return Ok(Amended::Changed {
                current: current.map(Arc::new),
            });
        }
        self.insert_update(&mut tx, update).await?;
        if decision == crate::amend::Decision::Apply {
            tx.exec_drop(
                "UPDATE messages SET body = ? WHERE conversation = ? AND seq = ?",
                (
                    serde_json::to_vec(&request.amended.body)?,
                    conversation,
                    target,
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Amended::Applied {
            update: Arc::clone(update),
            target: Arc::clone(&request.amended),
        })
    }

    async fn insert_update(
        &self,
        tx: &mut mysql_async::Transaction<'_>,
        update: &Message,
    ) -> Result<(), MysqlError> {
        if update.seq == Seq::ZERO {
            return Err(MysqlError::Rule(Rule::OutOfRange {
                what: "seq",
                value: 0,
            }));
        }
        if !insert_if_free(tx, update).await? {
            return Err(MysqlError::Rule(Rule::SeqTaken {
                conversation: update.conversation.clone(),
                seq: update.seq,
            }));
        }
        Ok(())
    }

    /// Reads a page of messages with the head in the same statement (one snapshot), and the
    /// head alone when the page is empty.
    async fn page(
        &self,
        conversation: &str,
        statement: String,
        params: Params,
        descending: bool,
    ) -> Result<MessagePage, MysqlError> {
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<Row> = conn.exec(statement, params).await?;
        let mut head = None;
        let mut messages = Vec::with_capacity(rows.len());
        for mut row in rows {
            let row_head: Option<u64> = take(&mut row, 7)?;
            head = Some(Seq(row_head.unwrap_or(0)));
            messages.push(Arc::new(codec::decode_message(&mut row)?));
        }
        if descending {
            messages.reverse();
        }
        let head = match head {
            Some(head) => head,
            None => codec::head(&mut conn, conversation).await?,
        };
        Ok(MessagePage { messages, head })
    }
}

/// The entries with `low <= seq <= high`, ascending.
async fn messages_between(
    conn: &mut impl Queryable,
    conversation: &str,
    low: u64,
    high: u64,
) -> Result<Vec<Arc<Message>>, MysqlError> {
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE conversation = ? AND seq >= ? AND seq <= ? ORDER BY seq"
            ),
            (conversation, low, high),
        )
        .await?;
    rows.into_iter()
        .map(|mut row| codec::decode_message(&mut row).map(Arc::new))
        .collect()
}

/// One append in its own transaction, again after a deadlock or lock wait timeout (up to
/// `retries` times): the path of a store without group commit, and of every append of a batch
/// that could not commit together.
async fn append_alone(
    pool: &Pool,
    retries: u32,
    message: &Arc<Message>,
) -> Result<Appended, Error> {
    let mut retried = 0;
    loop {
        match append_once(pool, message).await {
            Err(err) if err.is_retryable() && retried < retries => {
                retried += 1;
                tracing::debug!(error = %err, retries = retried, "retrying a store write");
            }
            outcome => return outcome.map_err(Error::from),
        }
    }
}

async fn append_once(pool: &Pool, message: &Arc<Message>) -> Result<Appended, MysqlError> {
    let seq = checked("seq", message.seq.get())?;
    if seq == 0 {
        return Err(MysqlError::Rule(Rule::OutOfRange {
            what: "seq",
            value: 0,
        }));
    }
    let row = message_row(message, seq)?;
    let conversation = message.conversation.as_str();
    let mut tx = pool.start_transaction(TxOpts::default()).await?;
    let inserted = tx.exec_drop(INSERT_MESSAGE, row).await;
    match inserted {
        Ok(()) => {
            raise_head(&mut tx, conversation, seq).await?;
            project_membership(&mut tx, message).await?;
            tx.commit().await?;
            Ok(Appended {
                message: Arc::clone(message),
                duplicate: false,
            })
        }
        Err(mysql_async::Error::Server(err)) if err.code == code::DUPLICATE_ENTRY => {
            // Either the key was used before (a retry) or the seq is taken. The failed
            // statement is undone alone; the transaction goes on.
            let original = codec::message_by_key(
                &mut tx,
                conversation,
                message.sender.as_str(),
                message.client_msg_id.as_str(),
            )
            .await?;
            let Some(original) = original else {
                tx.rollback().await?;
                return Err(MysqlError::Rule(Rule::SeqTaken {
                    conversation: message.conversation.clone(),
                    seq: message.seq,
                }));
            };
            if original.seq != message.seq {
                // The retry was given a new seq: fill it with a void so no hole is left.
                let void =
                    Message::void(message.conversation.clone(), message.seq, message.sent_at);
                insert_if_free(&mut tx, &void).await?;
            }
            tx.commit().await?;
            Ok(Appended {
                message: Arc::new(original),
                duplicate: true,
            })
        }
        Err(err) => Err(err.into()),
    }
}

/// The parameters of [`INSERT_MESSAGE`] for `message` at `seq`.
fn message_row(message: &Message, seq: u64) -> Result<Params, MysqlError> {
    Ok(Params::from((
        message.conversation.as_str(),
        seq,
        message.sender.as_str(),
        message.sender_device.as_str(),
        message.client_msg_id.as_str(),
        checked("sent_at", message.sent_at.as_millis())?,
        serde_json::to_vec(&message.body)?,
    )))
}

/// Inserts `message` unless its seq is taken, raising the head when it was inserted.
async fn insert_if_free(conn: &mut impl Queryable, message: &Message) -> Result<bool, MysqlError> {
    let seq = checked("seq", message.seq.get())?;
    let row = message_row(message, seq)?;
    let conversation = message.conversation.as_str();
    let inserted: Result<(), mysql_async::Error> = conn.exec_drop(INSERT_MESSAGE, row).await;
    match inserted {
        Ok(()) => {
            raise_head(conn, conversation, seq).await?;
            Ok(true)
        }
        Err(mysql_async::Error::Server(err)) if err.code == code::DUPLICATE_ENTRY => Ok(false),
        Err(err) => Err(err.into()),
    }
}

async fn raise_head(
    conn: &mut impl Queryable,
    conversation: &str,
    seq: u64,
) -> Result<(), MysqlError> {
    conn.exec_drop(
        "INSERT INTO heads (conversation, head) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE head = GREATEST(head, ?)",
        (conversation, seq, seq),
    )
    .await?;
    Ok(())
}

/// What an insert of members does with a member already there.
#[derive(Debug, Clone, Copy)]
enum MemberConflict {
    /// Give the member the new role.
    SetRole,
    /// Leave the member as it is.
    Keep,
}

/// Inserts members in one multi-row statement.
async fn upsert_members<'a>(
    conn: &mut impl Queryable,
    conversation: &str,
    members: impl Iterator<Item = (&'a str, Role)>,
    on_conflict: MemberConflict,
) -> Result<(), MysqlError> {
    let mut values = Vec::new();
    let mut rows = 0usize;
    for (user, role) in members {
        values.push(Value::from(conversation));
        values.push(Value::from(user));
        values.push(Value::from(role.as_str()));
        rows += 1;
    }
    if rows == 0 {
        return Ok(());
    }
    let placeholders = vec!["(?, ?, ?)"; rows].join(", ");
    // `VALUES(col)` is deprecated on MySQL 8.0.20+ (a warning) in favour of a row alias, which
    // MariaDB does not have; `VALUES(col)` works on both.
    let update = match on_conflict {
        MemberConflict::SetRole => "role = VALUES(role)",
        MemberConflict::Keep => "role = role",
    };
    conn.exec_drop(
        format!(
            "INSERT INTO members (conversation, user_id, role) VALUES {placeholders} \
             ON DUPLICATE KEY UPDATE {update}"
        ),
        Params::Positional(values),
    )
    .await?;
    Ok(())
}

/// Keeps `members` in step with the membership changes of the log.
async fn project_membership(
    conn: &mut impl Queryable,
    message: &Message,
) -> Result<(), MysqlError> {
    let conversation = message.conversation.as_str();
    match &message.body {
        Body::GroupCreated { members, .. } => {
            upsert_members(
                conn,
                conversation,
                members
                    .iter()
                    .map(|member| (member.user.as_str(), member.role)),
                MemberConflict::SetRole,
            )
            .await?;
        }
        Body::MembersAdded { users, role } => {
            upsert_members(
                conn,
                conversation,
                users.iter().map(|user| (user.as_str(), *role)),
                MemberConflict::Keep,
            )
            .await?;
        }
        Body::MemberRemoved { user } => remove_member(conn, conversation, user.as_str()).await?,
        Body::MemberLeft => remove_member(conn, conversation, message.sender.as_str()).await?,
        Body::RoleChanged { user, role } => {
            if *role == Role::Owner {
                conn.exec_drop(
                    "UPDATE members SET role = ? \
                     WHERE conversation = ? AND user_id <> ? AND role = ?",
                    (
                        Role::Admin.as_str(),
                        conversation,
                        user.as_str(),
                        Role::Owner.as_str(),
                    ),
                )
                .await?;
            }
            conn.exec_drop(
                "UPDATE members SET role = ? WHERE conversation = ? AND user_id = ?",
                (role.as_str(), conversation, user.as_str()),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

async fn remove_member(
    conn: &mut impl Queryable,
    conversation: &str,
    user: &str,
) -> Result<(), MysqlError> {
    conn.exec_drop(
        "DELETE FROM members WHERE conversation = ? AND user_id = ?",
        (conversation, user),
    )
    .await?;
    Ok(())
}

fn bound(seq: Option<Seq>) -> u64 {
    seq.map_or(u64::MAX, Seq::get)
}

fn limit(limit: usize) -> u64 {
    u64::try_from(limit).unwrap_or(u64::MAX)
}

impl StoreBackend for MysqlStore {
    async fn append(&self, request: AppendMessage) -> Result<Appended, Error> {
        let _appending = Appending(&self.appending);
        let alone = self.appending.fetch_add(1, Ordering::Relaxed) == 0;
        // With no other append in flight there is nothing to batch with: the caller's task
        // runs it at once, without the hop through a committer.
        let (Some(appends), false) = (&self.appends, alone) else {
            return append_alone(&self.pool, self.config.deadlock_retries, &request.message).await;
        };
        let (reply, answer) = oneshot::channel();
        let pending = appender::Pending {
            message: request.message,
            reply,
        };
        if appends.send(pending).await.is_err() {
            return Err(MysqlError::CommittersGone.into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(MysqlError::CommittersGone.into()))
    }

    async fn void_seq(&self, request: VoidSeq) -> Result<Arc<Message>, Error> {
        self.write(|| self.void_once(&request)).await
    }

    async fn void_holes(&self, request: VoidHoles) -> Result<MessagePage, Error> {
        request
            .check_span()
            .map_err(|err| err.with_backend(error::BACKEND))?;
        self.write(|| self.void_holes_once(&request)).await
    }

    async fn find_message(&self, request: FindMessage) -> Result<Option<Arc<Message>>, Error> {
        let found = async {
            let mut conn = self.pool.get_conn().await?;
            codec::message_by_key(
                &mut conn,
                request.conversation.as_str(),
                request.sender.as_str(),
                request.client_msg_id.as_str(),
            )
            .await
        };
        Ok(found.await?.map(Arc::new))
    }

    async fn read_range(&self, request: ReadRange) -> Result<MessagePage, Error> {
        let conversation = request.conversation.as_str();
        let statement = format!(
            "SELECT {MESSAGE_COLUMNS}, (SELECT head FROM heads WHERE conversation = ?) \
             FROM messages WHERE conversation = ? AND seq > ? AND seq <= ? \
             ORDER BY seq LIMIT ?"
        );
        let params = Params::from((
            conversation,
            conversation,
            request.after.get(),
            bound(request.until),
            limit(request.limit),
        ));
        Ok(self.page(conversation, statement, params, false).await?)
    }

    async fn read_before(&self, request: ReadBefore) -> Result<MessagePage, Error> {
        let conversation = request.conversation.as_str();
        let statement = format!(
            "SELECT {MESSAGE_COLUMNS}, (SELECT head FROM heads WHERE conversation = ?) \
             FROM messages WHERE conversation = ? AND seq < ? \
             ORDER BY seq DESC LIMIT ?"
        );
        let params = Params::from((
            conversation,
            conversation,
            bound(request.before),
            limit(request.limit),
        ));
        Ok(self.page(conversation, statement, params, true).await?)
    }

    async fn head(&self, request: GetHead) -> Result<Seq, Error> {
        let head = async {
            let mut conn = self.pool.get_conn().await?;
            codec::head(&mut conn, request.conversation.as_str()).await
        };
        Ok(head.await?)
    }

    async fn create_conversation(&self, request: CreateConversation) -> Result<Created, Error> {
        self.write(|| self.create_once(&request)).await
    }

    async fn conversation(
        &self,
        request: GetConversation,
    ) -> Result<Option<ConversationInfo>, Error> {
        let id = request.conversation.as_str();
        let info = async {
            let mut conn = self.pool.get_conn().await?;
            let Some(conversation) = codec::conversation(&mut conn, id).await? else {
                return Ok(None);
            };
            let rows: Vec<Row> = conn
                .exec(
                    "SELECT user_id, role FROM members WHERE conversation = ? ORDER BY user_id",
                    (id,),
                )
                .await?;
            let mut members = Vec::with_capacity(rows.len());
            for mut row in rows {
                members.push(Member {
                    user: codec::parse_id(&take::<String>(&mut row, 0)?)?,
                    role: codec::parse_role(&take::<String>(&mut row, 1)?)?,
                });
            }
            let head = codec::head(&mut conn, id).await?;
            Ok::<_, MysqlError>(Some(ConversationInfo {
                conversation,
                members,
                head,
            }))
        };
        Ok(info.await?)
    }

    async fn user_conversations(
        &self,
        request: UserConversations,
    ) -> Result<Vec<ConversationSummary>, Error> {
        let columns = CONVERSATION_COLUMNS
            .split(", ")
            .map(|column| format!("c.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let member = crate::unread::Member {
            conversation: "m.conversation",
            user: "m.user_id",
            quoted_user: "CONCAT('\"', m.user_id, '\"')",
            read: "COALESCE(r.read_seq, 0)",
            head: "COALESCE(h.head, 0)",
        };
        let (unread, mentions) = (member.unread(), member.mentions());
        let statement = format!(
            "SELECT {columns}, m.role, COALESCE(h.head, 0), \
                    COALESCE(r.delivered_seq, 0), COALESCE(r.read_seq, 0), {unread}, {mentions} \
             FROM members m \
             JOIN conversations c ON c.id = m.conversation \
             LEFT JOIN heads h ON h.conversation = m.conversation \
             LEFT JOIN receipts r ON r.conversation = m.conversation AND r.user_id = m.user_id \
             WHERE m.user_id = ? ORDER BY c.id"
        );
        let summaries = async {
            let mut conn = self.pool.get_conn().await?;
            let rows: Vec<Row> = conn.exec(statement, (request.user.as_str(),)).await?;
            let mut summaries = Vec::with_capacity(rows.len());
            for mut row in rows {
                let head = Seq(take(&mut row, 6)?);
                let read = Seq(take(&mut row, 8)?);
                let unread: u64 = take(&mut row, 9)?;
                let mentions: u64 = take(&mut row, 10)?;
                summaries.push(ConversationSummary {
                    conversation: codec::decode_conversation(&mut row)?,
                    role: codec::parse_role(&take::<String>(&mut row, 5)?)?,
                    head,
                    delivered: Seq(take(&mut row, 7)?),
                    read,
                    unread,
                    mentions,
                });
            }
            Ok::<_, MysqlError>(summaries)
        };
        Ok(summaries.await?)
    }

    async fn update_receipt(&self, request: UpdateReceipt) -> Result<ReceiptUpdated, Error> {
        self.write(|| self.receipt_once(&request)).await
    }

    async fn receipts(&self, request: GetReceipts) -> Result<Vec<Receipts>, Error> {
        let receipts = async {
            let mut conn = self.pool.get_conn().await?;
            let rows: Vec<Row> = conn
                .exec(
                    "SELECT m.user_id, COALESCE(r.delivered_seq, 0), COALESCE(r.read_seq, 0) \
                     FROM members m \
                     LEFT JOIN receipts r \
                         ON r.conversation = m.conversation AND r.user_id = m.user_id \
                     WHERE m.conversation = ? ORDER BY m.user_id",
                    (request.conversation.as_str(),),
                )
                .await?;
            let mut receipts = Vec::with_capacity(rows.len());
            for mut row in rows {
                receipts.push(Receipts {
                    user: codec::parse_id(&take::<String>(&mut row, 0)?)?,
                    delivered: Seq(take(&mut row, 1)?),
                    read: Seq(take(&mut row, 2)?),
                });
            }
            Ok::<_, MysqlError>(receipts)
        };
        Ok(receipts.await?)
    }

    async fn set_last_seen(&self, request: SetLastSeen) -> Result<Timestamp, Error> {
        self.write(|| self.last_seen_once(&request)).await
    }

    async fn set_media_status(&self, request: SetMediaStatus) -> Result<MediaStatusSet, Error> {
        self.write(|| self.media_status_once(&request)).await
    }

    async fn amend(&self, request: AmendMessage) -> Result<Amended, Error> {
        request
            .check()
            .map_err(|err| err.with_backend(error::BACKEND))?;
        self.write(|| self.amend_once(&request)).await
    }

    async fn last_seen(
        &self,
        request: GetLastSeen,
    ) -> Result<Vec<(UserId, Option<Timestamp>)>, Error> {
        if request.users.is_empty() {
            return Ok(Vec::new());
        }
        let seen = async {
            let placeholders = vec!["?"; request.users.len()].join(", ");
            let params: Vec<Value> = request
                .users
                .iter()
                .map(|user| Value::from(user.as_str()))
                .collect();
            let mut conn = self.pool.get_conn().await?;
            let rows: Vec<Row> = conn
                .exec(
                    format!(
                        "SELECT user_id, seen_at FROM last_seen WHERE user_id IN ({placeholders})"
                    ),
                    Params::Positional(params),
                )
                .await?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for mut row in rows {
                let user: String = take(&mut row, 0)?;
                let at: u64 = take(&mut row, 1)?;
                found.insert(user, Timestamp(at));
            }
            Ok::<_, MysqlError>(found)
        };
        let found = seen.await?;
        Ok(request
            .users
            .into_iter()
            .map(|user| {
                let at = found.get(user.as_str()).copied();
                (user, at)
            })
            .collect())
    }
}
