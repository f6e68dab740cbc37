//! The broker restarts mid-traffic and loses every topic (tansu with memory storage; on a
//! real cluster: the topics of a wiped cluster): the nodes notice their topics are gone,
//! create them again and resume consuming by themselves, and every delivery acknowledged by
//! the restarted broker reaches its device, in order.
//!
//! Runs only when both `MESSENGER_TEST_KAFKA_BROKERS` and `MESSENGER_TEST_KAFKA_RESTART` (a
//! shell command that restarts that broker, e.g. `scripts/kafka.sh restart`) are set, since it
//! disturbs every other user of the broker; it is its own test binary so no other test of
//! this crate runs during the restart. Otherwise it prints a `SKIPPED:` line.
#![cfg(feature = "kafka")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use messenger_core::call;
use messenger_core::fanout::Deliver;
use support::{
    Registry, brokers, eventually, receipt, receipt_seqs, start_node, test_config, unique_prefix,
    user,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_by_itself_after_a_broker_restart() {
    let Some(brokers) = brokers("delivery_resumes_by_itself_after_a_broker_restart") else {
        return;
    };
    let Ok(restart) = std::env::var("MESSENGER_TEST_KAFKA_RESTART") else {
        println!(
            "SKIPPED: delivery_resumes_by_itself_after_a_broker_restart: \
             MESSENGER_TEST_KAFKA_RESTART is not set (e.g. \"scripts/kafka.sh restart\")"
        );
        return;
    };
    const BEFORE: u64 = 100;
    const AFTER: usize = 200;
    const LIMIT: Duration = Duration::from_secs(90);

    let prefix = unique_prefix("restart");
    let registry = Registry::default();
    let config = |name: &str| {
        test_config(&brokers, &prefix, name).with_delivery_timeout(Duration::from_secs(2))
    };
    let a = start_node(&registry, config("node-a")).await;
    let b = start_node(&registry, config("node-b")).await;
    b.connect(&registry, "bob", "phone");

    // One sender, one delivery at a time, for the whole test.
    let restarted = Arc::new(AtomicBool::new(false));
    let sender = {
        let fanout = a.fanout.clone();
        let restarted = Arc::clone(&restarted);
        tokio::spawn(async move {
            let mut acknowledged_after = Vec::new();
            let mut failures = 0;
            let mut seq = 0;
            let deadline = Instant::now() + LIMIT;
            while acknowledged_after.len() < AFTER {
                assert!(
                    Instant::now() < deadline,
                    "only {} deliveries acknowledged after the restart ({failures} failed)",
                    acknowledged_after.len()
                );
                seq += 1;
                let after = restarted.load(Ordering::SeqCst);
                let outcome = call(
                    &fanout,
                    Deliver {
                        recipients: Arc::from([user("bob")]),
                        event: receipt("g:restart", "alice", seq),
                    },
                )
                .await;
                match outcome {
                    Ok(report) if after => {
                        assert_eq!(report.remote_nodes, 1);
                        acknowledged_after.push(seq);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        assert!(after || seq > BEFORE, "failed before the restart: {err}");
                        assert!(err.is_temporary(), "{err}");
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if !after && seq <= BEFORE {
                    // Pace the traffic before the restart a little.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (acknowledged_after, failures)
        })
    };

    eventually("traffic before the restart", LIMIT, || {
        b.delivery.received(&user("bob"), 0).len() >= BEFORE as usize
    })
    .await;
    let command = restart.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .status()
    })
    .await
    .expect("the restart task")
    .expect("run the restart command");
    assert!(status.success(), "{restart} failed: {status}");
    restarted.store(true, Ordering::SeqCst);

    let (acknowledged_after, failures) = sender.await.expect("the sender task");
    println!(
        "{} deliveries acknowledged after the restart, {failures} failed during it; \
         node a {:?}, node b {:?}",
        acknowledged_after.len(),
        a.kafka().stats(),
        b.kafka().stats()
    );
    eventually(
        "every delivery acknowledged after the restart arrived",
        LIMIT,
        || {
            let seqs = receipt_seqs(&b.delivery.received(&user("bob"), 0));
            acknowledged_after.iter().all(|seq| seqs.contains(seq))
        },
    )
    .await;
    let seqs = receipt_seqs(&b.delivery.received(&user("bob"), 0));
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "one producer's deliveries arrive in order, never twice: {seqs:?}"
    );
    assert!(b.kafka().stats().topic_recreations >= 1);
    assert!(a.kafka().stats().topic_recreations >= 1);

    a.kafka().shutdown().await;
    b.kafka().shutdown().await;
}
