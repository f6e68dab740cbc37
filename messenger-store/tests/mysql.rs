//! The conformance suite on the MySQL / MariaDB backend.
//!
//! Runs when `MESSENGER_TEST_MYSQL_URL` names a database (`scripts/mariadb.sh` starts one and
//! prints the URL); otherwise prints one skip line and passes.
#![cfg(feature = "mysql")]

use std::io::Write as _;
use std::sync::Once;

use messenger_core::ErrorKind;
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

/// The same database through `messenger_store::connect`, the URL constructor, as a
/// `DynStore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_mysql_opened_by_url() {
    let Some(url) = url() else { return };
    let store = messenger_store::connect(&url)
        .await
        .expect("connect to the test database by URL");
    conformance::run_all(&store).await;
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

/// Two stores (two nodes) race for the same seqs: the shared suite's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_the_same_seqs() {
    let Some(url) = url() else { return };
    let nodes = [connect(&url).await, connect(&url).await];
    conformance::two_stores_race_for_the_same_seqs(&nodes[0], &nodes[1]).await;
}

/// The suite with group commit off (`append_batch` 1): every append in its own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_mysql_without_group_commit() {
    let Some(url) = url() else { return };
    let mut config = MysqlConfig::new(url);
    config.append_batch = 1;
    let store = Store::new(
        MysqlStore::connect_with(config)
            .await
            .expect("connect to the test database"),
    );
    conformance::run_all(&store).await;
    conformance::two_stores_race_for_the_same_seqs(&store, &store).await;
    store.backend().disconnect().await.expect("disconnect");
}

/// Many concurrent appends, fresh ones mixed with retries (same key, new seq) and appends to
/// taken seqs, go through group commit: each gets the outcome a lone append would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_each_appends_outcome() {
    use std::sync::Arc;

    use messenger_core::store::{AppendMessage, ReadRange};
    use messenger_core::{
        Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId, call,
    };

    let Some(url) = url() else { return };
    let store = connect(&url).await;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    let chat = ConversationId::new(format!("g:batch-{run}")).expect("id");
    let message = |seq: u64, key: String| Message {
        conversation: chat.clone(),
        seq: Seq(seq),
        sender: UserId::new("alice").expect("id"),
        sender_device: DeviceId::new("d").expect("id"),
        client_msg_id: ClientMsgId::new(key).expect("id"),
        sent_at: Timestamp(1),
        body: Body::text(format!("text {seq}")),
    };
    // Seqs 1..=100 hold `first-N`.
    for seq in 1..=100 {
        call(
            &store,
            AppendMessage {
                message: Arc::new(message(seq, format!("first-{seq}"))),
            },
        )
        .await
        .expect("append");
    }
    // At once: 100 fresh appends (seqs 101..=200), 50 retries of `first-N` given new seqs
    // 201..=250 (duplicates: the original answers, the new seq is voided), and 50 appends to
    // taken seqs 1..=50 under new keys (conflicts).
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn = |kind: &'static str, seq: u64, key: String| {
        let store = store.clone();
        let message = message(seq, key);
        tasks.spawn(async move {
            let outcome = call(
                &store,
                AppendMessage {
                    message: Arc::new(message),
                },
            )
            .await;
            (kind, seq, outcome)
        });
    };
    for seq in 101..=200 {
        spawn("fresh", seq, format!("fresh-{seq}"));
    }
    for n in 1..=50 {
        spawn("retry", 200 + n, format!("first-{n}"));
    }
    for seq in 1..=50 {
        spawn("taken", seq, format!("taken-{seq}"));
    }
    while let Some(joined) = tasks.join_next().await {
        let (kind, seq, outcome) = joined.expect("the task runs");
        match kind {
            "fresh" => {
                let appended = outcome.expect("a fresh append");
                assert!(!appended.duplicate);
                assert_eq!(appended.message.seq, Seq(seq));
            }
            "retry" => {
                let appended = outcome.expect("a retry");
                assert!(appended.duplicate);
                assert_eq!(appended.message.seq, Seq(seq - 200));
                assert_eq!(
                    appended.message.client_msg_id.as_str(),
                    format!("first-{}", seq - 200)
                );
            }
            _ => {
                let err = outcome.expect_err("the seq is taken");
                assert_eq!(err.kind(), ErrorKind::Conflict, "seq {seq}: {err}");
            }
        }
    }
    let page = call(
        &store,
        ReadRange {
            conversation: chat.clone(),
            after: Seq::ZERO,
            until: None,
            limit: 1000,
        },
    )
    .await
    .expect("read");
    assert_eq!(page.head, Seq(250));
    assert_eq!(page.messages.len(), 250);
    for stored in &page.messages {
        let seq = stored.seq.get();
        match seq {
            1..=100 => assert_eq!(stored.client_msg_id.as_str(), format!("first-{seq}")),
            101..=200 => assert_eq!(stored.client_msg_id.as_str(), format!("fresh-{seq}")),
            _ => assert!(
                matches!(stored.body, Body::Void),
                "seq {seq} is the void of a retry"
            ),
        }
    }
    store.backend().disconnect().await.expect("disconnect");
}
