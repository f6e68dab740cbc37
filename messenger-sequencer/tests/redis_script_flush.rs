//! `SCRIPT FLUSH` mid-traffic on the Redis backend (what a restart or a failover to a node
//! that never loaded the scripts does) while the counters are lost too, so allocations keep
//! going through the floor scripts: a script answered `NOSCRIPT` did not run and is loaded and
//! sent again, allocations never fail, and no number is handed out twice.
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
use messenger_sequencer::conformance::{TestFloor, unique_conversation};
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
    // The floor plays a store that never saw these conversations: only this process's own
    // highest seqs keep them unique.
    let floor = TestFloor::new();
    let sequencer = Sequencer::new(RedisSequencer::new(connection.clone(), floor.clone()));
    let chats: Vec<_> = (0..4)
        .map(|_| unique_conversation("redis-script-flush"))
        .collect();
    let keys: Vec<String> = chats
        .iter()
        .map(|chat| sequencer.backend().counter_key(chat))
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
                // The counters go too, so allocations need the floor scripts again.
                for key in &keys {
                    let _: i64 = redis::cmd("DEL")
                        .arg(key)
                        .query_async(&mut connection)
                        .await
                        .unwrap_or_else(|err| panic!("DEL {key} failed: {err}"));
                }
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
            assert!(
                seen.windows(2).all(|pair| pair[0] < pair[1]),
                "one task's allocations of a conversation must increase"
            );
            for seq in seen {
                assert!(all[index].insert(seq), "{seq} was handed out twice");
            }
        }
    }
    done.store(true, Ordering::Release);
    let flushes = flusher.await.expect("the flushing task panicked");
    assert!(flushes > 0, "SCRIPT FLUSH never ran");
    let reads: usize = chats.iter().map(|chat| floor.reads(chat)).sum();
    assert!(
        reads > chats.len(),
        "the lost counters must send the sequencer to the floor scripts again"
    );
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
    sequencer: &Sequencer<RedisSequencer<TestFloor, C>>,
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
