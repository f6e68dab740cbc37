//! Envelopes per second and produce→consume latency between two Kafka fanout nodes in one
//! process (one clock): node a delivers receipt events to a user connected to node b; node b's
//! delivery records when each arrives.
//!
//! ```text
//! scripts/kafka.sh            # prints 127.0.0.1:19092
//! cargo run --release -p messenger-fanout --features kafka --example kafka_fanout_bench -- \
//!     127.0.0.1:19092 [tasks] [deliveries per task] [sequential deliveries]
//! ```
//!
//! Two phases, one run: `sequential` deliveries one at a time (each awaits the broker's
//! acknowledgement before the next starts: the latency of a lone message), then `tasks`
//! tasks delivering at once (throughput, and latency under that load). Latency is from the
//! start of the `deliver` call on node a to the event reaching node b's connections.

use std::collections::BTreeSet;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messenger_core::fanout::{Deliver, LocalDelivery};
use messenger_core::presence::{ListNodes, LookupPresence, NodeId, OnlineDevice};
use messenger_core::{
    ConversationId, DeviceId, Error, Event, ReceiptUpdate, Receipts, Seq, UserId, call,
};
use messenger_fanout::Fanout;
use messenger_fanout::kafka::{KafkaFanout, KafkaFanoutConfig};

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Every device is bob's phone on node b.
#[derive(Debug, Clone)]
struct BobOnB;

impl tower::Service<LookupPresence> for BobOnB {
    type Response = Vec<OnlineDevice>;
    type Error = Error;
    type Future = Ready<Result<Vec<OnlineDevice>, Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: LookupPresence) -> Self::Future {
        ready(Ok(request
            .users
            .into_iter()
            .map(|user| OnlineDevice {
                user,
                device: DeviceId::new("phone").unwrap_or_else(|_| unreachable!()),
                node: NodeId::from("bench-b"),
            })
            .collect()))
    }
}

impl tower::Service<ListNodes> for BobOnB {
    type Response = Vec<NodeId>;
    type Error = Error;
    type Future = Ready<Result<Vec<NodeId>, Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ListNodes) -> Self::Future {
        ready(Ok(vec![NodeId::from("bench-a"), NodeId::from("bench-b")]))
    }
}

/// When each seq was sent (on a) and received (on b).
#[derive(Debug, Default)]
struct Clock {
    sent: Vec<Option<Instant>>,
    received: Vec<Option<Instant>>,
    count: usize,
}

#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Clock>>);

impl Recorder {
    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LocalDelivery for Recorder {
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize {
        let now = Instant::now();
        if let Event::Receipt(ReceiptUpdate { receipts, .. }) = event {
            let mut clock = self.clock();
            if let Some(slot) = clock.received.get_mut(receipts.read.0 as usize) {
                if slot.is_none() {
                    *slot = Some(now);
                }
            }
            clock.count += 1;
        }
        recipients.len()
    }
}

fn event(conversation: &ConversationId, seq: u64) -> Event {
    Event::Receipt(ReceiptUpdate {
        conversation: conversation.clone(),
        receipts: Receipts {
            user: UserId::new("alice").unwrap_or_else(|_| unreachable!()),
            delivered: Seq(seq),
            read: Seq(seq),
        },
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Latencies of seqs `range`, sorted.
fn latencies(recorder: &Recorder, range: std::ops::Range<usize>) -> Vec<Duration> {
    let clock = recorder.clock();
    let mut all: Vec<Duration> = range
        .filter_map(|seq| match (clock.sent[seq], clock.received[seq]) {
            (Some(sent), Some(received)) => Some(received.saturating_duration_since(sent)),
            _ => None,
        })
        .collect();
    all.sort();
    all
}

async fn wait_for(recorder: &Recorder, count: usize) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorder.clock().count < count {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {count} envelopes arrived",
                recorder.clock().count
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:19092".to_owned());
    let tasks: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
    let per_task: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1_000);
    let sequential: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(2_000);
    let total = sequential + tasks * per_task;

    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let prefix = format!("messenger.bench.{nanos}.node.");
    let recorder = Recorder::default();
    {
        let mut clock = recorder.clock();
        clock.sent = vec![None; total + 1];
        clock.received = vec![None; total + 1];
    }
    // Extra librdkafka settings to try, as `key=value,key=value`.
    let settings: Vec<(String, String)> = std::env::var("KAFKA_BENCH_SETTINGS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    let config = |node: &str| {
        let mut config =
            KafkaFanoutConfig::new(&brokers, NodeId::from(node)).with_topic_prefix(&prefix);
        for (key, value) in &settings {
            config = config.with_client_setting(key, value);
        }
        config
    };
    let a = Fanout::new(KafkaFanout::start(config("bench-a"), Recorder::default(), BobOnB).await?);
    let b = KafkaFanout::start(config("bench-b"), recorder.clone(), BobOnB).await?;
    let conversation = ConversationId::new("g:bench")?;
    let bob: Arc<[UserId]> = Arc::from([UserId::new("bob")?]);

    // Phase 1: one at a time.
    let mut acks = Vec::with_capacity(sequential);
    for seq in 1..=sequential {
        let sent = Instant::now();
        recorder.clock().sent[seq] = Some(sent);
        call(
            &a,
            Deliver {
                recipients: Arc::clone(&bob),
                event: event(&conversation, seq as u64),
            },
        )
        .await?;
        acks.push(sent.elapsed());
    }
    acks.sort();
    wait_for(&recorder, sequential).await?;
    let lone = latencies(&recorder, 1..sequential + 1);

    // Phase 2: many at once.
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let a = a.clone();
        let recorder = recorder.clone();
        let conversation = conversation.clone();
        let bob = Arc::clone(&bob);
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let seq = sequential + 1 + task * per_task + i;
                recorder.clock().sent[seq] = Some(Instant::now());
                call(
                    &a,
                    Deliver {
                        recipients: Arc::clone(&bob),
                        event: event(&conversation, seq as u64),
                    },
                )
                .await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let acknowledged = started.elapsed();
    wait_for(&recorder, total).await?;
    let elapsed = started.elapsed();
    let loaded = latencies(&recorder, sequential + 1..total + 1);

    let received: BTreeSet<usize> = {
        let clock = recorder.clock();
        (1..=total)
            .filter(|seq| clock.received[*seq].is_some())
            .collect()
    };
    println!(
        "brokers {brokers}, release build: {}",
        !cfg!(debug_assertions)
    );
    println!(
        "one at a time: {sequential} envelopes, produce->consume p50 {:?} p90 {:?} p99 {:?} max {:?}; \
         deliver call (broker ack) p50 {:?} p99 {:?}",
        percentile(&lone, 0.5),
        percentile(&lone, 0.9),
        percentile(&lone, 0.99),
        lone.last().copied().unwrap_or_default(),
        percentile(&acks, 0.5),
        percentile(&acks, 0.99),
    );
    println!(
        "{tasks} tasks x {per_task}: {} envelopes in {:.2?} ({:.0} envelopes/s consumed; all acknowledged after {:.2?}), \
         produce->consume p50 {:?} p99 {:?}",
        tasks * per_task,
        elapsed,
        (tasks * per_task) as f64 / elapsed.as_secs_f64(),
        acknowledged,
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
    );
    println!(
        "received {} distinct of {total}; node b stats {:?}",
        received.len(),
        b.stats()
    );
    a.backend().shutdown().await;
    b.shutdown().await;
    Ok(())
}
