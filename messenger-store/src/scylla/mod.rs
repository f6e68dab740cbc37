//! The ScyllaDB / Cassandra store: the scale-out backend (feature `scylla`).
//!
//! Built on the [`scylla`] driver. Every statement is prepared once when the store
//! connects, so the driver's default load-balancing policy — token aware: each request goes straight to
//! a replica of its partition — routes it; range reads page through the driver (page size
//! [`ScyllaConfig::page_size`]). The schema ships in the crate (`src/scylla/schema.cql`,
//! [`ScyllaStore::schema`]) and is applied on connect (`CREATE ... IF NOT EXISTS`, version
//! recorded in `schema_version`).
//!
//! # Tables and why
//! - `messages`, partitioned by `(conversation, bucket)` with `bucket = seq / 1024` and
//!   clustered by `seq`: a partition never holds more than 1024 rows, whatever the
//!   conversation's age, and a page of history reads one or two partitions. (Buckets by seq
//!   rather than by time: a quiet conversation does not scatter over empty time buckets, a
//!   busy one does not overflow one, and a reader finds the partition from the seq alone.)
//! - `message_keys`, `(conversation, sender, client_msg_id) → seq`: idempotency without a
//!   secondary index or a scan.
//! - `heads`, `conversations`, `members` (by conversation), `members_by_user` (the per-user
//!   conversation index, so listing a user's conversations reads one partition),
//!   `receipts` (by conversation), `last_seen` (by user).
//!
//! # Writes, and where lightweight transactions are needed
//! An append claims its idempotency key first (`INSERT INTO message_keys ... IF NOT EXISTS`),
//! then writes the message (`INSERT INTO messages ... IF NOT EXISTS`): both are lightweight
//! transactions, because a seq must never be overwritten and a key must name one seq. Then it
//! projects a membership change (a logged batch) and raises the head. When the seq is taken
//! the claim is released (`DELETE ... IF seq = ?`) and the answer is `Conflict`.
//!
//! A crash between the two transactions leaves a claim pointing at an empty seq. A retry of
//! the same message (same sender and `client_msg_id`) finds the claim and converges:
//! - the claimed seq holds the message: it is the original, answered with `duplicate: true`
//!   (the retry's own seq is voided and the head raised again; the membership change is
//!   re-applied when the original is less than 24 hours old, see below);
//! - the claimed seq is empty: the retry writes the message there (`IF NOT EXISTS`) and voids
//!   its own seq;
//! - the claimed seq holds another entry (its append was refused and the claim not released,
//!   or a reader voided the seq): the claim moves to the retry's seq (`UPDATE ... IF seq = ?`).
//!
//! Everything monotonic is written **without** a lightweight transaction and without reading
//! first: heads, receipt watermarks and last seen are written `USING TIMESTAMP <value>` (the
//! seq, or the milliseconds of last seen). Cassandra and ScyllaDB resolve concurrent writes
//! of a cell by write timestamp, so the cell keeps the highest value whatever order the
//! writes arrive in, on every replica, after repair too. These tables must never be written
//! with the server's clock (microseconds since 1970 would beat every seq forever); every
//! statement of the store gives its timestamp explicitly. Membership rows use the same rule
//! with the seq of the membership change (0 for the members given at creation), so
//! projecting a change twice, or two changes out of order, leaves the state of the latest —
//! as long as the later change's tombstone exists (`gc_grace_seconds`, 10 days by default),
//! which is why a retry re-applies a membership change only within 24 hours.
//!
//! Membership changes write `members` and `members_by_user` in one **logged batch** (in
//! chunks of 64 members): the batch log guarantees that all of its statements are applied
//! eventually, even if the coordinator dies, so the two tables never disagree for long; it
//! is not isolated (a reader may see one table updated before the other).
//!
//! # Consistency
//! Plain reads and writes run at [`ScyllaConfig::consistency`] (default `LOCAL_QUORUM`): a
//! quorum read sees every acknowledged quorum write. Lightweight transactions run their
//! Paxos phase at [`ScyllaConfig::serial_consistency`] (default `LOCAL_SERIAL`) and commit at
//! `consistency`. The statement of each operation is listed in `docs/store.md`.
//!
//! # Cancellation safety
//! Dropping a write's future may leave any prefix of its steps applied (a claim without its
//! message, a message without its head): every step is idempotent or monotonic and a retry
//! of the same request converges, as described above. A write that times out may have
//! landed; retry it.
//!
//! ```no_run
//! use messenger_store::Store;
//! use messenger_store::scylla::{ScyllaConfig, ScyllaStore};
//!
//! # async fn run() -> Result<(), messenger_core::Error> {
//! let mut config = ScyllaConfig::new(["10.0.0.1:9042", "10.0.0.2:9042"]);
//! config.replication = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".to_owned();
//! let store = Store::new(ScyllaStore::connect(config).await?);
//! # drop(store);
//! # Ok(())
//! # }
//! ```

mod codec;
mod config;
mod cql;
mod error;
mod schema;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use messenger_core::store::{
    AmendMessage, Amended, AppendMessage, Appended, ConversationInfo, CreateConversation, Created,
    FindMessage, GetConversation, GetHead, GetLastSeen, GetReceipts, MediaStatusSet, MessagePage,
    ReadBefore, ReadRange, ReceiptUpdated, SetLastSeen, SetMediaStatus, UpdateReceipt,
    UserConversations, VoidHoles, VoidSeq,
};
use messenger_core::{
    Body, ConversationSummary, Error, MAX_UNREAD_SPAN, Member, Message, ReceiptKind, Receipts,
    Role, Seq, Timestamp, UserId,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use self::codec::{ConversationRow, Lwt, MessageRow, from_bigint, to_bigint};
pub use self::config::ScyllaConfig;
use self::cql::{Statements, bucket};
use self::error::ScyllaError;
use crate::StoreBackend;
use crate::rule::Rule;

/// How many times an append re-reads a claim that others keep changing before it gives up
/// with `Unavailable` (each round is a few lightweight transactions).
const CLAIM_ROUNDS: usize = 5;

/// How long after an entry was accepted a retry of it re-applies its membership change (to
/// finish a projection cut short by a crash). The re-applied rows carry the entry's seq as
/// write timestamp, so a later change wins over them, but only while the later change's
/// tombstone exists: tombstones live `gc_grace_seconds` (10 days by default), far longer
/// than this window. Older retries only raise the head again.
const REPROJECT_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// At most this many single-partition reads run at once for one request (listing a user's
/// conversations, last seen of many users).
const READ_CONCURRENCY: usize = 32;

/// At most this many lightweight transactions run at once for one request (the voids of a
/// range of holes).
const WRITE_CONCURRENCY: usize = 16;

/// How many times an append runs when its lightweight transactions time out for contention.
const CAS_ATTEMPTS: u32 = 3;

/// Members per logged batch (each member is two statements: `members`, `members_by_user`).
const MEMBERS_PER_BATCH: usize = 64;

/// The ScyllaDB / Cassandra backend: one driver session and the store's prepared statements.
///
/// Wrap it in [`Store`](crate::Store) to get the tower services. Every node of a cluster may
/// hold one on the same keyspace.
pub struct ScyllaStore {
    session: Arc<Session>,
    statements: Statements,
    config: ScyllaConfig,
}

impl fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A change of one membership, written to `members` and `members_by_user`.
#[derive(Debug)]
enum MemberChange {
    Put(String, Role),
    Remove(String),
}

/// The membership rows a change of the log writes, given the current members (read only for
/// `MembersAdded` and `RoleChanged`).
fn membership_changes(message: &Message, current: &[Member]) -> Vec<MemberChange> {
    let mut changes = Vec::new();
    match &message.body {
        Body::GroupCreated { members, .. } => {
            for member in members {
                changes.push(MemberChange::Put(member.user.to_string(), member.role));
            }
        }
        Body::MembersAdded { users, role } => {
            // Members already there keep their role.
            let present: BTreeSet<&UserId> = current.iter().map(|member| &member.user).collect();
            for user in users {
                if !present.contains(user) {
                    changes.push(MemberChange::Put(user.to_string(), *role));
                }
            }
        }
        Body::MemberRemoved { user } => changes.push(MemberChange::Remove(user.to_string())),
        Body::MemberLeft => changes.push(MemberChange::Remove(message.sender.to_string())),
        // A role change of a non-member changes nothing.
        Body::RoleChanged { user, role } if current.iter().any(|member| &member.user == user) => {
            if *role == Role::Owner {
                // One owner: the previous one becomes an admin.
                for member in current {
                    if &member.user != user && member.role == Role::Owner {
                        changes.push(MemberChange::Put(member.user.to_string(), Role::Admin));
                    }
                }
            }
            changes.push(MemberChange::Put(user.to_string(), *role));
        }
        _ => {}
    }
    changes
}

/// A receipt's new watermarks `(delivered, read, changed)`: never lower, read implies
/// delivered.
fn next_watermarks(delivered: Seq, read: Seq, kind: ReceiptKind, seq: Seq) -> (Seq, Seq, bool) {
    let new_read = match kind {
        ReceiptKind::Read => read.max(seq),
        ReceiptKind::Delivered => read,
    };
    let new_delivered = delivered.max(seq).max(new_read);
    let changed = new_delivered != delivered || new_read != read;
    (new_delivered, new_read, changed)
}

/// What an append does when its key was claimed before, at another attempt's seq, from what
/// that seq holds.
#[derive(Debug, PartialEq, Eq)]
enum ClaimedSeq {
    /// The seq holds this very message (same sender and key): the append is a retry.
    Original(Message),
    /// The seq holds another entry: the claim is stale and moves to the append's seq.
    Stale,
    /// The seq is empty: the claiming attempt is in flight or was cut short; complete it.
    Empty,
}

fn classify_claim(held: Option<Message>, message: &Message) -> ClaimedSeq {
    match held {
        Some(held)
            if held.sender == message.sender && held.client_msg_id == message.client_msg_id =>
        {
            ClaimedSeq::Original(held)
        }
        Some(_) => ClaimedSeq::Stale,
        None => ClaimedSeq::Empty,
    }
}

impl ScyllaStore {
    /// Connects to the cluster described by `config` (contact points, credentials, preferred
    /// datacenter), then sets the store up as [`ScyllaStore::new`] does.
    ///
    /// # Errors
    /// `Unavailable` when the cluster cannot be reached (or is not ready) within
    /// `config.connect_timeout`; `InvalidRequest` for an empty list of nodes or a bad keyspace
    /// name; `Unexpected` when the keyspace's schema is newer than this build, or the cluster
    /// refused the credentials or a schema statement.
    pub async fn connect(config: ScyllaConfig) -> Result<Self, Error> {
        // Refuse a bad configuration before touching the network.
        schema::check_keyspace(&config.keyspace)?;
        let timeout = config.connect_timeout;
        let connected = tokio::time::timeout(timeout, async {
            let mut builder = SessionBuilder::new()
                .known_nodes(&config.known_nodes)
                .connection_timeout(timeout);
            if let Some((user, password)) = &config.credentials {
                builder = builder.user(user, password);
            }
            if let Some(datacenter) = &config.local_datacenter {
                builder = builder.prefer_datacenter(datacenter.clone());
            }
            let session = builder.build().await?;
            Self::set_up(Arc::new(session), config.clone()).await
        })
        .await;
        match connected {
            Ok(store) => Ok(store?),
            Err(_) => Err(ScyllaError::ConnectTimeout(timeout).into()),
        }
    }

    /// Sets the store up on a session built by the caller: switches the session to
    /// `config.keyspace` (creating it and the tables first when `config.migrate`; this
    /// changes the keyspace of every user of the session), checks the schema version and
    /// prepares every statement with the consistency levels of `config`.
    ///
    /// The session's own settings (nodes, credentials, load balancing) are used as they are;
    /// the connection fields of `config` are not.
    ///
    /// # Errors
    /// As [`ScyllaStore::connect`], without its timeout.
    pub async fn new(session: Arc<Session>, config: ScyllaConfig) -> Result<Self, Error> {
        Ok(Self::set_up(session, config).await?)
    }

    async fn set_up(session: Arc<Session>, config: ScyllaConfig) -> Result<Self, ScyllaError> {
        schema::apply(&session, &config).await?;
        let statements = Statements::prepare(&session, &config).await?;
        Ok(Self {
            session,
            statements,
            config,
        })
    }

    /// The configuration the store was set up with.
    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    /// The driver session (shared).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The schema version this build writes (recorded in the keyspace's `schema_version`).
    pub fn schema_version() -> u64 {
        u64::try_from(schema::VERSION).unwrap_or(0)
    }

    /// The CQL schema file shipped with the crate (tables only; the keyspace is created from
    /// [`ScyllaConfig::replication`]), for operators who apply it by hand.
    pub fn schema() -> &'static str {
        schema::SCHEMA
    }

    /// Runs a statement unpaged and decodes every row (for single-row and small results).
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, ScyllaError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await?
            .into_rows_result()?;
        let mut rows = Vec::with_capacity(result.rows_num());
        for row in result.rows::<R>()? {
            rows.push(row?);
        }
        Ok(rows)
    }

    /// Runs a statement with the driver's paging and decodes at most `max` rows.
    async fn paged<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        max: usize,
    ) -> Result<Vec<R>, ScyllaError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + Unpin + 'static,
    {
        let mut stream = self
            .session
            .execute_iter(statement.clone(), values)
            .await?
            .rows_stream::<R>()?;
        let mut rows = Vec::new();
        while rows.len() < max {
            match stream.try_next().await? {
                Some(row) => rows.push(row),
                None => break,
            }
        }
        Ok(rows)
    }

    /// Runs a lightweight transaction and reads its outcome.
    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Lwt, ScyllaError> {
        Lwt::from_result(self.session.execute_unpaged(statement, values).await?)
    }

    /// `INSERT INTO messages ... IF NOT EXISTS`.
    async fn insert_message(&self, message: &Message) -> Result<Lwt, ScyllaError> {
        let seq = to_bigint("seq", message.seq.get())?;
        let bucket = to_bigint("bucket", bucket(message.seq.get()))?;
        let sent_at = to_bigint("sent_at", message.sent_at.as_millis())?;
        let body = serde_json::to_vec(&message.body)?;
        self.lwt(
            &self.statements.insert_message,
            (
                message.conversation.as_str(),
                bucket,
                seq,
                message.sender.as_str(),
                message.sender_device.as_str(),
                message.client_msg_id.as_str(),
                sent_at,
                body,
            ),
        )
        .await
    }

    /// The entry at `seq`, if any.
    async fn message_at(
        &self,
        conversation: &str,
        seq: u64,
    ) -> Result<Option<Message>, ScyllaError> {
        let rows: Vec<MessageRow> = self
            .rows(
                &self.statements.select_message,
                (
                    conversation,
                    to_bigint("bucket", bucket(seq))?,
                    to_bigint("seq", seq)?,
                ),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(codec::decode_message)
            .transpose()
    }

    /// The conversation's head (`0` when it has no entry).
    async fn head_of(&self, conversation: &str) -> Result<Seq, ScyllaError> {
        let rows: Vec<(Option<i64>,)> = self
            .rows(&self.statements.select_head, (conversation,))
            .await?;
        match rows.into_iter().next() {
            Some((Some(head),)) => Ok(Seq(from_bigint("head", head)?)),
            _ => Ok(Seq::ZERO),
        }
    }

    /// Raises the head to `seq` (write timestamp = seq: the highest seq wins).
    async fn raise_head(&self, conversation: &str, seq: Seq) -> Result<(), ScyllaError> {
        let seq = to_bigint("seq", seq.get())?;
        self.session
            .execute_unpaged(&self.statements.raise_head, (seq, seq, conversation))
            .await?;
        Ok(())
    }

    /// What follows a stored entry: its membership change, then the head.
    async fn finish(&self, message: &Message) -> Result<(), ScyllaError> {
        self.project_membership(message).await?;
        self.raise_head(message.conversation.as_str(), message.seq)
            .await
    }

    /// Stores a void at `seq` unless taken; returns what the seq holds. Raises the head
    /// either way (harmless when the entry's own writer already did).
    async fn void_at(
        &self,
        conversation: &messenger_core::ConversationId,
        seq: Seq,
        at: Timestamp,
    ) -> Result<Message, ScyllaError> {
        let void = Message::void(conversation.clone(), seq, at);
        let inserted = self.insert_message(&void).await?;
        let held = if inserted.applied {
            void
        } else {
            inserted.message()?
        };
        self.raise_head(conversation.as_str(), seq).await?;
        Ok(held)
    }

    /// Voids every free seq of the range: the range is read, then each free seq gets its
    /// void through the same lightweight transaction as [`VoidSeq`] (`IF NOT EXISTS`, at most
    /// [`WRITE_CONCURRENCY`] at once), so an entry that landed meanwhile wins and is answered.
    /// Not one atomic write (Cassandra has no multi-partition transaction): a request cut
    /// short leaves some voids written, and running it again completes it. The head does not
    /// move (the range is at or below it).
    async fn void_range(&self, request: &VoidHoles) -> Result<MessagePage, ScyllaError> {
        let conversation = request.conversation.as_str();
        let head = self.head_of(conversation).await?;
        let Some((first, last)) = request.covered(head) else {
            return Ok(MessagePage {
                messages: Vec::new(),
                head,
            });
        };
        let span = last.get() - first.get() + 1;
        let stored = self
            .range(&ReadRange {
                conversation: request.conversation.clone(),
                after: request.after,
                until: Some(last),
                limit: usize::try_from(span).unwrap_or(usize::MAX),
            })
            .await?;
        let mut entries: std::collections::BTreeMap<Seq, Arc<Message>> = stored
            .messages
            .into_iter()
            .map(|message| (message.seq, message))
            .collect();
        let free: Vec<Seq> = (first.get()..=last.get())
            .map(Seq)
            .filter(|seq| !entries.contains_key(seq))
            .collect();
        let now = Timestamp::now();
        let held: Vec<Message> = stream::iter(free)
            .map(|seq| async move {
                let void = Message::void(request.conversation.clone(), seq, now);
                let inserted = self.insert_message(&void).await?;
                if inserted.applied {
                    Ok(void)
                } else {
                    inserted.message()
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect()
            .await?;
        for message in held {
            entries.insert(message.seq, Arc::new(message));
        }
        Ok(MessagePage {
            messages: entries.into_values().collect(),
            head,
        })
    }

    async fn append_message(&self, message: &Arc<Message>) -> Result<Appended, ScyllaError> {
        let seq = to_bigint("seq", message.seq.get())?;
        if seq == 0 {
            return Err(ScyllaError::Rule(Rule::OutOfRange {
                what: "seq",
                value: 0,
            }));
        }
        to_bigint("sent_at", message.sent_at.as_millis())?;
        let conversation = message.conversation.as_str();
        let sender = message.sender.as_str();
        let key = message.client_msg_id.as_str();
        // The seq the key points at, once known.
        let mut claimed: Option<i64> = None;
        for _ in 0..CLAIM_ROUNDS {
            let Some(at) = claimed else {
                let claim = self
                    .lwt(&self.statements.claim_key, (conversation, sender, key, seq))
                    .await?;
                if claim.applied {
                    return self.store_claimed(message).await;
                }
                claimed = Some(claim.bigint("seq")?);
                continue;
            };
            let at_seq = from_bigint("seq", at)?;
            let held = self.message_at(conversation, at_seq).await?;
            match classify_claim(held, message) {
                ClaimedSeq::Original(original) => {
                    return self.duplicate(message, original).await;
                }
                ClaimedSeq::Stale => {
                    // A stale claim: its append was refused or its seq voided. Move it here.
                    let moved = self
                        .lwt(
                            &self.statements.move_key,
                            (seq, conversation, sender, key, at),
                        )
                        .await?;
                    if moved.applied {
                        return self.store_claimed(message).await;
                    }
                    // Moved or released by someone else meanwhile: look again.
                    claimed = moved.bigint("seq").ok();
                }
                ClaimedSeq::Empty => {
                    // The claim's append is in flight or was cut short: complete it there.
                    let original = Message {
                        seq: Seq(at_seq),
                        ..Message::clone(message)
                    };
                    let inserted = self.insert_message(&original).await?;
                    if inserted.applied {
                        self.finish(&original).await?;
                        if at == seq {
                            return Ok(Appended {
                                message: Arc::clone(message),
                                duplicate: false,
                            });
                        }
                        self.void_at(&message.conversation, message.seq, message.sent_at)
                            .await?;
                        return Ok(Appended {
                            message: Arc::new(original),
                            duplicate: true,
                        });
                    }
                    // Filled meanwhile: the next round reads what holds it.
                }
            }
        }
        Err(ScyllaError::Contended("append"))
    }

    /// The key is ours at the message's seq: write the message, or release the key.
    async fn store_claimed(&self, message: &Arc<Message>) -> Result<Appended, ScyllaError> {
        let inserted = self.insert_message(message).await?;
        if inserted.applied {
            self.finish(message).await?;
            return Ok(Appended {
                message: Arc::clone(message),
                duplicate: false,
            });
        }
        let held = inserted.message()?;
        if held.sender == message.sender && held.client_msg_id == message.client_msg_id {
            return self.duplicate(message, held).await;
        }
        let seq = to_bigint("seq", message.seq.get())?;
        self.lwt(
            &self.statements.release_key,
            (
                message.conversation.as_str(),
                message.sender.as_str(),
                message.client_msg_id.as_str(),
                seq,
            ),
        )
        .await?;
        Err(ScyllaError::Rule(Rule::SeqTaken {
            conversation: message.conversation.clone(),
            seq: message.seq,
        }))
    }

    /// A retry of `original`: void the retry's own seq, raise the head again, re-apply the
    /// original's membership change while it is recent (see [`REPROJECT_WINDOW`]), answer
    /// the original.
    async fn duplicate(
        &self,
        retry: &Arc<Message>,
        original: Message,
    ) -> Result<Appended, ScyllaError> {
        if original.seq != retry.seq {
            self.void_at(&retry.conversation, retry.seq, retry.sent_at)
                .await?;
        }
        let age = Timestamp::now()
            .as_millis()
            .saturating_sub(original.sent_at.as_millis());
        if u128::from(age) < REPROJECT_WINDOW.as_millis() {
            self.project_membership(&original).await?;
        }
        self.raise_head(original.conversation.as_str(), original.seq)
            .await?;
        Ok(Appended {
            message: Arc::new(original),
            duplicate: true,
        })
    }

    /// [`SetMediaStatus`]: the media entry moves first (a conditional update of its body:
    /// the single point where concurrent completions are decided), then the status entry is
    /// appended like any message. When the append is refused (`Conflict`), the caller's retry
    /// with a new seq finds the entry moved to the same outcome and appends the status entry
    /// then (the repair case).
    async fn media_status(&self, request: &SetMediaStatus) -> Result<MediaStatusSet, ScyllaError> {
        let update = &request.update;
        let media_seq = crate::media::media_seq_of(update)?;
        let conversation = update.conversation.as_str();
        for _ in 0..CLAIM_ROUNDS {
            let media = self
                .message_at(conversation, media_seq.get())
                .await?
                .ok_or(crate::media::MediaRefusal::NoEntry(media_seq))?;
            match crate::media::decide(&media, update)? {
                crate::media::Decision::Refuse => {
                    return Ok(MediaStatusSet {
                        media: Arc::new(media),
                        applied: false,
                    });
                }
                crate::media::Decision::Repair => {
                    let appended = self.append_message(update).await?;
                    return Ok(MediaStatusSet {
                        media: Arc::new(media),
                        applied: !appended.duplicate,
                    });
                }
                crate::media::Decision::Apply(moved) => {
                    let flipped = self
                        .lwt(
                            &self.statements.set_body_if,
                            (
                                serde_json::to_vec(&moved.body)?,
                                conversation,
                                to_bigint("bucket", bucket(media_seq.get()))?,
                                to_bigint("seq", media_seq.get())?,
                                serde_json::to_vec(&media.body)?,
                            ),
                        )
                        .await?;
                    if !flipped.applied {
                        // Moved by someone else meanwhile: decide again on what it holds.
                        continue;
                    }
                    let appended = self.append_message(update).await?;
                    return Ok(MediaStatusSet {
                        media: Arc::new(moved),
                        applied: !appended.duplicate,
                    });
                }
            }
        }
        Err(ScyllaError::Contended("media status"))
    }

    /// [`AmendMessage`]: a retried key answers its original (the append voids the new seq);
    /// then the target moves first (a conditional update of its body: the single point where
    /// concurrent amendments are decided), then the update is appended like any message. When
    /// that append is refused (`Conflict`), the caller's retry with a new seq finds the target
    /// amended already and appends the update then (the repair case).
    async fn amend_message(&self, request: &AmendMessage) -> Result<Amended, ScyllaError> {
        let update = &request.update;
        let conversation = update.conversation.as_str();
        let key = FindMessage {
            conversation: update.conversation.clone(),
            sender: update.sender.clone(),
            client_msg_id: update.client_msg_id.clone(),
        };
        if self.find(&key).await?.is_some() {
            return self.append_update(update, &request.amended).await;
        }
        let target = request.expected.seq.get();
        for _ in 0..CLAIM_ROUNDS {
            let current = self.message_at(conversation, target).await?;
            match crate::amend::decide(current.as_ref(), request) {
                crate::amend::Decision::Changed => {
                    return Ok(Amended::Changed {
                        current: current.map(Arc::new),
                    });
                }
                crate::amend::Decision::Repair => {
                    return self.append_update(update, &request.amended).await;
                }
                crate::amend::Decision::Apply => {
                    let moved = self
                        .lwt(
                            &self.statements.set_body_if,
                            (
                                serde_json::to_vec(&request.amended.body)?,
                                conversation,
                                to_bigint("bucket", bucket(target))?,
                                to_bigint("seq", target)?,
                                serde_json::to_vec(&request.expected.body)?,
                            ),
                        )
                        .await?;
                    if moved.applied {
                        return self.append_update(update, &request.amended).await;
                    }
                    // Amended by someone else meanwhile: decide again on what it holds.
                }
            }
        }
        Err(ScyllaError::Contended("amend"))
    }

    /// Appends an amendment's update entry once its target holds `amended`.
    async fn append_update(
        &self,
        update: &Arc<Message>,
        amended: &Arc<Message>,
    ) -> Result<Amended, ScyllaError> {
        let appended = self.append_message(update).await?;
        Ok(if appended.duplicate {
            Amended::Duplicate {
                original: appended.message,
            }
        } else {
            Amended::Applied {
                update: appended.message,
                target: Arc::clone(amended),
            }
        })
    }

    /// A conversation's members, ordered by user id.
    async fn members_of(&self, conversation: &str) -> Result<Vec<Member>, ScyllaError> {
        let rows: Vec<(String, Option<String>)> = self
            .paged(&self.statements.select_members, (conversation,), usize::MAX)
            .await?;
        let mut members = Vec::with_capacity(rows.len());
        for (user, role) in rows {
            let Some(role) = role else { continue };
            members.push(Member {
                user: codec::parse_id(&user)?,
                role: codec::parse_role(&role)?,
            });
        }
        Ok(members)
    }

    /// Keeps `members` and `members_by_user` in step with a membership change of the log,
    /// written at the change's seq.
    async fn project_membership(&self, message: &Message) -> Result<(), ScyllaError> {
        if !message.body.is_membership_change() {
            return Ok(());
        }
        let conversation = message.conversation.as_str();
        let needs_members = matches!(
            message.body,
            Body::MembersAdded { .. } | Body::RoleChanged { .. }
        );
        let current = if needs_members {
            self.members_of(conversation).await?
        } else {
            Vec::new()
        };
        let changes = membership_changes(message, &current);
        let timestamp = to_bigint("seq", message.seq.get())?;
        self.write_members(conversation, timestamp, &changes).await
    }

    /// Writes membership changes in logged batches, at `timestamp`.
    async fn write_members(
        &self,
        conversation: &str,
        timestamp: i64,
        changes: &[MemberChange],
    ) -> Result<(), ScyllaError> {
        for chunk in changes.chunks(MEMBERS_PER_BATCH) {
            let mut batch = Batch::new(BatchType::Logged);
            batch.set_consistency(self.config.consistency);
            batch.set_is_idempotent(true);
            let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(chunk.len() * 2);
            let text = |value: &str| CqlValue::Text(value.to_owned());
            let at = CqlValue::BigInt(timestamp);
            for change in chunk {
                match change {
                    MemberChange::Put(user, role) => {
                        batch.append_statement(self.statements.insert_member.clone());
                        values.push(vec![
                            text(conversation),
                            text(user),
                            text(role.as_str()),
                            at.clone(),
                        ]);
                        batch.append_statement(self.statements.insert_member_by_user.clone());
                        values.push(vec![
                            text(user),
                            text(conversation),
                            text(role.as_str()),
                            at.clone(),
                        ]);
                    }
                    MemberChange::Remove(user) => {
                        batch.append_statement(self.statements.delete_member.clone());
                        values.push(vec![at.clone(), text(conversation), text(user)]);
                        batch.append_statement(self.statements.delete_member_by_user.clone());
                        values.push(vec![at.clone(), text(user), text(conversation)]);
                    }
                }
            }
            self.session.batch(&batch, values).await?;
        }
        Ok(())
    }

    async fn create(&self, request: &CreateConversation) -> Result<Created, ScyllaError> {
        let facts = &request.conversation;
        let id = facts.id.as_str();
        let inserted = self
            .lwt(
                &self.statements.insert_conversation,
                (
                    id,
                    facts.kind.as_str(),
                    facts.title.as_deref(),
                    facts.created_by.as_str(),
                    to_bigint("created_at", facts.created_at.as_millis())?,
                ),
            )
            .await?;
        let members: Vec<MemberChange> = request
            .members
            .iter()
            .map(|member| MemberChange::Put(member.user.to_string(), member.role))
            .collect();
        if inserted.applied {
            // Timestamp 0: every membership change of the log (seq >= 1) wins over these.
            self.write_members(id, 0, &members).await?;
            return Ok(Created {
                conversation: facts.clone(),
                created: true,
            });
        }
        let existing = inserted.conversation()?;
        if existing == *facts && self.members_of(id).await?.is_empty() {
            // The same creation, cut short before its members were written: finish it.
            self.write_members(id, 0, &members).await?;
        }
        Ok(Created {
            conversation: existing,
            created: false,
        })
    }

    /// One user's watermarks in a conversation (zeros when none).
    async fn receipt_of(&self, conversation: &str, user: &str) -> Result<(Seq, Seq), ScyllaError> {
        let rows: Vec<(Option<i64>, Option<i64>)> = self
            .rows(&self.statements.select_receipt, (conversation, user))
            .await?;
        match rows.into_iter().next() {
            Some((delivered, read)) => Ok((
                Seq(from_bigint("delivered_seq", delivered.unwrap_or(0))?),
                Seq(from_bigint("read_seq", read.unwrap_or(0))?),
            )),
            None => Ok((Seq::ZERO, Seq::ZERO)),
        }
    }

    async fn receipt(&self, request: &UpdateReceipt) -> Result<ReceiptUpdated, ScyllaError> {
        let conversation = request.conversation.as_str();
        let user = request.user.as_str();
        let (head, (delivered, read)) = futures_util::try_join!(
            self.head_of(conversation),
            self.receipt_of(conversation, user)
        )?;
        if request.seq > head {
            return Err(ScyllaError::Rule(Rule::PastHead {
                conversation: request.conversation.clone(),
                seq: request.seq,
                head,
            }));
        }
        let (new_delivered, new_read, changed) =
            next_watermarks(delivered, read, request.kind, request.seq);
        if changed {
            let seq = to_bigint("seq", request.seq.get())?;
            match request.kind {
                ReceiptKind::Delivered => {
                    self.session
                        .execute_unpaged(
                            &self.statements.raise_delivered,
                            (seq, seq, conversation, user),
                        )
                        .await?;
                }
                ReceiptKind::Read => {
                    self.session
                        .execute_unpaged(
                            &self.statements.raise_read,
                            (seq, seq, seq, conversation, user),
                        )
                        .await?;
                }
            }
        }
        Ok(ReceiptUpdated {
            receipts: Receipts {
                user: request.user.clone(),
                delivered: new_delivered,
                read: new_read,
            },
            changed,
        })
    }

    async fn last_seen_of(&self, user: &str) -> Result<Option<Timestamp>, ScyllaError> {
        let rows: Vec<(Option<i64>,)> = self
            .rows(&self.statements.select_last_seen, (user,))
            .await?;
        match rows.into_iter().next() {
            Some((Some(at),)) => Ok(Some(Timestamp(from_bigint("seen_at", at)?))),
            _ => Ok(None),
        }
    }

    async fn set_seen(&self, request: &SetLastSeen) -> Result<Timestamp, ScyllaError> {
        let user = request.user.as_str();
        let at = to_bigint("at", request.at.as_millis())?;
        self.session
            .execute_unpaged(&self.statements.raise_last_seen, (at, at, user))
            .await?;
        // Read back at the same consistency: the highest time written so far.
        Ok(self.last_seen_of(user).await?.unwrap_or(request.at))
    }

    async fn range(&self, request: &ReadRange) -> Result<MessagePage, ScyllaError> {
        let conversation = request.conversation.as_str();
        let head = self.head_of(conversation).await?;
        let upper = request.until.map_or(u64::MAX, Seq::get).min(head.get());
        let after = request.after.get();
        let mut messages = Vec::new();
        if request.limit == 0 || upper <= after {
            return Ok(MessagePage { messages, head });
        }
        let (after_value, upper_value) = (to_bigint("after", after)?, to_bigint("until", upper)?);
        let mut current = bucket(after + 1);
        while current <= bucket(upper) && messages.len() < request.limit {
            let remaining = request.limit - messages.len();
            let rows: Vec<MessageRow> = self
                .paged(
                    &self.statements.select_range,
                    (
                        conversation,
                        to_bigint("bucket", current)?,
                        after_value,
                        upper_value,
                        i32::try_from(remaining).unwrap_or(i32::MAX),
                    ),
                    remaining,
                )
                .await?;
            for row in rows {
                messages.push(Arc::new(codec::decode_message(row)?));
            }
            current += 1;
        }
        Ok(MessagePage { messages, head })
    }

    async fn before(&self, request: &ReadBefore) -> Result<MessagePage, ScyllaError> {
        let conversation = request.conversation.as_str();
        let head = self.head_of(conversation).await?;
        let upper = match request.before {
            Some(before) => before.get().saturating_sub(1).min(head.get()),
            None => head.get(),
        };
        let mut messages = Vec::new();
        if request.limit == 0 || upper == 0 {
            return Ok(MessagePage { messages, head });
        }
        let upper_value = to_bigint("before", upper)?;
        let mut current = bucket(upper);
        loop {
            let remaining = request.limit - messages.len();
            let rows: Vec<MessageRow> = self
                .paged(
                    &self.statements.select_before,
                    (
                        conversation,
                        to_bigint("bucket", current)?,
                        upper_value,
                        i32::try_from(remaining).unwrap_or(i32::MAX),
                    ),
                    remaining,
                )
                .await?;
            for row in rows {
                messages.push(Arc::new(codec::decode_message(row)?));
            }
            if current == 0 || messages.len() >= request.limit {
                break;
            }
            current -= 1;
        }
        messages.reverse();
        Ok(MessagePage { messages, head })
    }

    async fn info(
        &self,
        request: &GetConversation,
    ) -> Result<Option<ConversationInfo>, ScyllaError> {
        let id = request.conversation.as_str();
        let rows: Vec<ConversationRow> = self
            .rows(&self.statements.select_conversation, (id,))
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let conversation = codec::decode_conversation(row)?;
        let (members, head) = futures_util::try_join!(self.members_of(id), self.head_of(id))?;
        Ok(Some(ConversationInfo {
            conversation,
            members,
            head,
        }))
    }

    async fn summary(
        &self,
        user: &str,
        conversation: &str,
        role: Role,
    ) -> Result<Option<ConversationSummary>, ScyllaError> {
        let (facts, head, (delivered, read)) = futures_util::try_join!(
            self.rows::<ConversationRow>(&self.statements.select_conversation, (conversation,)),
            self.head_of(conversation),
            self.receipt_of(conversation, user)
        )?;
        let Some(facts) = facts.into_iter().next() else {
            return Ok(None);
        };
        let (unread, mentions) = self.unread(conversation, user, read, head).await?;
        Ok(Some(ConversationSummary {
            conversation: codec::decode_conversation(facts)?,
            role,
            head,
            delivered,
            read,
            unread,
            mentions,
        }))
    }

    /// The displayed messages of others among the entries after `read` (at most the latest
    /// [`MAX_UNREAD_SPAN`]), and those that mention `user`: read and counted here, as CQL
    /// cannot filter on the body.
    async fn unread(
        &self,
        conversation: &str,
        user: &str,
        read: Seq,
        head: Seq,
    ) -> Result<(u64, u64), ScyllaError> {
        let after = read.get().max(head.get().saturating_sub(MAX_UNREAD_SPAN));
        if after >= head.get() {
            return Ok((0, 0));
        }
        let page = self
            .range(&ReadRange {
                conversation: codec::parse_id(conversation)?,
                after: Seq(after),
                until: Some(head),
                limit: usize::try_from(MAX_UNREAD_SPAN).unwrap_or(usize::MAX),
            })
            .await?;
        let user: UserId = codec::parse_id(user)?;
        let count = |rule: &dyn Fn(&Message) -> bool| {
            page.messages.iter().filter(|message| rule(message)).count() as u64
        };
        Ok((
            count(&|message| message.counts_as_unread_for(&user)),
            count(&|message| message.mentions(&user)),
        ))
    }

    async fn summaries(
        &self,
        request: &UserConversations,
    ) -> Result<Vec<ConversationSummary>, ScyllaError> {
        let user = request.user.as_str();
        let rows: Vec<(String, Option<String>)> = self
            .paged(
                &self.statements.select_user_conversations,
                (user,),
                usize::MAX,
            )
            .await?;
        let mut memberships = Vec::with_capacity(rows.len());
        for (conversation, role) in rows {
            let Some(role) = role else { continue };
            memberships.push((conversation, codec::parse_role(&role)?));
        }
        let summaries: Vec<Option<ConversationSummary>> = stream::iter(memberships)
            .map(
                |(conversation, role)| async move { self.summary(user, &conversation, role).await },
            )
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(summaries.into_iter().flatten().collect())
    }

    async fn all_receipts(&self, request: &GetReceipts) -> Result<Vec<Receipts>, ScyllaError> {
        let conversation = request.conversation.as_str();
        let (members, rows) = futures_util::try_join!(
            self.members_of(conversation),
            self.paged::<(String, Option<i64>, Option<i64>)>(
                &self.statements.select_receipts,
                (conversation,),
                usize::MAX,
            )
        )?;
        let mut stored = HashMap::with_capacity(rows.len());
        for (user, delivered, read) in rows {
            stored.insert(user, (delivered.unwrap_or(0), read.unwrap_or(0)));
        }
        let mut receipts = Vec::with_capacity(members.len());
        for member in members {
            let (delivered, read) = stored.get(member.user.as_str()).copied().unwrap_or((0, 0));
            receipts.push(Receipts {
                user: member.user,
                delivered: Seq(from_bigint("delivered_seq", delivered)?),
                read: Seq(from_bigint("read_seq", read)?),
            });
        }
        Ok(receipts)
    }

    async fn find(&self, request: &FindMessage) -> Result<Option<Arc<Message>>, ScyllaError> {
        let conversation = request.conversation.as_str();
        let rows: Vec<(Option<i64>,)> = self
            .rows(
                &self.statements.select_key,
                (
                    conversation,
                    request.sender.as_str(),
                    request.client_msg_id.as_str(),
                ),
            )
            .await?;
        let Some((Some(seq),)) = rows.into_iter().next() else {
            return Ok(None);
        };
        // A claim whose seq holds another entry (or nothing yet) finds nothing.
        let held = self
            .message_at(conversation, from_bigint("seq", seq)?)
            .await?;
        Ok(held
            .filter(|held| {
                held.sender == request.sender && held.client_msg_id == request.client_msg_id
            })
            .map(Arc::new))
    }
}

impl StoreBackend for ScyllaStore {
    async fn append(&self, request: AppendMessage) -> Result<Appended, Error> {
        let mut attempts = 1;
        loop {
            match self.append_message(&request.message).await {
                // Paxos contention: the append is idempotent, run it again (a first attempt
                // that did land is then found through its key and answered as the original).
                Err(err) if err.is_cas_timeout() && attempts < CAS_ATTEMPTS => {
                    attempts += 1;
                    tracing::debug!(error = %err, attempts, "retrying a contended append");
                }
                Ok(mut appended) => {
                    // Our own earlier attempt, found again: not a retry of the caller's.
                    if attempts > 1 && appended.duplicate && appended.message == request.message {
                        appended.duplicate = false;
                    }
                    return Ok(appended);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn void_seq(&self, request: VoidSeq) -> Result<Arc<Message>, Error> {
        if request.seq == Seq::ZERO {
            return Err(ScyllaError::Rule(Rule::OutOfRange {
                what: "seq",
                value: 0,
            })
            .into());
        }
        let held = self
            .void_at(&request.conversation, request.seq, Timestamp::now())
            .await?;
        Ok(Arc::new(held))
    }

    async fn void_holes(&self, request: VoidHoles) -> Result<MessagePage, Error> {
        request
            .check_span()
            .map_err(|err| err.with_backend(error::BACKEND))?;
        Ok(self.void_range(&request).await?)
    }

    async fn find_message(&self, request: FindMessage) -> Result<Option<Arc<Message>>, Error> {
        Ok(self.find(&request).await?)
    }

    async fn read_range(&self, request: ReadRange) -> Result<MessagePage, Error> {
        Ok(self.range(&request).await?)
    }

    async fn read_before(&self, request: ReadBefore) -> Result<MessagePage, Error> {
        Ok(self.before(&request).await?)
    }

    async fn head(&self, request: GetHead) -> Result<Seq, Error> {
        Ok(self.head_of(request.conversation.as_str()).await?)
    }

    async fn create_conversation(&self, request: CreateConversation) -> Result<Created, Error> {
        Ok(self.create(&request).await?)
    }

    async fn conversation(
        &self,
        request: GetConversation,
    ) -> Result<Option<ConversationInfo>, Error> {
        Ok(self.info(&request).await?)
    }

    async fn user_conversations(
        &self,
        request: UserConversations,
    ) -> Result<Vec<ConversationSummary>, Error> {
        Ok(self.summaries(&request).await?)
    }

    async fn update_receipt(&self, request: UpdateReceipt) -> Result<ReceiptUpdated, Error> {
        Ok(self.receipt(&request).await?)
    }

    async fn receipts(&self, request: GetReceipts) -> Result<Vec<Receipts>, Error> {
        Ok(self.all_receipts(&request).await?)
    }

    async fn set_last_seen(&self, request: SetLastSeen) -> Result<Timestamp, Error> {
        Ok(self.set_seen(&request).await?)
    }

    async fn set_media_status(&self, request: SetMediaStatus) -> Result<MediaStatusSet, Error> {
        Ok(self.media_status(&request).await?)
    }

    async fn amend(&self, request: AmendMessage) -> Result<Amended, Error> {
        request
            .check()
            .map_err(|err| err.with_backend(error::BACKEND))?;
        Ok(self.amend_message(&request).await?)
    }

    async fn last_seen(
        &self,
        request: GetLastSeen,
    ) -> Result<Vec<(UserId, Option<Timestamp>)>, Error> {
        let seen: Vec<Option<Timestamp>> = stream::iter(request.users.clone())
            .map(|user| async move { self.last_seen_of(user.as_str()).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(request.users.into_iter().zip(seen).collect())
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{ClientMsgId, ConversationId, DeviceId};

    use super::*;

    fn id<T: std::str::FromStr>(value: &str) -> T {
        match value.parse() {
            Ok(id) => id,
            Err(_) => unreachable!("a valid literal id: {value}"),
        }
    }

    fn entry(seq: u64, sender: &str, key: &str, body: Body) -> Message {
        Message {
            conversation: id::<ConversationId>("g:unit"),
            seq: Seq(seq),
            sender: id::<UserId>(sender),
            sender_device: id::<DeviceId>("phone"),
            client_msg_id: id::<ClientMsgId>(key),
            sent_at: Timestamp(1),
            body,
        }
    }

    fn member(user: &str, role: Role) -> Member {
        Member {
            user: id(user),
            role,
        }
    }

    fn shown(changes: &[MemberChange]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                MemberChange::Put(user, role) => format!("put {user} {}", role.as_str()),
                MemberChange::Remove(user) => format!("remove {user}"),
            })
            .collect()
    }

    #[test]
    fn added_members_get_the_role_and_existing_ones_keep_theirs() {
        let added = entry(
            2,
            "owner",
            "add",
            Body::MembersAdded {
                users: vec![id("ann"), id("ben")],
                role: Role::Admin,
            },
        );
        let current = [member("owner", Role::Owner), member("ann", Role::Member)];
        assert_eq!(
            shown(&membership_changes(&added, &current)),
            ["put ben admin"]
        );
    }

    #[test]
    fn removals_and_leaves_delete_the_membership() {
        let removed = entry(3, "owner", "rm", Body::MemberRemoved { user: id("cid") });
        assert_eq!(shown(&membership_changes(&removed, &[])), ["remove cid"]);
        let left = entry(4, "ben", "leave", Body::MemberLeft);
        assert_eq!(shown(&membership_changes(&left, &[])), ["remove ben"]);
        let text = entry(5, "ben", "hi", Body::text("hi"));
        assert!(membership_changes(&text, &[]).is_empty());
    }

    #[test]
    fn a_new_owner_demotes_the_previous_one_and_non_members_change_nothing() {
        let current = [
            member("heir", Role::Member),
            member("old", Role::Owner),
            member("other", Role::Member),
        ];
        let transfer = entry(
            6,
            "old",
            "transfer",
            Body::RoleChanged {
                user: id("heir"),
                role: Role::Owner,
            },
        );
        assert_eq!(
            shown(&membership_changes(&transfer, &current)),
            ["put old admin", "put heir owner"]
        );
        let stranger = entry(
            7,
            "old",
            "promote",
            Body::RoleChanged {
                user: id("stranger"),
                role: Role::Admin,
            },
        );
        assert!(membership_changes(&stranger, &current).is_empty());
    }

    #[test]
    fn watermarks_only_grow_and_read_implies_delivered() {
        use ReceiptKind::{Delivered, Read};
        assert_eq!(
            next_watermarks(Seq(0), Seq(0), Delivered, Seq(3)),
            (Seq(3), Seq(0), true)
        );
        assert_eq!(
            next_watermarks(Seq(3), Seq(0), Delivered, Seq(2)),
            (Seq(3), Seq(0), false)
        );
        assert_eq!(
            next_watermarks(Seq(3), Seq(0), Read, Seq(2)),
            (Seq(3), Seq(2), true)
        );
        assert_eq!(
            next_watermarks(Seq(3), Seq(2), Read, Seq(4)),
            (Seq(4), Seq(4), true)
        );
        assert_eq!(
            next_watermarks(Seq(4), Seq(4), Read, Seq(1)),
            (Seq(4), Seq(4), false)
        );
    }

    #[test]
    fn a_claimed_seq_is_the_original_stale_or_empty() {
        let retry = entry(9, "alice", "m-1", Body::text("hi"));
        let original = Message {
            seq: Seq(4),
            ..retry.clone()
        };
        assert_eq!(
            classify_claim(Some(original.clone()), &retry),
            ClaimedSeq::Original(original)
        );
        let other_key = entry(4, "alice", "m-2", Body::text("x"));
        assert_eq!(classify_claim(Some(other_key), &retry), ClaimedSeq::Stale);
        let void = Message::void(id("g:unit"), Seq(4), Timestamp(1));
        assert_eq!(classify_claim(Some(void), &retry), ClaimedSeq::Stale);
        assert_eq!(classify_claim(None, &retry), ClaimedSeq::Empty);
    }
}
