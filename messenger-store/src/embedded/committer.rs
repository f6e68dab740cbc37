//! The committer thread: the only writer, committing concurrent writes together.
//!
//! Writes arrive on a channel, each with a reply channel. The committer opens a transaction
//! with the first write, applies it and everything else queued, and keeps taking writes that
//! arrive while it applies (up to `max_batch`): only when the queue is empty does it COMMIT —
//! one fsync for the whole batch — and only then does it reply. A caller therefore never hears
//! "ok" for a write that is not durable.
//!
//! Writes are applied optimistically, without a SAVEPOINT each. If one fails, the whole
//! transaction is rolled back and the batch is applied again with a SAVEPOINT per write, so the
//! failing write is rolled back alone and the others commit, exactly as if each had its own
//! savepoint from the start. Failures (a seq taken, a receipt past the head) are rare, so the
//! common batch pays no savepoints.

use crate::rule::Rule;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use messenger_core::store::{
    AmendMessage, Amended, Appended, CreateConversation, Created, MediaStatusSet, MessagePage,
    ReceiptUpdated, SetLastSeen, SetMediaStatus, UpdateReceipt, VoidHoles, VoidSeq,
};
use messenger_core::{Body, Message, ReceiptKind, Receipts, Role, Seq, Timestamp};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, MESSAGE_COLUMNS, RawMessage, to_sql};
use super::error::EmbeddedError;

/// One write for the committer.
#[derive(Debug)]
pub(crate) enum WriteOp {
    Append(Arc<Message>),
    Void(VoidSeq),
    VoidHoles(VoidHoles),
    CreateConversation(CreateConversation),
    UpdateReceipt(UpdateReceipt),
    SetLastSeen(SetLastSeen),
    SetMediaStatus(SetMediaStatus),
    Amend(AmendMessage),
}

/// The outcome of one write, sent once its transaction committed.
#[derive(Debug)]
pub(crate) enum Written {
    Appended(Appended),
    Voided(Arc<Message>),
    VoidedHoles(MessagePage),
    Created(Created),
    ReceiptUpdated(ReceiptUpdated),
    LastSeen(Timestamp),
    MediaStatusSet(MediaStatusSet),
    Amended(Amended),
}

/// A write with the channel its outcome goes back on.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    pub(crate) op: WriteOp,
    pub(crate) reply: oneshot::Sender<Result<Written, EmbeddedError>>,
}

/// How the committer commits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitPolicy {
    pub(crate) max_batch: usize,
    pub(crate) group_commit: bool,
}

/// Counters of the committer, read by [`EmbeddedStore::commit_stats`](super::EmbeddedStore).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Transactions committed (or attempted).
    pub(crate) transactions: AtomicU64,
    /// Writes those transactions carried.
    pub(crate) writes: AtomicU64,
    /// Batches applied again with a savepoint per write because one write failed.
    pub(crate) retried_with_savepoints: AtomicU64,
}

/// The committer's loop; returns when every sender is gone.
pub(crate) fn run(
    mut conn: Connection,
    mut requests: mpsc::Receiver<WriteRequest>,
    policy: CommitPolicy,
    counters: Arc<Counters>,
) {
    let max_batch = policy.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    let mut last_batch = 0;
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        // A panic here would be a bug; it must not take the store down with it. The batch's
        // reply senders are dropped by the unwinding, so its callers get `Unavailable`, and
        // the transaction rolls back when it is dropped.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if policy.group_commit {
                last_batch = group_commit(
                    &mut conn,
                    &mut requests,
                    &mut batch,
                    max_batch,
                    last_batch,
                    &counters,
                );
            } else {
                for request in batch.drain(..) {
                    counters.transactions.fetch_add(1, Ordering::Relaxed);
                    counters.writes.fetch_add(1, Ordering::Relaxed);
                    commit_batch(&mut conn, std::iter::once(request));
                }
            }
        }));
        if outcome.is_err() {
            tracing::error!("the store's committer recovered from a panic; its batch failed");
            batch.clear();
        }
    }
    tracing::debug!("the store's committer stops: every handle is gone");
}

/// Commits `batch` (one write, to begin with) and every write that arrives while it is being
/// applied, up to `max_batch`, in one transaction without savepoints; replies once committed.
/// When a write fails, rolls everything back and commits the same writes with
/// [`commit_batch`] (a savepoint each). Leaves `batch` empty.
fn group_commit(
    conn: &mut Connection,
    requests: &mut mpsc::Receiver<WriteRequest>,
    batch: &mut Vec<WriteRequest>,
    max_batch: usize,
    expected: usize,
    counters: &Counters,
) -> usize {
    /// How often the committer yields its thread waiting for `expected` writes.
    const MAX_YIELDS: u32 = 4;
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    let now = Timestamp::now();
    let mut written = Vec::with_capacity(max_batch);
    let mut yields = 0;
    let mut size = 0;
    let failed = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Err(_) => true,
        Ok(tx) => {
            let mut failed = false;
            'apply: loop {
                while let Some(request) = batch.get(written.len()) {
                    match apply(&tx, &request.op, now) {
                        Ok(outcome) => written.push(outcome),
                        Err(_) => {
                            failed = true;
                            break 'apply;
                        }
                    }
                }
                // Writes that arrived while these were applied join the same commit: a
                // writer acknowledged by the previous commit has usually queued its next
                // write by now.
                while batch.len() < max_batch {
                    match requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                if written.len() == batch.len() {
                    // Fewer writes than the previous batch carried: its writers are probably
                    // about to send their next ones. Let their threads run briefly rather
                    // than pay a commit for a part of them.
                    if batch.len() < expected && yields < MAX_YIELDS {
                        yields += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    break;
                }
            }
            if failed {
                // Dropping the transaction rolls it back.
                drop(tx);
                true
            } else {
                size = batch.len();
                counters
                    .writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                match tx.commit() {
                    Ok(()) => {
                        for (request, outcome) in batch.drain(..).zip(written) {
                            let _ = request.reply.send(Ok(outcome));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "the store could not commit a batch of writes");
                        let err = Arc::new(err);
                        for request in batch.drain(..) {
                            let _ = request
                                .reply
                                .send(Err(EmbeddedError::BatchFailed(Arc::clone(&err))));
                        }
                    }
                }
                false
            }
        }
    };
    if failed {
        // Applied again, each write under its own savepoint; the failing one fails alone.
        counters
            .retried_with_savepoints
            .fetch_add(1, Ordering::Relaxed);
        counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let size = batch.len();
        commit_batch(conn, batch.drain(..));
        return size;
    }
    size
}

/// Applies `requests` in one transaction, one savepoint each, commits, then replies.
fn commit_batch(conn: &mut Connection, requests: impl Iterator<Item = WriteRequest>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => {
            let err = Arc::new(err);
            for request in requests {
                let _ = request
                    .reply
                    .send(Err(EmbeddedError::BatchFailed(Arc::clone(&err))));
            }
            return;
        }
    };
    let now = Timestamp::now();
    let mut outcomes = Vec::new();
    for request in requests {
        let outcome = match tx.savepoint() {
            Ok(savepoint) => match apply(&savepoint, &request.op, now) {
                Ok(written) => savepoint
                    .commit()
                    .map(|()| written)
                    .map_err(EmbeddedError::from),
                // Dropping the savepoint rolls back whatever the failed write did.
                Err(err) => Err(err),
            },
            Err(err) => Err(err.into()),
        };
        outcomes.push((request.reply, outcome));
    }
    match tx.commit() {
        Ok(()) => {
            for (reply, outcome) in outcomes {
                let _ = reply.send(outcome);
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "the store could not commit a batch of writes");
            let err = Arc::new(err);
            for (reply, outcome) in outcomes {
                let outcome = outcome.and(Err(EmbeddedError::BatchFailed(Arc::clone(&err))));
                let _ = reply.send(outcome);
            }
        }
    }
}

fn apply(conn: &Connection, op: &WriteOp, now: Timestamp) -> Result<Written, EmbeddedError> {
    match op {
        WriteOp::Append(message) => append(conn, message).map(Written::Appended),
        WriteOp::Void(request) => void_seq(conn, request, now).map(Written::Voided),
        WriteOp::VoidHoles(request) => void_holes(conn, request, now).map(Written::VoidedHoles),
        WriteOp::CreateConversation(request) => {
            create_conversation(conn, request).map(Written::Created)
        }
        WriteOp::UpdateReceipt(request) => {
            update_receipt(conn, request).map(Written::ReceiptUpdated)
        }
        WriteOp::SetLastSeen(request) => set_last_seen(conn, request).map(Written::LastSeen),
        WriteOp::SetMediaStatus(request) => {
            set_media_status(conn, request).map(Written::MediaStatusSet)
        }
        WriteOp::Amend(request) => amend(conn, request).map(Written::Amended),
    }
}

/// Inserts `message` unless its seq is taken; true when inserted.
fn insert_message(conn: &Connection, message: &Message) -> Result<bool, EmbeddedError> {
    let body = serde_json::to_string(&message.body)?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO messages \
             (conversation, seq, sender, sender_device, client_msg_id, sent_at, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (conversation, seq) DO NOTHING",
        )?
        .execute(params![
            message.conversation.as_str(),
            to_sql("seq", message.seq.get())?,
            message.sender.as_str(),
            message.sender_device.as_str(),
            message.client_msg_id.as_str(),
            to_sql("sent_at", message.sent_at.as_millis())?,
            body,
        ])?;
    if inserted == 1 {
        raise_head(conn, message.conversation.as_str(), message.seq)?;
    }
    Ok(inserted == 1)
}

fn raise_head(conn: &Connection, conversation: &str, seq: Seq) -> Result<(), EmbeddedError> {
    conn.prepare_cached(
        "INSERT INTO heads (conversation, head) VALUES (?1, ?2) \
         ON CONFLICT (conversation) DO UPDATE SET head = max(head, excluded.head)",
    )?
    .execute(params![conversation, to_sql("seq", seq.get())?])?;
    Ok(())
}

fn append(conn: &Connection, message: &Arc<Message>) -> Result<Appended, EmbeddedError> {
    if message.seq == Seq::ZERO {
        return Err(EmbeddedError::Rule(Rule::OutOfRange {
            what: "seq",
            value: 0,
        }));
    }
    let conversation = message.conversation.as_str();
    if let Some(original) = codec::message_by_key(
        conn,
        conversation,
        message.sender.as_str(),
        message.client_msg_id.as_str(),
    )? {
        if original.seq != message.seq {
            // The retry was given a new seq: fill it with a void so no hole is left.
            let void = Message::void(message.conversation.clone(), message.seq, message.sent_at);
            insert_message(conn, &void)?;
        }
        return Ok(Appended {
            message: Arc::new(original),
            duplicate: true,
        });
    }
    if !insert_message(conn, message)? {
        return Err(EmbeddedError::Rule(Rule::SeqTaken {
            conversation: message.conversation.clone(),
            seq: message.seq,
        }));
    }
    project_membership(conn, message)?;
    Ok(Appended {
        message: Arc::clone(message),
        duplicate: false,
    })
}

/// Keeps `members` in step with the membership changes of the log.
fn project_membership(conn: &Connection, message: &Message) -> Result<(), EmbeddedError> {
    let conversation = message.conversation.as_str();
    match &message.body {
        Body::GroupCreated { members, .. } => {
            let mut upsert = conn.prepare_cached(
                "INSERT INTO members (conversation, user, role) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (conversation, user) DO UPDATE SET role = excluded.role",
            )?;
            for member in members {
                upsert.execute(params![
                    conversation,
                    member.user.as_str(),
                    member.role.as_str()
                ])?;
            }
        }
        Body::MembersAdded { users, role } => {
            let mut insert = conn.prepare_cached(
                "INSERT INTO members (conversation, user, role) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (conversation, user) DO NOTHING",
            )?;
            for user in users {
                insert.execute(params![conversation, user.as_str(), role.as_str()])?;
            }
        }
        Body::MemberRemoved { user } => remove_member(conn, conversation, user.as_str())?,
        Body::MemberLeft => remove_member(conn, conversation, message.sender.as_str())?,
        Body::RoleChanged { user, role } => {
            if *role == Role::Owner {
                conn.prepare_cached(
                    "UPDATE members SET role = ?3 \
                     WHERE conversation = ?1 AND user <> ?2 AND role = ?4",
                )?
                .execute(params![
                    conversation,
                    user.as_str(),
                    Role::Admin.as_str(),
                    Role::Owner.as_str()
                ])?;
            }
            conn.prepare_cached(
                "UPDATE members SET role = ?3 WHERE conversation = ?1 AND user = ?2",
            )?
            .execute(params![conversation, user.as_str(), role.as_str()])?;
        }
        _ => {}
    }
    Ok(())
}

fn remove_member(conn: &Connection, conversation: &str, user: &str) -> Result<(), EmbeddedError> {
    conn.prepare_cached("DELETE FROM members WHERE conversation = ?1 AND user = ?2")?
        .execute(params![conversation, user])?;
    Ok(())
}

fn void_seq(
    conn: &Connection,
    request: &VoidSeq,
    now: Timestamp,
) -> Result<Arc<Message>, EmbeddedError> {
    let seq = to_sql("seq", request.seq.get())?;
    if seq == 0 {
        return Err(EmbeddedError::Rule(Rule::OutOfRange {
            what: "seq",
            value: 0,
        }));
    }
    let void = Message::void(request.conversation.clone(), request.seq, now);
    insert_message(conn, &void)?;
    codec::message_at(conn, request.conversation.as_str(), seq)?
        .map(Arc::new)
        .ok_or_else(|| {
            EmbeddedError::Rule(Rule::Corrupt(format!("seq {seq} vanished after its void")))
        })
}

/// Inserts a void at every free seq of the range (`ON CONFLICT DO NOTHING`: an entry there
/// wins) and reads the range back, in the committer's transaction. The head does not move:
/// `covered` keeps the range at or below it.
fn void_holes(
    conn: &Connection,
    request: &VoidHoles,
    now: Timestamp,
) -> Result<MessagePage, EmbeddedError> {
    let conversation = request.conversation.as_str();
    let head = codec::head(conn, conversation)?;
    let Some((first, last)) = request.covered(head) else {
        return Ok(MessagePage {
            messages: Vec::new(),
            head,
        });
    };
    let (low, high) = (to_sql("seq", first.get())?, to_sql("seq", last.get())?);
    let mut insert = conn.prepare_cached(
        "INSERT INTO messages \
         (conversation, seq, sender, sender_device, client_msg_id, sent_at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (conversation, seq) DO NOTHING",
    )?;
    let body = serde_json::to_string(&Body::Void)?;
    let at = to_sql("sent_at", now.as_millis())?;
    for seq in first.get()..=last.get() {
        let void = Message::void(request.conversation.clone(), Seq(seq), now);
        insert.execute(params![
            conversation,
            to_sql("seq", seq)?,
            void.sender.as_str(),
            void.sender_device.as_str(),
            void.client_msg_id.as_str(),
            at,
            body,
        ])?;
    }
    let messages = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq"
        ))?
        .query_map(params![conversation, low, high], RawMessage::from_row)?
        .map(|raw| Ok(Arc::new(raw?.decode()?)))
        .collect::<Result<Vec<_>, EmbeddedError>>()?;
    if messages.len() as u64 != last.get() - first.get() + 1 {
        return Err(EmbeddedError::Rule(Rule::Corrupt(format!(
            "{conversation}: {} entries in {first}..={last} after voiding its holes",
            messages.len()
        ))));
    }
    Ok(MessagePage { messages, head })
}

fn create_conversation(
    conn: &Connection,
    request: &CreateConversation,
) -> Result<Created, EmbeddedError> {
    let facts = &request.conversation;
    if let Some(existing) = codec::conversation(conn, facts.id.as_str())? {
        return Ok(Created {
            conversation: existing,
            created: false,
        });
    }
    conn.prepare_cached(
        "INSERT INTO conversations (id, kind, title, created_by, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        facts.id.as_str(),
        facts.kind.as_str(),
        facts.title.as_deref(),
        facts.created_by.as_str(),
        to_sql("created_at", facts.created_at.as_millis())?,
    ])?;
    let mut upsert = conn.prepare_cached(
        "INSERT INTO members (conversation, user, role) VALUES (?1, ?2, ?3) \
         ON CONFLICT (conversation, user) DO UPDATE SET role = excluded.role",
    )?;
    for member in &request.members {
        upsert.execute(params![
            facts.id.as_str(),
            member.user.as_str(),
            member.role.as_str()
        ])?;
    }
    Ok(Created {
        conversation: facts.clone(),
        created: true,
    })
}

fn update_receipt(
    conn: &Connection,
    request: &UpdateReceipt,
) -> Result<ReceiptUpdated, EmbeddedError> {
    let conversation = request.conversation.as_str();
    let head = codec::head(conn, conversation)?;
    if request.seq > head {
        return Err(EmbeddedError::Rule(Rule::PastHead {
            conversation: request.conversation.clone(),
            seq: request.seq,
            head,
        }));
    }
    let stored: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT delivered, read FROM receipts WHERE conversation = ?1 AND user = ?2",
        )?
        .query_row(params![conversation, request.user.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let (delivered, read) = match stored {
        Some((delivered, read)) => (codec::seq_from_sql(delivered)?, codec::seq_from_sql(read)?),
        None => (Seq::ZERO, Seq::ZERO),
    };
    let new_read = match request.kind {
        ReceiptKind::Read => read.max(request.seq),
        ReceiptKind::Delivered => read,
    };
    // Read implies delivered.
    let new_delivered = delivered.max(request.seq).max(new_read);
    let changed = new_delivered != delivered || new_read != read;
    if changed {
        conn.prepare_cached(
            "INSERT INTO receipts (conversation, user, delivered, read) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (conversation, user) \
             DO UPDATE SET delivered = excluded.delivered, read = excluded.read",
        )?
        .execute(params![
            conversation,
            request.user.as_str(),
            to_sql("seq", new_delivered.get())?,
            to_sql("seq", new_read.get())?,
        ])?;
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

fn set_last_seen(conn: &Connection, request: &SetLastSeen) -> Result<Timestamp, EmbeddedError> {
    let at: i64 = conn
        .prepare_cached(
            "INSERT INTO last_seen (user, at) VALUES (?1, ?2) \
             ON CONFLICT (user) DO UPDATE SET at = max(at, excluded.at) RETURNING at",
        )?
        .query_row(
            params![request.user.as_str(), to_sql("at", request.at.as_millis())?],
            |row| row.get(0),
        )?;
    Ok(Timestamp(codec::from_sql("at", at)?))
}

fn set_media_status(
    conn: &Connection,
    request: &SetMediaStatus,
) -> Result<MediaStatusSet, EmbeddedError> {
    let update = &request.update;
    let media_seq = crate::media::media_seq_of(update)?;
    let conversation = update.conversation.as_str();
    let Some(media) = codec::message_at(conn, conversation, to_sql("seq", media_seq.get())?)?
    else {
        return Err(EmbeddedError::Rule(Rule::Media(
            crate::media::MediaRefusal::NoEntry(media_seq),
        )));
    };
    match crate::media::decide(&media, update)? {
        crate::media::Decision::Refuse => Ok(MediaStatusSet {
            media: Arc::new(media),
            applied: false,
        }),
        crate::media::Decision::Repair => {
            if codec::message_by_key(
                conn,
                conversation,
                update.sender.as_str(),
                update.client_msg_id.as_str(),
            )?
            .is_some()
            {
                return Ok(MediaStatusSet {
                    media: Arc::new(media),
                    applied: false,
                });
            }
            insert_update(conn, update)?;
            Ok(MediaStatusSet {
                media: Arc::new(media),
                applied: true,
            })
        }
        crate::media::Decision::Apply(moved) => {
            insert_update(conn, update)?;
            conn.prepare_cached(
                "UPDATE messages SET body = ?3 WHERE conversation = ?1 AND seq = ?2",
            )?
            .execute(params![
                conversation,
                to_sql("seq", media_seq.get())?,
                serde_json::to_string(&moved.body)?,
            ])?;
            Ok(MediaStatusSet {
                media: Arc::new(moved),
                applied: true,
            })
        }
    }
}

/// [`AmendMessage`]: the update's key first (a retry answers its original and voids the new
/// seq, as [`append`] does), then the target as stored against the request, then both writes
/// in this savepoint.
fn amend(conn: &Connection, request: &AmendMessage) -> Result<Amended, EmbeddedError> {
    let update = &request.update;
    let conversation = update.conversation.as_str();
    if let Some(original) = codec::message_by_key(
        conn,
        conversation,
        update.sender.as_str(),
        update.client_msg_id.as_str(),
    )? {
        if original.seq != update.seq {
            let void = Message::void(update.conversation.clone(), update.seq, update.sent_at);
            insert_message(conn, &void)?;
        }
        return Ok(Amended::Duplicate {
            original: Arc::new(original),
        });
    }
    let target = to_sql("seq", request.expected.seq.get())?;
    let current = codec::message_at(conn, conversation, target)?;
    match crate::amend::decide(current.as_ref(), request) {
        crate::amend::Decision::Changed => Ok(Amended::Changed {
            current: current.map(Arc::new),
        }),
        decision => {
            insert_update(conn, update)?;
            if decision == crate::amend::Decision::Apply {
                conn.prepare_cached(
                    "UPDATE messages SET body = ?3 WHERE conversation = ?1 AND seq = ?2",
                )?
                .execute(params![
                    conversation,
                    target,
                    serde_json::to_string(&request.amended.body)?,
                ])?;
            }
            Ok(Amended::Applied {
                update: Arc::clone(update),
                target: Arc::clone(&request.amended),
            })
        }
    }
}

fn insert_update(conn: &Connection, update: &Message) -> Result<(), EmbeddedError> {
    if update.seq == Seq::ZERO {
        return Err(EmbeddedError::Rule(Rule::OutOfRange {
            what: "seq",
            value: 0,
        }));
    }
    if !insert_message(conn, update)? {
        return Err(EmbeddedError::Rule(Rule::SeqTaken {
            conversation: update.conversation.clone(),
            seq: update.seq,
        }));
    }
    Ok(())
}
