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
