//! The batching task: gathers concurrent fast-path increments, of any conversations, into
//! pipelines.
//!
//! Callers queue a counter key with a oneshot for the answer. The task waits for a free
//! pipeline slot (at most `pipelines_in_flight` are out at once), then takes whatever is
//! queued, up to `max_batch`, and sends it as one pipeline of `INCR`s. There is no timer: a
//! lone caller's request leaves at once; under load the batch is what accumulated while the
//! earlier pipelines were in flight.
//!
//! On Redis Cluster a pipeline must go to one node: the batch is split by node, from a slot
//! map this task reads with `CLUSTER SLOTS` (and reads again when a reply says a slot moved),
//! and each part is routed to the node of its first slot. A command that landed on the wrong
//! node anyway answers `MOVED`/`ASK` without running (so does one answered `TRYAGAIN`). Such
//! requests come back as [`BatchError::NotSent`] and the caller sends them alone, through the
//! client's own redirect logic.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::redis::aio::ConnectionLike;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{ErrorKind, Pipeline, RedisError, RedisResult, ServerErrorKind, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// The number of hash slots of Redis Cluster.
const SLOT_COUNT: u16 = 16_384;

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
    slot: u16,
    reply: oneshot::Sender<Reply>,
}

/// What the batching task has sent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Pipelines sent (on Redis Cluster, one per node a batch touched).
    pub pipelines: u64,
    /// Increments those pipelines carried.
    pub requests: u64,
    /// Increments a pipeline answered without running them (`NOSCRIPT` after a restart,
    /// `MOVED`/`ASK` while slots move, `TRYAGAIN`): each was then sent again alone.
    pub sent_again: u64,
}

/// The counters behind [`BatchStats`].
#[derive(Debug, Default)]
struct Counters {
    pipelines: AtomicU64,
    requests: AtomicU64,
    sent_again: AtomicU64,
}

impl Counters {
    fn record(&self, requests: usize) {
        self.pipelines.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
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
            sent_again: self.counters.sent_again.load(Ordering::Relaxed),
        }
    }

    /// Queues one `INCR` of the counter `key` (in hash slot `slot`) and waits for its answer.
    pub(super) async fn increment(&self, key: Arc<str>, slot: u16) -> Reply {
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
        slots: Option<Vec<u16>>,
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
                self.counters.record(batch.len());
                let counters = Arc::clone(&self.counters);
                let mut connection = connection.clone();
                tokio::spawn(async move {
                    let pipeline = pipeline_of(&batch);
                    let result = connection
                        .req_packed_commands(&pipeline, 0, batch.len())
                        .await;
                    answer(batch, result, &counters);
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
                let mut parts: HashMap<u32, Vec<Pending>> = HashMap::new();
                for pending in batch {
                    let node = match slots {
                        Some(slots) => u32::from(slots[usize::from(pending.slot)]),
                        None => u32::from(pending.slot) + (1 << 16),
                    };
                    parts.entry(node).or_default().push(pending);
                }
                let permit = Arc::new(permit);
                for part in parts.into_values() {
                    self.counters.record(part.len());
                    let mut connection = connection.clone();
                    let stale = Arc::clone(stale);
                    let permit = Arc::clone(&permit);
                    let counters = Arc::clone(&self.counters);
                    tokio::spawn(async move {
                        let pipeline = pipeline_of(&part);
                        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(
                            part[0].slot,
                            SlotAddr::Master,
                        ));
                        let result = connection
                            .route_pipeline(pipeline, 0, part.len(), route)
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

/// One `INCR <key>` per pending increment.
fn pipeline_of(batch: &[Pending]) -> Pipeline {
    let mut pipeline = Pipeline::with_capacity(batch.len());
    for pending in batch {
        pipeline.cmd("INCR").arg(&*pending.key);
    }
    pipeline
}

/// Answers every pending increment from the pipeline's result; true when a reply suggests the
/// cluster's slots moved (or a node failed).
fn answer(batch: Vec<Pending>, result: RedisResult<Vec<Value>>, counters: &Counters) -> bool {
    match result {
        Ok(values) if values.len() == batch.len() => {
            let mut moved = false;
            for (pending, value) in batch.into_iter().zip(values) {
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
                        "INCR answered a non-integer",
                        format!("{other:?}"),
                    ))))),
                };
                if matches!(reply, Err(BatchError::NotSent)) {
                    counters.sent_again.fetch_add(1, Ordering::Relaxed);
                }
                // A caller that gave up no longer listens; nothing to do.
                let _ = pending.reply.send(reply);
            }
            moved
        }
        Ok(values) => {
            let error = Arc::new(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "a pipeline answered the wrong number of replies",
                format!("{} for {} commands", values.len(), batch.len()),
            )));
            fail(batch, &error);
            false
        }
        Err(error) => {
            fail(batch, &Arc::new(error));
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
async fn read_slot_map(connection: &mut ClusterConnection) -> Option<Vec<u16>> {
    let reply: Value = ::redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await
        .ok()?;
    slot_map_of(reply)
}

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, ...], replicas...], ...]`.
/// Slots the reply does not cover keep a node of their own.
fn slot_map_of(reply: Value) -> Option<Vec<u16>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut nodes: HashMap<(Vec<u8>, i64), u16> = HashMap::new();
    let unassigned = u16::MAX;
    let mut map = vec![unassigned; usize::from(SLOT_COUNT)];
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
        let start = usize::try_from(*start).ok()?;
        let end = usize::try_from(*end).ok()?;
        for slot in map.get_mut(start..=end)? {
            *slot = node;
        }
    }
    Some(map)
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&byte| byte == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&byte| byte == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOT_COUNT
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag hashes the whole key.
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16_384);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(
            slot_of(b"messenger:{g:a}:seq"),
            slot_of(b"messenger:{g:a}:epoch")
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
        assert_eq!(map[0], map[5460]);
        assert_ne!(map[5460], map[5461]);
        assert_eq!(map[5461], map[16383]);
        assert!(slot_map_of(Value::Int(1)).is_none());
    }

    #[test]
    fn server_errors_are_answered_per_request() {
        let (moved_reply, moved) = oneshot::channel();
        let (ok_reply, ok) = oneshot::channel();
        let batch = vec![
            Pending {
                key: Arc::from("a"),
                slot: 0,
                reply: moved_reply,
            },
            Pending {
                key: Arc::from("b"),
                slot: 0,
                reply: ok_reply,
            },
        ];
        let moved_error =
            ::redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:7002\r\n").expect("a server error");
        let counters = Counters::default();
        assert!(answer(
            batch,
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
}
