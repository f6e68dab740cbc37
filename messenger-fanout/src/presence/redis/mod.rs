//! The presence registry on Redis or Redis Cluster, with node leases (feature `redis`).
//!
//! Every socket node of a cluster runs one [`RedisPresence`] with its own node id. The node
//! holds a **lease** in Redis, renewed by a heartbeat; its devices count as online only while
//! the lease is live, so a node that dies (kill -9, lost network) takes its users offline for
//! every other node as soon as its lease lapses, with no cleanup needed first.
//!
//! ```no_run
//! use messenger_core::call;
//! use messenger_core::presence::{LookupPresence, NodeId};
//! use messenger_core::UserId;
//! use messenger_fanout::presence::Presence;
//! use messenger_fanout::presence::redis::{RedisPresence, RedisPresenceConfig};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RedisPresenceConfig::new(
//!     vec!["redis://127.0.0.1:6379/".to_owned()],
//!     NodeId::from("node-1"),
//! );
//! let presence = Presence::new(RedisPresence::connect(config).await?);
//! // Hand `presence` to the node's `Services`; it registers devices as they connect.
//! let online = call(&presence, LookupPresence { users: vec![UserId::new("alice")?] }).await?;
//! # let _ = online;
//! // On shutdown: users of this node go offline at once, the lease is dropped.
//! presence.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Several URLs make it a Redis Cluster client (the URLs are seed nodes).
//! [`presence::connect`](super::connect) builds the same from URLs, as a
//! [`DynPresence`](super::DynPresence).
//!
//! # Keys
//!
//! With the default prefix `messenger` (the braces are Redis Cluster hash tags: each key below
//! lives in one slot, users and nodes spread over the cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `messenger:{u:<user>}:devices` | hash | one field `<node>\|<device>\|<connection>` per connected device, its value the connect time (ms); TTL [`device_ttl`](RedisPresenceConfig::device_ttl) |
//! | `messenger:{n:<node>}:lease` | string | `<expiry ms>\|<incarnation>`, with `PX` = the lease; the node is alive while it exists |
//! | `messenger:{n:<node>}:devices` | set | `<user>\|<field>`: the node's entries, for release and cleanup |
//! | `messenger:{nodes}` | sorted set | node ids scored by lease expiry (ms): `ListNodes`, and what the sweeper scans |
//! | `messenger:{nodes}:sweeper` | string | the sweeper lock (`SET NX PX`, for the shorter of the sweep interval and the lease) |
//! | channel `messenger:presence` | pub/sub | `+<at>\|<user>` (online), `-<at>\|<user>` (offline), `!<node>` (node released) |
//!
//! # Presence changes
//!
//! Registering and unregistering run one Lua script on the user's hash, so the decision
//! "came online" (no other device on a live node) / "went offline" (no device left on a live
//! node) and the `PUBLISH` of the change are atomic per user: changes of one user reach
//! subscribers in the order they happened. In Redis Cluster a `PUBLISH` reaches subscribers
//! on every cluster node, so each registry holds one subscription on one cluster node. The
//! script cannot read other slots (leases), so the registry passes the nodes it knows to be
//! live or dead; when the hash holds an entry of a node it knows nothing about, the script
//! changes nothing and names the node, the registry reads that node's lease and tries again.
//!
//! The feed ([`SubscribePresence`]) is a tokio broadcast channel of capacity
//! [`FEED_CAPACITY`] fed by the subscription. It is best effort: a
//! subscriber that falls behind skips changes; changes published while the subscription is
//! reconnecting (backoff 0.1 s to 5 s) are lost.
//!
//! # Leases
//!
//! [`connect`](RedisPresence::connect) takes the lease at once (waiting up to two leases for
//! an earlier process with the same node id to lapse, then removing the entries that process
//! left, announcing its users offline). The heartbeat renews it every
//! [`heartbeat`](RedisPresenceConfig::heartbeat) (`SET ... PX`) and records the expiry in the
//! sorted set. Other nodes cache a lease's expiry, but only up to that expiry: past it they
//! read the key again, so a lapsed lease is seen at once. A graceful
//! [`release`](RedisPresence::release) publishes `!<node>` so caches drop the node at once.
//! Expiries are wall-clock milliseconds: the nodes' clocks must agree (NTP) to well within a
//! lease.
//!
//! # Failure behaviour
//!
//! - **A node dies**: its lease lapses after at most one lease; from then on look-ups skip
//!   its devices and registrations elsewhere count as "came online". Within one
//!   [`sweep_interval`](RedisPresenceConfig::sweep_interval) a sweeper (one node at a time,
//!   under a `SET NX` lock) removes its entries, announces offline every user left with no
//!   live device, and forgets the node.
//! - **Redis is unreachable**: requests fail with [`ErrorKind::Unavailable`] (or
//!   [`ErrorKind::Timeout`]). When the heartbeat has failed past the lease, the node logs at
//!   error level that it lost its lease: other nodes now treat its users as offline.
//! - **Redis comes back empty** (restart without persistence, `FLUSHALL`, failover that lost
//!   writes): the next heartbeat finds its lease missing, takes it again and re-registers
//!   every device connected to this node (users announced online again). Separately, every
//!   third of [`device_ttl`](RedisPresenceConfig::device_ttl) the node checks each of its
//!   entries (`HEXISTS`) while refreshing the hashes' TTL, and re-registers missing ones.
//! - **A registration fails** (Redis down): the connection keeps working; the device is kept
//!   in the node's list and written back by the next lease re-assertion or entry check. An
//!   unregistration that fails leaves the entry until the node releases or dies.
//! - **The backstop TTL**: a user's hash expires [`device_ttl`](RedisPresenceConfig::device_ttl)
//!   after the last node holding one of its devices refreshed it, in case no sweeper ran.
//!
//! # Costs
//!
//! - Register: two commands (`SADD`, one script), one round trip each; a third plus a lease
//!   read when the user's hash names a node not known yet.
//! - Look-up of N users: one pipeline of N `HKEYS` on a standalone server; on Redis Cluster
//!   one pipeline per primary owning some of the keys, all in flight at once (grouped with the
//!   slot map, `CLUSTER SLOTS`, and the `redis` crate's `Slot::for_key`; a group that meets a
//!   moved slot is sent again alone), then at most one more batch of lease reads for nodes
//!   whose cached expiry passed.
//! - Heartbeat, per node every `heartbeat`: a script on the lease, a `ZADD`, a `ZRANGE` of the
//!   node set.
//! - Entry check, per node every `device_ttl / 3`: `HEXISTS` + `PEXPIRE` per connected device,
//!   pipelined in batches of 1 000 (for 100 000 devices and the default 10 min: 1 000
//!   commands/s).
//! - Sweeper: one `SET NX` per node per `sweep_interval`; a sweep costs a script per entry of
//!   the dead node.

mod cluster;
mod config;
mod error;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use ::redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use futures_util::StreamExt;
use futures_util::future::join_all;
#[cfg(doc)]
use messenger_core::ErrorKind;
use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, OnlineDevice, PresenceChange, PresenceFeed, RegisterDevice,
    SubscribePresence, UnregisterDevice,
};
use messenger_core::{DeviceId, Error, Timestamp, UserId};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use cluster::SlotMap;
pub use config::RedisPresenceConfig;
use error::RedisPresenceError;

use super::{FEED_CAPACITY, PresenceBackend};

/// The backend name errors carry.
const BACKEND: &str = "redis";

/// How many commands one pipeline of the entry check carries.
const CHECK_BATCH: usize = 1000;

/// How many times a change is retried while its user's hash keeps naming unknown nodes.
const CHANGE_ATTEMPTS: usize = 5;

/// Registers (`ARGV[1] = 'r'`) or unregisters (`'u'`) one entry of a user's hash (KEYS[1])
/// and publishes the user's change when it is one.
///
/// ARGV: mode, field, at (ms), TTL (ms), channel, user, number of live nodes L, the L live
/// nodes, then the dead nodes. Answers `{1}` when the user came online / went offline (and
/// publishes it), `{0}` when not, `{-1, node...}` without changing anything when entries of
/// nodes in neither list decide the answer.
const CHANGE: &str = r"
local mode, field = ARGV[1], ARGV[2]
if mode == 'u' and redis.call('HEXISTS', KEYS[1], field) == 0 then
  return {0}
end
local live, dead = {}, {}
local count = tonumber(ARGV[7])
for i = 8, 7 + count do live[ARGV[i]] = true end
for i = 8 + count, #ARGV do dead[ARGV[i]] = true end
local other_live = false
local unknown = {}
for _, entry in ipairs(redis.call('HKEYS', KEYS[1])) do
  if entry ~= field then
    local node = string.match(entry, '^(.*)|[^|]*|[^|]*$')
    if node then
      if live[node] then
        other_live = true
        break
      elseif not dead[node] then
        table.insert(unknown, node)
      end
    end
  end
end
if not other_live and #unknown > 0 then
  table.insert(unknown, 1, -1)
  return unknown
end
local sign
if mode == 'r' then
  redis.call('HSET', KEYS[1], field, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  sign = '+'
else
  redis.call('HDEL', KEYS[1], field)
  sign = '-'
end
if other_live then
  return {0}
end
redis.call('PUBLISH', ARGV[5], sign .. ARGV[3] .. '|' .. ARGV[6])
return {1}
";

/// Renews the lease (KEYS[1]) if this incarnation (ARGV[1]) holds it: value
/// `ARGV[2]|ARGV[1]`, `PX ARGV[3]`. Answers 1 renewed, 0 missing, -1 held by another process.
const RENEW: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
if string.match(value, '|(.*)$') ~= ARGV[1] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[1], 'PX', ARGV[3])
return 1
";

/// Deletes the lease (KEYS[1]) if this incarnation (ARGV[1]) holds it.
const DROP_LEASE: &str = r"
local value = redis.call('GET', KEYS[1])
if value and string.match(value, '|(.*)$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The presence registry on Redis or Redis Cluster, as one node of the cluster uses it.
///
/// Clones share the node's registry (its lease, tasks and feed). The background tasks stop
/// when [`release`](Self::release) is called or the last clone is dropped; a drop without
/// release behaves like a crash (the lease lapses, a sweeper cleans up). See the
/// [module docs](self) for keys, leases and failure behaviour.
#[derive(Clone)]
pub struct RedisPresence {
    inner: Arc<Inner>,
}

/// The connection: one standalone server or a cluster.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Lease expiries (ms) of other nodes, trusted only up to the expiry itself.
type LeaseCache = Mutex<HashMap<NodeId, u64>>;

/// Key names.
#[derive(Debug)]
struct Keys {
    prefix: String,
    nodes: String,
    sweeper: String,
    channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            nodes: format!("{prefix}:{{nodes}}"),
            sweeper: format!("{prefix}:{{nodes}}:sweeper"),
            channel: format!("{prefix}:presence"),
        }
    }

    fn user_devices(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:devices", self.prefix)
    }

    fn node_devices(&self, node: &str) -> String {
        format!("{}:{{n:{node}}}:devices", self.prefix)
    }

    fn lease(&self, node: &str) -> String {
        format!("{}:{{n:{node}}}:lease", self.prefix)
    }
}

/// The field of one entry in a user's hash.
fn field(node: &str, device: &DeviceId, connection: u64) -> String {
    format!("{node}|{device}|{connection}")
}

/// The node and device of a field (the node may itself hold `|`; devices never do).
fn parse_field(field: &str) -> Option<(&str, &str)> {
    let mut parts = field.rsplitn(3, '|');
    let _connection = parts.next()?;
    let device = parts.next()?;
    let node = parts.next()?;
    Some((node, device))
}

/// `values` cut into consecutive groups of `sizes`.
fn split(mut values: Vec<Value>, sizes: &[usize]) -> Vec<Vec<Value>> {
    let mut groups = Vec::with_capacity(sizes.len());
    for size in sizes.iter().rev() {
        let at = values.len().saturating_sub(*size);
        groups.push(values.split_off(at));
    }
    groups.reverse();
    groups
}

/// The expiry of a lease value `<expiry>|<incarnation>`.
fn lease_expiry(value: &str) -> Option<u64> {
    value.split_once('|')?.0.parse().ok()
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a change script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Register,
    Unregister,
}

/// One device this node holds, as it re-registers it.
#[derive(Debug, Clone)]
struct LocalDevice {
    user: UserId,
    at: Timestamp,
}

struct Inner {
    config: RedisPresenceConfig,
    /// Random per process: tells this process's lease from an earlier one with the same id.
    incarnation: String,
    connection: Connection,
    keys: Keys,
    change: Script,
    renew: Script,
    drop_lease: Script,
    cache: Arc<LeaseCache>,
    feed: broadcast::Sender<PresenceChange>,
    /// The devices connected to this node, by field.
    local: Mutex<HashMap<String, LocalDevice>>,
    /// The expiry (ms) of the lease this node last wrote.
    lease_expiry: AtomicU64,
    released: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    /// The cluster's slot map, once read (cluster only).
    slots: Mutex<Option<Arc<SlotMap>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

impl RedisPresence {
    /// Connects to Redis (one URL) or Redis Cluster (several), takes this node's lease and
    /// starts the heartbeat, the subscription and the sweeper.
    ///
    /// When a lease of the same node id is live (a process that just died, or another one
    /// running with the same id), waits up to two leases for it to lapse, then removes the
    /// entries that process left (announcing its users offline).
    ///
    /// # Errors
    /// - [`ErrorKind::InvalidRequest`] for a configuration that cannot work (no URL, braces in
    ///   the prefix or node id, a heartbeat not shorter than the lease, ...).
    /// - [`ErrorKind::Unavailable`] / [`ErrorKind::Timeout`] when Redis cannot be reached.
    /// - [`ErrorKind::Conflict`] when another live process holds this node id's lease.
    ///
    /// # Cancellation safety
    /// Dropping the future may leave this node's lease taken; it lapses after one lease.
    pub async fn connect(config: RedisPresenceConfig) -> Result<Self, Error> {
        if let Some(problem) = config.problem() {
            return Err(RedisPresenceError::Config(problem).into());
        }
        let connection = open(&config).await?;
        let keys = Keys::new(&config.key_prefix);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let cache = Arc::new(LeaseCache::default());
        // Subscribed before the lease is taken, so no change of this node's own is missed.
        let subscription = subscribe_any(&config.urls, &keys.channel).await?;
        let incarnation = {
            use rand::Rng;
            format!("{:016x}", rand::rng().random::<u64>())
        };
        let inner = Arc::new(Inner {
            incarnation,
            connection,
            change: Script::new(CHANGE),
            renew: Script::new(RENEW),
            drop_lease: Script::new(DROP_LEASE),
            cache: Arc::clone(&cache),
            feed: feed.clone(),
            local: Mutex::new(HashMap::new()),
            lease_expiry: AtomicU64::new(0),
            released: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            slots: Mutex::new(None),
            keys,
            config,
        });
        let subscriber = tokio::spawn(relay(
            inner.config.urls.clone(),
            inner.keys.channel.clone(),
            subscription,
            feed,
            cache,
        ));
        // Registered first, so a failure below stops the subscription with the drop.
        inner.add_task(subscriber.abort_handle());
        inner.take_lease_at_start().await?;
        let heartbeat = tokio::spawn(heartbeat(Arc::downgrade(&inner)));
        let sweeper = tokio::spawn(sweeper(Arc::downgrade(&inner)));
        inner.add_task(heartbeat.abort_handle());
        inner.add_task(sweeper.abort_handle());
        Ok(Self { inner })
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.inner.config.node
    }

    /// Whether this node's lease, as last written, is live now: false after the heartbeat
    /// failed for longer than the lease (other nodes then treat this node's users as offline),
    /// and after [`release`](Self::release). For readiness checks.
    pub fn holds_lease(&self) -> bool {
        !self.inner.released.load(Ordering::Acquire)
            && self.inner.lease_expiry.load(Ordering::Acquire) > now_ms()
    }

    /// Graceful shutdown: stops the heartbeat and the sweeper, removes this node's entries
    /// (announcing offline the users left with no device), drops the lease, tells other nodes
    /// (`!<node>` on the channel) and stops the subscription. Later requests fail with
    /// [`ErrorKind::Unavailable`]; a second call does nothing.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] / [`ErrorKind::Timeout`] when Redis cannot be reached; the
    /// tasks are stopped anyway, the lease lapses and a sweeper removes what is left.
    ///
    /// # Cancellation safety
    /// Not cancellation safe: dropped midway, part of the entries are removed; the lease
    /// lapses and a sweeper removes the rest.
    pub async fn release(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let tasks: Vec<AbortHandle> = inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        // The subscription (the first task) stays up until the end: this node's own
        // offline changes still reach its subscribers.
        for task in tasks.iter().skip(1) {
            task.abort();
        }
        let result = inner.release_entries().await;
        for task in &tasks {
            task.abort();
        }
        inner.lease_expiry.store(0, Ordering::Release);
        result
    }
}

impl Inner {
    fn add_task(&self, task: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    fn node(&self) -> &NodeId {
        &self.config.node
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.released.load(Ordering::Acquire) {
            return Err(RedisPresenceError::Released {
                node: self.node().clone(),
            }
            .into());
        }
        Ok(())
    }

    fn check_node(&self, node: &NodeId) -> Result<(), Error> {
        if node != self.node() {
            return Err(RedisPresenceError::ForeignNode {
                ours: self.node().clone(),
                theirs: node.clone(),
            }
            .into());
        }
        Ok(())
    }

    async fn query<T: ::redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        operation: &'static str,
    ) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        let timeout = self.config.lease;
        match tokio::time::timeout(timeout, cmd.query_async(&mut connection)).await {
            Ok(result) => Ok(result.map_err(RedisPresenceError::command(operation))?),
            Err(_) => Err(RedisPresenceError::Elapsed { operation }.into()),
        }
    }

    /// Runs groups of commands, each group on one key, in as few round trips as the
    /// connection allows: one pipeline on a standalone server, one pipeline per cluster node
    /// on a cluster (all in flight at once). Answers each group's replies.
    async fn batch(
        &self,
        groups: Vec<(String, Vec<Cmd>)>,
        operation: &'static str,
    ) -> Result<Vec<Vec<Value>>, Error> {
        let work = async {
            match &self.connection {
                Connection::Standalone(connection) => {
                    let mut pipe = Pipeline::with_capacity(groups.iter().map(|g| g.1.len()).sum());
                    let sizes: Vec<usize> = groups.iter().map(|g| g.1.len()).collect();
                    for cmd in groups.into_iter().flat_map(|g| g.1) {
                        pipe.add_command(cmd);
                    }
                    if pipe.is_empty() {
                        return Ok(sizes.iter().map(|_| Vec::new()).collect());
                    }
                    let values: Vec<Value> = pipe.query_async(&mut connection.clone()).await?;
                    Ok(split(values, &sizes))
                }
                Connection::Cluster(connection) => self.cluster_batch(connection, groups).await,
            }
        };
        match tokio::time::timeout(self.config.lease, work).await {
            Ok(result) => Ok(result.map_err(RedisPresenceError::command(operation))?),
            Err(_) => Err(RedisPresenceError::Elapsed { operation }.into()),
        }
    }

    /// [`batch`](Self::batch) on a cluster: one pipeline per primary that owns some of the
    /// keys (after the slot map), then the groups that met a moved slot one by one.
    async fn cluster_batch(
        &self,
        connection: &ClusterConnection,
        groups: Vec<(String, Vec<Cmd>)>,
    ) -> ::redis::RedisResult<Vec<Vec<Value>>> {
        let map = self.slot_map(connection).await;
        let mut answers: Vec<Option<Vec<Value>>> = vec![None; groups.len()];
        // Groups by owner: the slot to route by, and the indexes of the groups.
        let mut by_owner: HashMap<Arc<str>, (Slot, Vec<usize>)> = HashMap::new();
        for (index, (key, _)) in groups.iter().enumerate() {
            let slot = Slot::for_key(key);
            if let Some(owner) = map.as_ref().and_then(|map| map.owner(slot)) {
                by_owner
                    .entry(Arc::clone(owner))
                    .or_insert_with(|| (slot, Vec::new()))
                    .1
                    .push(index);
            }
        }
        let requests = by_owner.into_values().map(|(slot, indexes)| {
            let mut connection = connection.clone();
            let mut pipe = Pipeline::new();
            let mut sizes = Vec::with_capacity(indexes.len());
            for &index in &indexes {
                sizes.push(groups[index].1.len());
                for cmd in &groups[index].1 {
                    pipe.add_command(cmd.clone());
                }
            }
            async move {
                let count = pipe.len();
                let values = connection
                    .route_pipeline(
                        pipe,
                        0,
                        count,
                        SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                            slot,
                            SlotAddr::Master,
                        )),
                    )
                    .await;
                (indexes, sizes, values)
            }
        });
        let mut moved = false;
        for (indexes, sizes, values) in join_all(requests).await {
            let Ok(values) = values else {
                moved = true;
                continue;
            };
            if values.len() != sizes.iter().sum::<usize>() {
                moved = true;
                continue;
            }
            for (index, replies) in indexes.into_iter().zip(split(values, &sizes)) {
                if replies
                    .iter()
                    .any(|value| matches!(value, Value::ServerError(_)))
                {
                    moved = true;
                } else {
                    answers[index] = Some(replies);
                }
            }
        }
        if moved || map.is_none() {
            // Read the slot map again next time.
            *self.slots.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        // Whatever is left goes one group at a time; the connection follows redirections.
        let retries = answers
            .iter()
            .enumerate()
            .filter(|(_, answer)| answer.is_none())
            .map(|(index, _)| {
                let mut connection = connection.clone();
                let mut pipe = Pipeline::new();
                for cmd in &groups[index].1 {
                    pipe.add_command(cmd.clone());
                }
                async move {
                    if pipe.is_empty() {
                        return (index, Ok(Vec::new()));
                    }
                    (index, pipe.query_async::<Vec<Value>>(&mut connection).await)
                }
            });
        for (index, replies) in join_all(retries).await {
            answers[index] = Some(replies?);
        }
        Ok(answers.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The cluster's slot map, read (`CLUSTER SLOTS`) when not known; `None` when it cannot
    /// be read (batches then go one group at a time).
    async fn slot_map(&self, connection: &ClusterConnection) -> Option<Arc<SlotMap>> {
        if let Some(map) = &*self.slots.lock().unwrap_or_else(PoisonError::into_inner) {
            return Some(Arc::clone(map));
        }
        let reply: Value = ::redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection.clone())
            .await
            .ok()?;
        let map = Arc::new(SlotMap::parse(&reply)?);
        *self.slots.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&map));
        Some(map)
    }

    /// The nodes whose cached lease is live now.
    fn cached_live(&self) -> Vec<NodeId> {
        let now = now_ms();
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, expiry)| **expiry > now)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Splits `nodes` into live and dead ones, reading the lease of every node whose cached
    /// expiry passed or is unknown (one batch).
    async fn resolve(&self, nodes: &HashSet<&str>) -> Result<(Vec<NodeId>, Vec<NodeId>), Error> {
        let now = now_ms();
        let mut live = Vec::new();
        let mut unknown = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for node in nodes {
                match cache.get(*node) {
                    Some(expiry) if *expiry > now => live.push(NodeId::from(*node)),
                    _ if *node == &**self.node()
                        && self.lease_expiry.load(Ordering::Acquire) > now =>
                    {
                        live.push(NodeId::from(*node));
                    }
                    _ => unknown.push(NodeId::from(*node)),
                }
            }
        }
        let mut dead = Vec::new();
        if unknown.is_empty() {
            return Ok((live, dead));
        }
        let groups = unknown
            .iter()
            .map(|node| {
                let key = self.keys.lease(node);
                let get = ::redis::cmd("GET").arg(&key).clone();
                (key, vec![get])
            })
            .collect();
        let replies = self.batch(groups, "lease read").await?;
        let now = now_ms();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for (node, reply) in unknown.into_iter().zip(replies) {
            let expiry = reply
                .into_iter()
                .next()
                .and_then(|value| ::redis::from_redis_value::<Option<String>>(value).ok())
                .flatten()
                .and_then(|value| lease_expiry(&value));
            match expiry {
                Some(expiry) if expiry > now => {
                    cache.insert(node.clone(), expiry);
                    live.push(node);
                }
                _ => dead.push(node),
            }
        }
        Ok((live, dead))
    }

    /// Runs the change script for one entry. `gone` is a node to treat as dead (the node
    /// being swept); otherwise this node counts as live. Answers whether the user came
    /// online (register) or went offline (unregister).
    async fn apply(
        &self,
        mode: Mode,
        user: &UserId,
        field: &str,
        at: Timestamp,
        gone: Option<&NodeId>,
    ) -> Result<bool, Error> {
        let mut live = self.cached_live();
        let mut dead = Vec::new();
        match gone {
            Some(gone) => {
                live.retain(|node| node != gone);
                dead.push(gone.clone());
            }
            None => {
                if !live.contains(self.node()) {
                    live.push(self.node().clone());
                }
            }
        }
        let key = self.keys.user_devices(user.as_str());
        let operation = match mode {
            Mode::Register => "register",
            Mode::Unregister => "unregister",
        };
        for _ in 0..CHANGE_ATTEMPTS {
            let mut invocation = self.change.key(&key);
            invocation
                .arg(match mode {
                    Mode::Register => "r",
                    Mode::Unregister => "u",
                })
                .arg(field)
                .arg(at.as_millis())
                .arg(millis(self.config.device_ttl))
                .arg(&self.keys.channel)
                .arg(user.as_str())
                .arg(live.len());
            for node in live.iter().chain(&dead) {
                invocation.arg(&**node);
            }
            let mut connection = self.connection.clone();
            let reply: Vec<Value> = match tokio::time::timeout(
                self.config.lease,
                invocation.invoke_async(&mut connection),
            )
            .await
            {
                Ok(result) => result.map_err(RedisPresenceError::command(operation))?,
                Err(_) => return Err(RedisPresenceError::Elapsed { operation }.into()),
            };
            let mut reply = reply.into_iter();
            match reply.next() {
                Some(Value::Int(1)) => return Ok(true),
                Some(Value::Int(0)) => return Ok(false),
                Some(Value::Int(-1)) => {
                    let nodes: Vec<String> = reply
                        .filter_map(|value| ::redis::from_redis_value::<String>(value).ok())
                        .collect();
                    let unknown: HashSet<&str> = nodes.iter().map(String::as_str).collect();
                    let (now_live, now_dead) = self.resolve(&unknown).await?;
                    live.extend(now_live);
                    dead.extend(now_dead);
                }
                other => {
                    return Err(RedisPresenceError::UnexpectedReply {
                        operation,
                        reply: format!("{other:?}"),
                    }
                    .into());
                }
            }
        }
        Err(RedisPresenceError::Unsettled { operation }.into())
    }

    async fn register(&self, request: RegisterDevice) -> Result<bool, Error> {
        self.check_open()?;
        self.check_node(&request.node)?;
        let field = field(self.node(), &request.device, request.connection);
        // Kept locally first: if Redis fails now, the lease re-assertion or the entry check
        // writes it later.
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                field.clone(),
                LocalDevice {
                    user: request.user.clone(),
                    at: request.at,
                },
            );
        self.write_entry(&request.user, &field, request.at).await
    }

    /// Indexes and writes one of this node's entries.
    async fn write_entry(&self, user: &UserId, field: &str, at: Timestamp) -> Result<bool, Error> {
        // Indexed before it is written, so release and the sweeper always find it.
        let _: i64 = self
            .query(
                ::redis::cmd("SADD")
                    .arg(self.keys.node_devices(self.node()))
                    .arg(format!("{user}|{field}")),
                "register",
            )
            .await?;
        self.apply(Mode::Register, user, field, at, None).await
    }

    async fn unregister(&self, request: UnregisterDevice) -> Result<bool, Error> {
        self.check_open()?;
        self.check_node(&request.node)?;
        let field = field(self.node(), &request.device, request.connection);
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&field);
        let went_offline = self
            .apply(Mode::Unregister, &request.user, &field, request.at, None)
            .await?;
        let _: i64 = self
            .query(
                ::redis::cmd("SREM")
                    .arg(self.keys.node_devices(self.node()))
                    .arg(format!("{}|{field}", request.user)),
                "unregister",
            )
            .await?;
        Ok(went_offline)
    }

    async fn lookup(&self, request: LookupPresence) -> Result<Vec<OnlineDevice>, Error> {
        let groups = request
            .users
            .iter()
            .map(|user| {
                let key = self.keys.user_devices(user.as_str());
                let hkeys = ::redis::cmd("HKEYS").arg(&key).clone();
                (key, vec![hkeys])
            })
            .collect();
        let replies = self.batch(groups, "lookup").await?;
        let mut entries: Vec<(&UserId, String)> = Vec::new();
        for (user, reply) in request.users.iter().zip(replies) {
            for value in reply {
                let fields: Vec<String> = ::redis::from_redis_value(value).map_err(|err| {
                    RedisPresenceError::UnexpectedReply {
                        operation: "lookup",
                        reply: err.to_string(),
                    }
                })?;
                entries.extend(fields.into_iter().map(|field| (user, field)));
            }
        }
        let nodes: HashSet<&str> = entries
            .iter()
            .filter_map(|(_, field)| parse_field(field).map(|(node, _)| node))
            .collect();
        let (live, _) = self.resolve(&nodes).await?;
        let live: HashSet<&str> = live.iter().map(|node| &**node).collect();
        let mut seen = HashSet::new();
        let mut online = Vec::new();
        for (user, field) in &entries {
            let Some((node, device)) = parse_field(field) else {
                continue;
            };
            if !live.contains(node) || !seen.insert((*user, node, device)) {
                continue;
            }
            let Ok(device) = DeviceId::new(device) else {
                continue;
            };
            online.push(OnlineDevice {
                user: (*user).clone(),
                device,
                node: NodeId::from(node),
            });
        }
        Ok(online)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeId>, Error> {
        let nodes: Vec<String> = self
            .query(
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.keys.nodes)
                    .arg(format!("({}", now_ms()))
                    .arg("+inf"),
                "list nodes",
            )
            .await?;
        Ok(nodes.into_iter().map(NodeId::from).collect())
    }

    /// Waits for an earlier lease of this node id to lapse, removes what it left, takes the
    /// lease.
    async fn take_lease_at_start(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.config.lease * 2;
        loop {
            let holder: Option<String> = self
                .query(
                    ::redis::cmd("GET").arg(self.keys.lease(self.node())),
                    "lease read",
                )
                .await?;
            if holder.is_none() {
                let node = self.node().clone();
                self.remove_entries_of(&node, Timestamp::now()).await?;
                if self.take_lease().await? {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RedisPresenceError::LeaseHeld {
                    node: self.node().clone(),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SET NX` of the lease and its place in the node set; answers whether it was taken.
    async fn take_lease(&self) -> Result<bool, Error> {
        let expiry = now_ms() + millis(self.config.lease);
        let taken: Option<String> = self
            .query(
                ::redis::cmd("SET")
                    .arg(self.keys.lease(self.node()))
                    .arg(format!("{expiry}|{}", self.incarnation))
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.config.lease)),
                "lease take",
            )
            .await?;
        if taken.is_none() {
            return Ok(false);
        }
        self.lease_expiry.store(expiry, Ordering::Release);
        self.record_expiry(expiry).await?;
        Ok(true)
    }

    /// Records this node's lease expiry in the node set and refreshes the cache from it.
    async fn record_expiry(&self, expiry: u64) -> Result<(), Error> {
        let _: i64 = self
            .query(
                ::redis::cmd("ZADD")
                    .arg(&self.keys.nodes)
                    .arg(expiry)
                    .arg(&**self.node()),
                "heartbeat",
            )
            .await?;
        let nodes: Vec<(String, f64)> = self
            .query(
                ::redis::cmd("ZRANGE")
                    .arg(&self.keys.nodes)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
                "heartbeat",
            )
            .await?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for (node, score) in nodes {
            // Scores are whole milliseconds, far below 2^53.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let expiry = score as u64;
            let cached = cache.entry(NodeId::from(node)).or_insert(expiry);
            *cached = (*cached).max(expiry);
        }
        Ok(())
    }

    /// One heartbeat: renews the lease, or takes it again (re-registering every local
    /// device) when Redis lost it. Answers whether it had to re-assert.
    async fn beat(&self) -> Result<bool, Error> {
        let expiry = now_ms() + millis(self.config.lease);
        let mut connection = self.connection.clone();
        let renewed: i64 = match tokio::time::timeout(
            self.config.heartbeat,
            self.renew
                .key(self.keys.lease(self.node()))
                .arg(&self.incarnation)
                .arg(expiry)
                .arg(millis(self.config.lease))
                .invoke_async(&mut connection),
        )
        .await
        {
            Ok(result) => result.map_err(RedisPresenceError::command("heartbeat"))?,
            Err(_) => {
                return Err(RedisPresenceError::Elapsed {
                    operation: "heartbeat",
                }
                .into());
            }
        };
        match renewed {
            1 => {
                self.lease_expiry.store(expiry, Ordering::Release);
                self.record_expiry(expiry).await?;
                Ok(false)
            }
            0 => {
                if !self.take_lease().await? {
                    return Err(RedisPresenceError::LeaseHeld {
                        node: self.node().clone(),
                    }
                    .into());
                }
                self.rewrite_local(None).await?;
                Ok(true)
            }
            _ => Err(RedisPresenceError::LeaseHeld {
                node: self.node().clone(),
            }
            .into()),
        }
    }

    /// Writes this node's local devices back: all of them (`only = None`), or the given
    /// fields. Answers how many were written.
    async fn rewrite_local(&self, only: Option<&HashSet<String>>) -> Result<usize, Error> {
        let devices: Vec<(String, LocalDevice)> = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(field, _)| only.is_none_or(|only| only.contains(*field)))
            .map(|(field, device)| (field.clone(), device.clone()))
            .collect();
        let mut written = 0;
        for (field, device) in devices {
            self.write_entry(&device.user, &field, device.at).await?;
            written += 1;
            // Unregistered meanwhile: take it out again.
            let gone = !self
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&field);
            if gone {
                self.apply(
                    Mode::Unregister,
                    &device.user,
                    &field,
                    Timestamp::now(),
                    None,
                )
                .await?;
            }
        }
        Ok(written)
    }

    /// Refreshes the TTL of the hashes holding this node's devices and writes back the
    /// entries Redis lost. Answers how many were written back.
    async fn check_entries(&self) -> Result<usize, Error> {
        let devices: Vec<(String, UserId)> = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(field, device)| (field.clone(), device.user.clone()))
            .collect();
        let ttl = millis(self.config.device_ttl);
        let mut missing = HashSet::new();
        for chunk in devices.chunks(CHECK_BATCH / 2) {
            let groups = chunk
                .iter()
                .map(|(field, user)| {
                    let key = self.keys.user_devices(user.as_str());
                    let commands = vec![
                        ::redis::cmd("HEXISTS").arg(&key).arg(field).clone(),
                        ::redis::cmd("PEXPIRE").arg(&key).arg(ttl).clone(),
                    ];
                    (key, commands)
                })
                .collect();
            let replies = self.batch(groups, "entry check").await?;
            for ((field, _), reply) in chunk.iter().zip(replies) {
                if reply.first() == Some(&Value::Int(0)) {
                    missing.insert(field.clone());
                }
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        self.rewrite_local(Some(&missing)).await
    }

    /// Removes every entry `node` indexed (announcing offline the users left with no live
    /// device, at `at`) and its index.
    async fn remove_entries_of(&self, node: &NodeId, at: Timestamp) -> Result<usize, Error> {
        let index = self.keys.node_devices(node);
        let members: Vec<String> = self
            .query(::redis::cmd("SMEMBERS").arg(&index), "cleanup")
            .await?;
        let mut removed = 0;
        for member in &members {
            let Some((user, field)) = member.split_once('|') else {
                continue;
            };
            let Ok(user) = UserId::new(user) else {
                continue;
            };
            if self
                .apply(Mode::Unregister, &user, field, at, Some(node))
                .await?
            {
                removed += 1;
            }
        }
        if !members.is_empty() {
            let _: i64 = self
                .query(::redis::cmd("SREM").arg(&index).arg(&members), "cleanup")
                .await?;
        }
        Ok(removed)
    }

    /// One sweeper round: when this node gets the lock, removes the entries of every node
    /// whose lease lapsed and forgets the node.
    async fn sweep(&self) -> Result<(), Error> {
        let locked: Option<String> = self
            .query(
                ::redis::cmd("SET")
                    .arg(&self.keys.sweeper)
                    .arg(&self.incarnation)
                    .arg("NX")
                    .arg("PX")
                    // At most a lease: a node that died holding the lock delays sweeps by
                    // no more than that.
                    .arg(millis(self.config.sweep_interval.min(self.config.lease))),
                "sweep",
            )
            .await?;
        if locked.is_none() {
            return Ok(());
        }
        let now = now_ms();
        let lapsed: Vec<(String, f64)> = self
            .query(
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.keys.nodes)
                    .arg("-inf")
                    .arg(now)
                    .arg("WITHSCORES"),
                "sweep",
            )
            .await?;
        for (node, score) in lapsed {
            let node = NodeId::from(node);
            if &node == self.node() {
                continue;
            }
            if self.lease_is_live(&node).await? {
                continue;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let at = Timestamp(score as u64);
            let removed = self.remove_entries_of(&node, at).await?;
            // Forgotten only if it did not come back meanwhile.
            if !self.lease_is_live(&node).await? {
                let _: i64 = self
                    .query(
                        ::redis::cmd("ZREM").arg(&self.keys.nodes).arg(&*node),
                        "sweep",
                    )
                    .await?;
                self.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&node);
            }
            tracing::info!(node = %node, offline = removed, "swept a node whose lease lapsed");
        }
        Ok(())
    }

    async fn lease_is_live(&self, node: &NodeId) -> Result<bool, Error> {
        let value: Option<String> = self
            .query(::redis::cmd("GET").arg(self.keys.lease(node)), "sweep")
            .await?;
        Ok(value
            .and_then(|value| lease_expiry(&value))
            .is_some_and(|expiry| expiry > now_ms()))
    }

    /// Removes this node's entries, drops its lease and tells the other nodes.
    async fn release_entries(&self) -> Result<(), Error> {
        let local: Vec<(String, LocalDevice)> = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        let now = Timestamp::now();
        for (field, device) in &local {
            self.apply(Mode::Unregister, &device.user, field, now, None)
                .await?;
        }
        // Whatever the index still names (an unregistration that failed earlier).
        let node = self.node().clone();
        self.remove_entries_of(&node, now).await?;
        let _: i64 = self
            .query(
                ::redis::cmd("ZREM").arg(&self.keys.nodes).arg(&*node),
                "release",
            )
            .await?;
        let mut connection = self.connection.clone();
        let _: i64 = self
            .drop_lease
            .key(self.keys.lease(&node))
            .arg(&self.incarnation)
            .invoke_async(&mut connection)
            .await
            .map_err(RedisPresenceError::command("release"))?;
        let _: i64 = self
            .query(
                ::redis::cmd("PUBLISH")
                    .arg(&self.keys.channel)
                    .arg(format!("!{node}")),
                "release",
            )
            .await?;
        Ok(())
    }
}

/// Opens the command connection: standalone for one URL, cluster for several.
async fn open(config: &RedisPresenceConfig) -> Result<Connection, Error> {
    let timeout = config.lease;
    if let [url] = config.urls.as_slice() {
        let client = ::redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map(|info| info.set_tcp_settings(tcp_settings()))
            .and_then(::redis::Client::open)
            .map_err(|err| RedisPresenceError::Config(format!("{}: {err}", config::redact(url))))?;
        let manager = ConnectionManager::new_with_config(
            client,
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
        )
        .await
        .map_err(RedisPresenceError::command("connect"))?;
        Ok(Connection::Standalone(manager))
    } else {
        let client = ::redis::cluster::ClusterClientBuilder::new(config.urls.clone())
            .tcp_settings(tcp_settings())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .map_err(|err| RedisPresenceError::Config(err.to_string()))?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(RedisPresenceError::command("connect"))?;
        Ok(Connection::Cluster(connection))
    }
}

/// `TCP_NODELAY` on every Redis connection: the redis crate leaves Nagle's algorithm on by
/// default, and a small command written while the previous reply's ACK is delayed waits up to
/// ~40 ms (Nagle meeting delayed ACKs), on every register, lookup and heartbeat.
fn tcp_settings() -> ::redis::io::tcp::TcpSettings {
    ::redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A pub/sub connection to `url`, subscribed to `channel`.
async fn subscribe(url: &str, channel: &str) -> ::redis::RedisResult<::redis::aio::PubSub> {
    let info =
        ::redis::IntoConnectionInfo::into_connection_info(url)?.set_tcp_settings(tcp_settings());
    let client = ::redis::Client::open(info)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// A subscription on the first of `urls` that accepts one (a cluster's seed nodes).
async fn subscribe_any(urls: &[String], channel: &str) -> Result<::redis::aio::PubSub, Error> {
    let mut failure = None;
    for url in urls {
        match subscribe(url, channel).await {
            Ok(pubsub) => return Ok(pubsub),
            Err(err) => {
                tracing::warn!(error = %err, url = %config::redact(url), "cannot subscribe to presence changes");
                failure = Some(err);
            }
        }
    }
    Err(match failure {
        Some(err) => RedisPresenceError::command("subscribe")(err),
        None => RedisPresenceError::Config("no Redis URL given".to_owned()),
    }
    .into())
}

/// Feeds the channel's messages to `feed` and the lease cache, re-subscribing with backoff
/// (to the next URL, for a cluster) whenever the subscription drops.
async fn relay(
    urls: Vec<String>,
    channel: String,
    first: ::redis::aio::PubSub,
    feed: broadcast::Sender<PresenceChange>,
    cache: Arc<LeaseCache>,
) {
    let mut subscription = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0usize;
    loop {
        let pubsub = match subscription.take() {
            Some(pubsub) => pubsub,
            None => {
                let url = &urls[attempt % urls.len()];
                attempt += 1;
                match subscribe(url, &channel).await {
                    Ok(pubsub) => {
                        tracing::info!(url = %config::redact(url), "presence subscription restored");
                        // Releases announced while away were missed: trust no cached lease.
                        cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
                        backoff = Duration::from_millis(100);
                        pubsub
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, url = %config::redact(url), "cannot subscribe to presence changes; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let payload = message.get_payload_bytes();
            match parse_message(payload) {
                Some(Message::Change(change)) => {
                    // No subscriber is not an error: nobody watches.
                    let _ = feed.send(change);
                }
                Some(Message::NodeDown(node)) => {
                    cache
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(node.as_str());
                }
                None => tracing::warn!(
                    payload = %String::from_utf8_lossy(payload),
                    "unreadable presence message ignored"
                ),
            }
        }
        tracing::warn!("presence subscription lost; re-subscribing");
    }
}

/// A message on the channel.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Change(PresenceChange),
    NodeDown(String),
}

fn parse_message(payload: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(payload).ok()?;
    let (sign, rest) = text.split_at_checked(1)?;
    let online = match sign {
        "+" => true,
        "-" => false,
        "!" => return Some(Message::NodeDown(rest.to_owned())),
        _ => return None,
    };
    let (at, user) = rest.split_once('|')?;
    Some(Message::Change(PresenceChange {
        user: UserId::new(user).ok()?,
        online,
        at: Timestamp(at.parse().ok()?),
    }))
}

/// Renews the lease every heartbeat; every third of the device TTL, checks this node's
/// entries. Stops when the registry is dropped or released.
async fn heartbeat(registry: Weak<Inner>) {
    let Some(inner) = registry.upgrade() else {
        return;
    };
    let period = inner.config.heartbeat;
    let check_every = inner.config.device_ttl / 3;
    let sweep_interval = inner.config.sweep_interval;
    drop(inner);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut next_check = tokio::time::Instant::now() + check_every;
    let mut lost = false;
    loop {
        ticks.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        if inner.released.load(Ordering::Acquire) {
            return;
        }
        match inner.beat().await {
            Ok(reasserted) => {
                if reasserted {
                    tracing::warn!(
                        node = %inner.node(),
                        "presence lease was missing in Redis (restart, FLUSHALL or lapse): \
                         took it again and re-registered this node's devices"
                    );
                    // A sweeper that saw the lapse may still remove entries just written:
                    // check them again after it had its turn.
                    next_check = tokio::time::Instant::now() + sweep_interval * 2;
                }
                lost = false;
            }
            Err(err) => {
                let expired = inner.lease_expiry.load(Ordering::Acquire) <= now_ms();
                if expired && !lost {
                    lost = true;
                    tracing::error!(
                        node = %inner.node(),
                        error = %err,
                        "LOST THE PRESENCE LEASE: the heartbeat failed for longer than the \
                         lease; other nodes now treat this node's users as offline until \
                         Redis answers again"
                    );
                } else {
                    tracing::warn!(node = %inner.node(), error = %err, "presence heartbeat failed");
                }
            }
        }
        if tokio::time::Instant::now() >= next_check {
            match inner.check_entries().await {
                Ok(0) => {}
                Ok(written) => tracing::warn!(
                    node = %inner.node(),
                    written,
                    "presence entries missing in Redis were written back"
                ),
                Err(err) => tracing::warn!(error = %err, "presence entry check failed"),
            }
            next_check = tokio::time::Instant::now() + check_every;
        }
    }
}

/// Tries to sweep every sweep interval. Stops when the registry is dropped or released.
async fn sweeper(registry: Weak<Inner>) {
    let Some(inner) = registry.upgrade() else {
        return;
    };
    let mut ticks = tokio::time::interval(inner.config.sweep_interval);
    drop(inner);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        if inner.released.load(Ordering::Acquire) {
            return;
        }
        if let Err(err) = inner.sweep().await {
            tracing::warn!(error = %err, "presence sweep failed");
        }
    }
}

impl fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connection = match self.inner.connection {
            Connection::Standalone(_) => "standalone",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisPresence")
            .field("node", self.node())
            .field("connection", &connection)
            .field("config", &self.inner.config)
            .field("holds_lease", &self.holds_lease())
            .finish_non_exhaustive()
    }
}

/// See [`RedisPresence::connect`] and the [module docs](self) for what each request costs
/// and how it fails.
///
/// # Cancellation safety
/// A dropped [`register`](PresenceBackend::register) keeps the device in this node's list:
/// the next lease re-assertion or entry check writes it. A dropped
/// [`unregister`](PresenceBackend::unregister) may leave the entry until the node releases
/// or dies. Reads are cancellation safe.
impl PresenceBackend for RedisPresence {
    async fn register(&self, request: RegisterDevice) -> Result<bool, Error> {
        self.inner.register(request).await
    }

    async fn unregister(&self, request: UnregisterDevice) -> Result<bool, Error> {
        self.inner.unregister(request).await
    }

    async fn lookup(&self, request: LookupPresence) -> Result<Vec<OnlineDevice>, Error> {
        self.inner.lookup(request).await
    }

    async fn subscribe(&self, _request: SubscribePresence) -> Result<PresenceFeed, Error> {
        self.inner.check_open()?;
        Ok(self.inner.feed.subscribe())
    }

    async fn list_nodes(&self, _request: ListNodes) -> Result<Vec<NodeId>, Error> {
        self.inner.list_nodes().await
    }

    /// See [`RedisPresence::release`].
    async fn release(&self) -> Result<(), Error> {
        RedisPresence::release(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_nodes_with_bars() {
        let device = DeviceId::new("phone").unwrap_or_else(|err| panic!("{err}"));
        let entry = field("node|7", &device, 42);
        assert_eq!(parse_field(&entry), Some(("node|7", "phone")));
        assert_eq!(parse_field("garbage"), None);
    }

    #[test]
    fn messages_round_trip() {
        assert_eq!(
            parse_message(b"+1700|alice"),
            Some(Message::Change(PresenceChange {
                user: UserId::new("alice").unwrap_or_else(|err| panic!("{err}")),
                online: true,
                at: Timestamp(1700),
            }))
        );
        assert_eq!(
            parse_message(b"!node-1"),
            Some(Message::NodeDown("node-1".to_owned()))
        );
        for bad in [
            &b""[..],
            b"+",
            b"+x|alice",
            b"-12",
            b"?1|a",
            b"+1|bad user",
            b"\xff",
        ] {
            assert_eq!(parse_message(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lease_values_parse() {
        assert_eq!(lease_expiry("1700|abc"), Some(1700));
        assert_eq!(lease_expiry("abc"), None);
    }
}
