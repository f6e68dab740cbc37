//! A two-node cluster keeps its guarantees while its shared services fail under it: Redis
//! restarts (losing every key: no persistence), the Kafka-compatible broker restarts (losing
//! every topic: memory storage), Redis is flushed. Each runs only when `.ci/run` (or you) says
//! how: `MESSENGER_TEST_REDIS_RESTART` and `MESSENGER_TEST_KAFKA_RESTART` hold shell commands,
//! `MESSENGER_TEST_REDIS_FLUSHALL=1` allows flushing the test Redis. One test in its own
//! binary: nothing else runs on these services meanwhile.

#![cfg(feature = "kafka")]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::cluster::{cluster_env, nodes, unique};
use common::{connect, connect_with, full_history, text_of, user};
use messenger_core::{Body, Seq};
use messenger_socket::client::ClientConfig;

/// Something that breaks a shared service, synchronously.
type Fault = Box<dyn Fn() + Send + Sync>;

/// The faults this run may inject, each a description and an action.
fn faults(redis_url: &str) -> Vec<(&'static str, Fault)> {
    let mut faults: Vec<(&'static str, Fault)> = Vec::new();
    let shell = |command: String| -> Fault {
        Box::new(move || {
            let status = Command::new("sh").arg("-c").arg(&command).status();
            assert!(
                status.as_ref().is_ok_and(std::process::ExitStatus::success),
                "`{command}` failed: {status:?}"
            );
        })
    };
    match std::env::var("MESSENGER_TEST_REDIS_RESTART") {
        Ok(command) if !command.trim().is_empty() => {
            faults.push(("Redis restart", shell(command)));
        }
        _ => println!("SKIPPED: Redis restart: set MESSENGER_TEST_REDIS_RESTART"),
    }
    match std::env::var("MESSENGER_TEST_KAFKA_RESTART") {
        Ok(command) if !command.trim().is_empty() => {
            faults.push(("broker restart", shell(command)));
        }
        _ => println!("SKIPPED: broker restart: set MESSENGER_TEST_KAFKA_RESTART"),
    }
    if std::env::var("MESSENGER_TEST_REDIS_FLUSHALL").is_ok_and(|value| value == "1") {
        let url = redis_url.to_owned();
        faults.push((
            "Redis FLUSHALL",
            Box::new(move || {
                let client = redis::Client::open(url.as_str()).expect("redis url");
                let mut connection = client.get_connection().expect("connect to redis");
                let () = redis::cmd("FLUSHALL")
                    .query(&mut connection)
                    .expect("FLUSHALL");
            }),
        ));
    } else {
        println!("SKIPPED: Redis FLUSHALL: set MESSENGER_TEST_REDIS_FLUSHALL=1");
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_broker_failures_mid_traffic_lose_nothing_acknowledged() {
    let Some(env) = cluster_env("shared-service failures") else {
        return;
    };
    let faults = faults(&env.redis);
    if faults.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = nodes(&env, dir.path(), "faults", 2);
    let (alice, bob) = (unique("faultalice"), unique("faultbob"));
    let (alice_client, _alice_events) = connect(&cluster[0], &format!("{alice}:phone")).await;
    let (_bob_client, mut bob_events) = connect_with(
        ClientConfig::new(cluster[1].url(), format!("{bob}:phone"))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500)),
    )
    .await;
    let id = alice_client
        .open_direct(&user(&bob))
        .await
        .unwrap()
        .conversation
        .id;

    // Alice sends steadily; every fault strikes while she does.
    let sender = {
        let alice_client = alice_client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused = 0;
            let mut n = 0;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(12) {
                match alice_client.send_text(&id, format!("m{n}")).await {
                    Ok(sent) => acked.push((sent.seq, format!("m{n}"))),
                    Err(_) => refused += 1,
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (acked, refused)
        })
    };
    for (name, fault) in &faults {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        println!("injecting: {name}");
        tokio::task::block_in_place(fault);
    }
    let (acked, refused) = sender.await.unwrap();
    println!("{} sends acknowledged, {refused} refused", acked.len());
    assert!(!acked.is_empty());

    // Delivery resumes by itself. An envelope in flight while the broker restarted may be
    // lost with its topic (the store has the message: a device fills the gap when the next
    // one arrives), so Alice sends probes, one every 5 s, until one reaches Bob live; his
    // client then fills whatever the faults kept from him, in order, from the store.
    let mut probes = 0;
    let mut newest = alice_client.send_text(&id, "probe 0").await.unwrap().seq;
    let mut received: Vec<std::sync::Arc<messenger_core::Message>> = Vec::new();
    while received.last().is_none_or(|message| message.seq < newest) {
        match bob_events
            .wait_for_message(Duration::from_secs(5), |message| message.conversation == id)
            .await
        {
            Ok(message) => received.push(message),
            Err(_) => {
                probes += 1;
                assert!(
                    probes < 12,
                    "no live delivery for a minute after the faults"
                );
                newest = alice_client
                    .send_text(&id, format!("probe {probes}"))
                    .await
                    .unwrap()
                    .seq;
            }
        }
    }
    println!("delivery resumed after {probes} extra probes");

    // No acknowledged message lost, no seq given to two messages, nothing duplicated.
    let log = full_history(&alice_client, &id).await;
    let stored: Vec<(Seq, String)> = log
        .iter()
        .filter(|m| !matches!(m.body, Body::Void))
        .map(|m| (m.seq, text_of(m).to_owned()))
        .collect();
    let seqs: Vec<Seq> = log.iter().map(|m| m.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs strictly increase"
    );
    let texts: HashSet<&str> = stored.iter().map(|(_, text)| text.as_str()).collect();
    assert_eq!(texts.len(), stored.len(), "no message stored twice");
    for (seq, text) in &acked {
        assert!(
            stored.contains(&(*seq, text.clone())),
            "acknowledged {text} at {seq:?} is missing"
        );
    }
    let bob_saw: Vec<(Seq, String)> = received
        .iter()
        .map(|m| (m.seq, text_of(m).to_owned()))
        .collect();
    assert_eq!(bob_saw, stored, "Bob got the whole log once, in order");
}
