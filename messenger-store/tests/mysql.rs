//! The conformance suite on the MySQL / MariaDB backend.
//!
//! Runs when `MESSENGER_TEST_MYSQL_URL` names a database (`scripts/mariadb.sh` starts one and
//! prints the URL); otherwise prints one skip line and passes.
#![cfg(feature = "mysql")]

use std::io::Write as _;
use std::sync::{Arc, Once};

use messenger_core::store::{AppendMessage, ReadRange};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, ErrorKind, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::Store;
use messenger_store::conformance;
use messenger_store::mysql::{MysqlConfig, MysqlStore};

const URL_VARIABLE: &str = "MESSENGER_TEST_MYSQL_URL";

/// The test database, or `None` after printing the skip line (once per test binary).
fn url() -> Option<String> {
    static SKIP_NOTICE: Once = Once::new();
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            SKIP_NOTICE.call_once(|| {
                // Straight to the process's stderr: the test harness hides `eprintln!` of a
                // passing test, and this line must show in `cargo test`'s output.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: MySQL/MariaDB store tests: set {URL_VARIABLE} (e.g. from scripts/mariadb.sh) to run them"
                );
            });
            None
        }
    }
}

async fn connect(url: &str) -> Store<MysqlStore> {
    Store::new(
        MysqlStore::connect(url)
            .await
            .expect("connect to the test database"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_mysql() {
    let Some(url) = url() else { return };
    let store = connect(&url).await;
    conformance::run_all(&store).await;
    // Twice on the same database, and a second store connecting to an already migrated
    // schema: migrations are safe to run again, the suite assumes nothing about what is stored.
    let again = connect(&url).await;
    conformance::run_all(&again).await;
    store.backend().disconnect().await.expect("disconnect");
    again.backend().disconnect().await.expect("disconnect");

    // With migrations off, connecting only checks that the schema is at this build's version.
    let mut config = MysqlConfig::new(url);
    config.migrate = false;
    let checked = MysqlStore::connect_with(config)
        .await
        .expect("the schema is at this build's version");
    checked.disconnect().await.expect("disconnect");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Needs no server: nothing listens on port 1.
    let mut config = MysqlConfig::new("mysql://messenger:secret@127.0.0.1:1/messenger_test");
    config.connect_timeout = std::time::Duration::from_secs(3);
    let err = MysqlStore::connect_with(config)
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    assert!(!err.to_string().contains("secret"));
}

#[tokio::test]
async fn a_malformed_url_is_an_invalid_request() {
    let err = MysqlStore::connect("postgres://nope")
        .await
        .expect_err("not a MySQL URL");
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
        sender_device: DeviceId::new("race-device").expect("a device id"),
        client_msg_id: ClientMsgId::new(key).expect("a client msg id"),
        sent_at: Timestamp(1),
        body: Body::Text {
            text: key.to_owned(),
        },
    })
}

/// Two stores (two nodes) race writers for the same seqs: each seq goes to exactly one
/// message, every loser hears `Conflict` (never a deadlock error), and retries of one message
/// at several seqs store it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_the_same_seqs() {
    let Some(url) = url() else { return };
    let nodes = [connect(&url).await, connect(&url).await];
    let conversation = ConversationId::new(unique("g:race")).expect("a conversation id");
    const SEQS: u64 = 40;
    const WRITERS: usize = 8;

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = nodes[writer % 2].clone();
        let conversation = conversation.clone();
        tasks.push(tokio::spawn(async move {
            let sender = UserId::new(format!("writer-{writer}")).expect("a user id");
            let mut won = Vec::new();
            for seq in 1..=SEQS {
                let message = text(&conversation, &sender, &format!("w{writer}-s{seq}"), seq);
                match call(&store, AppendMessage { message }).await {
                    Ok(appended) => {
                        assert!(!appended.duplicate);
                        won.push(seq);
                    }
                    Err(err) => assert_eq!(err.kind(), ErrorKind::Conflict, "{err}"),
                }
            }
            won
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.expect("a writer task"));
    }
    winners.sort_unstable();
    assert_eq!(
        winners,
        (1..=SEQS).collect::<Vec<_>>(),
        "one winner per seq"
    );

    // One message retried concurrently at ten new seqs: stored once, the other seqs void.
    let sender = UserId::new("retrier").expect("a user id");
    let mut retries = Vec::new();
    for seq in SEQS + 1..=SEQS + 10 {
        let store = nodes[(seq % 2) as usize].clone();
        let message = text(&conversation, &sender, "the-retried-one", seq);
        retries.push(tokio::spawn(async move {
            call(&store, AppendMessage { message }).await
        }));
    }
    let mut originals = Vec::new();
    for retry in retries {
        let appended = retry
            .await
            .expect("a retry task")
            .expect("a retry is never refused");
        originals.push(appended.message.seq);
    }
    originals.dedup();
    assert_eq!(
        originals.len(),
        1,
        "every retry answers with the same original: {originals:?}"
    );

    let page = call(
        &nodes[0],
        ReadRange {
            conversation: conversation.clone(),
            after: Seq::ZERO,
            until: None,
            limit: 1000,
        },
    )
    .await
    .expect("read the log");
    assert_eq!(page.head, Seq(SEQS + 10));
    assert_eq!(page.messages.len() as u64, SEQS + 10, "no hole");
    let stored: Vec<_> = page
        .messages
        .iter()
        .filter(|message| message.client_msg_id.as_str() == "the-retried-one")
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        page.messages
            .iter()
            .filter(|message| message.is_void())
            .count(),
        9
    );
}
