//! Group commit of appends: concurrent appends share one transaction and one redo-log flush.
//!
//! An append that finds no other append in flight in this store runs at once in its caller's
//! task, in its own transaction (nothing to batch with; no added hop). Otherwise `append`
//! queues the message on a bounded channel and waits for its reply. A few committer
//! tasks (`MysqlConfig::append_committers`) each take every queued append (up to
//! `MysqlConfig::append_batch`) and commit them in one InnoDB transaction with multi-row
//! statements:
//!
//! 1. one `SELECT` of every idempotency key `(conversation, sender, client_msg_id)` of the
//!    batch: a key already stored answers its append as a duplicate (and voids the retry's new
//!    seq, as a single append does);
//! 2. one multi-row `INSERT` of the new entries, in `(conversation, seq)` order;
//! 3. one multi-row head upsert (`GREATEST`), in conversation order;
//! 4. the membership projection of the (rare) membership changes, one by one;
//! 5. one COMMIT, then every caller's reply.
//!
//! Statements are prepared for batch sizes that are powers of two (a batch of 45 inserts as
//! 32 + 8 + 4 + 1 rows; look-ups and head upserts repeat their last row up to the next power
//! of two, which changes nothing), so a connection's statement cache holds a handful of them.
//!
//! A batch of one append takes the single-append path (its `INSERT` comes first and the
//! look-up only runs on a duplicate key: one statement fewer). Anything out of the ordinary
//! makes the batch's transaction roll back and every append of
//! it run again alone, through the single-append path with its exact semantics: a key twice
//! in one batch, a seq already taken (the multi-row `INSERT` fails as a whole), a failure
//! other than a deadlock. A deadlock or lock wait timeout runs the whole batch again (up to
//! `deadlock_retries` times) before falling back. Only a failed COMMIT is answered with its
//! error to every append of the batch: whether it reached the server is unknown, and a
//! caller's retry with the same `client_msg_id` is what resolves that, as with a single
//! append.

use crate::rule::Rule;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use messenger_core::store::Appended;
use messenger_core::{Error, Message};
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Row, Transaction, TxOpts, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::codec::{self, MESSAGE_COLUMNS, checked};
use super::error::{BACKEND, MysqlError, code};
use super::{INSERT_COLUMNS, insert_if_free, project_membership};

/// One queued append and where its outcome goes.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) message: Arc<Message>,
    pub(crate) reply: oneshot::Sender<Result<Appended, Error>>,
}

/// How the committers batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    pub(crate) max_batch: usize,
    pub(crate) committers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) deadlock_retries: u32,
}

/// Starts the committer tasks on the current tokio runtime; they stop when the returned
/// sender (and every clone of it) is dropped and the queue is empty.
pub(crate) fn start(pool: Pool, batching: Batching) -> mpsc::Sender<Pending> {
    let (sender, receiver) = mpsc::channel(batching.queue_capacity.max(1));
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..batching.committers.max(1) {
        tokio::spawn(committer(pool.clone(), batching, Arc::clone(&receiver)));
    }
    sender
}

async fn committer(pool: Pool, batching: Batching, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let max_batch = batching.max_batch.max(1);
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            // One committer at a time takes from the queue; the others are committing.
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        commit(&pool, batching.deadlock_retries, batch).await;
    }
}

/// An append checked and encoded for the multi-row statements.
struct Row7 {
    pending: Pending,
    values: [Value; 7],
}

/// Commits `batch` as described in the module docs and replies to every append.
async fn commit(pool: &Pool, deadlock_retries: u32, batch: Vec<Pending>) {
    let mut rows = Vec::with_capacity(batch.len());
    for pending in batch {
        match encode(&pending.message) {
            Ok(values) => rows.push(Row7 { pending, values }),
            Err(err) => {
                let _ = pending.reply.send(Err(err.into()));
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    if rows.len() == 1 {
        // Alone in its batch: the single-append path has fewer statements (no look-up first).
        if let Some(row) = rows.pop() {
            let outcome = super::append_alone(pool, deadlock_retries, &row.pending.message).await;
            let _ = row.pending.reply.send(outcome);
        }
        return;
    }
    let mut retries = 0;
    let fallback = loop {
        match try_batch(pool, &rows).await {
            Ok(Some(outcomes)) => {
                for (row, outcome) in rows.into_iter().zip(outcomes) {
                    let _ = row.pending.reply.send(Ok(outcome));
                }
                return;
            }
            Ok(None) => break true,
            Err(Failed::Commit(err)) => {
                tracing::warn!(error = %err, "the store could not commit a batch of appends");
                for row in rows {
                    let _ = row.pending.reply.send(Err(
                        Error::new(err.kind(), err.to_string()).with_backend(BACKEND)
                    ));
                }
                return;
            }
            Err(Failed::Before(err)) if err.is_retryable() && retries < deadlock_retries => {
                retries += 1;
                tracing::debug!(error = %err, retries, "retrying a batch of appends");
            }
            Err(Failed::Before(err)) => {
                tracing::debug!(error = %err, "a batch of appends failed; each runs alone");
                break true;
            }
        }
    };
    if fallback {
        // Each append alone, concurrently, with the single-append path's retries.
        for row in rows {
            let pool = pool.clone();
            tokio::spawn(async move {
                let outcome =
                    super::append_alone(&pool, deadlock_retries, &row.pending.message).await;
                let _ = row.pending.reply.send(outcome);
            });
        }
    }
}

enum Failed {
    /// Failed before COMMIT: the transaction is rolled back, nothing of it is stored.
    Before(MysqlError),
    /// COMMIT failed: the batch may or may not be stored.
    Commit(MysqlError),
}

impl From<mysql_async::Error> for Failed {
    fn from(err: mysql_async::Error) -> Self {
        Failed::Before(err.into())
    }
}

impl From<MysqlError> for Failed {
    fn from(err: MysqlError) -> Self {
        Failed::Before(err)
    }
}

/// The seven values of a `messages` row, checked as a single append checks them.
pub(super) fn encode(message: &Message) -> Result<[Value; 7], MysqlError> {
    let seq = checked("seq", message.seq.get())?;
    if seq == 0 {
        return Err(MysqlError::Rule(Rule::OutOfRange {
            what: "seq",
            value: 0,
        }));
    }
    Ok([
        Value::from(message.conversation.as_str()),
        Value::from(seq),
        Value::from(message.sender.as_str()),
        Value::from(message.sender_device.as_str()),
        Value::from(message.client_msg_id.as_str()),
        Value::from(checked("sent_at", message.sent_at.as_millis())?),
        Value::from(serde_json::to_vec(&message.body)?),
    ])
}

type Key<'a> = (&'a str, &'a str, &'a str);

fn key(message: &Message) -> Key<'_> {
    (
        message.conversation.as_str(),
        message.sender.as_str(),
        message.client_msg_id.as_str(),
    )
}

/// The most rows one multi-row `INSERT` carries (7 placeholders each, far below the
/// protocol's 65,535).
pub(super) const MAX_INSERT_ROWS: usize = 256;

/// Sizes of the multi-row statements: `count` split into powers of two, largest first, none
/// above [`MAX_INSERT_ROWS`].
fn chunks(mut count: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while count > 0 {
        let size = (1 << count.ilog2()).min(MAX_INSERT_ROWS);
        sizes.push(size);
        count -= size;
    }
    sizes
}

/// The batch in one transaction; `None` when it must run append by append instead.
async fn try_batch(pool: &Pool, rows: &[Row7]) -> Result<Option<Vec<Appended>>, Failed> {
    let mut keys = HashMap::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        if keys.insert(key(&row.pending.message), index).is_some() {
            return Ok(None);
        }
    }
    let mut tx = pool.start_transaction(TxOpts::default()).await?;

    // 1. Which keys are stored already.
    let mut originals: Vec<Option<Message>> = rows.iter().map(|_| None).collect();
    let all: Vec<&Row7> = rows.iter().collect();
    for found in look_up(&mut tx, &all).await? {
        let index = keys.get(&key(&found)).copied();
        if let Some(index) = index {
            originals[index] = Some(found);
        }
    }

    // 2. The new entries, in (conversation, seq) order.
    let mut new: Vec<usize> = (0..rows.len())
        .filter(|&index| originals[index].is_none())
        .collect();
    new.sort_by(|&a, &b| {
        let (a, b) = (&rows[a].pending.message, &rows[b].pending.message);
        (a.conversation.as_str(), a.seq).cmp(&(b.conversation.as_str(), b.seq))
    });
    let mut start = 0;
    for size in chunks(new.len()) {
        let part = &new[start..start + size];
        start += size;
        let mut values = Vec::with_capacity(size * 7);
        for &index in part {
            values.extend(rows[index].values.iter().cloned());
        }
        let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?)"; size].join(", ");
        let inserted = tx
            .exec_drop(
                format!("INSERT INTO messages ({INSERT_COLUMNS}) VALUES {placeholders}"),
                Params::Positional(values),
            )
            .await;
        match inserted {
            Ok(()) => {}
            // A seq taken, or a key stored since the look-up: each append alone sorts it out.
            Err(mysql_async::Error::Server(err)) if err.code == code::DUPLICATE_ENTRY => {
                return Ok(None);
            }
            Err(err) => return Err(err.into()),
        }
    }

    // 3. The heads, once per conversation, in conversation order.
    let mut heads: BTreeMap<&str, u64> = BTreeMap::new();
    for &index in &new {
        let message = &rows[index].pending.message;
        let head = heads.entry(message.conversation.as_str()).or_default();
        *head = (*head).max(message.seq.get());
    }
    raise_heads(&mut tx, &heads).await?;

    // 4. Voids for duplicates given a new seq, and the membership changes, in log order.
    for (index, original) in originals.iter().enumerate() {
        let message = &rows[index].pending.message;
        if let Some(original) = original {
            if original.seq != message.seq {
                let void =
                    Message::void(message.conversation.clone(), message.seq, message.sent_at);
                insert_if_free(&mut tx, &void).await?;
            }
        }
    }
    for &index in &new {
        project_membership(&mut tx, &rows[index].pending.message).await?;
    }

    // 5. One COMMIT for the batch.
    tx.commit()
        .await
        .map_err(|err| Failed::Commit(err.into()))?;
    Ok(Some(
        rows.iter()
            .zip(originals)
            .map(|(row, original)| match original {
                Some(original) => Appended {
                    message: Arc::new(original),
                    duplicate: true,
                },
                None => Appended {
                    message: Arc::clone(&row.pending.message),
                    duplicate: false,
                },
            })
            .collect(),
    ))
}

/// The stored entries holding any of the keys of `rows`.
async fn look_up(tx: &mut Transaction<'_>, rows: &[&Row7]) -> Result<Vec<Message>, MysqlError> {
    let mut found = Vec::new();
    for part in rows.chunks(64) {
        let size = part.len().next_power_of_two();
        let mut values = Vec::with_capacity(size * 3);
        for index in 0..size {
            let row = part[index.min(part.len() - 1)];
            let (conversation, sender, client_msg_id) = key(&row.pending.message);
            values.push(Value::from(conversation));
            values.push(Value::from(sender));
            values.push(Value::from(client_msg_id));
        }
        let condition =
            vec!["(conversation = ? AND sender = ? AND client_msg_id = ?)"; size].join(" OR ");
        let stored: Vec<Row> = tx
            .exec(
                format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE {condition}"),
                Params::Positional(values),
            )
            .await?;
        for mut row in stored {
            found.push(codec::decode_message(&mut row)?);
        }
    }
    Ok(found)
}

/// Raises the head of every conversation of `heads` to at least its value.
async fn raise_heads(
    tx: &mut Transaction<'_>,
    heads: &BTreeMap<&str, u64>,
) -> Result<(), MysqlError> {
    let heads: Vec<(&str, u64)> = heads.iter().map(|(c, h)| (*c, *h)).collect();
    for part in heads.chunks(64) {
        let size = part.len().next_power_of_two();
        let mut values = Vec::with_capacity(size * 2);
        for index in 0..size {
            let (conversation, head) = part[index.min(part.len() - 1)];
            values.push(Value::from(conversation));
            values.push(Value::from(head));
        }
        let placeholders = vec!["(?, ?)"; size].join(", ");
        // `VALUES(col)`: MariaDB has no row alias; MySQL 8.0.20+ only warns.
        tx.exec_drop(
            format!(
                "INSERT INTO heads (conversation, head) VALUES {placeholders} \
                 ON DUPLICATE KEY UPDATE head = GREATEST(head, VALUES(head))"
            ),
            Params::Positional(values),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn batches_split_into_powers_of_two() {
        assert_eq!(chunks(0), Vec::<usize>::new());
        assert_eq!(chunks(1), vec![1]);
        assert_eq!(chunks(45), vec![32, 8, 4, 1]);
        assert_eq!(chunks(64), vec![64]);
        assert_eq!(chunks(100).iter().sum::<usize>(), 100);
        assert_eq!(chunks(600), vec![256, 256, 64, 16, 8]);
    }
}
