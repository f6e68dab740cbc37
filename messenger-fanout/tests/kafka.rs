//! The Kafka fanout on a real broker: nodes of one cluster sharing an in-test presence
//! registry, each with a recording delivery.
//!
//! Runs when `MESSENGER_TEST_KAFKA_BROKERS` names a broker (`scripts/kafka.sh` starts one and
//! prints it); otherwise each test prints a `SKIPPED:` line and passes. Every test uses topic
//! names of its own, so they run at once on one broker. The broker restart is in
//! `kafka_restart.rs` (its own test binary, so it disturbs no other test).
#![cfg(feature = "kafka")]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use messenger_core::fanout::{Deliver, DeliveryReport, LocalDelivery};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, DomainEvent, Error, Event, Message, ReceiptKind,
    Receipts, Seq, Timestamp, UserId, call,
};
use messenger_fanout::conformance::{self, RecordingDelivery};
use messenger_fanout::kafka::{KafkaEventSink, KafkaEventSinkConfig, KafkaFanout, decode_event};
use messenger_fanout::{Fanout, FanoutBackend};
use support::{
    Registry, brokers, eventually, read_until, receipt, receipt_seqs, start_node, test_config,
    topic_exists, unique_prefix, user,
};

const LIVENESS: Duration = Duration::from_secs(30);

async fn deliver<S: messenger_core::fanout::FanoutService>(
    fanout: &S,
    recipients: &[&str],
    event: &Event,
) -> Result<DeliveryReport, Error> {
    call(
        fanout,
        Deliver {
            recipients: recipients.iter().map(|name| user(name)).collect(),
            event: event.clone(),
        },
    )
    .await
}

/// A delivery the conformance suite can swap between checks, in front of one running node.
#[derive(Clone, Default)]
struct Swappable(Arc<Mutex<RecordingDelivery>>);

impl LocalDelivery for Swappable {
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize {
        let current = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        current.deliver_local(recipients, event)
    }
}

#[tokio::test]
async fn kafka_passes_the_conformance_suite() {
    let Some(brokers) = brokers("kafka_passes_the_conformance_suite") else {
        return;
    };
    let registry = Registry::default();
    registry.add_node("solo");
    let swappable = Swappable::default();
    let config = test_config(&brokers, &unique_prefix("conformance"), "solo");
    let fanout = Fanout::new(
        KafkaFanout::start(config, swappable.clone(), registry)
            .await
            .unwrap(),
    );
    conformance::run(|delivery| {
        *swappable.0.lock().unwrap_or_else(PoisonError::into_inner) = delivery;
        fanout.clone()
    })
    .await;
    fanout.backend().shutdown().await;
}

/// Three nodes: the sender's own connections get the event in-process, each other node gets
/// exactly one envelope naming its users, whatever the number of devices, and hands the
/// event to each of their connections once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_envelope_per_node_reaches_every_device() {
    let Some(brokers) = brokers("one_envelope_per_node_reaches_every_device") else {
        return;
    };
    let prefix = unique_prefix("envelopes");
    let registry = Registry::default();
    let a = start_node(&registry, test_config(&brokers, &prefix, "node-a")).await;
    let b = start_node(&registry, test_config(&brokers, &prefix, "node-b")).await;
    let c = start_node(&registry, test_config(&brokers, &prefix, "node-c")).await;
    a.connect(&registry, "dave", "phone");
    b.connect(&registry, "alice", "phone");
    b.connect(&registry, "alice", "laptop");
    b.connect(&registry, "bob", "phone");
    c.connect(&registry, "carol", "phone");

    let event = receipt("g:envelopes", "dave", 1);
    let report = deliver(
        &a.fanout,
        &["alice", "bob", "carol", "dave", "erin", "alice"],
        &event,
    )
    .await
    .unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            local_connections: 1,
            remote_nodes: 2
        }
    );
    assert_eq!(
        a.delivery.received(&user("dave"), 0),
        std::slice::from_ref(&event)
    );
    eventually("alice's and bob's devices on node b", LIVENESS, || {
        b.delivery.total() == 3
    })
    .await;
    for connection in 0..2 {
        assert_eq!(
            b.delivery.received(&user("alice"), connection),
            std::slice::from_ref(&event)
        );
    }
    assert_eq!(
        b.delivery.received(&user("bob"), 0),
        std::slice::from_ref(&event)
    );
    eventually("carol's device on node c", LIVENESS, || {
        c.delivery.total() == 1
    })
    .await;
    assert_eq!(
        c.delivery.received(&user("carol"), 0),
        std::slice::from_ref(&event)
    );

    // A marker after the event: node b's topic (one partition, one producer) holds exactly
    // one envelope before it, naming both of its users once.
    let marker = receipt("g:envelopes", "dave", 2);
    deliver(&a.fanout, &["bob"], &marker).await.unwrap();
    let records = read_until(&brokers, b.kafka().topic(), 1, LIVENESS, |records| {
        records.len() >= 2
    })
    .await;
    let first: serde_json::Value = serde_json::from_slice(&records[0].value).unwrap();
    assert_eq!(first["v"], 1);
    assert_eq!(first["users"], serde_json::json!(["alice", "bob"]));
    let sent: Event = serde_json::from_value(first["event"].clone()).unwrap();
    assert_eq!(sent, event);
    let second: serde_json::Value = serde_json::from_slice(&records[1].value).unwrap();
    assert_eq!(second["users"], serde_json::json!(["bob"]));
    assert_eq!(
        serde_json::from_value::<Event>(second["event"].clone()).unwrap(),
        marker
    );
    assert_eq!(a.kafka().stats().envelopes_sent, 3);
    eventually("node b consumed both envelopes", LIVENESS, || {
        b.kafka().stats().envelopes_received == 2
    })
    .await;

    // The other way: node a's topic gets node b's envelope, and never one of its own.
    let back = receipt("g:envelopes", "bob", 3);
    let report = deliver(&b.fanout, &["dave", "alice"], &back).await.unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            local_connections: 2,
            remote_nodes: 1
        }
    );
    let records = read_until(&brokers, a.kafka().topic(), 1, LIVENESS, |records| {
        !records.is_empty()
    })
    .await;
    let only: serde_json::Value = serde_json::from_slice(&records[0].value).unwrap();
    assert_eq!(only["users"], serde_json::json!(["dave"]));
    eventually("dave got the event from node b", LIVENESS, || {
        a.delivery.received(&user("dave"), 0).len() == 2
    })
    .await;

    for node in [&a, &b, &c] {
        node.kafka().shutdown().await;
    }
}

/// Deliveries issued in order by one node, many in flight at once, reach the other node in
/// that order; so do deliveries awaited one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_producer_keeps_its_order() {
    let Some(brokers) = brokers("one_producer_keeps_its_order") else {
        return;
    };
    const IN_FLIGHT: u64 = 400;
    const ONE_BY_ONE: u64 = 100;
    let prefix = unique_prefix("order");
    let registry = Registry::default();
    let a = start_node(&registry, test_config(&brokers, &prefix, "node-a")).await;
    let b = start_node(&registry, test_config(&brokers, &prefix, "node-b")).await;
    b.connect(&registry, "bob", "phone");

    // Every call is polled for the first time in issue order (each queues its envelope on
    // that first poll), then all are awaited together.
    type Pending = Pin<Box<dyn Future<Output = Result<DeliveryReport, Error>> + Send>>;
    let mut pending: Vec<Pending> = (1..=IN_FLIGHT)
        .map(|seq| {
            let fanout = a.fanout.clone();
            Box::pin(
                async move { deliver(&fanout, &["bob"], &receipt("g:order", "alice", seq)).await },
            ) as Pending
        })
        .collect();
    let mut results: Vec<Option<Result<DeliveryReport, Error>>> =
        (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (future, result) in pending.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(outcome) => *result = Some(outcome),
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    for result in results {
        assert_eq!(result.unwrap().unwrap().remote_nodes, 1);
    }
    for seq in IN_FLIGHT + 1..=IN_FLIGHT + ONE_BY_ONE {
        deliver(&a.fanout, &["bob"], &receipt("g:order", "alice", seq))
            .await
            .unwrap();
    }

    let expected: Vec<u64> = (1..=IN_FLIGHT + ONE_BY_ONE).collect();
    eventually("bob got every event", LIVENESS, || {
        b.delivery.received(&user("bob"), 0).len() == expected.len()
    })
    .await;
    assert_eq!(
        receipt_seqs(&b.delivery.received(&user("bob"), 0)),
        expected
    );

    a.kafka().shutdown().await;
    b.kafka().shutdown().await;
}

/// A node that died (its lease lapsed: not in `ListNodes`) loses its topic to the cleanup of
/// a live node; the topics of live nodes stay; a graceful shutdown deletes the node's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_lose_their_topics() {
    let Some(brokers) = brokers("dead_nodes_lose_their_topics") else {
        return;
    };
    let prefix = unique_prefix("cleanup");
    let registry = Registry::default();
    let cleaner = start_node(
        &registry,
        test_config(&brokers, &prefix, "node-a")
            .with_cleanup(Duration::from_millis(200), Duration::from_millis(600)),
    )
    .await;
    let live = start_node(&registry, test_config(&brokers, &prefix, "node-b")).await;
    let dead = start_node(&registry, test_config(&brokers, &prefix, "node-x")).await;
    let dead_topic = dead.kafka().topic().to_owned();
    assert!(topic_exists(&brokers, &dead_topic).await);

    // Node x crashes: its process is gone (dropped without shutdown, topic left behind) and
    // its lease lapses.
    drop(dead);
    registry.remove_node("node-x");
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while topic_exists(&brokers, &dead_topic).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead node's topic is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cleaner.kafka().stats().dead_topics_deleted >= 1);
    assert!(topic_exists(&brokers, cleaner.kafka().topic()).await);
    assert!(topic_exists(&brokers, live.kafka().topic()).await);

    let live_topic = live.kafka().topic().to_owned();
    live.kafka().shutdown().await;
    assert!(!topic_exists(&brokers, &live_topic).await);
    cleaner.kafka().shutdown().await;
}

fn stored(conversation: &str, seq: u64, text: &str) -> DomainEvent {
    DomainEvent::MessageStored {
        message: Arc::new(Message {
            conversation: ConversationId::new(conversation).unwrap(),
            seq: Seq(seq),
            sender: user("alice"),
            sender_device: DeviceId::new("phone").unwrap(),
            client_msg_id: ClientMsgId::new(format!("m-{seq}")).unwrap(),
            sent_at: Timestamp(1_764_300_000_000 + seq),
            body: Body::text(text),
        }),
    }
}

/// The event sink creates its topic, writes versioned JSON keyed by conversation (by user
/// for device events), and keeps each key's events in order in one partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_sink_writes_versioned_json_keyed_by_conversation() {
    let Some(brokers) = brokers("the_event_sink_writes_versioned_json_keyed_by_conversation")
    else {
        return;
    };
    const PARTITIONS: i32 = 4;
    let topic = format!("{}events", unique_prefix("events"));
    let sink = KafkaEventSink::with_config(
        KafkaEventSinkConfig::new(&brokers)
            .with_topic(&topic)
            .with_partitions(PARTITIONS),
    )
    .await
    .unwrap();
    // A second sink finds the topic there and uses it.
    let second = KafkaEventSink::new(&brokers, &topic).await.unwrap();
    let events = vec![
        stored("g:lunch", 1, "noodles?"),
        stored("g:other", 1, "hello"),
        DomainEvent::ReceiptUpdated {
            conversation: ConversationId::new("g:lunch").unwrap(),
            user: user("bob"),
            kind: ReceiptKind::Read,
            receipts: Receipts {
                user: user("bob"),
                delivered: Seq(1),
                read: Seq(1),
            },
        },
        stored("g:lunch", 2, "at noon"),
        DomainEvent::DeviceConnected {
            user: user("bob"),
            device: DeviceId::new("laptop").unwrap(),
            at: Timestamp(1_764_300_000_100),
        },
    ];
    for event in &events {
        sink.publish(event.clone());
    }
    let late = DomainEvent::DeviceDisconnected {
        user: user("bob"),
        device: DeviceId::new("laptop").unwrap(),
        at: Timestamp(1_764_300_000_200),
    };
    second.publish(late.clone());
    sink.flush(LIVENESS).await.unwrap();
    second.flush(LIVENESS).await.unwrap();
    let stats = sink.stats();
    assert_eq!(
        (
            stats.published,
            stats.delivered,
            stats.dropped,
            stats.failed
        ),
        (5, 5, 0, 0)
    );

    let records = read_until(&brokers, &topic, PARTITIONS, LIVENESS, |records| {
        records.len() >= 6
    })
    .await;
    assert_eq!(records.len(), 6);
    let mut read_back = Vec::new();
    for record in &records {
        let json: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(json["v"], 1, "{json}");
        let event = decode_event(&record.value).unwrap();
        let key = String::from_utf8(record.key.clone().expect("every event has a key")).unwrap();
        let expected_key = match &event {
            DomainEvent::MessageStored { message } => message.conversation.to_string(),
            DomainEvent::ReceiptUpdated { conversation, .. } => conversation.to_string(),
            DomainEvent::DeviceConnected { user, .. }
            | DomainEvent::DeviceDisconnected { user, .. } => user.to_string(),
            other => panic!("unexpected event {other:?}"),
        };
        assert_eq!(key, expected_key);
        read_back.push((record.partition, key, event));
    }
    let mut every: Vec<DomainEvent> = events.clone();
    every.push(late);
    for event in &every {
        assert!(
            read_back.iter().any(|(_, _, read)| read == event),
            "{event:?} was not written"
        );
    }
    // One key, one partition, in publish order.
    let lunch: Vec<(i32, &DomainEvent)> = read_back
        .iter()
        .filter(|(_, key, _)| key == "g:lunch")
        .map(|(partition, _, event)| (*partition, event))
        .collect();
    assert_eq!(lunch.len(), 3);
    assert!(lunch.iter().all(|(partition, _)| *partition == lunch[0].0));
    assert_eq!(
        lunch
            .iter()
            .map(|(_, event)| (*event).clone())
            .collect::<Vec<_>>(),
        [events[0].clone(), events[2].clone(), events[3].clone()]
    );
}

/// Records that are not envelopes of a known version are skipped and counted; the node keeps
/// delivering what follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_records_are_refused_without_stopping_the_node() {
    let Some(brokers) = brokers("foreign_records_are_refused_without_stopping_the_node") else {
        return;
    };
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let prefix = unique_prefix("refused");
    let registry = Registry::default();
    let a = start_node(&registry, test_config(&brokers, &prefix, "node-a")).await;
    let b = start_node(&registry, test_config(&brokers, &prefix, "node-b")).await;
    b.connect(&registry, "bob", "phone");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for garbage in [
        &b"not json"[..],
        br#"{"v":2,"users":["bob"],"event":{"event":"teleport"}}"#,
        br#"{"v":1,"users":["bob"]}"#,
    ] {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(b.kafka().topic()).payload(garbage),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }
    let event = receipt("g:refused", "alice", 1);
    a.fanout
        .backend()
        .deliver(Deliver {
            recipients: Arc::from([user("bob")]),
            event: event.clone(),
        })
        .await
        .unwrap();
    eventually("bob got the event after the garbage", LIVENESS, || {
        b.delivery.total() == 1
    })
    .await;
    assert_eq!(b.delivery.received(&user("bob"), 0), [event]);
    assert_eq!(b.kafka().stats().envelopes_refused, 3);
    a.kafka().shutdown().await;
    b.kafka().shutdown().await;
}
