//! `SCRIPT FLUSH` mid-traffic on the Redis backend (what a restart or a failover to a node
//! that never loaded the scripts does): batched allocations answered `NOSCRIPT` did not run,
//! are sent again alone, and no number is burned or handed out twice.
//!
//! Runs only when `MESSENGER_TEST_REDIS_FLUSHALL=1` is set (the servers are private to this
//! run), on the standalone server of `MESSENGER_TEST_REDIS_URL` and the cluster of
//! `MESSENGER_TEST_REDIS_CLUSTER` when they are set. Otherwise it passes silently
//! (`tests/redis.rs` prints the skip line for the Redis tests). It lives in its own test
//! binary so no other test of this crate runs while it flushes.
#![cfg(feature = "redis")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use messenger_core::sequencer::NextSeq;
use messenger_core::{Seq, call};
use messenger_sequencer::Sequencer;
use messenger_sequencer::conformance::unique_conversation;
use messenger_sequencer::memory::NoFloor;
use messenger_sequencer::redis::RedisSequencer;
use redis::aio::ConnectionLike;

/// The value of `variable` when flushing is allowed.
fn configured(variable: &str) -> Option<String> {
    if std::env::var("MESSENGER_TEST_REDIS_FLUSHALL").as_deref() != Ok("1") {
        return None;
    }
    std::env::var(variable)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The server forgets its scripts (`SCRIPT FLUSH`, as after a restart) again and again while
/// tasks allocate: every allocation still succeeds and no number is burned (a batched
/// `EVALSHA` answered `NOSCRIPT` did not run and is sent again alone).
async fn script_flush_mid_traffic<C>(connection: C)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    const TASKS: usize = 16;
    const PER_TASK: usize = 200;
    let sequencer = Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        NoFloor,
        Default::default(),
    ));
    let chats: Vec<_> = (0..4)
        .map(|_| unique_conversation("redis-script-flush"))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let flusher = {
        let mut connection = connection.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut flushes = 0_u32;
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let () = redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_else(|err| panic!("SCRIPT FLUSH failed: {err}"));
                flushes += 1;
            }
            flushes
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let sequencer = sequencer.clone();
            let chats = chats.clone();
            tokio::spawn(async move {
                let mut seen = vec![Vec::new(); chats.len()];
                for n in 0..PER_TASK {
                    let index = (task + n) % chats.len();
                    seen[index].push(next(&sequencer, &chats[index]).await);
                }
                seen
            })
        })
        .collect();
    let mut all = vec![BTreeSet::new(); chats.len()];
    for task in tasks {
        for (index, seen) in task
            .await
            .expect("an allocating task panicked")
            .into_iter()
            .enumerate()
        {
            for seq in seen {
                assert!(all[index].insert(seq), "{seq} was handed out twice");
            }
        }
    }
    done.store(true, Ordering::Release);
    let flushes = flusher.await.expect("the flushing task panicked");
    assert!(flushes > 0, "SCRIPT FLUSH never ran");
    for (index, seqs) in all.iter().enumerate() {
        let expected: BTreeSet<Seq> = (1..=seqs.len() as u64).map(Seq).collect();
        assert_eq!(seqs, &expected, "conversation {index}: a number was burned");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_recovers_from_a_script_flush() {
    let Some(url) = configured("MESSENGER_TEST_REDIS_URL") else {
        return;
    };
    let connection = redis::Client::open(url.trim())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    script_flush_mid_traffic(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_recovers_from_a_script_flush() {
    let Some(nodes) = configured("MESSENGER_TEST_REDIS_CLUSTER") else {
        return;
    };
    let connection =
        redis::cluster::ClusterClient::new(nodes.split(',').map(str::trim).collect::<Vec<_>>())
            .expect("a node list")
            .get_async_connection()
            .await
            .expect("connect to the cluster");
    script_flush_mid_traffic(connection).await;
}

async fn next<C>(
    sequencer: &Sequencer<RedisSequencer<NoFloor, C>>,
    conversation: &messenger_core::ConversationId,
) -> Seq
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    call(
        sequencer,
        NextSeq {
            conversation: conversation.clone(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("next seq of {conversation} failed: {err}"))
}
