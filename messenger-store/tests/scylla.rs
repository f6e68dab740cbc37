//! The conformance suite on the ScyllaDB / Cassandra backend.
//!
//! Runs when `MESSENGER_TEST_SCYLLA_NODES` names reachable nodes (comma-separated
//! `host:port`); otherwise prints one skip line and passes. The tables live in the keyspace
//! `messenger_test` (replication factor 1, created when missing).
#![cfg(feature = "scylla")]

use std::io::Write as _;
use std::sync::{Arc, Once};
use std::time::Duration;

use messenger_core::store::{AppendMessage, ReadBefore, ReadRange, VoidSeq};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, ErrorKind, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::Store;
use messenger_store::conformance;
use messenger_store::scylla::{ScyllaConfig, ScyllaStore};

const NODES_VARIABLE: &str = "MESSENGER_TEST_SCYLLA_NODES";

/// The test cluster's configuration, or `None` after printing the skip line (once per test
/// binary).
fn config() -> Option<ScyllaConfig> {
    static SKIP_NOTICE: Once = Once::new();
    let nodes: Vec<String> = std::env::var(NODES_VARIABLE)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        SKIP_NOTICE.call_once(|| {
            // Straight to the process's stderr: the test harness hides `eprintln!` of a
            // passing test, and this line must show in `cargo test`'s output.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: ScyllaDB store tests: set {NODES_VARIABLE}=host:port[,host:port...] to run them (no ScyllaDB/Cassandra node can run on this machine)"
            );
        });
        return None;
    }
    let mut config = ScyllaConfig::new(nodes);
    config.keyspace = "messenger_test".to_owned();
    Some(config)
}

async fn connect(config: &ScyllaConfig) -> Store<ScyllaStore> {
    Store::new(
        ScyllaStore::connect(config.clone())
            .await
            .expect("connect to the test cluster"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_scylla() {
    let Some(config) = config() else { return };
    let store = connect(&config).await;
    conformance::run_all(&store).await;
    // A second store on the already created schema, and the suite again.
    let again = connect(&config).await;
    conformance::run_all(&again).await;

    // With migrations off, connecting only checks that the schema is at this build's version.
    let mut checked = config;
    checked.migrate = false;
    ScyllaStore::connect(checked)
        .await
        .expect("the schema is at this build's version");
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable() {
    // Needs no server: nothing listens on port 1. Runs everywhere.
    let mut config = ScyllaConfig::new(["127.0.0.1:1"]);
    config.credentials = Some(("messenger".to_owned(), "secret".to_owned()));
    config.connect_timeout = Duration::from_secs(5);
    let err = ScyllaStore::connect(config)
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary(), "{err}");
    assert!(!err.to_string().contains("secret"));
}

#[tokio::test]
async fn a_bad_keyspace_name_is_refused() {
    let mut config = ScyllaConfig::new(["127.0.0.1:1"]);
    config.keyspace = "no-dashes; DROP".to_owned();
    config.connect_timeout = Duration::from_secs(5);
    // Refused before any connection is tried.
    let err = ScyllaStore::connect(config).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}-{nanos:x}", std::process::id())
}

fn text(conversation: &ConversationId, sender: &UserId, key: &str, seq: u64) -> Arc<Message> {
    Arc::new(Message {
        conversation: conversation.clone(),
        seq: Seq(seq),
        sender: sender.clone(),
        sender_device: DeviceId::new("test-device").expect("a device id"),
        client_msg_id: ClientMsgId::new(key).expect("a client msg id"),
        sent_at: Timestamp(1),
        body: Body::text(key),
    })
}

/// Reads cross the partition (bucket) boundaries at seq 1024 and 2048 in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cross_bucket_boundaries() {
    let Some(config) = config() else { return };
    let store = connect(&config).await;
    let conversation = ConversationId::new(unique("g:buckets")).expect("a conversation id");
    let sender = UserId::new("bucket-writer").expect("a user id");
    // 1020..=1030 and 2040..=2050 hold messages; the seqs between them are voided.
    let written: Vec<u64> = (1020..=1030).chain(2040..=2050).collect();
    for &seq in &written {
        call(
            &store,
            AppendMessage {
                message: text(&conversation, &sender, &format!("m{seq}"), seq),
            },
        )
        .await
        .expect("append");
    }
    for seq in 1031..2040 {
        call(
            &store,
            VoidSeq {
                conversation: conversation.clone(),
                seq: Seq(seq),
            },
        )
        .await
        .expect("void");
    }
    let page = call(
        &store,
        ReadRange {
            conversation: conversation.clone(),
            after: Seq(1019),
            until: None,
            limit: 20,
        },
    )
    .await
    .expect("read_range");
    assert_eq!(page.head, Seq(2050));
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, (1020..1040).collect::<Vec<_>>());

    let page = call(
        &store,
        ReadBefore {
            conversation: conversation.clone(),
            before: Some(Seq(2045)),
            limit: 10,
        },
    )
    .await
    .expect("read_before");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, (2035..2045).collect::<Vec<_>>());
}

/// Two stores (two nodes) race for the same seqs: the shared suite's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_the_same_seqs() {
    let Some(config) = config() else { return };
    let nodes = [connect(&config).await, connect(&config).await];
    conformance::two_stores_race_for_the_same_seqs(&nodes[0], &nodes[1]).await;
}
