//! The Kafka fanout: many socket nodes, one Kafka topic per node (feature `kafka`), and the
//! Kafka topic of domain events ([`KafkaEventSink`]).
//!
//! Every node creates its own topic (`messenger.node.<node id>`, one partition) when it
//! starts and is the only one to consume it. To deliver an event, a node hands it to its own
//! connections, asks the presence registry where the other recipients are (one
//! [`LookupPresence`] call for all of them), and produces **one envelope per remote node**,
//! not one per device: `{"v":1,"users":[...],"event":{...}}` on that node's topic, which
//! hands it to its own connections of those users.
//!
//! ```no_run
//! # use messenger_core::presence::{ListNodes, LookupPresence, NodeId};
//! # use messenger_core::fanout::LocalDelivery;
//! # use messenger_core::Handles;
//! use messenger_fanout::kafka::{KafkaFanout, KafkaFanoutConfig};
//! use messenger_fanout::Fanout;
//!
//! # async fn run<D: LocalDelivery, P: Handles<LookupPresence> + Handles<ListNodes>>(
//! #     hub: D, presence: P,
//! # ) -> Result<(), messenger_core::Error> {
//! // `hub`: this node's connections; `presence`: the cluster's presence registry (Redis).
//! let config = KafkaFanoutConfig::new("127.0.0.1:19092", NodeId::from("node-1"));
//! let fanout = Fanout::new(KafkaFanout::start(config, hub, presence).await?);
//! // ... serve; `fanout` is a `FanoutService` ...
//! fanout.backend().shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Ordering
//!
//! A node's topic has one partition, so envelopes from one producer arrive in the order it
//! produced them; the producer is idempotent, so a retry never reorders or duplicates them.
//! Calls issued one after the other by one node keep their order on every receiving node.
//! Envelopes from different producers interleave in any order; the receiving connection's
//! per-conversation in-order delivery (hold seq N+1 until N, fill holes from the store) puts
//! them right.
//!
//! # Producer settings, and why
//!
//! - `acks=all`: the broker acknowledges an envelope once every in-sync replica has it, so an
//!   acknowledged envelope survives the loss of the leader.
//! - `enable.idempotence=true`: retries after a lost acknowledgement neither duplicate nor
//!   reorder envelopes (it also caps in-flight requests at 5 per broker, which idempotence
//!   keeps ordered). An idempotent producer depends on state the broker keeps for it; when a
//!   broker loses that state (a restart without it) the producer may fail fatally or wait
//!   forever for a new producer id (seen on tansu). The fanout then replaces its producer:
//!   on a fatal error, or when a delivery times out and the broker has acknowledged nothing
//!   for a whole `delivery_timeout` (counted in [`KafkaFanoutStats::producer_replacements`]).
//! - `linger.ms` = [`KafkaFanoutConfig::linger`] (1 ms): a lone envelope leaves at once;
//!   under load envelopes batch anyway while they queue.
//! - `message.timeout.ms` = [`KafkaFanoutConfig::delivery_timeout`] (5 s): a delivery fails
//!   with a timeout after that, instead of librdkafka's 5 minutes.
//! - `allow.auto.create.topics=false` on every client: producing to the topic of a node that
//!   is gone must not re-create it on a broker with `auto.create.topics.enable`.
//! - `reconnect.backoff.max.ms=1000`: after a broker restart clients reconnect within a
//!   second rather than librdkafka's 10.
//!
//! # Failures
//!
//! A produce that fails (broker down, topic of a node that is restarting or gone, timeout)
//! makes [`deliver_event`](KafkaFanout::deliver_event) return an error after the local
//! connections and the other nodes got the event. Nothing is lost for good: the message is
//! already in the store (the sender was acknowledged after the append), and a device that
//! missed it fetches it on its next gap or reconnect.
//!
//! A supervisor task per node keeps its consumer running: every
//! [`topic_check_interval`](KafkaFanoutConfig::topic_check_interval) it checks that its topic
//! still exists; a topic that vanished (a broker that lost its data, a cleanup by a node that
//! thought this one dead) is re-created and consumed from its beginning, with a backoff
//! between failed attempts. Producers to it get errors until it is back. Envelopes that were
//! in the vanished topic and not yet consumed are lost with it (the store has them).
//!
//! Each node also deletes the topics of dead nodes every
//! [`cleanup_interval`](KafkaFanoutConfig::cleanup_interval): topics with the prefix whose
//! node is not in [`ListNodes`], once they have been seen so for
//! [`dead_topic_grace`](KafkaFanoutConfig::dead_topic_grace).
//!
//! # Measured
//!
//! `examples/kafka_fanout_bench.rs` (two nodes in one process, tansu 0.6.0 with memory
//! storage on the same busy 2-core machine, release build, 2026-11-28): 64 concurrent
//! delivering tasks 19 000 envelopes/s, produce→consume p50 9 ms, p99 22–25 ms; 256 tasks
//! 74 000 envelopes/s, p50 7 ms, p99 19 ms (each call awaits the broker's acknowledgement,
//! so throughput grows with calls in flight). One delivery at a time: acknowledgement p50
//! 1.7 ms, produce→consume p50 7 ms but p99 ~435 ms, because tansu now and then holds a
//! fetch for ~500 ms (seen with a bare rdkafka consumer too, whatever `fetch.wait.max.ms`);
//! measure again on the production broker.
//!
//! # Brokers
//!
//! In production run Apache Kafka, Redpanda or another Kafka-compatible broker, with
//! replication. The tests run on tansu (`scripts/kafka.sh`); nothing here depends on it: a
//! node reads its own fresh topic from offset 0 and never relies on high watermarks, consumer
//! groups, committed offsets or transactions.

mod config;
mod envelope;
mod error;
mod events;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use messenger_core::fanout::{Deliver, DeliveryReport, LocalDelivery};
use messenger_core::presence::{ListNodes, LookupPresence, NodeId};
use messenger_core::{Error, Handles, UserId, call};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::config::{KafkaEventSinkConfig, KafkaFanoutConfig};
use self::error::KafkaFanoutError;
pub use self::events::{
    KafkaEventSink, KafkaEventSinkStats, decode_event, encode_event, event_key,
};

use crate::FanoutBackend;

/// The backend name errors carry.
const BACKEND: &str = "kafka";

/// The first pause of the supervisor after a failure; it doubles up to
/// [`KafkaFanoutConfig::max_backoff`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Counters of one node's fanout, since it started (see [`KafkaFanout::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaFanoutStats {
    /// Envelopes produced to other nodes and acknowledged by the broker.
    pub envelopes_sent: u64,
    /// Envelopes whose produce failed.
    pub envelopes_failed: u64,
    /// Envelopes consumed from this node's topic and handed to its connections.
    pub envelopes_received: u64,
    /// Records of this node's topic refused: malformed, or of an unknown version.
    pub envelopes_refused: u64,
    /// Errors the consumer reported (it retries by itself).
    pub consumer_errors: u64,
    /// Times this node found its topic gone and created it again.
    pub topic_recreations: u64,
    /// Topics of dead nodes this node deleted.
    pub dead_topics_deleted: u64,
    /// Times the producer was found unusable and replaced.
    pub producer_replacements: u64,
}

#[derive(Default)]
struct Counters {
    envelopes_sent: AtomicU64,
    envelopes_failed: AtomicU64,
    envelopes_received: AtomicU64,
    envelopes_refused: AtomicU64,
    consumer_errors: AtomicU64,
    topic_recreations: AtomicU64,
    dead_topics_deleted: AtomicU64,
    producer_replacements: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Delivers across nodes through Kafka: one topic per node, one envelope per remote node.
///
/// Wrap it in [`Fanout`](crate::Fanout) to get a tower service. See the [module
/// docs](self) for ordering, the producer settings and failure behaviour.
pub struct KafkaFanout<D, P> {
    shared: Arc<Shared<D, P>>,
    /// `true` stops the background tasks; dropping it stops them too.
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared<D, P> {
    config: KafkaFanoutConfig,
    /// This node's topic.
    topic: String,
    delivery: D,
    presence: P,
    /// With its generation; replaced when it is unusable (see `recover_producer`).
    producer: RwLock<(u64, FutureProducer)>,
    /// When this node started; the origin of `last_acknowledged`.
    started: Instant,
    /// When the broker last acknowledged an envelope, in milliseconds since `started`.
    last_acknowledged: AtomicU64,
    admin: AdminClient<DefaultClientContext>,
    counters: Counters,
}

impl<D, P> KafkaFanout<D, P>
where
    D: LocalDelivery,
    P: Handles<LookupPresence> + Handles<ListNodes>,
{
    /// Creates this node's topic afresh (deleting a leftover of an earlier run, whose
    /// envelopes are stale), starts consuming it into `delivery`, and starts the supervisor
    /// and the dead-topic cleanup. Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRequest`](messenger_core::ErrorKind::InvalidRequest) for a bad
    /// configuration; [`ErrorKind::Unavailable`](messenger_core::ErrorKind::Unavailable) or
    /// [`ErrorKind::Timeout`](messenger_core::ErrorKind::Timeout) when the brokers cannot be
    /// reached or refuse to create the topic.
    ///
    /// # Cancellation safety
    /// Dropping the future may leave this node's topic created and unconsumed; the next start
    /// replaces it, or the dead-topic cleanup of another node deletes it.
    pub async fn start(config: KafkaFanoutConfig, delivery: D, presence: P) -> Result<Self, Error> {
        config.validate().map_err(KafkaFanoutError::Config)?;
        let topic = config.node_topic(&config.node);
        let producer = producer(&config)?;
        let admin: AdminClient<DefaultClientContext> =
            base_config(&config.brokers, &config.client_settings)
                .create()
                .map_err(|source| KafkaFanoutError::Client {
                    what: "admin client",
                    source,
                })?;
        let shared = Arc::new(Shared {
            config,
            topic,
            delivery,
            presence,
            producer: RwLock::new((0, producer)),
            started: Instant::now(),
            last_acknowledged: AtomicU64::new(0),
            admin,
            counters: Counters::default(),
        });
        shared.create_fresh_topic().await?;
        // Fail now on a configuration librdkafka refuses, rather than in the supervisor.
        let consumer = shared.consumer()?;
        let (stop, _) = watch::channel(false);
        let supervisor = tokio::spawn(Arc::clone(&shared).supervise(consumer, stop.subscribe()));
        let cleanup = tokio::spawn(Arc::clone(&shared).clean_up_dead_topics(stop.subscribe()));
        Ok(Self {
            shared,
            stop,
            tasks: Mutex::new(vec![supervisor, cleanup]),
        })
    }

    /// Hands `request.event` to this node's connections of the recipients, and one envelope
    /// to every other node holding any of them. The report counts local connections and the
    /// remote nodes whose envelope the broker acknowledged.
    ///
    /// # Errors
    /// The presence registry's error when the look-up fails (local connections were served
    /// before it). When any envelope fails:
    /// [`ErrorKind::Unavailable`](messenger_core::ErrorKind::Unavailable) (broker down,
    /// topic of a restarting or dead node), [`ErrorKind::Timeout`](messenger_core::ErrorKind::Timeout)
    /// (not acknowledged within [`KafkaFanoutConfig::delivery_timeout`]) or
    /// [`ErrorKind::Overloaded`](messenger_core::ErrorKind::Overloaded) (the producer queue
    /// is full), after every other node was tried. The devices that missed the event catch up
    /// from the store.
    ///
    /// # Cancellation safety
    /// Envelopes are queued in the producer before the first await on them, so dropping the
    /// future after that does not recall them: they are delivered, or fail unseen.
    pub async fn deliver_event(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        self.shared.deliver(request).await
    }

    /// Stops consuming, stops the background tasks and deletes this node's topic, so other
    /// nodes' envelopes to it fail at once instead of piling up. Call it when the node drains
    /// (after its connections are gone); other nodes stop routing to it when its presence
    /// entries go. Failures to delete are logged: the dead-topic cleanup of another node
    /// deletes it later.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "a kafka fanout task ended abnormally");
            }
        }
        if let Err(err) = self
            .shared
            .delete_topics(&[self.shared.topic.as_str()])
            .await
        {
            tracing::warn!(topic = %self.shared.topic, error = %err, "deleting this node's topic failed");
        }
    }
}

impl<D, P> KafkaFanout<D, P> {
    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.shared.config.node
    }

    /// The topic this node consumes.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &KafkaFanoutConfig {
        &self.shared.config
    }

    /// The connections it delivers to.
    pub fn delivery(&self) -> &D {
        &self.shared.delivery
    }

    /// Its counters so far.
    pub fn stats(&self) -> KafkaFanoutStats {
        let counters = &self.shared.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        KafkaFanoutStats {
            envelopes_sent: read(&counters.envelopes_sent),
            envelopes_failed: read(&counters.envelopes_failed),
            envelopes_received: read(&counters.envelopes_received),
            envelopes_refused: read(&counters.envelopes_refused),
            consumer_errors: read(&counters.consumer_errors),
            topic_recreations: read(&counters.topic_recreations),
            dead_topics_deleted: read(&counters.dead_topics_deleted),
            producer_replacements: read(&counters.producer_replacements),
        }
    }
}

impl<D, P> FanoutBackend for KafkaFanout<D, P>
where
    D: LocalDelivery,
    P: Handles<LookupPresence> + Handles<ListNodes>,
{
    /// See [`KafkaFanout::deliver_event`].
    async fn deliver(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        self.deliver_event(request).await
    }

    /// See [`KafkaFanout::shutdown`].
    async fn shutdown(&self) {
        KafkaFanout::shutdown(self).await;
    }
}

impl<D, P> fmt::Debug for KafkaFanout<D, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaFanout")
            .field("config", &self.shared.config)
            .field("topic", &self.shared.topic)
            .field("delivery", &std::any::type_name::<D>())
            .field("presence", &std::any::type_name::<P>())
            .field("stats", &self.stats())
            .finish()
    }
}

/// What ended a consumer's run.
enum Ended {
    Stopped,
    TopicGone,
}

impl<D, P> Shared<D, P>
where
    D: LocalDelivery,
    P: Handles<LookupPresence> + Handles<ListNodes>,
{
    async fn deliver(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        let recipients = unique(&request.recipients);
        if recipients.is_empty() {
            return Ok(DeliveryReport::default());
        }
        // This node's connections first, from the hub itself: it knows them better than a
        // registry that may lag behind a device that just connected.
        let local_connections = self.delivery.deliver_local(&recipients, &request.event);
        let online = call(&self.presence, LookupPresence { users: recipients }).await?;
        let mut by_node: BTreeMap<NodeId, BTreeSet<UserId>> = BTreeMap::new();
        for device in online {
            if device.node != self.config.node {
                by_node.entry(device.node).or_default().insert(device.user);
            }
        }
        if by_node.is_empty() {
            return Ok(DeliveryReport {
                local_connections,
                remote_nodes: 0,
            });
        }

        // Queue every envelope before waiting for any: they travel concurrently.
        // Serialized once, whatever the number of nodes.
        let event =
            envelope::EncodedEvent::new(&request.event).map_err(KafkaFanoutError::Encode)?;
        let (generation, producer) = self.producer();
        let mut queued = Vec::with_capacity(by_node.len());
        for (node, users) in by_node {
            let users: Vec<UserId> = users.into_iter().collect();
            let topic = self.config.node_topic(&node);
            let delivery = match envelope::encode(&users, &event).map_err(KafkaFanoutError::Encode)
            {
                Ok(payload) => producer
                    .send_result(
                        FutureRecord::<(), [u8]>::to(&topic)
                            .partition(0)
                            .payload(&payload),
                    )
                    .map_err(|(source, _)| KafkaFanoutError::Produce {
                        topic: topic.clone(),
                        source,
                    }),
                Err(err) => Err(err),
            };
            queued.push((topic, delivery));
        }
        let nodes = queued.len();
        let mut sent = 0;
        let mut failures = Vec::new();
        for (topic, delivery) in queued {
            let outcome = match delivery {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((source, _))) => Err(KafkaFanoutError::Produce { topic, source }),
                    Err(_) => Err(KafkaFanoutError::ProduceCanceled { topic }),
                },
                Err(err) => Err(err),
            };
            match outcome {
                Ok(()) => sent += 1,
                Err(err) => failures.push(err),
            }
        }
        bump(&self.counters.envelopes_sent, sent as u64);
        if sent > 0 {
            self.last_acknowledged
                .fetch_max(self.millis_since_start(), Ordering::Relaxed);
        }
        bump(&self.counters.envelopes_failed, failures.len() as u64);
        let failed = failures.len();
        let Some(first) = failures.into_iter().next() else {
            return Ok(DeliveryReport {
                local_connections,
                remote_nodes: sent,
            });
        };
        let timed_out = failures_timed_out(&first);
        self.recover_producer(generation, &producer, timed_out);
        Err(if nodes == 1 {
            first.into()
        } else {
            KafkaFanoutError::PartialDelivery {
                failed,
                nodes,
                first: Box::new(first),
            }
            .into()
        })
    }

    fn producer(&self) -> (u64, FutureProducer) {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Replaces the producer after a failure when it is unusable:
    ///
    /// - librdkafka reports a fatal error (an idempotent producer whose state the broker
    ///   lost can end up there);
    /// - or the failure is a timeout and the broker has acknowledged nothing for a whole
    ///   [`KafkaFanoutConfig::delivery_timeout`]: an idempotent producer whose broker
    ///   restarted without its producer state can wait for a producer id forever (seen on
    ///   tansu). A single dead node's topic does not trigger it while other envelopes go
    ///   through; when every envelope fails, one replacement per timeout period is cheap.
    ///
    /// Envelopes still queued in the old producer fail with it.
    fn recover_producer(&self, generation: u64, used: &FutureProducer, timed_out: bool) {
        let fatal = used.client().fatal_error();
        let silent_for = self
            .millis_since_start()
            .saturating_sub(self.last_acknowledged.load(Ordering::Relaxed));
        let stalled =
            timed_out && u128::from(silent_for) >= self.config.delivery_timeout.as_millis();
        if fatal.is_none() && !stalled {
            return;
        }
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            return; // Another caller replaced it already.
        }
        match producer(&self.config) {
            Ok(fresh) => {
                tracing::warn!(fatal = ?fatal, stalled, "replacing the kafka producer");
                *current = (generation + 1, fresh);
                // Give the new one a full period before judging it.
                self.last_acknowledged
                    .store(self.millis_since_start(), Ordering::Relaxed);
                bump(&self.counters.producer_replacements, 1);
            }
            Err(err) => tracing::warn!(error = %err, "creating a new kafka producer failed"),
        }
    }

    /// Keeps this node's consumer running until stopped: when its topic vanishes, creates it
    /// again and consumes it from the beginning; backs off between failures.
    async fn supervise(self: Arc<Self>, first: StreamConsumer, mut stop: watch::Receiver<bool>) {
        let mut consumer = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            let current = match consumer.take() {
                Some(consumer) => consumer,
                None => {
                    let attempt = match self.create_topic().await {
                        Ok(_) => self.consumer(),
                        Err(err) => Err(err),
                    };
                    match attempt {
                        Ok(consumer) => consumer,
                        Err(err) => {
                            tracing::warn!(topic = %self.topic, error = %err, "re-creating this node's topic or consumer failed; retrying");
                            if pause(backoff, &mut stop).await {
                                return;
                            }
                            backoff = (backoff * 2).min(self.config.max_backoff.max(MIN_BACKOFF));
                            continue;
                        }
                    }
                }
            };
            match self.consume(&current, &mut stop).await {
                Ended::Stopped => return,
                Ended::TopicGone => {
                    bump(&self.counters.topic_recreations, 1);
                    tracing::warn!(topic = %self.topic, "this node's topic is gone; creating it again");
                    backoff = MIN_BACKOFF;
                }
            }
        }
    }

    /// Hands every envelope of this node's topic to the local connections until stopped or
    /// until the topic is found gone.
    async fn consume(
        self: &Arc<Self>,
        consumer: &StreamConsumer,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        // The check runs beside the consumer, so a slow metadata answer never holds up
        // envelopes.
        let watchdog = self.until_topic_gone();
        tokio::pin!(watchdog);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return Ended::Stopped,
                () = &mut watchdog => return Ended::TopicGone,
                received = consumer.recv() => match received {
                    Ok(record) => self.receive(record.payload()),
                    Err(err) => {
                        bump(&self.counters.consumer_errors, 1);
                        tracing::debug!(topic = %self.topic, error = %err, "kafka consumer error");
                        // librdkafka retries by itself; do not spin on a stream of errors.
                        if pause(MIN_BACKOFF, stop).await {
                            return Ended::Stopped;
                        }
                    }
                },
            }
        }
    }

    /// Returns once this node's topic is found missing, checking every
    /// `topic_check_interval`.
    async fn until_topic_gone(self: &Arc<Self>) {
        let mut check = tokio::time::interval(
            self.config
                .topic_check_interval
                .max(Duration::from_millis(10)),
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            check.tick().await;
            match self.topic_exists().await {
                Ok(false) => return,
                Ok(true) => {}
                // The broker is unreachable: nothing to decide until it answers.
                Err(err) => {
                    tracing::debug!(topic = %self.topic, error = %err, "checking this node's topic failed");
                }
            }
        }
    }

    fn receive(&self, payload: Option<&[u8]>) {
        match envelope::decode(payload.unwrap_or_default()) {
            Ok(envelope) => {
                bump(&self.counters.envelopes_received, 1);
                self.delivery
                    .deliver_local(&envelope.users, &envelope.event);
            }
            Err(err) => {
                bump(&self.counters.envelopes_refused, 1);
                tracing::warn!(topic = %self.topic, error = %err, "refused a record of this node's topic");
            }
        }
    }

    /// Every `cleanup_interval`, deletes the topics with our prefix whose node has not been in
    /// `ListNodes` for `dead_topic_grace`.
    async fn clean_up_dead_topics(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut orphans: HashMap<String, Instant> = HashMap::new();
        loop {
            if pause(self.config.cleanup_interval, &mut stop).await {
                return;
            }
            if let Err(err) = self.clean_up_once(&mut orphans).await {
                tracing::debug!(error = %err, "the dead-topic cleanup failed; trying again later");
            }
        }
    }

    async fn clean_up_once(
        self: &Arc<Self>,
        orphans: &mut HashMap<String, Instant>,
    ) -> Result<(), Error> {
        let live: HashSet<NodeId> = call(&self.presence, ListNodes).await?.into_iter().collect();
        let topics = self.list_topics().await?;
        let now = Instant::now();
        let mut still_orphaned = HashMap::new();
        let mut dead = Vec::new();
        for topic in topics {
            let Some(node) = self.config.topic_node(&topic) else {
                continue;
            };
            if node == self.config.node || live.contains(&node) {
                continue;
            }
            let since = orphans.get(&topic).copied().unwrap_or(now);
            if now.duration_since(since) >= self.config.dead_topic_grace {
                dead.push(topic);
            } else {
                still_orphaned.insert(topic, since);
            }
        }
        *orphans = still_orphaned;
        if dead.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = dead.iter().map(String::as_str).collect();
        let deleted = self.delete_topics(&names).await?;
        bump(&self.counters.dead_topics_deleted, deleted as u64);
        tracing::info!(topics = ?dead, deleted, "deleted the topics of dead nodes");
        Ok(())
    }
}

impl<D: Send + Sync, P: Send + Sync> Shared<D, P> {
    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.config.admin_timeout))
            .operation_timeout(Some(self.config.admin_timeout))
    }

    /// Deletes a leftover of this node's topic, then creates it; retries while the broker
    /// still reports the old one.
    async fn create_fresh_topic(&self) -> Result<(), KafkaFanoutError> {
        self.delete_topics(&[self.topic.as_str()]).await?;
        let deadline = Instant::now() + self.config.admin_timeout;
        loop {
            if self.create_topic().await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(KafkaFanoutError::TopicRefused {
                    operation: "creation",
                    topic: self.topic.clone(),
                    code: RDKafkaErrorCode::TopicAlreadyExists,
                });
            }
            tokio::time::sleep(MIN_BACKOFF).await;
        }
    }

    /// Creates this node's topic: `Ok(true)` when created, `Ok(false)` when it exists.
    async fn create_topic(&self) -> Result<bool, KafkaFanoutError> {
        let retention = config::millis(self.config.topic_retention);
        let topic = NewTopic::new(
            &self.topic,
            1,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("retention.ms", &retention);
        let results = self
            .admin
            .create_topics([&topic], &self.admin_options())
            .await
            .map_err(|source| KafkaFanoutError::Admin {
                operation: "creation",
                topic: self.topic.clone(),
                source,
            })?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((topic, code)) => {
                    return Err(KafkaFanoutError::TopicRefused {
                        operation: "creation",
                        topic,
                        code,
                    });
                }
            }
        }
        Ok(true)
    }

    /// Deletes topics; a topic that does not exist is not an error. Answers how many were
    /// deleted.
    async fn delete_topics(&self, topics: &[&str]) -> Result<usize, KafkaFanoutError> {
        let results = self
            .admin
            .delete_topics(topics, &self.admin_options())
            .await
            .map_err(|source| KafkaFanoutError::Admin {
                operation: "deletion",
                topic: topics.join(","),
                source,
            })?;
        let mut deleted = 0;
        for result in results {
            match result {
                Ok(_) => deleted += 1,
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(KafkaFanoutError::TopicRefused {
                        operation: "deletion",
                        topic,
                        code,
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// A consumer of this node's topic, from its beginning, with no consumer group: manual
    /// assignment, no commits (a node always reads a topic it created fresh).
    fn consumer(&self) -> Result<StreamConsumer, KafkaFanoutError> {
        let mut config = base_config(&self.config.brokers, &[]);
        config
            // librdkafka refuses an assignment without a group id. The group is never
            // joined (no subscribe) and nothing is committed to it.
            .set("group.id", format!("{}.consumer", self.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only after a reset the consumer could not avoid (retention): never skip ahead.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", config::millis(self.config.fetch_wait))
            .set("fetch.error.backoff.ms", "100");
        apply(&mut config, &self.config.client_settings);
        let consumer: StreamConsumer =
            config.create().map_err(|source| KafkaFanoutError::Client {
                what: "consumer",
                source,
            })?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, 0, Offset::Beginning)
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|source| KafkaFanoutError::Admin {
                operation: "assignment",
                topic: self.topic.clone(),
                source,
            })?;
        Ok(consumer)
    }
}

impl<D: Send + Sync + 'static, P: Send + Sync + 'static> Shared<D, P> {
    /// Whether this node's topic exists, from fresh broker metadata.
    async fn topic_exists(self: &Arc<Self>) -> Result<bool, KafkaFanoutError> {
        let shared = Arc::clone(self);
        blocking(&self.topic, move || {
            let metadata = shared.admin.inner().fetch_metadata(
                Some(&shared.topic),
                Timeout::After(shared.config.admin_timeout),
            )?;
            Ok(metadata.topics().iter().any(|topic| {
                topic.name() == shared.topic
                    && topic.error().map(RDKafkaErrorCode::from)
                        != Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            }))
        })
        .await
    }

    /// Every topic of the cluster.
    async fn list_topics(self: &Arc<Self>) -> Result<Vec<String>, KafkaFanoutError> {
        let shared = Arc::clone(self);
        blocking("*", move || {
            let metadata = shared
                .admin
                .inner()
                .fetch_metadata(None, Timeout::After(shared.config.admin_timeout))?;
            Ok(metadata
                .topics()
                .iter()
                .map(|topic| topic.name().to_owned())
                .collect())
        })
        .await
    }
}

/// Runs a blocking metadata request off the async workers.
async fn blocking<T: Send + 'static>(
    topic: &str,
    work: impl FnOnce() -> Result<T, rdkafka::error::KafkaError> + Send + 'static,
) -> Result<T, KafkaFanoutError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|source| KafkaFanoutError::Admin {
            operation: "metadata request",
            topic: topic.to_owned(),
            source,
        }),
        Err(_) => Err(KafkaFanoutError::Admin {
            operation: "metadata request",
            topic: topic.to_owned(),
            source: rdkafka::error::KafkaError::Canceled,
        }),
    }
}

/// Whether a failed delivery timed out (directly, or as the first of several).
fn failures_timed_out(err: &KafkaFanoutError) -> bool {
    match err {
        KafkaFanoutError::Produce { source, .. } => {
            source.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut)
        }
        KafkaFanoutError::PartialDelivery { first, .. } => failures_timed_out(first),
        _ => false,
    }
}

/// Sleeps `duration` unless stopped first; answers whether it was stopped.
async fn pause(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => *stop.borrow(),
        // An error means the sender is gone: stop too.
        _ = stop.changed() => true,
    }
}

/// `users` without repeats, in first-seen order.
fn unique(users: &[UserId]) -> Vec<UserId> {
    let mut seen = HashSet::with_capacity(users.len());
    users
        .iter()
        .filter(|user| seen.insert(*user))
        .cloned()
        .collect()
}

/// The settings every client shares.
fn base_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.max.ms", "1000");
    apply(&mut config, extra);
    config
}

fn apply(config: &mut ClientConfig, settings: &[(String, String)]) {
    for (key, value) in settings {
        config.set(key, value);
    }
}

/// The settings every producer of this module shares (explained in the module docs): every
/// replica acknowledges, the broker drops retried duplicates, `linger` batches and
/// `delivery_timeout` bounds how long a message may wait for its acknowledgement.
fn idempotent_producer(
    brokers: &str,
    linger: Duration,
    delivery_timeout: Duration,
) -> ClientConfig {
    let mut client = base_config(brokers, &[]);
    client
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", config::millis(linger))
        .set("message.timeout.ms", config::millis(delivery_timeout));
    client
}

/// The fanout's producer (settings explained in the module docs).
fn producer(config: &KafkaFanoutConfig) -> Result<FutureProducer, KafkaFanoutError> {
    let mut client = idempotent_producer(&config.brokers, config.linger, config.delivery_timeout);
    apply(&mut client, &config.client_settings);
    client.create().map_err(|source| KafkaFanoutError::Client {
        what: "producer",
        source,
    })
}
