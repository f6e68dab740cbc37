//! Configuration of the Kafka fanout and of the domain event sink.

use std::fmt;
use std::time::Duration;

use messenger_core::presence::NodeId;

/// Settings of a [`KafkaFanout`](super::KafkaFanout).
///
/// `KafkaFanoutConfig::new(brokers, node)` gives every default below; the `with_*` methods
/// change one each.
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaFanoutConfig {
    /// The bootstrap brokers, comma-separated `host:port` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// This node's id, as the presence registry knows it.
    pub node: NodeId,
    /// The prefix of every node's topic: node `n` consumes `{topic_prefix}{n}` (the node id
    /// escaped for Kafka, see [`KafkaFanoutConfig::node_topic`]). Nodes of one cluster must
    /// share it; the dead-topic cleanup only ever looks at topics with this prefix. Allowed
    /// characters: ASCII letters, digits, `.`, `_`, `-`.
    ///
    /// Default: `"messenger.node."`.
    pub topic_prefix: String,
    /// The replication factor of this node's topic when it creates it; `-1` takes the
    /// broker's `default.replication.factor`. Use 3 on a production cluster: with
    /// `acks=all` an acknowledged envelope then survives the loss of a broker.
    ///
    /// Default: -1.
    pub replication_factor: i32,
    /// How long the broker keeps envelopes in a node topic (`retention.ms` of the topic it
    /// creates). Envelopes are consumed within milliseconds and the store holds every
    /// message, so a short retention only bounds the broker's disk.
    ///
    /// Default: 1 hour.
    pub topic_retention: Duration,
    /// How long the producer waits for more envelopes to batch with (librdkafka `linger.ms`).
    /// Small, because an envelope is a live chat message: batching only happens under load,
    /// when envelopes queue anyway.
    ///
    /// Default: 1 ms.
    pub linger: Duration,
    /// How long a produced envelope may take to be acknowledged, retries included
    /// (librdkafka `message.timeout.ms`), after which the delivery fails with
    /// [`ErrorKind::Timeout`](messenger_core::ErrorKind::Timeout). Bounded and short: the
    /// message is already in the store, and a device that missed it catches up there; a
    /// caller should not wait minutes for a broker.
    ///
    /// Default: 5 s.
    pub delivery_timeout: Duration,
    /// How long the broker may hold a fetch of this node's consumer open while its topic has
    /// nothing new (librdkafka `fetch.wait.max.ms`). Brokers answer a fetch as soon as data
    /// arrives, but some (tansu) wait this long regardless, so it bounds the added latency.
    ///
    /// Default: 10 ms.
    pub fetch_wait: Duration,
    /// How often the node checks that its own topic still exists (a broker that lost its
    /// data, or a cleanup by another node that thought this one dead). A missing topic is
    /// re-created and consumed from its beginning.
    ///
    /// Default: 1 s.
    pub topic_check_interval: Duration,
    /// How often the node looks for topics of dead nodes (prefix match, node not in
    /// `ListNodes`).
    ///
    /// Default: 30 s.
    pub cleanup_interval: Duration,
    /// How long a topic must have been seen without a live node before it is deleted, so a
    /// node that has just started (topic created, lease not yet visible) is not hit.
    ///
    /// Default: 60 s.
    pub dead_topic_grace: Duration,
    /// The timeout of admin requests (create, delete, metadata).
    ///
    /// Default: 10 s.
    pub admin_timeout: Duration,
    /// The longest pause between two attempts of the supervisor to re-create this node's
    /// topic or consumer after a failure (it starts at 100 ms and doubles).
    ///
    /// Default: 5 s.
    pub max_backoff: Duration,
    /// Extra librdkafka settings for every client this fanout creates (security, SASL,
    /// client id, ...), applied after ours so they win. Values are redacted in `Debug`.
    ///
    /// Default: none.
    pub client_settings: Vec<(String, String)>,
}

impl KafkaFanoutConfig {
    /// The default topic prefix.
    pub const DEFAULT_TOPIC_PREFIX: &'static str = "messenger.node.";
    /// The longest topic name Kafka accepts.
    pub const MAX_TOPIC_LEN: usize = 249;

    /// Every default, for node `node` of the cluster whose brokers are `brokers`.
    pub fn new(brokers: impl Into<String>, node: NodeId) -> Self {
        Self {
            brokers: brokers.into(),
            node,
            topic_prefix: Self::DEFAULT_TOPIC_PREFIX.to_owned(),
            replication_factor: -1,
            topic_retention: Duration::from_secs(3600),
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_secs(5),
            fetch_wait: Duration::from_millis(10),
            topic_check_interval: Duration::from_secs(1),
            cleanup_interval: Duration::from_secs(30),
            dead_topic_grace: Duration::from_secs(60),
            admin_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            client_settings: Vec::new(),
        }
    }

    /// Sets [`topic_prefix`](Self::topic_prefix).
    #[must_use]
    pub fn with_topic_prefix(mut self, topic_prefix: impl Into<String>) -> Self {
        self.topic_prefix = topic_prefix.into();
        self
    }

    /// Sets [`replication_factor`](Self::replication_factor).
    #[must_use]
    pub fn with_replication_factor(mut self, replication_factor: i32) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Sets [`topic_retention`](Self::topic_retention).
    #[must_use]
    pub fn with_topic_retention(mut self, topic_retention: Duration) -> Self {
        self.topic_retention = topic_retention;
        self
    }

    /// Sets [`linger`](Self::linger).
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`delivery_timeout`](Self::delivery_timeout).
    #[must_use]
    pub fn with_delivery_timeout(mut self, delivery_timeout: Duration) -> Self {
        self.delivery_timeout = delivery_timeout;
        self
    }

    /// Sets [`fetch_wait`](Self::fetch_wait).
    #[must_use]
    pub fn with_fetch_wait(mut self, fetch_wait: Duration) -> Self {
        self.fetch_wait = fetch_wait;
        self
    }

    /// Sets [`topic_check_interval`](Self::topic_check_interval).
    #[must_use]
    pub fn with_topic_check_interval(mut self, interval: Duration) -> Self {
        self.topic_check_interval = interval;
        self
    }

    /// Sets [`cleanup_interval`](Self::cleanup_interval) and
    /// [`dead_topic_grace`](Self::dead_topic_grace).
    #[must_use]
    pub fn with_cleanup(mut self, interval: Duration, grace: Duration) -> Self {
        self.cleanup_interval = interval;
        self.dead_topic_grace = grace;
        self
    }

    /// Sets [`admin_timeout`](Self::admin_timeout).
    #[must_use]
    pub fn with_admin_timeout(mut self, admin_timeout: Duration) -> Self {
        self.admin_timeout = admin_timeout;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    #[must_use]
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Adds one librdkafka setting to [`client_settings`](Self::client_settings).
    #[must_use]
    pub fn with_client_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_settings.push((key.into(), value.into()));
        self
    }

    /// The topic node `node` consumes: the prefix, then the node id with every character
    /// other than an ASCII letter, digit or `-` written as `_` and two hex digits per UTF-8
    /// byte (`node-1` stays `node-1`, `eu.1` becomes `eu_2e1`), so any node id maps to a
    /// legal topic name and back.
    pub fn node_topic(&self, node: &str) -> String {
        let mut topic = self.topic_prefix.clone();
        for byte in node.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                topic.push(char::from(byte));
            } else {
                topic.push_str(&format!("_{byte:02x}"));
            }
        }
        topic
    }

    /// The node whose topic `topic` is, or `None` when it does not have this config's prefix
    /// or is not a topic name [`node_topic`](Self::node_topic) produces.
    pub fn topic_node(&self, topic: &str) -> Option<NodeId> {
        let escaped = topic.strip_prefix(&self.topic_prefix)?;
        let mut bytes = Vec::with_capacity(escaped.len());
        let mut rest = escaped.as_bytes();
        while let Some((&first, tail)) = rest.split_first() {
            if first == b'_' {
                let hex = tail.get(..2)?;
                let hex = std::str::from_utf8(hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[2..];
            } else {
                bytes.push(first);
                rest = tail;
            }
        }
        let node = String::from_utf8(bytes).ok()?;
        // Only the canonical spelling maps back (upper-case hex, or an escaped letter, is
        // some other topic).
        (self.node_topic(&node) == topic).then(|| NodeId::from(node))
    }

    /// Checks the prefix and this node's topic name.
    pub(super) fn validate(&self) -> Result<(), String> {
        if !self
            .topic_prefix
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "the topic prefix {:?} may only hold ASCII letters, digits, '.', '_' and '-'",
                self.topic_prefix
            ));
        }
        if self.node.is_empty() {
            return Err("the node id is empty".to_owned());
        }
        let topic = self.node_topic(&self.node);
        if topic.len() > Self::MAX_TOPIC_LEN {
            return Err(format!(
                "the topic of node {:?} would be {} characters long, Kafka allows {}",
                self.node,
                topic.len(),
                Self::MAX_TOPIC_LEN
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for KafkaFanoutConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaFanoutConfig")
            .field("brokers", &self.brokers)
            .field("node", &self.node)
            .field("topic_prefix", &self.topic_prefix)
            .field("replication_factor", &self.replication_factor)
            .field("topic_retention", &self.topic_retention)
            .field("linger", &self.linger)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("fetch_wait", &self.fetch_wait)
            .field("topic_check_interval", &self.topic_check_interval)
            .field("cleanup_interval", &self.cleanup_interval)
            .field("dead_topic_grace", &self.dead_topic_grace)
            .field("admin_timeout", &self.admin_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("client_settings", &RedactedSettings(&self.client_settings))
            .finish()
    }
}

/// Settings of a [`KafkaEventSink`](super::KafkaEventSink).
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaEventSinkConfig {
    /// The bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// The topic of domain events.
    ///
    /// Default: `"messenger.events"`.
    pub topic: String,
    /// The partitions of the topic when the sink creates it (an existing topic is used as it
    /// is). Events are keyed by conversation (by user for device events), so each
    /// conversation's events stay in order within one partition; more partitions let more
    /// consumers of a group share the stream.
    ///
    /// Default: 8.
    pub partitions: i32,
    /// The replication factor of the topic when the sink creates it; `-1` takes the broker's
    /// default.
    ///
    /// Default: -1.
    pub replication_factor: i32,
    /// How many events may wait in the producer's queue (librdkafka
    /// `queue.buffering.max.messages`); [`publish`](super::KafkaEventSink::publish) drops and
    /// counts events beyond it rather than block the caller.
    ///
    /// Default: 100 000.
    pub queue_capacity: usize,
    /// How long an event may take to be acknowledged, retries included (librdkafka
    /// `message.timeout.ms`), after which it is counted as failed.
    ///
    /// Default: 30 s.
    pub delivery_timeout: Duration,
    /// How long the producer waits for more events to batch with (`linger.ms`). Events are
    /// not latency-critical, so batching is cheaper for the broker.
    ///
    /// Default: 5 ms.
    pub linger: Duration,
    /// The timeout of the topic creation in [`KafkaEventSink::with_config`](super::KafkaEventSink::with_config).
    ///
    /// Default: 10 s.
    pub admin_timeout: Duration,
    /// Extra librdkafka settings, applied after ours. Values are redacted in `Debug`.
    ///
    /// Default: none.
    pub client_settings: Vec<(String, String)>,
}

impl KafkaEventSinkConfig {
    /// The default topic.
    pub const DEFAULT_TOPIC: &'static str = "messenger.events";

    /// Every default, for the brokers `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: Self::DEFAULT_TOPIC.to_owned(),
            partitions: 8,
            replication_factor: -1,
            queue_capacity: 100_000,
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            admin_timeout: Duration::from_secs(10),
            client_settings: Vec::new(),
        }
    }

    /// Sets [`topic`](Self::topic).
    #[must_use]
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets [`partitions`](Self::partitions).
    #[must_use]
    pub fn with_partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets [`replication_factor`](Self::replication_factor).
    #[must_use]
    pub fn with_replication_factor(mut self, replication_factor: i32) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Sets [`queue_capacity`](Self::queue_capacity).
    #[must_use]
    pub fn with_queue_capacity(mut self, queue_capacity: usize) -> Self {
        self.queue_capacity = queue_capacity;
        self
    }

    /// Sets [`delivery_timeout`](Self::delivery_timeout).
    #[must_use]
    pub fn with_delivery_timeout(mut self, delivery_timeout: Duration) -> Self {
        self.delivery_timeout = delivery_timeout;
        self
    }

    /// Adds one librdkafka setting to [`client_settings`](Self::client_settings).
    #[must_use]
    pub fn with_client_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_settings.push((key.into(), value.into()));
        self
    }
}

impl fmt::Debug for KafkaEventSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaEventSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("queue_capacity", &self.queue_capacity)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("linger", &self.linger)
            .field("admin_timeout", &self.admin_timeout)
            .field("client_settings", &RedactedSettings(&self.client_settings))
            .finish()
    }
}

/// Client settings with their values hidden (they may hold passwords).
struct RedactedSettings<'a>(&'a [(String, String)]);

impl fmt::Debug for RedactedSettings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, _)| (key, "<redacted>")))
            .finish()
    }
}

/// Milliseconds as librdkafka wants them, saturating.
pub(super) fn millis(duration: Duration) -> String {
    duration.as_millis().min(i32::MAX as u128).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_topics_round_trip() {
        let config = KafkaFanoutConfig::new("b", NodeId::from("x"));
        for node in ["node-1", "eu.west/1", "Ünïcode node", "a_b", "_", "x_2d"] {
            let topic = config.node_topic(node);
            assert!(topic.starts_with("messenger.node."), "{topic}");
            assert!(
                topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
                "{topic} is not a legal topic name"
            );
            assert_eq!(config.topic_node(&topic).as_deref(), Some(node));
        }
        assert_eq!(config.node_topic("node-1"), "messenger.node.node-1");
        assert_eq!(config.node_topic("eu.1"), "messenger.node.eu_2e1");
    }

    #[test]
    fn foreign_topics_are_no_nodes() {
        let config = KafkaFanoutConfig::new("b", NodeId::from("x"));
        for topic in [
            "messenger.events",
            "messenger.node.a_2",
            "messenger.node.a_zz",
            "messenger.node.a_2D",
            "messenger.node._61",
            "messenger.node._ff",
        ] {
            assert_eq!(config.topic_node(topic), None, "{topic}");
        }
    }

    #[test]
    fn bad_prefixes_and_long_nodes_are_refused() {
        let config = KafkaFanoutConfig::new("b", NodeId::from("x"));
        assert!(config.validate().is_ok());
        assert!(config.clone().with_topic_prefix("a b.").validate().is_err());
        let long = KafkaFanoutConfig::new("b", NodeId::from("é".repeat(50)));
        assert!(long.validate().is_err());
        assert!(
            KafkaFanoutConfig::new("b", NodeId::from(""))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn debug_hides_setting_values() {
        let config = KafkaFanoutConfig::new("b", NodeId::from("x"))
            .with_client_setting("sasl.password", "hunter2");
        let shown = format!("{config:?}");
        assert!(shown.contains("sasl.password"));
        assert!(!shown.contains("hunter2"));
        let sink = KafkaEventSinkConfig::new("b").with_client_setting("sasl.password", "hunter2");
        assert!(!format!("{sink:?}").contains("hunter2"));
    }
}
