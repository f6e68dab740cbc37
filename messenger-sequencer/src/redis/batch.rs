//! The batching task: gathers concurrent fast-path increments, of any conversations, into
//! pipelines.
//!
//! Callers queue a counter key with a oneshot for the answer. The task waits for a free
//! pipeline slot (at most `pipelines_in_flight` are out at once), then takes whatever is
//! queued, up to `max_batch`, and sends it as one pipeline with one command per counter:
//! `INCR` for a counter one request asked for, `INCRBY n` for a counter `n` requests of the
//! batch asked for (a hot conversation). `INCRBY n` answering `v` hands out `v - n + 1 ..= v`,
//! in queue order, exactly the values `n` consecutive `INCR`s would have answered, since Redis
//! runs one command at a time. There is no timer: a lone caller's request leaves at once;
//! under load the batch is what accumulated while the earlier pipelines were in flight.
//!
//! On Redis Cluster a pipeline must go to one node: the batch is split by node, from a slot
//! map this task reads with `CLUSTER SLOTS` (and reads again when a reply says a slot moved),
//! and each part is routed to the node of its first slot. A key's slot is the `redis` crate's
//! own ([`Slot::for_key`]), so this split and the client's routing agree. A command that landed on the wrong
//! node anyway answers `MOVED`/`ASK` without running (so does one answered `TRYAGAIN`). Such
//! requests come back as [`BatchError::NotSent`] and the caller sends them alone, through the
//! client's own redirect logic.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::redis::aio::ConnectionLike;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use ::redis::{ErrorKind, Pipeline, RedisError, RedisResult, ServerErrorKind, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// What a queued increment answers.
pub(super) type Reply = Result<i64, BatchError>;

/// Why a queued increment has no value.
#[derive(Debug)]
pub(super) enum BatchError {
    /// The command did not run (`NOSCRIPT`, `MOVED`, `ASK`, `TRYAGAIN`, or the batching task
    /// is gone): send it alone.
    NotSent,
    /// The pipeline or the command failed; the increment may or may not have run.
    Failed(Arc<RedisError>),
    /// The batching task stopped (its runtime shut down) with the request on board; it may or
    /// may not have run.
    Lost,
}

/// One queued increment.
struct Pending {
    key: Arc<str>,
    slot: Slot,
    reply: oneshot::Sender<Reply>,
}

/// The increments of one pipeline, in commands: the requests of one counter are next to each
/// other, in queue order, and `counts[i]` is how many requests command `i` carries.
struct Part {
    pending: Vec<Pending>,
    counts: Vec<u32>,
}

impl Part {
    /// Groups `batch` by counter (the key's allocation: one per conversation and sequencer),
    /// keeping the queue order within each counter and the order of first appearance between
    /// counters.
    fn of(batch: Vec<Pending>) -> Self {
        let mut groups: HashMap<*const u8, usize> = HashMap::with_capacity(batch.len());
        let mut counts: Vec<u32> = Vec::with_capacity(batch.len());
        let mut group_of = Vec::with_capacity(batch.len());
        for pending in &batch {
            let next = counts.len();
            let group = *groups.entry(pending.key.as_ptr()).or_insert(next);
            if group == next {
                counts.push(0);
            }
            counts[group] += 1;
            group_of.push(group);
        }
        if counts.len() == batch.len() {
            // No counter twice: one INCR per request, as queued.
            return Self {
                pending: batch,
                counts,
            };
        }
        let mut indexed: Vec<(usize, Pending)> = group_of.into_iter().zip(batch).collect();
        // Stable: the queue order within a counter is kept.
        indexed.sort_by_key(|(group, _)| *group);
        Self {
            pending: indexed.into_iter().map(|(_, pending)| pending).collect(),
            counts,
        }
    }
}

/// What the batching task has sent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Pipelines sent (on Redis Cluster, one per node a batch touched).
    pub pipelines: u64,
    /// Increments those pipelines carried.
    pub requests: u64,
    /// Increments that shared an `INCRBY` with an earlier increment of the same counter in
    /// the same pipeline (`requests - coalesced` commands were sent).
    pub coalesced: u64,
    /// Increments a pipeline answered without running them (`NOSCRIPT` after a restart,
    /// `MOVED`/`ASK` while slots move, `TRYAGAIN`): each was then sent again alone.
    pub sent_again: u64,
}

/// The counters behind [`BatchStats`].
#[derive(Debug, Default)]
struct Counters {
    pipelines: AtomicU64,
    requests: AtomicU64,
    coalesced: AtomicU64,
    sent_again: AtomicU64,
}

impl Counters {
    fn record(&self, part: &Part) {
        self.pipelines.fetch_add(1, Ordering::Relaxed);
        self.requests
            .fetch_add(part.pending.len() as u64, Ordering::Relaxed);
        self.coalesced.fetch_add(
            (part.pending.len() - part.counts.len()) as u64,
            Ordering::Relaxed,
        );
    }
}

/// The handle callers queue increments on. The task ends when the handle is dropped.
#[derive(Debug)]
pub(super) struct Batcher {
    sender: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime; `None` outside of one.
    pub(super) fn spawn<C>(
        connection: C,
        max_batch: usize,
        pipelines_in_flight: usize,
    ) -> Option<Self>
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let max_batch = max_batch.max(1);
        let pipelines_in_flight = pipelines_in_flight.max(1);
        let (sender, receiver) = mpsc::channel(max_batch * (pipelines_in_flight + 1));
        let target = match (&connection as &dyn Any).downcast_ref::<ClusterConnection>() {
            Some(cluster) => Target::Cluster {
                connection: cluster.clone(),
                slots: None,
                stale: Arc::new(AtomicBool::new(true)),
            },
            None => Target::Single(connection),
        };
        let counters = Arc::new(Counters::default());
        let task = Task {
            target,
            counters: Arc::clone(&counters),
            max_batch,
            permits: Arc::new(Semaphore::new(pipelines_in_flight)),
        };
        runtime.spawn(task.run(receiver));
        Some(Self { sender, counters })
    }

    /// What was sent so far.
    pub(super) fn stats(&self) -> BatchStats {
        BatchStats {
            pipelines: self.counters.pipelines.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            coalesced: self.counters.coalesced.load(Ordering::Relaxed),
            sent_again: self.counters.sent_again.load(Ordering::Relaxed),
        }
    }

    /// Queues one `INCR` of the counter `key` (in hash slot `slot`) and waits for its answer.
    pub(super) async fn increment(&self, key: Arc<str>, slot: Slot) -> Reply {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { key, slot, reply };
        if self.sender.send(pending).await.is_err() {
            return Err(BatchError::NotSent);
        }
        answer.await.unwrap_or(Err(BatchError::Lost))
    }
}

/// Where pipelines go.
enum Target<C> {
    /// One server (or anything that takes a mixed-key pipeline).
    Single(C),
    /// Redis Cluster: one pipeline per node.
    Cluster {
        connection: ClusterConnection,
        /// The node (an index into a list only this map uses) of every slot, when known.
        slots: Option<HashMap<Slot, u16>>,
        /// Set when a reply suggests the map is out of date.
        stale: Arc<AtomicBool>,
    },
}

struct Task<C> {
    target: Target<C>,
    counters: Arc<Counters>,
    max_batch: usize,
    permits: Arc<Semaphore>,
}

impl<C> Task<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn run(mut self, mut receiver: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                return;
            };
            if receiver.recv_many(&mut batch, self.max_batch).await == 0 {
                // Every handle is gone.
                return;
            }
            // A caller that gave up before its request left burns no number.
            batch.retain(|pending| !pending.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let pending = std::mem::replace(&mut batch, Vec::with_capacity(self.max_batch));
            self.send(pending, permit).await;
        }
    }

    /// Sends `batch` in the background (one pipeline per node); `permit` is released when
    /// every part answered.
    async fn send(&mut self, batch: Vec<Pending>, permit: OwnedSemaphorePermit) {
        match &mut self.target {
            Target::Single(connection) => {
                let part = Part::of(batch);
                self.counters.record(&part);
                let counters = Arc::clone(&self.counters);
                let mut connection = connection.clone();
                tokio::spawn(async move {
                    let pipeline = pipeline_of(&part);
                    let result = connection
                        .req_packed_commands(&pipeline, 0, part.counts.len())
                        .await;
                    answer(part, result, &counters);
                    drop(permit);
                });
            }
            Target::Cluster {
                connection,
                slots,
                stale,
            } => {
                if stale.swap(false, Ordering::AcqRel) {
                    // Unknown after a failed read: each slot then gets its own pipeline, which
                    // is always routed right.
                    *slots = read_slot_map(connection).await;
                }
                let mut parts: HashMap<PartKey, Vec<Pending>> = HashMap::new();
                for pending in batch {
                    let node = match slots.as_ref().and_then(|slots| slots.get(&pending.slot)) {
                        Some(node) => PartKey::Node(*node),
                        None => PartKey::Slot(pending.slot),
                    };
                    parts.entry(node).or_default().push(pending);
                }
                let permit = Arc::new(permit);
                for part in parts.into_values() {
                    let part = Part::of(part);
                    self.counters.record(&part);
                    let mut connection = connection.clone();
                    let stale = Arc::clone(stale);
                    let permit = Arc::clone(&permit);
                    let counters = Arc::clone(&self.counters);
                    tokio::spawn(async move {
                        let pipeline = pipeline_of(&part);
                        // Never empty: a part holds at least the request that created it.
                        let route = match part.pending.first() {
                            Some(pending) => SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                                pending.slot,
                                SlotAddr::Master,
                            )),
                            None => SingleNodeRoutingInfo::RandomPrimary,
                        };
                        let result = connection
                            .route_pipeline(pipeline, 0, part.counts.len(), route)
                            .await;
                        if answer(part, result, &counters) {
                            stale.store(true, Ordering::Release);
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Which pipeline of a cluster batch a request goes in: its node's, or its slot's own when
/// the slot map does not know the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PartKey {
    Node(u16),
    Slot(Slot),
}

/// One command per counter of `part`: `INCR <key>`, or `INCRBY <key> <n>` for `n` requests.
fn pipeline_of(part: &Part) -> Pipeline {
    let mut pipeline = Pipeline::with_capacity(part.counts.len());
    let mut start = 0;
    for &count in &part.counts {
        let key = &*part.pending[start].key;
        if count == 1 {
            pipeline.cmd("INCR").arg(key);
        } else {
            pipeline.cmd("INCRBY").arg(key).arg(count);
        }
        start += count as usize;
    }
    pipeline
}

/// Answers every pending increment from the pipeline's result; true when a reply suggests the
/// cluster's slots moved (or a node failed).
fn answer(part: Part, result: RedisResult<Vec<Value>>, counters: &Counters) -> bool {
    let Part { pending, counts } = part;
    match result {
        Ok(values) if values.len() == counts.len() => {
            let mut moved = false;
            let mut pending = pending.into_iter();
            for (count, value) in counts.into_iter().zip(values) {
                let reply = match value {
                    Value::Int(value) => Ok(value),
                    Value::ServerError(error) => match error.kind() {
                        Some(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
                            moved = true;
                            Err(BatchError::NotSent)
                        }
                        Some(ServerErrorKind::NoScript | ServerErrorKind::TryAgain) => {
                            Err(BatchError::NotSent)
                        }
                        _ => Err(BatchError::Failed(Arc::new(error.into()))),
                    },
                    other => Err(BatchError::Failed(Arc::new(RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "INCR/INCRBY answered a non-integer",
                        format!("{other:?}"),
                    ))))),
                };
                if matches!(reply, Err(BatchError::NotSent)) {
                    counters
                        .sent_again
                        .fetch_add(u64::from(count), Ordering::Relaxed);
                }
                // `INCRBY n` answering `v`: the requests, in queue order, get `v - n + 1 ..= v`.
                // (Below the offset the fast path reads the floor anyway.)
                let mut offset = i64::from(count);
                for pending in pending.by_ref().take(count as usize) {
                    offset -= 1;
                    let reply = match &reply {
                        Ok(value) => Ok(value.saturating_sub(offset)),
                        Err(BatchError::NotSent) => Err(BatchError::NotSent),
                        Err(BatchError::Failed(error)) => {
                            Err(BatchError::Failed(Arc::clone(error)))
                        }
                        Err(BatchError::Lost) => Err(BatchError::Lost),
                    };
                    // A caller that gave up no longer listens; nothing to do.
                    let _ = pending.reply.send(reply);
                }
            }
            moved
        }
        Ok(values) => {
            let error = Arc::new(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "a pipeline answered the wrong number of replies",
                format!("{} for {} commands", values.len(), counts.len()),
            )));
            fail(pending, &error);
            false
        }
        Err(error) => {
            fail(pending, &Arc::new(error));
            true
        }
    }
}

fn fail(batch: Vec<Pending>, error: &Arc<RedisError>) {
    for pending in batch {
        let _ = pending
            .reply
            .send(Err(BatchError::Failed(Arc::clone(error))));
    }
}

/// The node of every slot, from `CLUSTER SLOTS`; `None` when it cannot be read.
async fn read_slot_map(connection: &mut ClusterConnection) -> Option<HashMap<Slot, u16>> {
    let reply: Value = ::redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await
        .ok()?;
    slot_map_of(reply)
}

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, ...], replicas...], ...]`.
/// Slots the reply does not cover are not in the map.
fn slot_map_of(reply: Value) -> Option<HashMap<Slot, u16>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut nodes: HashMap<(Vec<u8>, i64), u16> = HashMap::new();
    let mut map = HashMap::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        let host = match master.first() {
            Some(Value::BulkString(host)) => host.clone(),
            Some(Value::SimpleString(host)) => host.clone().into_bytes(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        let next = u16::try_from(nodes.len()).ok()?;
        let node = *nodes.entry((host, *port)).or_insert(next);
        for slot in u16::try_from(*start).ok()?..=u16::try_from(*end).ok()? {
            // `None` past the last slot: not a reply of Redis Cluster.
            map.insert(Slot::new(slot)?, node);
        }
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(number: u16) -> Slot {
        Slot::new(number).expect("a slot number")
    }

    #[test]
    fn a_conversations_keys_share_a_slot() {
        assert_eq!(
            Slot::for_key("messenger:{g:a}:seq"),
            Slot::for_key("messenger:{g:a}:epoch")
        );
    }

    #[test]
    fn a_slot_map_covers_the_ranges_it_lists() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
        ]);
        let map = slot_map_of(reply).expect("a valid reply");
        assert_eq!(map.len(), 16_384);
        assert_eq!(map[&slot(0)], map[&slot(5460)]);
        assert_ne!(map[&slot(5460)], map[&slot(5461)]);
        assert_eq!(map[&slot(5461)], map[&slot(16383)]);
        assert!(slot_map_of(Value::Int(1)).is_none());
        let beyond = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16_384),
            node(7000),
        ])]);
        assert!(slot_map_of(beyond).is_none());
    }

    #[test]
    fn a_key_finds_the_node_of_its_slot() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
            ])
        };
        // `foo` is in slot 12182 (`CLUSTER KEYSLOT foo`): a node of its own here.
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(12181), node(7000)]),
            Value::Array(vec![Value::Int(12182), Value::Int(12182), node(7001)]),
            Value::Array(vec![Value::Int(12183), Value::Int(16383), node(7000)]),
        ]);
        let map = slot_map_of(reply).expect("a valid reply");
        let lone = map[&slot(12182)];
        assert_eq!(map[&Slot::for_key("foo")], lone);
        assert_eq!(map[&Slot::for_key("{foo}:seq")], lone);
        assert_ne!(map[&Slot::for_key("bar")], lone);
    }

    #[test]
    fn server_errors_are_answered_per_request() {
        let (moved_reply, moved) = oneshot::channel();
        let (ok_reply, ok) = oneshot::channel();
        let batch = vec![
            Pending {
                key: Arc::from("a"),
                slot: slot(0),
                reply: moved_reply,
            },
            Pending {
                key: Arc::from("b"),
                slot: slot(0),
                reply: ok_reply,
            },
        ];
        let moved_error =
            ::redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:7002\r\n").expect("a server error");
        let counters = Counters::default();
        assert!(answer(
            Part::of(batch),
            Ok(vec![moved_error, Value::Int(7)]),
            &counters
        ));
        assert_eq!(counters.sent_again.load(Ordering::Relaxed), 1);
        assert!(matches!(
            moved.blocking_recv(),
            Ok(Err(BatchError::NotSent))
        ));
        assert!(matches!(ok.blocking_recv(), Ok(Ok(7))));
    }

    #[test]
    fn requests_of_one_counter_share_an_incrby_in_queue_order() {
        let hot: Arc<str> = Arc::from("hot");
        let cold: Arc<str> = Arc::from("cold");
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        for key in [&hot, &cold, &hot, &hot] {
            let (reply, answer) = oneshot::channel();
            batch.push(Pending {
                key: Arc::clone(key),
                slot: slot(0),
                reply,
            });
            answers.push(answer);
        }
        let part = Part::of(batch);
        assert_eq!(part.counts, vec![3, 1]);
        let keys: Vec<&str> = part.pending.iter().map(|pending| &*pending.key).collect();
        assert_eq!(keys, vec!["hot", "hot", "hot", "cold"]);
        let packed = String::from_utf8(pipeline_of(&part).get_packed_pipeline()).expect("ASCII");
        assert_eq!(
            packed,
            "*3\r\n$6\r\nINCRBY\r\n$3\r\nhot\r\n$1\r\n3\r\n*2\r\n$4\r\nINCR\r\n$4\r\ncold\r\n"
        );
        let counters = Counters::default();
        assert!(!answer(
            part,
            Ok(vec![Value::Int(12), Value::Int(5)]),
            &counters
        ));
        let seqs: Vec<i64> = answers
            .into_iter()
            .map(|answer| match answer.blocking_recv() {
                Ok(Ok(value)) => value,
                other => panic!("no value: {other:?}"),
            })
            .collect();
        // Queue order: hot, cold, hot, hot.
        assert_eq!(seqs, vec![10, 5, 11, 12]);
    }
}
