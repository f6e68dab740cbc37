//! Appends while the MySQL/MariaDB server restarts: every acknowledged message is present
//! afterwards, failures during the outage are temporary, and the store recovers by itself.
//!
//! Runs only when both `MESSENGER_TEST_MYSQL_URL` and `MESSENGER_TEST_MYSQL_RESTART` (a shell
//! command that restarts the server, e.g. `scripts/mariadb.sh stop && scripts/mariadb.sh`)
//! are set, since it disturbs every other user of the server. Otherwise it passes silently
//! (`tests/mysql.rs` prints the skip line for the MySQL tests).
#![cfg(feature = "mysql")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::store::{AppendMessage, ReadRange};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, ErrorKind, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::Store;
use messenger_store::mysql::{MysqlConfig, MysqlStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_server_restart() {
    let (Ok(url), Ok(restart)) = (
        std::env::var("MESSENGER_TEST_MYSQL_URL"),
        std::env::var("MESSENGER_TEST_MYSQL_RESTART"),
    ) else {
        return;
    };
    let mut config = MysqlConfig::new(url);
    config.max_connections = 4;
    let store = Store::new(MysqlStore::connect_with(config).await.expect("connect"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let conversation =
        ConversationId::new(format!("g:restart-{nanos:x}")).expect("a conversation id");
    let sender = UserId::new("restarter").expect("a user id");

    let restarter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg("-c")
                .arg(restart)
                .stdout(std::process::Stdio::null())
                .status()
        })
        .await
        .expect("the restart task")
        .expect("run the restart command");
        assert!(status.success(), "the restart command failed");
    });

    let started = Instant::now();
    let mut acked = Vec::new();
    let mut temporary_failures = 0u32;
    let mut seq = 0u64;
    let mut recovered_after_outage = false;
    while started.elapsed() < Duration::from_secs(30) {
        seq += 1;
        let message = Arc::new(Message {
            conversation: conversation.clone(),
            seq: Seq(seq),
            sender: sender.clone(),
            sender_device: DeviceId::new("d").expect("a device id"),
            client_msg_id: ClientMsgId::new(format!("m{seq}")).expect("a key"),
            sent_at: Timestamp(seq),
            body: Body::text(format!("#{seq}")),
        });
        match call(&store, AppendMessage { message }).await {
            Ok(appended) => {
                acked.push(appended.message.seq);
                if temporary_failures > 0 && restarter.is_finished() {
                    recovered_after_outage = true;
                    if acked.len() > 20 {
                        break;
                    }
                }
            }
            Err(err) => {
                assert!(err.is_temporary(), "{err}");
                assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
                temporary_failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    restarter.await.expect("the restart task");
    assert!(temporary_failures > 0, "the restart was not noticed");
    assert!(recovered_after_outage, "the store did not recover");
    let page = call(
        &store,
        ReadRange {
            conversation,
            after: Seq::ZERO,
            until: None,
            limit: 100_000,
        },
    )
    .await
    .expect("read back");
    let stored: Vec<Seq> = page.messages.iter().map(|message| message.seq).collect();
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} is missing");
    }
    eprintln!(
        "restart: {} acknowledged, {temporary_failures} temporary failures, all present",
        acked.len()
    );
}
