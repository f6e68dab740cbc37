//! A node on the embedded backends, real WebSocket clients over loopback: a seq that was
//! allocated but never stored is resolved as void, and the entries around it are delivered in
//! order.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::ServerFrame;
use messenger_core::sequencer::NextSeq;
use messenger_core::{Body, ConversationId, Seq, UserId, call};
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_fanout::{Fanout, local::LocalFanout};
use messenger_sequencer::{Sequencer, memory::MemorySequencer};
use messenger_socket::auth::DevAuthenticator;
use messenger_socket::{Engine, EngineConfig, Node, Server, ServerConfig, Services};
use messenger_store::{EmbeddedStore, Store};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("a server frame");
        }
    }
}

async fn login(url: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let hello = json!({"type": "hello", "v": 1, "token": token});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("hello");
    assert!(matches!(frame(&mut ws).await, ServerFrame::Welcome { .. }));
    ws.send(Message::text(json!({"type": "sync"}).to_string()))
        .await
        .expect("sync");
    loop {
        if let ServerFrame::Synced { .. } = frame(&mut ws).await {
            return ws;
        }
    }
}

#[tokio::test]
async fn a_seq_that_is_never_stored_becomes_void_and_order_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db")).unwrap());
    let sequencer = Sequencer::new(MemorySequencer::new(store.clone()));
    let this_node = Node::single();
    let mut config = EngineConfig::default();
    config.void_after = Duration::from_millis(300);
    let node = Engine::new(
        Services {
            store: store.clone(),
            sequencer: sequencer.clone(),
            fanout: Fanout::new(LocalFanout::new(this_node.hub())),
            auth: DevAuthenticator,
            presence: Presence::new(MemoryPresence::new()),
        },
        this_node,
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = Server::new(node, ServerConfig::default());
    tokio::spawn(server.run(listener, std::future::pending()));

    let mut alice = login(&url, "alice:phone").await;
    let mut bob = login(&url, "bob:phone").await;
    let chat = ConversationId::direct(&UserId::new("alice").unwrap(), &UserId::new("bob").unwrap())
        .unwrap();
    let open = json!({"type": "open_direct", "id": "o", "user": "bob"});
    alice.send(Message::text(open.to_string())).await.unwrap();
    assert!(matches!(
        frame(&mut alice).await,
        ServerFrame::Conversation { .. }
    ));

    let send = |key: &str| {
        json!({"type": "send", "conversation": chat.as_str(), "client_msg_id": key,
               "body": {"kind": "text", "text": key}})
        .to_string()
    };
    alice.send(Message::text(send("first"))).await.unwrap();
    while !matches!(frame(&mut alice).await, ServerFrame::Sent { .. }) {}
    // Seq 2 is allocated and never stored: a sender that crashed between the two steps.
    let burned = call(
        &sequencer,
        NextSeq {
            conversation: chat.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(burned, Seq(2));
    // Wait for the first message to reach bob before the third is sent.
    let first = frame(&mut bob).await;
    assert!(
        matches!(first, ServerFrame::Message { ref message } if message.seq == Seq(1)),
        "{first:?}"
    );
    alice.send(Message::text(send("third"))).await.unwrap();

    // Bob gets seq 2 as void (after the hole stayed open for `void_after`), then seq 3.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let ServerFrame::Message { message } = frame(&mut bob).await {
            seen.push(message);
        }
    }
    assert_eq!(seen[0].seq, Seq(2));
    assert_eq!(seen[0].body, Body::Void);
    assert_eq!(seen[1].seq, Seq(3));
    assert_eq!(seen[1].body, Body::text("third"));

    // The void is stored: a later reader sees the same log, and the seq is never reused.
    let page = call(
        &store,
        messenger_core::store::ReadRange {
            conversation: chat.clone(),
            after: Seq::ZERO,
            until: None,
            limit: 10,
        },
    )
    .await
    .unwrap();
    let seqs: Vec<(u64, bool)> = page
        .messages
        .iter()
        .map(|m| (m.seq.get(), m.is_void()))
        .collect();
    assert_eq!(seqs, [(1, false), (2, true), (3, false)]);
}
