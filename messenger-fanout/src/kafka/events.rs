//! The domain event topic: every [`DomainEvent`] as versioned JSON, keyed by conversation
//! (by user for device events). The schema is in `docs/events.md`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use messenger_core::{DomainEvent, Error, ErrorKind};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use serde::{Deserialize, Serialize};

use super::config::KafkaEventSinkConfig;
use super::error::KafkaFanoutError;
use super::{BACKEND, apply, base_config, idempotent_producer};

/// The schema version this code writes and reads.
const VERSION: u32 = 1;

#[derive(Serialize)]
struct Versioned<'a> {
    v: u32,
    #[serde(flatten)]
    event: &'a DomainEvent,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// The record value of `event`: `{"v":1,"event":"message_stored",...}` (see
/// `docs/events.md`).
///
/// # Errors
/// [`ErrorKind::Unexpected`] if the event cannot be serialized (it always can).
pub fn encode_event(event: &DomainEvent) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&Versioned { v: VERSION, event })
        .map_err(|err| Error::from(KafkaFanoutError::Encode(err)))
}

/// Reads a record value written by [`encode_event`].
///
/// # Errors
/// [`ErrorKind::InvalidRequest`] for a version other than 1, or a value that is not a domain
/// event of version 1 (a consumer should skip such records, not stop).
pub fn decode_event(value: &[u8]) -> Result<DomainEvent, Error> {
    let invalid =
        |message: String| Error::new(ErrorKind::InvalidRequest, message).with_backend(BACKEND);
    let version: VersionOnly = serde_json::from_slice(value)
        .map_err(|err| invalid(format!("not a versioned domain event: {err}")))?;
    if version.v != VERSION {
        return Err(invalid(format!(
            "domain event version {} is not supported (this code reads {VERSION})",
            version.v
        )));
    }
    serde_json::from_slice(value).map_err(|err| invalid(format!("malformed domain event: {err}")))
}

/// The record key of `event`: its conversation for message and receipt events, its user for
/// device events, so each conversation's (each user's) events stay in order in one partition.
/// `None` for an event kind this version does not know.
pub fn event_key(event: &DomainEvent) -> Option<&str> {
    match event {
        DomainEvent::MessageStored { message } => Some(message.conversation.as_str()),
        DomainEvent::ReceiptUpdated { conversation, .. } => Some(conversation.as_str()),
        DomainEvent::DeviceConnected { user, .. }
        | DomainEvent::DeviceDisconnected { user, .. } => Some(user.as_str()),
        _ => None,
    }
}

/// Counters of a [`KafkaEventSink`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaEventSinkStats {
    /// Events accepted into the producer queue.
    pub published: u64,
    /// Events refused at once because the queue was full (or could not be encoded).
    pub dropped: u64,
    /// Events the broker acknowledged.
    pub delivered: u64,
    /// Events that failed after their retries (not acknowledged within the delivery timeout).
    pub failed: u64,
}

#[derive(Default)]
struct SinkCounters {
    published: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// Counts delivery reports on the producer's polling thread.
struct SinkContext {
    counters: Arc<SinkCounters>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((err, _)) => {
                let failed = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if failed.is_power_of_two() {
                    tracing::warn!(error = %err, failed, "domain events failed to reach kafka");
                }
            }
        }
    }
}

/// Publishes [`DomainEvent`]s to a Kafka topic, for analytics and other services.
///
/// [`publish`](Self::publish) never blocks and never fails: events go to librdkafka's queue
/// and a background thread sends them (`acks=all`, idempotent, so retries neither duplicate
/// nor reorder). An event that finds the queue full is dropped and counted
/// ([`stats`](Self::stats)). Call [`flush`](Self::flush) before dropping the sink to send
/// what is queued.
///
/// ```no_run
/// use messenger_core::{DeviceId, DomainEvent, Timestamp, UserId};
/// use messenger_fanout::kafka::KafkaEventSink;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sink = KafkaEventSink::new("127.0.0.1:19092", "messenger.events").await?;
/// sink.publish(DomainEvent::DeviceConnected {
///     user: UserId::new("alice")?,
///     device: DeviceId::new("phone")?,
///     at: Timestamp(1_700_000_000_000),
/// });
/// sink.flush(std::time::Duration::from_secs(5)).await?;
/// # Ok(())
/// # }
/// ```
pub struct KafkaEventSink {
    producer: ThreadedProducer<SinkContext>,
    topic: String,
    counters: Arc<SinkCounters>,
}

impl KafkaEventSink {
    /// A sink publishing to `topic` on `brokers` with every other default of
    /// [`KafkaEventSinkConfig`]; creates the topic if it is missing.
    ///
    /// # Errors
    /// As [`with_config`](Self::with_config).
    pub async fn new(brokers: &str, topic: &str) -> Result<Self, Error> {
        Self::with_config(KafkaEventSinkConfig::new(brokers).with_topic(topic)).await
    }

    /// A sink with `config`; creates its topic if it is missing.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidRequest`] for settings librdkafka refuses;
    /// [`ErrorKind::Unavailable`] or [`ErrorKind::Timeout`] when the brokers cannot be reached
    /// or refuse to create the topic.
    ///
    /// # Cancellation safety
    /// Dropping the future may leave the topic created; a later call uses it.
    pub async fn with_config(config: KafkaEventSinkConfig) -> Result<Self, Error> {
        create_topic_if_missing(&config).await?;
        let counters = Arc::new(SinkCounters::default());
        let mut client =
            idempotent_producer(&config.brokers, config.linger, config.delivery_timeout);
        client.set(
            "queue.buffering.max.messages",
            config
                .queue_capacity
                .clamp(1, i32::MAX as usize)
                .to_string(),
        );
        apply(&mut client, &config.client_settings);
        let producer = client
            .create_with_context(SinkContext {
                counters: Arc::clone(&counters),
            })
            .map_err(|source| KafkaFanoutError::Client {
                what: "event producer",
                source,
            })?;
        Ok(Self {
            producer,
            topic: config.topic,
            counters,
        })
    }

    /// Queues `event` for the topic, keyed by [`event_key`]. Never blocks, never panics: when
    /// the queue is full the event is dropped and counted in [`KafkaEventSinkStats::dropped`].
    pub fn publish(&self, event: DomainEvent) {
        let value = match encode_event(&event) {
            Ok(value) => value,
            Err(err) => {
                self.drop_one(&err.to_string());
                return;
            }
        };
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic).payload(&value);
        if let Some(key) = event_key(&event) {
            record = record.key(key);
        }
        match self.producer.send(record) {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Err((err, _)) => self.drop_one(&err.to_string()),
        }
    }

    fn drop_one(&self, reason: &str) {
        let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::warn!(topic = %self.topic, reason, dropped, "domain events dropped");
        }
    }

    /// Waits until every queued event is acknowledged or failed, for at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when events are still queued after `timeout`.
    ///
    /// # Cancellation safety
    /// Cancellation safe: the events stay queued and keep going out.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(result) => {
                result.map_err(|source| KafkaFanoutError::Produce { topic, source }.into())
            }
            Err(err) => Err(Error::new(ErrorKind::Unexpected, "the flush task failed")
                .with_backend(BACKEND)
                .with_source(err)),
        }
    }

    /// The topic it publishes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its counters so far.
    pub fn stats(&self) -> KafkaEventSinkStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        KafkaEventSinkStats {
            published: read(&self.counters.published),
            dropped: read(&self.counters.dropped),
            delivered: read(&self.counters.delivered),
            failed: read(&self.counters.failed),
        }
    }
}

impl fmt::Debug for KafkaEventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaEventSink")
            .field("topic", &self.topic)
            .field("stats", &self.stats())
            .finish()
    }
}

async fn create_topic_if_missing(config: &KafkaEventSinkConfig) -> Result<(), KafkaFanoutError> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(&config.brokers, &config.client_settings)
            .create()
            .map_err(|source| KafkaFanoutError::Client {
                what: "admin client",
                source,
            })?;
    let topic = NewTopic::new(
        &config.topic,
        config.partitions.max(1),
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(config.admin_timeout))
        .operation_timeout(Some(config.admin_timeout));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|source| KafkaFanoutError::Admin {
            operation: "creation",
            topic: config.topic.clone(),
            source,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaFanoutError::TopicRefused {
                    operation: "creation",
                    topic,
                    code,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use messenger_core::{
        Body, ClientMsgId, ConversationId, DeviceId, Message, ReceiptKind, Receipts, Seq,
        Timestamp, UserId,
    };

    use super::*;

    fn events() -> Vec<DomainEvent> {
        let alice = UserId::new("alice").unwrap();
        let lunch = ConversationId::new("g:lunch").unwrap();
        vec![
            DomainEvent::MessageStored {
                message: Arc::new(Message {
                    conversation: lunch.clone(),
                    seq: Seq(7),
                    sender: alice.clone(),
                    sender_device: DeviceId::new("phone").unwrap(),
                    client_msg_id: ClientMsgId::new("m-1").unwrap(),
                    sent_at: Timestamp(5),
                    body: Body::text("hi"),
                }),
            },
            DomainEvent::ReceiptUpdated {
                conversation: lunch,
                user: alice.clone(),
                kind: ReceiptKind::Read,
                receipts: Receipts {
                    user: alice.clone(),
                    delivered: Seq(7),
                    read: Seq(6),
                },
            },
            DomainEvent::DeviceDisconnected {
                user: alice,
                device: DeviceId::new("phone").unwrap(),
                at: Timestamp(9),
            },
        ]
    }

    #[test]
    fn events_round_trip_with_their_version_and_key() {
        let keys = ["g:lunch", "g:lunch", "alice"];
        for (event, key) in events().into_iter().zip(keys) {
            let value = encode_event(&event).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
            assert_eq!(json["v"], 1);
            assert!(json["event"].is_string());
            assert_eq!(decode_event(&value).unwrap(), event);
            assert_eq!(event_key(&event), Some(key));
        }
    }

    #[test]
    fn other_versions_and_garbage_are_invalid() {
        for value in [
            &br#"{"v":2,"event":"device_connected","user":"a","device":"d","at":1}"#[..],
            br#"{"event":"device_connected","user":"a","device":"d","at":1}"#,
            br#"{"v":1,"event":"teleported"}"#,
            b"[]",
            b"",
        ] {
            let err = decode_event(value).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
        }
    }

    /// Every JSON example of `docs/events.md` is a version-1 domain event that reads back
    /// and writes out the same.
    #[test]
    fn the_documented_examples_are_domain_events() {
        let doc = include_str!("../../../docs/events.md");
        let mut examples = 0;
        let mut rest = doc;
        while let Some(start) = rest.find("```json\n") {
            let block = &rest[start + "```json\n".len()..];
            let end = block.find("```").unwrap();
            let example = &block[..end];
            let event = decode_event(example.as_bytes())
                .unwrap_or_else(|err| panic!("{example} is not a domain event: {err}"));
            let written: serde_json::Value =
                serde_json::from_slice(&encode_event(&event).unwrap()).unwrap();
            let documented: serde_json::Value = serde_json::from_str(example).unwrap();
            assert_eq!(
                written, documented,
                "the example is not what the code writes"
            );
            examples += 1;
            rest = &block[end + 3..];
        }
        assert!(examples >= 4, "docs/events.md shows every event kind");
    }
}
