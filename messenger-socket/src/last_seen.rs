//! Last seen, written behind: connects and disconnects record the time in memory at once and a
//! background task writes them to the store in batches.
//!
//! Why: a durable store write per connect and per disconnect, awaited by the handshake, made
//! every session wait for a group commit and cost two store writes. Now the handshake never
//! waits for last seen, and a user who connects and disconnects within one flush interval is
//! written once (the store keeps the maximum, so order does not matter).
//!
//! A read of last seen first writes the times pending for the users it asks about
//! ([`LastSeenWriter::flush_users`]), so every answer is durable and never older than what this
//! node recorded.
//!
//! What a crash can lose: the times recorded in the last [`FLUSH_INTERVAL`] that nobody read
//! (and a batch whose write was in flight). A user whose disconnect is lost keeps the time of
//! an earlier connect or disconnect. A graceful shutdown loses nothing: connections closed
//! during the drain write through ([`LastSeenWriter::flush`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use messenger_core::store::{SetLastSeen, StoreService};
use messenger_core::{Timestamp, UserId, call};

/// How long a recorded time may wait in memory before it is written.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Writes at most this many users' times at once; the store's group commit batches them.
const CONCURRENT_WRITES: usize = 256;

#[derive(Debug, Default)]
struct Times {
    /// Recorded, not yet handed to the store.
    pending: HashMap<UserId, Timestamp>,
    /// Handed to the store, write not yet finished (still answered by reads).
    flushing: HashMap<UserId, Timestamp>,
    /// Whether the background writer runs.
    started: bool,
}

/// The node's last-seen times not yet stored, and the task that stores them.
#[derive(Debug, Default)]
pub(crate) struct LastSeenWriter {
    times: Mutex<Times>,
}

impl LastSeenWriter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `user` was online at `at`; never waits. Starts the background writer on
    /// first use (it needs a tokio runtime, which every caller runs in).
    pub(crate) fn record<S: StoreService>(
        self: &Arc<Self>,
        store: &S,
        user: &UserId,
        at: Timestamp,
    ) {
        let start = {
            let mut times = self.lock();
            let entry = times.pending.entry(user.clone()).or_insert(at);
            *entry = (*entry).max(at);
            !std::mem::replace(&mut times.started, true)
        };
        if start {
            tokio::spawn(run(Arc::downgrade(self), store.clone()));
        }
    }

    /// Writes the times pending for `users` (also those a background write is storing) and
    /// waits for the writes, so a read that follows sees them.
    pub(crate) async fn flush_users<S: StoreService>(&self, store: &S, users: &[UserId]) {
        let batch: Vec<(UserId, Timestamp)> = {
            let mut times = self.lock();
            if times.pending.is_empty() && times.flushing.is_empty() {
                return;
            }
            let mut batch = Vec::new();
            for user in users {
                let pending = times.pending.remove(user);
                let newest = [pending, times.flushing.get(user).copied()]
                    .into_iter()
                    .flatten()
                    .max();
                if let Some(at) = newest {
                    let entry = times.flushing.entry(user.clone()).or_insert(at);
                    *entry = (*entry).max(at);
                    batch.push((user.clone(), at));
                }
            }
            batch
        };
        self.write(store, batch).await;
    }

    /// Writes every pending time now and waits for the writes (graceful shutdown).
    pub(crate) async fn flush<S: StoreService>(&self, store: &S) {
        let batch = self.take();
        self.write(store, batch).await;
    }

    /// Moves the pending times to `flushing`; returns them.
    fn take(&self) -> Vec<(UserId, Timestamp)> {
        let mut times = self.lock();
        let batch: Vec<(UserId, Timestamp)> = times.pending.drain().collect();
        for (user, at) in &batch {
            let entry = times.flushing.entry(user.clone()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        batch
    }

    /// Stores `batch`; failed writes go back to `pending` and are retried by the next flush.
    async fn write<S: StoreService>(&self, store: &S, batch: Vec<(UserId, Timestamp)>) {
        let mut batch = batch.into_iter();
        let mut writes = FuturesUnordered::new();
        let mut failed = 0_usize;
        loop {
            while writes.len() < CONCURRENT_WRITES {
                let Some((user, at)) = batch.next() else {
                    break;
                };
                writes.push(async move {
                    let request = SetLastSeen {
                        user: user.clone(),
                        at,
                    };
                    (call(store, request).await, user, at)
                });
            }
            let Some((result, user, at)) = writes.next().await else {
                break;
            };
            let mut times = self.lock();
            if times.flushing.get(&user).is_some_and(|t| *t <= at) {
                times.flushing.remove(&user);
            }
            if result.is_err() {
                failed += 1;
                let entry = times.pending.entry(user).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
        if failed > 0 {
            tracing::warn!(failed, "could not record last seen; retrying");
        }
    }
}

/// Flushes every [`FLUSH_INTERVAL`] until the node is gone.
async fn run<S: StoreService>(writer: Weak<LastSeenWriter>, store: S) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let batch = writer.take();
        if !batch.is_empty() {
            writer.write(&store, batch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::store::GetLastSeen;
    use messenger_store::{EmbeddedStore, Store};

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    async fn stored(store: &Store<EmbeddedStore>, users: &[UserId]) -> Vec<Option<Timestamp>> {
        call(
            store,
            GetLastSeen {
                users: users.to_vec(),
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(_, at)| at)
        .collect()
    }

    #[tokio::test]
    async fn a_read_flushes_first_and_the_newest_time_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(EmbeddedStore::open(dir.path().join("db")).unwrap());
        let writer = Arc::new(LastSeenWriter::default());
        let (alice, bob) = (user("alice"), user("bob"));
        writer.record(&store, &alice, Timestamp(2_000));
        // An older time recorded later (a slow disconnect) does not win.
        writer.record(&store, &alice, Timestamp(1_000));
        writer.record(&store, &bob, Timestamp(5_000));
        writer
            .flush_users(&store, std::slice::from_ref(&alice))
            .await;
        assert_eq!(
            stored(&store, std::slice::from_ref(&alice)).await,
            [Some(Timestamp(2_000))]
        );
        // The store keeps the maximum: a flush of an older time does not lower it.
        writer.record(&store, &alice, Timestamp(1_500));
        writer.flush(&store).await;
        assert_eq!(
            stored(&store, &[alice, bob]).await,
            [Some(Timestamp(2_000)), Some(Timestamp(5_000))]
        );
    }

    #[tokio::test]
    async fn the_background_writer_stores_what_nobody_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(EmbeddedStore::open(dir.path().join("db")).unwrap());
        let writer = Arc::new(LastSeenWriter::default());
        let users: Vec<UserId> = (0..300).map(|n| user(&format!("u{n}"))).collect();
        for (n, user) in users.iter().enumerate() {
            writer.record(&store, user, Timestamp(1_000 + n as u64));
        }
        let expected: Vec<Option<Timestamp>> = (0..300)
            .map(|n| Some(Timestamp(1_000 + n as u64)))
            .collect();
        // Polls until the writer stored them all (no timing asserted: it fails only if they
        // never arrive).
        for _ in 0..600 {
            if stored(&store, &users).await == expected {
                assert!(writer.lock().pending.is_empty());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the background writer did not store every time");
    }
}
