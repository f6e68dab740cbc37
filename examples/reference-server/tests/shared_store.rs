//! End to end on a shared MySQL/MariaDB store: two reference servers see each other's
//! writes. Runs when `MESSENGER_TEST_MYSQL_URL` names a database (`.ci/run` starts one with
//! `scripts/mariadb.sh`); otherwise prints one skip line.

mod common;

use common::{Server, connect, messages, text_of};
use messenger_core::{Seq, UserId};
use messenger_socket::client::HistoryRange;

fn mysql_url() -> Option<String> {
    let url = std::env::var("MESSENGER_TEST_MYSQL_URL").ok();
    if url.is_none() {
        println!(
            "SKIPPED: shared-store server tests: set MESSENGER_TEST_MYSQL_URL (scripts/mariadb.sh prints one)"
        );
    }
    url
}

/// User names unique to this run: the database outlives it.
fn unique(name: &str) -> String {
    format!("{name}{}", std::process::id())
}

#[tokio::test]
async fn two_servers_sharing_mariadb_see_each_others_writes() {
    let Some(url) = mysql_url() else { return };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Server::start(dir_a.path(), &["--store", &url, "--node-id", "a"]);
    let b = Server::start(dir_b.path(), &["--store", &url, "--node-id", "b"]);
    let alice = unique("alice");
    let bob = unique("bob");

    let (alice_a, _alice_events) = connect(&a, &format!("{alice}:phone")).await;
    let group = alice_a
        .create_group("shared", &[UserId::new(&bob).unwrap()])
        .await
        .unwrap()
        .conversation
        .id;
    for n in 0..3 {
        alice_a
            .send_text(&group, format!("from a {n}"))
            .await
            .unwrap();
    }

    // Bob, on the other server, syncs the group and its log from the shared store.
    let (bob_b, mut bob_events) = messenger_socket::client::Client::connect(
        messenger_socket::client::ClientConfig::new(b.url(), format!("{bob}:laptop")),
    )
    .await
    .unwrap();
    let log = messages(&mut bob_events, &group, 4).await;
    assert_eq!(
        log[1..].iter().map(|m| text_of(m)).collect::<Vec<_>>(),
        ["from a 0", "from a 1", "from a 2"]
    );
    // His reply continues the same sequence (the two nodes' sequencers meet in the store).
    let reply = bob_b.send_text(&group, "from b").await.unwrap();
    assert_eq!(reply.seq, Seq(5));
    bob_b.read(&group, Seq(5)).await.unwrap();
    bob_b.ping().await.unwrap();

    let page = alice_a
        .history(&group, HistoryRange::After(Seq::ZERO), None)
        .await
        .unwrap();
    assert_eq!(page.head, Seq(5));
    assert_eq!(text_of(&page.messages[4]), "from b");
    let mut bob_read = Seq::ZERO;
    for _ in 0..100 {
        let receipts = alice_a.receipts(&group).await.unwrap();
        bob_read = receipts
            .iter()
            .find(|r| r.user.as_str() == bob)
            .map_or(Seq::ZERO, |r| r.read);
        if bob_read == Seq(5) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        bob_read,
        Seq(5),
        "bob's receipt, written through b, read through a"
    );
    let members = bob_b.members(&group).await.unwrap();
    assert_eq!(members.members.len(), 2);
}
