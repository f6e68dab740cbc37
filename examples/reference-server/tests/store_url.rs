//! End to end: `--store` as a `messenger_store::connect` URL.

mod common;

use std::process::Command;

use common::{Server, connect, full_history, user};
use messenger_core::Body;

/// `--store embedded:PATH` keeps the log in that file (not in `--data-dir`), across a restart.
#[tokio::test]
async fn an_embedded_path_holds_the_log_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let path = elsewhere.path().join("nested/chat.db");
    let store = format!("embedded:{}", path.display());
    let mut server = Server::start(data.path(), &["--store", &store, "--durability", "relaxed"]);
    let (alice, _events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    alice.send_text(&id, "kept").await.unwrap();
    alice.close().await;
    assert!(path.exists(), "the store is the file --store names");
    assert!(
        !data.path().join("messages.db").exists(),
        "nothing in the data directory's default file"
    );

    server.restart();
    let (bob, _events) = connect(&server, "bob:phone").await;
    let history = full_history(&bob, &id).await;
    let texts: Vec<&str> = history
        .iter()
        .filter_map(|message| match &message.body {
            Body::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["kept"]);
}

/// A store URL nobody understands stops the server at start with a message saying so.
#[test]
fn an_unknown_store_url_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--store", "postgres://user:secret@127.0.0.1/chat"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown store URL scheme"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "no password in the message: {stderr}"
    );
}
