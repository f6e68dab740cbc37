//! The Redis sequencer: one `INCR` counter per conversation in Redis or Redis Cluster
//! (feature `redis`).
//!
//! Every process of a cluster shares the counters, so any node can allocate for any
//! conversation; `INCR` is atomic, so no lock is needed. A conversation's counter is the key
//! `{prefix}:{<conversation>}:seq` (the braces are a Redis Cluster hash tag: both keys of a
//! conversation share a slot, conversations spread over the cluster).
//!
//! ```no_run
//! use messenger_core::sequencer::NextSeq;
//! use messenger_core::{call, ConversationId};
//! use messenger_sequencer::memory::NoFloor;
//! use messenger_sequencer::redis::RedisSequencer;
//! use messenger_sequencer::Sequencer;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = redis::Client::open("redis://127.0.0.1:16379/")?;
//! let connection = redis::aio::ConnectionManager::new(client).await?;
//! // In a server, the floor is the store (its head per conversation).
//! let sequencer = Sequencer::new(RedisSequencer::new(connection, NoFloor));
//! let seq = call(&sequencer, NextSeq { conversation: ConversationId::new("g:lunch")? }).await?;
//! # let _ = seq;
//! # Ok(())
//! # }
//! ```
//!
//! Any cloneable `redis::aio::ConnectionLike` works. In production use, for a standalone
//! server, a `redis::aio::ConnectionManager`: it reconnects by itself after a restart, while a
//! bare `MultiplexedConnection` stays broken once its socket dropped
//! (`tests/redis_restart.rs` restarts the server mid-traffic). For Redis Cluster pass a
//! `redis::cluster_async::ClusterConnection` (`RedisSequencer<F, ClusterConnection>`), which
//! follows slot moves and failovers itself.
//!
//! # Batching
//!
//! The fast path of an allocation is one plain `INCR`. Concurrent allocations, of any
//! conversations, are gathered by a batching task this type starts on first use (on the
//! caller's tokio runtime) and sent as one pipeline: the task takes whatever queued while the
//! earlier pipelines were in flight, up to [`max_batch`](RedisSequencerConfig::max_batch),
//! with at most [`pipelines_in_flight`](RedisSequencerConfig::pipelines_in_flight) out at
//! once. There is no timer: a lone caller's `INCR` leaves at once, so batching adds no latency
//! when idle, and under load one round trip carries a hundred allocations or more. Allocations
//! of one conversation in the same batch (a hot group) share one command: `n` of them send
//! `INCRBY n`, and the answer `v` hands out `v - n + 1 ..= v` in queue order, the values `n`
//! consecutive `INCR`s would have answered (Redis runs one command at a time); the offset
//! check below holds for each of them. On Redis
//! Cluster a batch is split by node (from `CLUSTER SLOTS`, read again when a reply says a slot
//! moved), one pipeline per node; an `INCR` that still lands on the wrong node answers `MOVED`
//! without running and is sent again alone, through the client's redirect handling. Errors
//! are per allocation: a failed pipeline fails the allocations it carried, nothing else.
//! [`RedisSequencer::batch_stats`] counts pipelines and allocations. Share one connection
//! between tasks (it is cheap to clone); `max_batch` 1 turns batching off (each allocation is
//! then its own command, pipelined only by the multiplexed connection).
//!
//! Scenario 5 of the benchmarks (`examples/sequencer_bench.rs`) measures it next to
//! `redis-benchmark -t incr -P 16` on the same server in the same run; see
//! `docs/benchmarks.md` (scenario 5) for the figures.
//!
//! # When Redis forgets: the floor
//!
//! Redis can lose increments: a restart without persistence, a failover to a replica that had
//! not yet received the last writes, `FLUSHALL`. A counter that restarts from zero would hand
//! out seqs the store already holds. Two defences:
//!
//! - **A missing counter is never trusted.** A counter this sequencer initialized holds
//!   2^52 + the last seq (`INITIALIZED`). The fast path is a plain `INCR`; an answer at or
//!   below 2^52 means the key was missing (Redis lost it, or a new conversation) and the
//!   `INCR` just created it, or something else wrote it. Either way the answer is not used:
//!   the sequencer reads the [`SeqFloor`] (the store's head) and raises the counter to
//!   2^52 + floor before incrementing, atomically, with a small Lua script (`if current <
//!   target then SET target end; INCR`). The check is per allocation, so after a `FLUSHALL`
//!   no process, whether it saw the conversation before or not, gets a seq from a reset
//!   counter without the floor. (Earlier versions made the fast path a script that
//!   incremented only an existing key; the offset gives the same check with a plain `INCR`,
//!   which Redis runs about three times faster than a script call.) A batched `INCRBY n` on
//!   a missing counter answers `n`, at most the batch size: every allocation it carried sees
//!   a value below 2^52 and reads the floor.
//! - **The floor is read on first use per process**, even when the key exists, and whenever
//!   the counter answers a value not above the highest seq this process already saw for the
//!   conversation (a counter that went backwards: a failover to a lagging replica, a restore).
//!   The highest seq seen is also folded into the raise.
//!
//! Concurrent allocations of one conversation that need the floor share one read (single
//! flight per process). Before raising, the reader waits (up to one second) for this
//! process's increments still in flight, so seqs Redis handed out just before forgetting are
//! covered too: within one process no seq is ever handed out twice, whatever Redis loses.
//!
//! What remains uncovered are seqs another process handed out but had not stored yet when
//! Redis forgot them (the floor, the store's head, cannot know them). The store's conditional
//! append detects such a collision and the caller fences the sequencer past the store's head
//! with [`FenceSeq`] (see [`RedisSequencer::fence_seq`]), so no seq is ever stored twice.
//!
//! Large values: the scripts compare counters as Lua numbers, exact up to 2^53, so seqs stop
//! at 2^52 - 1 (a floor or fence beyond is refused with [`ErrorKind::InvalidRequest`], never
//! wrapped).
//!
//! # Fencing and the epoch
//!
//! A fence raises the counter atomically and increments `{prefix}:{<conversation>}:epoch`,
//! which counts the fences of a conversation so operators can see that collisions happened
//! ([`RedisSequencer::epoch`]).
//!
//! # Memory
//!
//! The process keeps a few dozen bytes of state per conversation seen since start (like the
//! memory backend, with no eviction yet). Redis keeps two small keys per conversation, no TTL.

mod batch;
mod config;
mod error;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_routing::Slot;
use ::redis::{Script, ScriptInvocation};
#[cfg(doc)]
use messenger_core::ErrorKind;
use messenger_core::sequencer::{FenceSeq, NextSeq, SeqFloor};
use messenger_core::{ConversationId, Error, Seq};
use tokio::sync::Notify;

pub use batch::BatchStats;
use batch::{BatchError, Batcher};
pub use config::RedisSequencerConfig;
use error::RedisSequencerError;

use crate::SequencerBackend;

/// The backend name errors carry.
pub(crate) const BACKEND: &str = "redis";

/// How long a floor read waits for this process's increments in flight to land.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// What a counter holds on top of the last seq once this sequencer initialized it: a counter
/// holds `INITIALIZED + last seq`. A counter at or below it was never raised to the floor: it
/// is missing (Redis lost it, or a new conversation) and a plain `INCR` just created it, or it
/// was written by something else. Either way the fast path's `INCR` answers a value at or
/// below `INITIALIZED`, and the floor is read. This is what lets the fast path be a plain
/// `INCR` instead of a script, with the same per-allocation check. 2^52 keeps every value the
/// scripts compare exact as a Lua number (below 2^53); seqs stop at 2^52 - 1.
const INITIALIZED: u64 = 1 << 52;

/// Raises the counter to at least ARGV[1] (`INITIALIZED` + the floor), then increments it.
const RAISE_THEN_INCREMENT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[1])
";

/// Raises the counter (KEYS[1]) to at least ARGV[1] (`INITIALIZED` + the fence) and increments
/// the epoch (KEYS[2]). With ARGV[2] = '0' a counter not initialized (missing, or not above
/// ARGV[3] = `INITIALIZED`) is left alone and the script answers 0 (the floor is needed
/// first); otherwise it answers the new epoch.
const FENCE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[2] == '0' and current <= tonumber(ARGV[3]) then
  return 0
end
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[2])
";

/// Per-conversation `INCR` counters in Redis or Redis Cluster, with the floor read from `F`.
///
/// `C` is the connection: a [`ConnectionManager`] (the default; it reconnects by itself), a
/// `redis::cluster_async::ClusterConnection`, a `MultiplexedConnection`, or any cloneable
/// [`ConnectionLike`]. It is built by the caller and cloned per request (cheap for all three).
///
/// Wrap it in [`Sequencer`](crate::Sequencer) to get a tower service. See the
/// [module docs](self) for the floor and fencing reasoning.
pub struct RedisSequencer<F, C = ConnectionManager> {
    connection: C,
    floor: F,
    prefix: String,
    hasher: RandomState,
    shards: Box<[Shard]>,
    raise_then_increment: Script,
    fence: Script,
    max_batch: usize,
    pipelines_in_flight: usize,
    /// The batching task, started on first use (inside the caller's runtime); `None` when
    /// batching is off or there was no tokio runtime.
    batcher: OnceLock<Option<Batcher>>,
}

/// A part of the per-conversation state under one lock.
type Shard = Mutex<HashMap<ConversationId, Arc<Conversation>>>;

/// What this process knows of one conversation.
#[derive(Debug)]
struct Conversation {
    /// The counter key.
    key: Arc<str>,
    /// The Redis Cluster hash slot of the key.
    slot: Slot,
    /// How many times this process folded the floor into the counter; 0 until the first use.
    /// Allocations that raced with a floor read retry when it changed.
    floors_applied: AtomicU64,
    /// The highest seq this process handed out.
    highest: AtomicU64,
    /// Single flight for floor reads.
    floor_lock: tokio::sync::Mutex<()>,
    /// Fast-path increments sent and not yet recorded in `highest`.
    in_flight: AtomicU64,
    /// Woken when `in_flight` drops to zero.
    drained: Notify,
}

impl Conversation {
    fn new(key: String) -> Self {
        Self {
            slot: Slot::for_key(&key),
            key: Arc::from(key),
            floors_applied: AtomicU64::new(0),
            highest: AtomicU64::new(0),
            floor_lock: tokio::sync::Mutex::new(()),
            in_flight: AtomicU64::new(0),
            drained: Notify::new(),
        }
    }

    /// Waits until every increment in flight has recorded its seq in `highest` (or for
    /// [`DRAIN_LIMIT`]), so a raise computed afterwards is above all of them.
    async fn drain(&self) {
        let wait = async {
            loop {
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                drained.await;
            }
        };
        // Past the limit, other processes keep the counter busy; the store's conditional append
        // and a fence cover what this process could not see.
        let _ = tokio::time::timeout(DRAIN_LIMIT, wait).await;
    }
}

/// Marks one increment in flight for as long as it lives (also when dropped mid-flight).
struct InFlight<'a>(&'a Conversation);

impl<'a> InFlight<'a> {
    fn new(conversation: &'a Conversation) -> Self {
        conversation.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(conversation)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl<F, C> RedisSequencer<F, C>
where
    F: SeqFloor,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A sequencer on `connection` that reads each conversation's floor from `floor`, with the
    /// default configuration.
    pub fn new(connection: C, floor: F) -> Self {
        Self::with_config(connection, floor, RedisSequencerConfig::default())
    }

    /// A sequencer with an explicit configuration.
    pub fn with_config(connection: C, floor: F, config: RedisSequencerConfig) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Self {
            connection,
            floor,
            prefix: config.key_prefix,
            hasher: RandomState::new(),
            shards,
            raise_then_increment: Script::new(RAISE_THEN_INCREMENT),
            fence: Script::new(FENCE),
            max_batch: config.max_batch,
            pipelines_in_flight: config.pipelines_in_flight.max(1),
            batcher: OnceLock::new(),
        }
    }

    /// The floor this sequencer reads.
    pub fn floor(&self) -> &F {
        &self.floor
    }

    /// The counter key of `conversation`: `{prefix}:{<conversation>}:seq`. Once initialized it
    /// holds 2^52 + the last seq handed out (see the
    /// [module docs](self#when-redis-forgets-the-floor)).
    pub fn counter_key(&self, conversation: &ConversationId) -> String {
        format!("{}:{{{}}}:seq", self.prefix, conversation.as_str())
    }

    /// The epoch key of `conversation`: `{prefix}:{<conversation>}:epoch`.
    pub fn epoch_key(&self, conversation: &ConversationId) -> String {
        format!("{}:{{{}}}:epoch", self.prefix, conversation.as_str())
    }

    /// What this process knows of `conversation`, created on first sight.
    fn conversation(&self, conversation: &ConversationId) -> Arc<Conversation> {
        let hash = self.hasher.hash_one(conversation);
        // The modulo keeps the index below `shards.len()`, which fits in usize.
        let index = (hash % self.shards.len() as u64) as usize;
        // The map only ever gains entries, so a poisoned lock still guards a valid map.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A look-up first: the common case clones no id (its count is shared by every caller).
        if let Some(state) = shard.get(conversation) {
            return Arc::clone(state);
        }
        Arc::clone(
            shard
                .entry(conversation.clone())
                .or_insert_with(|| Arc::new(Conversation::new(self.counter_key(conversation)))),
        )
    }

    /// Allocates the next seq of `conversation`: one `INCR`, batched with concurrent
    /// allocations, in the common case; on first use in this process, on a missing counter and on
    /// a counter that went backwards, a floor read and a raise-then-increment script.
    ///
    /// # Errors
    /// - [`ErrorKind::Unavailable`] (temporary) when Redis cannot be reached or the cluster is
    ///   down or resharding; [`ErrorKind::Timeout`] when the client timed out. The number may
    ///   or may not have been burned.
    /// - The floor's error, unchanged, when reading the floor failed. Nothing was allocated;
    ///   the next call reads the floor again.
    /// - [`ErrorKind::InvalidRequest`] when the floor is at or beyond 2^52 - 1, the largest
    ///   seq this backend hands out.
    /// - [`ErrorKind::Unexpected`] for any other Redis error, such as a counter holding
    ///   something else than an integer.
    ///
    /// # Cancellation safety
    /// Not cancellation safe: an `INCR` sent and then dropped (a timeout layer, a client gone)
    /// burns a number, a hole readers resolve as void. Dropped while reading the floor:
    /// nothing was allocated, and another waiting caller takes the read over.
    pub async fn next_seq(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        let state = self.conversation(conversation);
        loop {
            let floors_applied = state.floors_applied.load(Ordering::Acquire);
            if floors_applied > 0 {
                // Read before sending: any seq recorded now came from an INCR Redis executed
                // before ours, so ours must be above it unless the counter went backwards.
                let highest = state.highest.load(Ordering::Acquire);
                let in_flight = InFlight::new(&state);
                let seq = self.increment(&state, conversation).await?;
                if seq > highest {
                    state.highest.fetch_max(seq, Ordering::AcqRel);
                    return Ok(Seq(seq));
                }
                drop(in_flight);
                // 0: the counter was missing (or never initialized); otherwise it went
                // backwards. Read the floor.
            }
            let _flight = state.floor_lock.lock().await;
            if state.floors_applied.load(Ordering::Acquire) != floors_applied {
                // Another caller folded the floor in while this one waited: try again.
                continue;
            }
            // Increments sent before the reset may still be on their way back with seqs this
            // process has not recorded: wait for them, so the raise covers them.
            state.drain().await;
            let floor = self.floor.floor(conversation).await?;
            let target = floor.get().max(state.highest.load(Ordering::Acquire));
            let target = initialized(target, conversation)?;
            let value = self
                .eval(
                    &self.raise_then_increment,
                    &state.key,
                    &[target],
                    "raise-then-increment",
                    conversation,
                )
                .await?;
            let seq = value
                .checked_sub(INITIALIZED)
                .filter(|seq| *seq > 0)
                .ok_or_else(|| RedisSequencerError::UnexpectedReply {
                    operation: "raise-then-increment",
                    conversation: conversation.clone(),
                    value: i64::try_from(value).unwrap_or(i64::MAX),
                })?;
            state.highest.fetch_max(seq, Ordering::AcqRel);
            state.floors_applied.fetch_add(1, Ordering::AcqRel);
            return Ok(Seq(seq));
        }
    }

    /// Moves the counter of `conversation` so the next allocation is above `at_least`, never
    /// backward, and increments the conversation's epoch. Give it the store's head: the fence
    /// is what repairs a counter Redis forgot.
    ///
    /// When the counter does not exist (a new conversation, or Redis lost it) the floor is
    /// read first and the counter raised to the higher of the two, so a fence never hides the
    /// floor.
    ///
    /// # Errors
    /// As [`next_seq`](Self::next_seq): [`ErrorKind::Unavailable`] / [`ErrorKind::Timeout`]
    /// when Redis cannot be reached (the fence may or may not be applied: retry it), the
    /// floor's error, [`ErrorKind::InvalidRequest`] when `at_least` (or the floor) is at or
    /// beyond 2^52 - 1, the largest seq this backend hands out, [`ErrorKind::Unexpected`]
    /// otherwise.
    ///
    /// # Cancellation safety
    /// Cancellation safe in effect: a dropped fence is either applied or not, and retrying it
    /// is harmless (it only counts one more epoch).
    pub async fn fence_seq(
        &self,
        conversation: &ConversationId,
        at_least: Seq,
    ) -> Result<(), Error> {
        let epoch = self.fence_once(conversation, at_least.get(), false).await?;
        if epoch > 0 {
            return Ok(());
        }
        let state = self.conversation(conversation);
        let _flight = state.floor_lock.lock().await;
        state.drain().await;
        let floor = self.floor.floor(conversation).await?;
        let target = at_least
            .get()
            .max(floor.get())
            .max(state.highest.load(Ordering::Acquire));
        self.fence_once(conversation, target, true).await?;
        state.floors_applied.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// How many fences `conversation` has seen since Redis last lost its keys (0 when none).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] / [`ErrorKind::Timeout`] when Redis cannot be reached.
    ///
    /// # Cancellation safety
    /// Cancellation safe: a read.
    pub async fn epoch(&self, conversation: &ConversationId) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let epoch: Option<i64> = ::redis::cmd("GET")
            .arg(self.epoch_key(conversation))
            .query_async(&mut connection)
            .await
            .map_err(|source| RedisSequencerError::Command {
                operation: "epoch read",
                conversation: conversation.clone(),
                source,
            })?;
        non_negative(epoch.unwrap_or(0), "epoch read", conversation)
    }

    /// Runs the fence script; answers the new epoch, or 0 when the counter is missing and
    /// `create` is false.
    async fn fence_once(
        &self,
        conversation: &ConversationId,
        at_least: u64,
        create: bool,
    ) -> Result<u64, Error> {
        let mut invocation = self.fence.key(self.counter_key(conversation));
        invocation
            .key(self.epoch_key(conversation))
            .arg(initialized(at_least, conversation)?)
            .arg(if create { "1" } else { "0" })
            .arg(INITIALIZED);
        let epoch =
            self.invoke(&invocation)
                .await
                .map_err(|source| RedisSequencerError::Command {
                    operation: "fence",
                    conversation: conversation.clone(),
                    source,
                })?;
        non_negative(epoch, "fence", conversation)
    }

    /// How many pipelines the batching task sent and how many allocations they carried
    /// (all zero while batching is off or before the first allocation). Allocations sent
    /// alone (floor reads, fences, a request a batch could not run) are not counted.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher
            .get()
            .and_then(Option::as_ref)
            .map(Batcher::stats)
            .unwrap_or_default()
    }

    /// The batching task, started on first use.
    fn batcher(&self) -> Option<&Batcher> {
        self.batcher
            .get_or_init(|| {
                (self.max_batch > 1).then(|| {
                    Batcher::spawn(
                        self.connection.clone(),
                        self.max_batch,
                        self.pipelines_in_flight,
                    )
                })?
            })
            .as_ref()
    }

    /// The fast path: `INCR` of the counter, through the batching task when there is one;
    /// answers the seq, or 0 when the counter was not initialized (the floor is needed). A
    /// request the batch could not run (a slot that moved) is sent alone.
    async fn increment(
        &self,
        state: &Conversation,
        conversation: &ConversationId,
    ) -> Result<u64, Error> {
        const OPERATION: &str = "increment";
        if let Some(batcher) = self.batcher() {
            match batcher.increment(Arc::clone(&state.key), state.slot).await {
                Ok(value) => return Ok(seq_of(value)),
                Err(BatchError::NotSent) => {}
                Err(BatchError::Failed(source)) => {
                    return Err(RedisSequencerError::Pipeline {
                        operation: OPERATION,
                        conversation: conversation.clone(),
                        source,
                    }
                    .into());
                }
                Err(BatchError::Lost) => {
                    return Err(RedisSequencerError::BatcherGone {
                        operation: OPERATION,
                        conversation: conversation.clone(),
                    }
                    .into());
                }
            }
        }
        let mut connection = self.connection.clone();
        let value: i64 = ::redis::cmd("INCR")
            .arg(&*state.key)
            .query_async(&mut connection)
            .await
            .map_err(|source| RedisSequencerError::Command {
                operation: OPERATION,
                conversation: conversation.clone(),
                source,
            })?;
        Ok(seq_of(value))
    }

    /// Runs a script that answers an integer. The client loads a script the server does not
    /// know and runs it again; when the server forgets it again in between (a `SCRIPT FLUSH`,
    /// a failover racing with the load), the whole thing is tried a few more times. A script
    /// answered `NOSCRIPT` did not run, so nothing is burned.
    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> ::redis::RedisResult<i64> {
        const ATTEMPTS: usize = 5;
        let mut connection = self.connection.clone();
        let mut attempt = 1;
        loop {
            match invocation.invoke_async(&mut connection).await {
                Err(err)
                    if attempt < ATTEMPTS
                        && err.kind()
                            == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Runs a one-key counter script that answers a non-negative integer.
    async fn eval(
        &self,
        script: &Script,
        key: &str,
        args: &[u64],
        operation: &'static str,
        conversation: &ConversationId,
    ) -> Result<u64, Error> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        let value =
            self.invoke(&invocation)
                .await
                .map_err(|source| RedisSequencerError::Command {
                    operation,
                    conversation: conversation.clone(),
                    source,
                })?;
        non_negative(value, operation, conversation)
    }
}

/// The seq a fast-path `INCR` answered, or 0 when the counter was not initialized (missing
/// and just created by the `INCR`, or written by something else).
fn seq_of(value: i64) -> u64 {
    u64::try_from(value)
        .ok()
        .and_then(|value| value.checked_sub(INITIALIZED))
        .unwrap_or(0)
}

/// What a counter holds once `seq` was handed out: `INITIALIZED + seq`, or an error when `seq`
/// is beyond what this backend hands out.
fn initialized(seq: u64, conversation: &ConversationId) -> Result<u64, Error> {
    if seq >= INITIALIZED - 1 {
        return Err(RedisSequencerError::SeqTooLarge {
            conversation: conversation.clone(),
            seq,
        }
        .into());
    }
    Ok(INITIALIZED + seq)
}

/// `value` as a `u64`, or an error naming the operation when it is negative.
fn non_negative(
    value: i64,
    operation: &'static str,
    conversation: &ConversationId,
) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| {
        RedisSequencerError::UnexpectedReply {
            operation,
            conversation: conversation.clone(),
            value,
        }
        .into()
    })
}

impl<F, C> SequencerBackend for RedisSequencer<F, C>
where
    F: SeqFloor,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// See [`RedisSequencer::next_seq`].
    async fn next(&self, request: NextSeq) -> Result<Seq, Error> {
        self.next_seq(&request.conversation).await
    }

    /// See [`RedisSequencer::fence_seq`].
    async fn fence(&self, request: FenceSeq) -> Result<(), Error> {
        self.fence_seq(&request.conversation, request.at_least)
            .await
    }
}

impl<F, C> fmt::Debug for RedisSequencer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSequencer")
            .field("floor", &std::any::type_name::<F>())
            .field("connection", &std::any::type_name::<C>())
            .field("prefix", &self.prefix)
            .field("shards", &self.shards.len())
            .field("max_batch", &self.max_batch)
            .field("pipelines_in_flight", &self.pipelines_in_flight)
            .finish_non_exhaustive()
    }
}
