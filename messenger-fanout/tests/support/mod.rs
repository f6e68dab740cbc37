//! What the Kafka tests share: the broker address, an in-test presence registry, nodes with
//! recording deliveries, and a client of their own to read topics back.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messenger_core::presence::{ListNodes, LookupPresence, NodeId, OnlineDevice};
use messenger_core::{
    ConversationId, DeviceId, Error, Event, ReceiptUpdate, Receipts, Seq, UserId,
};
use messenger_fanout::Fanout;
use messenger_fanout::conformance::RecordingDelivery;
use messenger_fanout::kafka::{KafkaFanout, KafkaFanoutConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The brokers of `MESSENGER_TEST_KAFKA_BROKERS`, or `None` after printing the skip line.
pub fn brokers(test: &str) -> Option<String> {
    match std::env::var("MESSENGER_TEST_KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => Some(brokers.trim().to_owned()),
        _ => {
            println!(
                "SKIPPED: {test}: MESSENGER_TEST_KAFKA_BROKERS is not set \
                 (scripts/kafka.sh starts a broker and prints its address)"
            );
            None
        }
    }
}

/// A topic prefix no other test (or run) shares, so tests running at once never see each
/// other's topics.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("messenger.test.{test}.{}-{nanos}.node.", std::process::id())
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// A receipt event whose watermarks are `seq`: distinct per seq, one conversation.
pub fn receipt(conversation: &str, reader: &str, seq: u64) -> Event {
    Event::Receipt(ReceiptUpdate {
        conversation: ConversationId::new(conversation).unwrap(),
        receipts: Receipts {
            user: user(reader),
            delivered: Seq(seq),
            read: Seq(seq),
        },
    })
}

/// The seqs of the receipt events in `events`, in order.
pub fn receipt_seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Receipt(ReceiptUpdate { receipts, .. }) => Some(receipts.read.0),
            _ => None,
        })
        .collect()
}

/// The presence registry of the test cluster: which device of which user is on which node,
/// and which nodes are alive. The backend under test is Kafka, so an in-process registry
/// shared by the nodes is enough.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    state: Arc<Mutex<RegistryState>>,
}

#[derive(Debug, Default)]
struct RegistryState {
    devices: Vec<OnlineDevice>,
    nodes: BTreeSet<NodeId>,
}

impl Registry {
    fn state(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add_node(&self, node: &str) {
        self.state().nodes.insert(NodeId::from(node));
    }

    /// The node's lease lapsed: it is no longer listed, and its devices are gone.
    pub fn remove_node(&self, node: &str) {
        let mut state = self.state();
        state.nodes.remove(node);
        state.devices.retain(|device| &*device.node != node);
    }

    pub fn connect(&self, name: &str, device: &str, node: &str) {
        self.state().devices.push(OnlineDevice {
            user: user(name),
            device: DeviceId::new(device).unwrap(),
            node: NodeId::from(node),
        });
    }
}

impl tower::Service<LookupPresence> for Registry {
    type Response = Vec<OnlineDevice>;
    type Error = Error;
    type Future = Ready<Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: LookupPresence) -> Self::Future {
        let state = self.state();
        ready(Ok(state
            .devices
            .iter()
            .filter(|device| request.users.contains(&device.user))
            .cloned()
            .collect()))
    }
}

impl tower::Service<ListNodes> for Registry {
    type Response = Vec<NodeId>;
    type Error = Error;
    type Future = Ready<Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ListNodes) -> Self::Future {
        ready(Ok(self.state().nodes.iter().cloned().collect()))
    }
}

/// One node of the test cluster.
pub struct Node {
    pub name: String,
    pub fanout: Fanout<KafkaFanout<RecordingDelivery, Registry>>,
    pub delivery: RecordingDelivery,
}

impl Node {
    pub fn kafka(&self) -> &KafkaFanout<RecordingDelivery, Registry> {
        self.fanout.backend()
    }

    /// Registers a connection of `name` on this node with the registry and the delivery.
    pub fn connect(&self, registry: &Registry, name: &str, device: &str) {
        registry.connect(name, device, &self.name);
        self.delivery.connect(&user(name), 1);
    }
}

/// Settings for tests: quick to notice a vanished topic, no cleanup unless asked.
pub fn test_config(brokers: &str, prefix: &str, name: &str) -> KafkaFanoutConfig {
    KafkaFanoutConfig::new(brokers, NodeId::from(name))
        .with_topic_prefix(prefix)
        .with_topic_check_interval(Duration::from_millis(200))
        .with_cleanup(Duration::from_secs(3600), Duration::from_secs(3600))
}

/// Starts node `name`, listed as alive in `registry`.
pub async fn start_node(registry: &Registry, config: KafkaFanoutConfig) -> Node {
    let name = config.node.to_string();
    registry.add_node(&name);
    let delivery = RecordingDelivery::new();
    let kafka = KafkaFanout::start(config, delivery.clone(), registry.clone())
        .await
        .unwrap_or_else(|err| panic!("starting node {name}: {err}"));
    Node {
        name,
        fanout: Fanout::new(kafka),
        delivery,
    }
}

/// Waits until `check` holds, polling; panics with `what` after `limit` (a bound for
/// liveness, not a timing assertion).
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer of our own: `partitions` partitions of `topic` from their beginning, manual
/// assignment under a group id of its own that it never joins (tansu bug 3: a consumer
/// leaving a group during its first join can wedge the group).
pub fn reader(brokers: &str, topic: &str, partitions: i32) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_prefix("reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// One record read back: partition, key and value.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Reads `topic` from the beginning until `done` says the records read so far are enough;
/// panics after `limit`.
pub async fn read_until(
    brokers: &str,
    topic: &str,
    partitions: i32,
    limit: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer = reader(brokers, topic, partitions);
    let mut records = Vec::new();
    let deadline = Instant::now() + limit;
    while !done(&records) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "reading {topic}: only {records:?} within {limit:?}"
        );
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => records.push(Record {
                partition: message.partition(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().unwrap_or_default().to_vec(),
            }),
            Ok(Err(err)) => {
                println!("reading {topic}: {err} (retrying)");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {}
        }
    }
    records
}

/// Whether `topic` exists, from fresh broker metadata.
pub async fn topic_exists(brokers: &str, topic: &str) -> bool {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("allow.auto.create.topics", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))
            .unwrap();
        metadata.topics().iter().any(|found| found.name() == topic)
    })
    .await
    .unwrap()
}
