//! `FLUSHALL` mid-traffic on the Redis backend: no seq is ever handed out twice.
//!
//! Runs only when both `MESSENGER_TEST_REDIS_URL` and `MESSENGER_TEST_REDIS_FLUSHALL=1` are set,
//! since it wipes the whole server (use the private one `scripts/redis.sh` starts). Otherwise it
//! passes silently (`tests/redis.rs` prints the skip line for the Redis tests). It lives in its
//! own test binary so no other test of this crate runs while it flushes.
#![cfg(feature = "redis")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_core::sequencer::NextSeq;
use messenger_core::{Seq, call};
use messenger_sequencer::Sequencer;
use messenger_sequencer::conformance::{TestFloor, unique_conversation};
use messenger_sequencer::redis::RedisSequencer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_allocation_never_reuses_a_seq() {
    let Ok(url) = std::env::var("MESSENGER_TEST_REDIS_URL") else {
        return;
    };
    if std::env::var("MESSENGER_TEST_REDIS_FLUSHALL").as_deref() != Ok("1") {
        return;
    }
    const TASKS: usize = 8;
    const PER_TASK: usize = 500;
    let connection = redis::Client::open(url.trim())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    // The floor plays the store: the highest seq handed out (stored) so far.
    let floor = TestFloor::new();
    let sequencer = Sequencer::new(RedisSequencer::new(connection.clone(), floor.clone()));
    let chats: Vec<_> = (0..4)
        .map(|_| unique_conversation("redis-flushall"))
        .collect();
    let stored = Arc::new(Mutex::new(vec![Seq::ZERO; chats.len()]));

    let done = Arc::new(AtomicBool::new(false));
    let flusher = {
        let mut connection = connection.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut flushes = 0_u32;
            while !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(3)).await;
                let () = redis::cmd("FLUSHALL")
                    .query_async(&mut connection)
                    .await
                    .expect("FLUSHALL");
                flushes += 1;
            }
            flushes
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let sequencer = sequencer.clone();
            let chats = chats.clone();
            let floor = floor.clone();
            let stored = Arc::clone(&stored);
            tokio::spawn(async move {
                let mut seen = vec![Vec::new(); chats.len()];
                for n in 0..PER_TASK {
                    let index = (task + n) % chats.len();
                    let conversation = chats[index].clone();
                    let seq = call(
                        &sequencer,
                        NextSeq {
                            conversation: conversation.clone(),
                        },
                    )
                    .await
                    .expect("an allocation");
                    let mut heads = stored.lock().unwrap_or_else(|err| err.into_inner());
                    if seq > heads[index] {
                        heads[index] = seq;
                        floor.set(&conversation, seq);
                    }
                    seen[index].push(seq);
                }
                seen
            })
        })
        .collect();
    let mut all = vec![BTreeSet::new(); chats.len()];
    for task in tasks {
        for (index, seen) in task.await.expect("a task").into_iter().enumerate() {
            assert!(
                seen.windows(2).all(|pair| pair[0] < pair[1]),
                "increasing per task"
            );
            for seq in seen {
                assert!(
                    all[index].insert(seq),
                    "{seq} handed out twice across FLUSHALL"
                );
            }
        }
    }
    done.store(true, Ordering::Release);
    let flushes = flusher.await.expect("the flushing task");
    assert!(flushes > 0, "FLUSHALL never ran");
    let reads: usize = chats.iter().map(|chat| floor.reads(chat)).sum();
    assert!(
        reads > chats.len(),
        "FLUSHALL must send the sequencer to its floor again"
    );

    // A fresh process after one more FLUSHALL starts above everything handed out.
    let mut admin = connection.clone();
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .expect("FLUSHALL");
    let fresh = Sequencer::new(RedisSequencer::new(connection, floor));
    for (index, chat) in chats.iter().enumerate() {
        let highest = *all[index].last().expect("allocations");
        let first = call(
            &fresh,
            NextSeq {
                conversation: chat.clone(),
            },
        )
        .await
        .expect("next");
        assert!(
            first > highest,
            "{first} is not above {highest} after FLUSHALL"
        );
    }
}
