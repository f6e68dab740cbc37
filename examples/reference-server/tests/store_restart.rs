//! End to end: the shared store restarts in the middle of traffic. Sends fail with a temporary
//! error while it is down (nothing is acknowledged that is not stored), the client retries, the
//! node recovers by itself, and every acknowledged message is there afterwards.
//!
//! Runs when `MESSENGER_TEST_MYSQL_URL` and `MESSENGER_TEST_MYSQL_RESTART` (a shell command
//! that restarts the database) are set, as `.ci/run` does; otherwise prints one skip line.

mod common;

use std::time::Duration;

use common::{Server, connect};
use messenger_core::{Seq, UserId};
use messenger_socket::client::HistoryRange;

#[tokio::test]
async fn acknowledged_messages_survive_a_store_restart_mid_traffic() {
    let (Ok(url), Ok(restart)) = (
        std::env::var("MESSENGER_TEST_MYSQL_URL"),
        std::env::var("MESSENGER_TEST_MYSQL_RESTART"),
    ) else {
        println!(
            "SKIPPED: store restart test: set MESSENGER_TEST_MYSQL_URL and MESSENGER_TEST_MYSQL_RESTART"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", &url, "--store-timeout-ms", "3000"]);
    let alice = format!("alice{}", std::process::id());
    let bob = UserId::new(format!("bob{}", std::process::id())).unwrap();
    let (client, mut events) = connect(&server, &format!("{alice}:phone")).await;
    tokio::spawn(async move { while events.next().await.is_some() {} });
    let id = client.open_direct(&bob).await.unwrap().conversation.id;

    let sender = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..150 {
                // The outbox retries temporary failures; give each send time to get through.
                let sent = tokio::time::timeout(
                    Duration::from_secs(60),
                    client.send_text(&id, format!("m{n}")),
                )
                .await;
                if let Ok(Ok(sent)) = sent {
                    acked.push(sent);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(restart)
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "restart command failed: {status:?}");
    let acked = sender.await.unwrap();
    assert!(!acked.is_empty());

    // History never skips a seq: a page ends before a hole that may still be filled (the
    // sends that failed while the store was down left some), so read on until every acked seq
    // is covered; the holes resolve as voids once they are `void_after` old.
    let last = acked.iter().map(|sent| sent.seq).max().unwrap_or(Seq::ZERO);
    let mut messages = Vec::new();
    let mut after = Seq::ZERO;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while after < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "history stuck after {after}"
        );
        let page = client
            .history(&id, HistoryRange::After(after), Some(200))
            .await
            .unwrap();
        match page.messages.last() {
            Some(newest) => {
                assert_eq!(
                    page.messages.first().map(|m| m.seq),
                    Some(after.next()),
                    "history skipped a seq"
                );
                after = newest.seq;
                messages.extend(page.messages);
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    for sent in &acked {
        let stored = messages
            .iter()
            .find(|m| m.seq == sent.seq)
            .unwrap_or_else(|| panic!("acknowledged {sent:?} is missing"));
        assert_eq!(stored.client_msg_id, sent.client_msg_id);
    }
    // The node recovered by itself: a new send goes through.
    let after = client.send_text(&id, "after the restart").await.unwrap();
    assert!(after.seq > acked.last().map_or(Seq::ZERO, |sent| sent.seq));
}
