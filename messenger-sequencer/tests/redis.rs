//! The conformance suite and the reset/fence checks on the Redis backend.
//!
//! Runs on a standalone server when `MESSENGER_TEST_REDIS_URL` names one, and on Redis Cluster
//! when `MESSENGER_TEST_REDIS_CLUSTER` lists its nodes (comma-separated URLs);
//! `scripts/redis.sh` and `scripts/redis.sh cluster` start them and print these values.
//! Otherwise prints one skip line per missing server and passes.
//!
//! Keys are deleted, never flushed, so the tests can share a server with others.
#![cfg(feature = "redis")]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use messenger_core::sequencer::{FenceSeq, NextSeq};
use messenger_core::{ConversationId, Seq, call};
use messenger_sequencer::Sequencer;
use messenger_sequencer::conformance::{self, TestFloor, unique_conversation};
use messenger_sequencer::memory::NoFloor;
use messenger_sequencer::redis::{RedisSequencer, RedisSequencerConfig};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;

const STANDALONE_VARIABLE: &str = "MESSENGER_TEST_REDIS_URL";
const CLUSTER_VARIABLE: &str = "MESSENGER_TEST_REDIS_CLUSTER";

/// The value of `variable`, or `None` after printing the skip line (once per variable).
fn configured(variable: &str, notice: &'static Once, what: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            notice.call_once(|| {
                // Straight to the process's stderr: the test harness hides `eprintln!` of a
                // passing test, and this line must show in `cargo test`'s output.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping the Redis {what} sequencer tests: {variable} is not set \
                     (scripts/redis.sh{} prints it)",
                    if what == "cluster" { " cluster" } else { "" }
                );
            });
            None
        }
    }
}

async fn standalone() -> Option<MultiplexedConnection> {
    static NOTICE: Once = Once::new();
    let url = configured(STANDALONE_VARIABLE, &NOTICE, "standalone")?;
    let client = redis::Client::open(url.trim())
        .unwrap_or_else(|err| panic!("{STANDALONE_VARIABLE}={url} is not a Redis URL: {err}"));
    Some(
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}")),
    )
}

async fn cluster() -> Option<ClusterConnection> {
    static NOTICE: Once = Once::new();
    let nodes = configured(CLUSTER_VARIABLE, &NOTICE, "cluster")?;
    let nodes: Vec<&str> = nodes.split(',').map(str::trim).collect();
    let client = redis::cluster::ClusterClient::new(nodes.clone())
        .unwrap_or_else(|err| panic!("{CLUSTER_VARIABLE}={nodes:?} is not a node list: {err}"));
    Some(
        client
            .get_async_connection()
            .await
            .unwrap_or_else(|err| panic!("cannot connect to the cluster {nodes:?}: {err}")),
    )
}

/// A prefix per test binary run, so runs never see each other's keys.
fn config() -> RedisSequencerConfig {
    RedisSequencerConfig::default()
        .with_key_prefix(format!("messenger-test-{}", std::process::id()))
}

async fn delete<C: ConnectionLike + Clone + Send + Sync>(connection: &C, key: &str) {
    let mut connection = connection.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|err| panic!("DEL {key} failed: {err}"));
}

async fn next<B: messenger_sequencer::SequencerBackend>(
    sequencer: &Sequencer<B>,
    conversation: &ConversationId,
) -> Seq {
    call(
        sequencer,
        NextSeq {
            conversation: conversation.clone(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("next seq of {conversation} failed: {err}"))
}

async fn conformance_suite<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    conformance::run(&Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        NoFloor,
        config(),
    )))
    .await;
    conformance::run_with_floor(|floor| {
        Sequencer::new(RedisSequencer::with_config(
            connection.clone(),
            floor,
            config(),
        ))
    })
    .await;
}

/// Tasks allocate while another deletes the counter again and again (what a `FLUSHALL` or a
/// restart without persistence does to it). The floor plays the store: it knows every seq
/// handed out (stored) so far. No seq is handed out twice, each task's seqs increase, and a
/// fresh process after one more reset still starts above everything handed out.
async fn reset_mid_allocation<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    const TASKS: usize = 16;
    const PER_TASK: usize = 200;
    let floor = TestFloor::new();
    let sequencer = Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        floor.clone(),
        config(),
    ));
    let chat = unique_conversation("redis-reset");
    let key = sequencer.backend().counter_key(&chat);
    // The "store's head": raised after every allocation, as an append would.
    let stored = Arc::new(Mutex::new(Seq::ZERO));

    let done = Arc::new(AtomicBool::new(false));
    let resetter = {
        let connection = connection.clone();
        let key = key.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut resets = 0_u32;
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                delete(&connection, &key).await;
                resets += 1;
            }
            resets
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let sequencer = sequencer.clone();
            let chat = chat.clone();
            let floor = floor.clone();
            let stored = Arc::clone(&stored);
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(PER_TASK);
                for _ in 0..PER_TASK {
                    let seq = next(&sequencer, &chat).await;
                    let mut head = stored.lock().unwrap_or_else(|err| err.into_inner());
                    if seq > *head {
                        *head = seq;
                        floor.set(&chat, seq);
                    }
                    seen.push(seq);
                }
                seen
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for task in tasks {
        let seen = task.await.expect("an allocating task panicked");
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "one task's allocations must increase across resets"
        );
        for seq in seen {
            assert!(all.insert(seq), "{seq} was handed out twice across a reset");
        }
    }
    done.store(true, Ordering::Release);
    let resets = resetter.await.expect("the resetting task panicked");
    assert!(resets > 0, "the counter was never reset");
    assert!(
        floor.reads(&chat) > 1,
        "a reset must send the sequencer to its floor"
    );
    let highest = *all.last().expect("allocations happened");

    // A process that never saw the conversation, after one more reset.
    delete(&connection, &key).await;
    let fresh = Sequencer::new(RedisSequencer::with_config(connection, floor, config()));
    let first = next(&fresh, &chat).await;
    assert!(
        first > highest,
        "after a reset a fresh process allocated {first}, not above {highest}"
    );
}

/// A counter that goes backwards (a failover to a lagging replica, a restored snapshot) is
/// noticed by a process that handed out higher seqs, and a process that starts on a stale
/// counter reads its floor first.
async fn backward_counter<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let floor = TestFloor::new();
    let sequencer = Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        floor.clone(),
        config(),
    ));
    let chat = unique_conversation("redis-backward");
    let key = sequencer.backend().counter_key(&chat);
    for expected in 1..=10 {
        assert_eq!(next(&sequencer, &chat).await, Seq(expected));
    }
    set(&connection, &key, 3).await;
    assert_eq!(
        next(&sequencer, &chat).await,
        Seq(11),
        "the process's own highest seq is folded in"
    );
    assert_eq!(
        floor.reads(&chat),
        2,
        "going backwards sends it to the floor"
    );

    // A new process, the store holding 50, the counter stale at 3.
    set(&connection, &key, 3).await;
    floor.set(&chat, Seq(50));
    let fresh = Sequencer::new(RedisSequencer::with_config(connection, floor, config()));
    assert_eq!(
        next(&fresh, &chat).await,
        Seq(51),
        "first use reads the floor"
    );
}

async fn set<C: ConnectionLike + Clone + Send + Sync>(connection: &C, key: &str, value: u64) {
    let mut connection = connection.clone();
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|err| panic!("SET {key} failed: {err}"));
}

/// A fence raises the counter and counts one epoch; a lower fence still counts.
async fn fence_counts_epochs<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let sequencer = Sequencer::new(RedisSequencer::with_config(connection, NoFloor, config()));
    let chat = unique_conversation("redis-fence");
    let epoch = |sequencer: &Sequencer<RedisSequencer<NoFloor, C>>| {
        let sequencer = sequencer.clone();
        let chat = chat.clone();
        async move {
            sequencer
                .backend()
                .epoch(&chat)
                .await
                .unwrap_or_else(|err| panic!("epoch read failed: {err}"))
        }
    };
    let fence = |at_least: u64| {
        call(
            &sequencer,
            FenceSeq {
                conversation: chat.clone(),
                at_least: Seq(at_least),
            },
        )
    };

    assert_eq!(epoch(&sequencer).await, 0, "no fence yet");
    assert_eq!(next(&sequencer, &chat).await, Seq(1));
    fence(100).await.expect("fence at 100");
    assert_eq!(epoch(&sequencer).await, 1);
    assert_eq!(next(&sequencer, &chat).await, Seq(101));
    fence(50).await.expect("fence at 50");
    assert_eq!(epoch(&sequencer).await, 2, "every fence counts");
    assert_eq!(
        next(&sequencer, &chat).await,
        Seq(102),
        "a lower fence does not move it"
    );
    let err = fence(1 << 52)
        .await
        .expect_err("a fence beyond the largest seq");
    assert_eq!(err.kind(), messenger_core::ErrorKind::InvalidRequest);
    assert_eq!(
        next(&sequencer, &chat).await,
        Seq(103),
        "a refused fence changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_passes_the_conformance_suite() {
    if let Some(connection) = standalone().await {
        conformance_suite(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_never_reuses_a_seq_across_resets() {
    if let Some(connection) = standalone().await {
        reset_mid_allocation(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_fences_count_epochs() {
    if let Some(connection) = standalone().await {
        fence_counts_epochs(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_passes_the_conformance_suite() {
    if let Some(connection) = cluster().await {
        conformance_suite(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_never_reuses_a_seq_across_resets() {
    if let Some(connection) = cluster().await {
        reset_mid_allocation(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fences_count_epochs() {
    if let Some(connection) = cluster().await {
        fence_counts_epochs(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_notices_a_counter_going_backwards() {
    if let Some(connection) = standalone().await {
        backward_counter(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_notices_a_counter_going_backwards() {
    if let Some(connection) = cluster().await {
        backward_counter(connection).await;
    }
}

/// Many tasks allocating over many conversations at once: the allocations leave together in
/// shared pipelines (on a cluster, one per node per batch), and every conversation still
/// gets exactly 1..=n, each task's seqs of a conversation increasing.
async fn concurrent_allocations_share_pipelines<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    const TASKS: usize = 64;
    const PER_TASK: usize = 100;
    const CONVERSATIONS: usize = 200;
    // One pipeline in flight at a time: whatever queues behind it leaves as one batch.
    let sequencer = Sequencer::new(RedisSequencer::with_config(
        connection,
        NoFloor,
        config().with_pipelines_in_flight(1),
    ));
    let chats: Vec<_> = (0..CONVERSATIONS)
        .map(|_| unique_conversation("redis-batch"))
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let sequencer = sequencer.clone();
            let chats = chats.clone();
            tokio::spawn(async move {
                let mut seen = vec![Vec::new(); chats.len()];
                for n in 0..PER_TASK {
                    let index = (task * 7 + n) % chats.len();
                    seen[index].push(next(&sequencer, &chats[index]).await);
                }
                seen
            })
        })
        .collect();
    let mut all = vec![BTreeSet::new(); CONVERSATIONS];
    for task in tasks {
        for (index, seen) in task
            .await
            .expect("an allocating task panicked")
            .into_iter()
            .enumerate()
        {
            assert!(
                seen.windows(2).all(|pair| pair[0] < pair[1]),
                "one task's allocations of a conversation must increase"
            );
            for seq in seen {
                assert!(all[index].insert(seq), "{seq} was handed out twice");
            }
        }
    }
    for (index, seqs) in all.iter().enumerate() {
        let expected: BTreeSet<Seq> = (1..=seqs.len() as u64).map(Seq).collect();
        assert_eq!(seqs, &expected, "conversation {index} has a gap");
    }
    let stats = sequencer.backend().batch_stats();
    assert!(
        stats.pipelines > 0,
        "no allocation went through the batching task"
    );
    assert!(
        stats.requests > stats.pipelines,
        "concurrent allocations never shared a pipeline: {stats:?}"
    );
    // Nothing moves meanwhile: a request answered `MOVED` went to the wrong node.
    assert_eq!(
        stats.sent_again, 0,
        "requests routed to a node that does not serve their slot: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_batches_concurrent_allocations() {
    if let Some(connection) = standalone().await {
        concurrent_allocations_share_pipelines(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_concurrent_allocations_per_node() {
    if let Some(connection) = cluster().await {
        concurrent_allocations_share_pipelines(connection).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_passes_the_conformance_suite_unbatched() {
    if let Some(connection) = standalone().await {
        let unbatched = config().with_max_batch(1);
        conformance::run(&Sequencer::new(RedisSequencer::with_config(
            connection,
            NoFloor,
            unbatched.clone(),
        )))
        .await;
    }
}

/// Allocations of one hot conversation queued together share one `INCRBY n`: each caller still
/// gets its own seq, with no gap and no seq twice. On a current-thread runtime the callers all
/// queue before the batching task runs, so they land in one batch.
async fn a_hot_conversation_shares_one_incrby<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    const CALLERS: u64 = 64;
    let sequencer = Sequencer::new(RedisSequencer::with_config(connection, NoFloor, config()));
    let chat = unique_conversation("hot");
    // The first use reads the floor (no batching).
    assert_eq!(next(&sequencer, &chat).await, Seq(1));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let sequencer = sequencer.clone();
            let chat = chat.clone();
            tokio::spawn(async move { next(&sequencer, &chat).await })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for caller in callers {
        let seq = caller.await.expect("an allocating task panicked");
        assert!(seqs.insert(seq), "{seq} was handed out twice");
    }
    let expected: BTreeSet<Seq> = (2..=CALLERS + 1).map(Seq).collect();
    assert_eq!(seqs, expected, "the hot conversation has a gap");
    let stats = sequencer.backend().batch_stats();
    assert_eq!(stats.requests, CALLERS, "{stats:?}");
    assert!(
        stats.coalesced > 0,
        "allocations of one conversation in one batch never shared a command: {stats:?}"
    );
    assert_eq!(next(&sequencer, &chat).await, Seq(CALLERS + 2));
}

#[tokio::test]
async fn standalone_coalesces_a_hot_conversation() {
    if let Some(connection) = standalone().await {
        a_hot_conversation_shares_one_incrby(connection).await;
    }
}

#[tokio::test]
async fn cluster_coalesces_a_hot_conversation() {
    if let Some(connection) = cluster().await {
        a_hot_conversation_shares_one_incrby(connection).await;
    }
}

/// `messenger_sequencer::connect` with one URL (standalone) and with several (cluster): the
/// suite passes on the `DynSequencer` it returns. (Skips silently: the other tests of this
/// binary print the skip lines.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_url_passes_the_conformance_suite() {
    let set = |variable| {
        std::env::var(variable)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    if let Some(url) = set(STANDALONE_VARIABLE) {
        let sequencer = messenger_sequencer::connect(&url, NoFloor)
            .await
            .unwrap_or_else(|err| panic!("connect({url}): {err}"));
        conformance::run(&sequencer).await;
    }
    if let Some(urls) = set(CLUSTER_VARIABLE) {
        assert!(urls.contains(','), "{CLUSTER_VARIABLE} lists several nodes");
        let sequencer = messenger_sequencer::connect(&urls, NoFloor)
            .await
            .unwrap_or_else(|err| panic!("connect({urls}): {err}"));
        conformance::run(&sequencer).await;
    }
}
