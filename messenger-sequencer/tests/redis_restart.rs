//! Allocations while the Redis server restarts without persistence (its counters are lost):
//! failures during the outage are temporary, the sequencer recovers by itself, and no seq is
//! ever handed out twice.
//!
//! Runs only when both `MESSENGER_TEST_REDIS_URL` and `MESSENGER_TEST_REDIS_RESTART` (a shell
//! command that restarts that server, e.g. `scripts/redis.sh restart`) are set, since it
//! disturbs every other user of the server. Otherwise it passes silently (`tests/redis.rs`
//! prints the skip line for the Redis tests).
#![cfg(feature = "redis")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_core::sequencer::NextSeq;
use messenger_core::{Seq, call};
use messenger_sequencer::Sequencer;
use messenger_sequencer::conformance::{TestFloor, unique_conversation};
use messenger_sequencer::redis::RedisSequencer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_never_reuses_a_seq() {
    let (Ok(url), Ok(restart)) = (
        std::env::var("MESSENGER_TEST_REDIS_URL"),
        std::env::var("MESSENGER_TEST_REDIS_RESTART"),
    ) else {
        return;
    };
    const TASKS: usize = 8;
    let client = redis::Client::open(url.trim()).expect("a Redis URL");
    // The connection manager reconnects after the restart; a bare multiplexed connection
    // stays broken.
    let connection = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connect to Redis");
    let floor = TestFloor::new();
    let sequencer = Sequencer::new(RedisSequencer::new(connection, floor.clone()));
    let chat = unique_conversation("redis-restart");
    let stored = Arc::new(Mutex::new(Seq::ZERO));
    let restarted = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let sequencer = sequencer.clone();
            let chat = chat.clone();
            let floor = floor.clone();
            let stored = Arc::clone(&stored);
            let restarted = Arc::clone(&restarted);
            let failures = Arc::clone(&failures);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut after_restart = 0;
                // Allocate until 200 allocations succeeded after the restart.
                while after_restart < 200 {
                    match call(
                        &sequencer,
                        NextSeq {
                            conversation: chat.clone(),
                        },
                    )
                    .await
                    {
                        Ok(seq) => {
                            let mut head = stored.lock().unwrap_or_else(|err| err.into_inner());
                            if seq > *head {
                                *head = seq;
                                floor.set(&chat, seq);
                            }
                            seen.push(seq);
                            if restarted.load(Ordering::Acquire) {
                                after_restart += 1;
                            }
                        }
                        Err(err) => {
                            assert!(err.is_temporary(), "a restart must be temporary: {err}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let command = restart.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdout(std::process::Stdio::null())
            .status()
    })
    .await
    .expect("the restart task")
    .expect("run the restart command");
    assert!(status.success(), "`{restart}` failed: {status}");
    restarted.store(true, Ordering::Release);

    let mut all = BTreeSet::new();
    for task in tasks {
        let seen = task.await.expect("an allocating task");
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "increasing per task"
        );
        for seq in seen {
            assert!(all.insert(seq), "{seq} handed out twice across the restart");
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "redis restart: {} seqs handed out, {} temporary failures during the outage\n",
            all.len(),
            failures.load(Ordering::Relaxed)
        )
        .as_bytes(),
    );
}
