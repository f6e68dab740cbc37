//! Test harness: the real `reference-server` binary on loopback, real WebSocket clients.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::ServerFrame;
use messenger_core::{
    ConversationId, Message, PresenceUpdate, ReceiptUpdate, TypingUpdate, UserId,
};
use messenger_socket::client::{Client, ClientConfig, ClientEvent, Events};
use tokio_tungstenite::tungstenite;

pub mod cluster;
pub mod history;
pub mod media;

pub const WAIT: Duration = Duration::from_secs(10);

/// One reference-server process.
pub struct Server {
    child: Option<Child>,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server on a fresh port with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_on("127.0.0.1:0", data_dir, extra, Vec::new())
    }

    /// As [`Server::start`], with extra environment variables for the process.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Self::start_on("127.0.0.1:0", data_dir, extra, env)
    }

    fn start_on(
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Server {
        let args: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_reference-server"))
            .envs(env.iter().map(|(name, value)| (name, value)))
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start reference-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read stdout");
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.parse().expect("address");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child: Some(child),
            address,
            data_dir: data_dir.to_owned(),
            args,
            env,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.address)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// SIGKILL: no drain, no flush beyond what was acknowledged.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().expect("wait")
    }

    /// SIGTERM without waiting: the process drains meanwhile (see [`Server::wait`]).
    pub fn signal_terminate(&self) {
        let child = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }

    /// Waits for the process to exit (after [`Server::signal_terminate`]).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait")
    }

    /// A new process on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut attempts = 0;
        loop {
            // The port is free again once the old process is gone; retry briefly if the
            // kernel still holds it.
            let started = std::panic::catch_unwind(|| {
                Self::start_on(
                    &self.address.to_string(),
                    &self.data_dir,
                    &extra,
                    self.env.clone(),
                )
            });
            match started {
                Ok(server) => {
                    *self = server;
                    return;
                }
                Err(_) if attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("user id")
}

/// A connected, synced client for `user:device`.
pub async fn connect(server: &Server, token: &str) -> (Client, Events) {
    connect_with(ClientConfig::new(server.url(), token)).await
}

pub async fn connect_with(config: ClientConfig) -> (Client, Events) {
    let (client, mut events) = Client::connect(config).await.expect("connect");
    events
        .wait_for(WAIT, |event| matches!(event, ClientEvent::Synced(_)))
        .await
        .expect("synced");
    (client, events)
}

/// Asserts the server's stream to `client` needed no repair: no entry came twice, none was
/// skipped and filled from `history` by the client (its events cannot show either: the
/// client repairs both before it surfaces anything).
#[allow(dead_code)]
pub fn assert_exactly_once(client: &Client) {
    assert_eq!(
        client.repairs(),
        messenger_socket::client::RepairCounts::default(),
        "the server sent duplicates or skipped entries"
    );
}

/// Collects the next `count` message entries of `conversation` (skipping other events).
pub async fn messages(
    events: &mut Events,
    conversation: &ConversationId,
    count: usize,
) -> Vec<Arc<Message>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let message = events
            .wait_for_message(WAIT, |message| &message.conversation == conversation)
            .await
            .unwrap_or_else(|err| {
                panic!("waiting for message {} of {count}: {err}", out.len() + 1)
            });
        out.push(message);
    }
    out
}

pub fn text_of(message: &Message) -> &str {
    match &message.body {
        messenger_core::Body::Text { text, .. } => text,
        other => panic!("expected text, got {other:?}"),
    }
}

pub type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket, for frames the client library would never send.
pub async fn raw(server: &Server) -> Raw {
    let (ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .expect("raw connect");
    ws
}

/// A raw WebSocket after a good hello, before any sync.
pub async fn raw_hello(server: &Server, token: &str) -> Raw {
    let mut ws = raw(server).await;
    send_json(
        &mut ws,
        serde_json::json!({"type": "hello", "v": 1, "token": token}),
    )
    .await;
    let welcome = next_frame(&mut ws).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    ws
}

/// A raw WebSocket after a good hello (and a sync, so entries are delivered).
pub async fn raw_authed(server: &Server, token: &str) -> Raw {
    let mut ws = raw_hello(server, token).await;
    send_json(&mut ws, serde_json::json!({"type": "sync", "cursors": {}})).await;
    loop {
        match next_frame(&mut ws).await {
            ServerFrame::Synced { .. } => return ws,
            ServerFrame::Message { .. } => continue,
            other => panic!("expected the backlog and synced, got {other:?}"),
        }
    }
}

pub async fn send_json(ws: &mut Raw, value: serde_json::Value) {
    ws.send(tungstenite::Message::text(value.to_string()))
        .await
        .expect("send");
}

pub async fn send_text(ws: &mut Raw, text: &str) {
    ws.send(tungstenite::Message::text(text.to_owned()))
        .await
        .expect("send");
}

/// The next text frame, decoded.
pub async fn next_frame(ws: &mut Raw) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("frame");
        match message {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"));
            }
            tungstenite::Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// The next frame that answers a request, skipping live events (messages, receipts, presence,
/// typing) that other users' activity may put in front of it.
pub async fn next_answer(ws: &mut Raw) -> ServerFrame {
    loop {
        match next_frame(ws).await {
            ServerFrame::Message { .. }
            | ServerFrame::Receipt(ReceiptUpdate { .. })
            | ServerFrame::Presence(PresenceUpdate { .. })
            | ServerFrame::Typing(TypingUpdate { .. }) => continue,
            answer => return answer,
        }
    }
}

/// Waits for the server to close; returns the close code.
pub async fn close_code(ws: &mut Raw) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(tungstenite::Message::Close(frame))) => {
                return frame.map(|frame| u16::from(frame.code));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Asserts two sequences are equal, reporting the first difference (not the whole lists).
pub fn assert_same<T: PartialEq + std::fmt::Debug>(got: &[T], expected: &[T]) {
    if let Some(index) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
        let from = index.saturating_sub(3);
        panic!(
            "first difference at {index}: got {:?}, expected {:?} (lengths {} and {})",
            &got[from..(index + 4).min(got.len())],
            &expected[from..(index + 4).min(expected.len())],
            got.len(),
            expected.len()
        );
    }
    assert_eq!(got.len(), expected.len(), "same prefix, different lengths");
}

/// Every entry of `conversation`, page after page.
pub async fn full_history(client: &Client, conversation: &ConversationId) -> Vec<Arc<Message>> {
    use messenger_core::Seq;
    use messenger_socket::client::HistoryRange;
    let mut all: Vec<Arc<Message>> = Vec::new();
    loop {
        let after = all.last().map_or(Seq::ZERO, |message| message.seq);
        let page = client
            .history(conversation, HistoryRange::After(after), None)
            .await
            .expect("history");
        if page.messages.is_empty() {
            return all;
        }
        all.extend(page.messages);
    }
}
