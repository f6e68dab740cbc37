//! The engine called from code, wrapped in stock tower layers and ours, with real WebSocket
//! devices connected: what a service call does reaches the devices exactly as a WebSocket
//! client's frames do (sequenced, fanned out, receipts), and refusals carry the protocol codes.

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::auth::Identity;
use messenger_core::protocol::{ErrorCode, NewBody, ServerFrame};
use messenger_core::{
    Body, ClientMsgId, DeviceId, ErrorKind, ReceiptKind, ReceiptUpdate, Seq, TypingUpdate, UserId,
    call,
};
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_fanout::{Fanout, local::LocalFanout};
use messenger_sequencer::{Sequencer, memory::MemorySequencer};
use messenger_socket::auth::DevAuthenticator;
use messenger_socket::engine::layer::PerUserRateLimitLayer;
use messenger_socket::engine::{
    AddMembers, CreateGroup, GetPresence, MarkReceipt, OpenDirect, ReadHistory, SendMessage,
    SetTyping,
};
use messenger_socket::{Backends, Engine, EngineConfig, Node, Server, ServerConfig, Services};
use messenger_store::{EmbeddedStore, Store};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;

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

async fn device(url: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"type": "hello", "v": 1, "token": token});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    assert!(matches!(frame(&mut ws).await, ServerFrame::Welcome { .. }));
    ws.send(Message::text(json!({"type": "sync"}).to_string()))
        .await
        .unwrap();
    loop {
        if let ServerFrame::Synced { .. } = frame(&mut ws).await {
            return ws;
        }
    }
}

/// An engine on the embedded store, in-process fanout and memory presence.
fn engine() -> (Engine<impl Backends>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db")).unwrap());
    let node = Node::single();
    let engine = Engine::new(
        Services {
            sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
            fanout: Fanout::new(LocalFanout::new(node.hub())),
            store,
            auth: DevAuthenticator,
            presence: Presence::new(MemoryPresence::new()),
        },
        node,
        EngineConfig::default(),
    );
    (engine, dir)
}

fn actor(user: &str) -> Identity {
    Identity::new(UserId::new(user).unwrap(), DeviceId::new("job").unwrap())
}

fn text(text: &str) -> NewBody {
    NewBody::text(text)
}

#[tokio::test]
async fn service_calls_reach_connected_devices_in_order() {
    let (engine, _dir) = engine();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(
        Server::new(engine.clone(), ServerConfig::default()).run(listener, std::future::pending()),
    );

    // Stock layers and ours around the engine: the stack is still a Clone service.
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .load_shed()
        .concurrency_limit(64)
        .layer(PerUserRateLimitLayer::new(
            NonZeroU32::new(1000).unwrap(),
            NonZeroU32::new(1000).unwrap(),
        ))
        .service(engine.clone());

    let mut bob = device(&url, "bob:phone").await;
    let group = call(
        &service,
        CreateGroup {
            actor: actor("alice"),
            title: "ops".into(),
            members: vec![UserId::new("bob").unwrap()],
        },
    )
    .await
    .unwrap();
    let id = group.conversation.id.clone();
    assert_eq!(group.head, Seq(1), "group_created is seq 1");

    for n in 0..5 {
        let sent = call(
            &service,
            SendMessage {
                resend: false,
                actor: actor("alice"),
                conversation: id.clone(),
                client_msg_id: ClientMsgId::new(format!("job-{n}")).unwrap(),
                body: text(&format!("notice {n}")),
            },
        )
        .await
        .unwrap();
        assert_eq!(sent.message.seq, Seq(n + 2));
        assert!(!sent.duplicate);
    }
    // Bob's device gets the group's log live: seq 1..=6, each once, in order.
    let mut seqs = Vec::new();
    while seqs.len() < 6 {
        if let ServerFrame::Message { message } = frame(&mut bob).await {
            assert_eq!(message.conversation, id);
            seqs.push(message.seq.0);
            if message.seq.0 > 1 {
                assert!(
                    matches!(&message.body, Body::Text { text, .. } if text.starts_with("notice"))
                );
            }
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    // A receipt and typing from code reach the device as events.
    call(
        &service,
        MarkReceipt {
            actor: actor("alice"),
            conversation: id.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(6),
        },
    )
    .await
    .unwrap();
    loop {
        if let ServerFrame::Receipt(ReceiptUpdate { receipts, .. }) = frame(&mut bob).await {
            assert_eq!(receipts.user.as_str(), "alice");
            assert_eq!(receipts.read, Seq(6));
            break;
        }
    }
    call(
        &service,
        SetTyping {
            actor: actor("alice"),
            conversation: id.clone(),
            active: true,
        },
    )
    .await
    .unwrap();
    loop {
        if let ServerFrame::Typing(TypingUpdate { user, active, .. }) = frame(&mut bob).await {
            assert_eq!(user.as_str(), "alice");
            assert!(active);
            break;
        }
    }

    // Refusals keep their protocol codes through the layers.
    let refused = call(
        &service,
        SendMessage {
            resend: false,
            actor: actor("mallory"),
            conversation: id.clone(),
            client_msg_id: ClientMsgId::new("m-1").unwrap(),
            body: text("let me in"),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.refusal_code(), Some(ErrorCode::NotMember));
    let refused = call(
        &service,
        AddMembers {
            actor: actor("bob"),
            conversation: id.clone(),
            users: vec![UserId::new("carol").unwrap()],
            role: messenger_core::Role::Member,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden);
    assert_eq!(refused.client_message().0, ErrorCode::Forbidden);

    // Reads go through the same checks.
    let page = call(
        &engine,
        ReadHistory {
            actor: actor("bob"),
            conversation: id.clone(),
            after: Some(Seq::ZERO),
            before: None,
            limit: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(page.messages.len(), 6);
    let online = call(
        &engine,
        GetPresence {
            users: vec![UserId::new("bob").unwrap(), UserId::new("alice").unwrap()],
        },
    )
    .await
    .unwrap();
    assert!(online[0].online, "bob's device is connected");
    assert!(!online[1].online, "alice never connected a device");
}

#[tokio::test]
async fn a_user_over_their_rate_is_refused_and_others_are_not() {
    let (engine, _dir) = engine();
    let service = ServiceBuilder::new()
        .layer(PerUserRateLimitLayer::new(
            NonZeroU32::MIN,
            NonZeroU32::new(3).unwrap(),
        ))
        .service(engine);
    let group = call(
        &service,
        CreateGroup {
            actor: actor("alice"),
            title: "t".into(),
            members: vec![UserId::new("bob").unwrap()],
        },
    )
    .await
    .unwrap();
    let id = group.conversation.id;
    let send = |user: &str, key: &str| SendMessage {
        resend: false,
        actor: actor(user),
        conversation: id.clone(),
        client_msg_id: ClientMsgId::new(key).unwrap(),
        body: text("hi"),
    };
    call(&service, send("alice", "a-1")).await.unwrap();
    call(&service, send("alice", "a-2")).await.unwrap();
    let refused = call(&service, send("alice", "a-3")).await.unwrap_err();
    assert_eq!(refused.refusal_code(), Some(ErrorCode::RateLimited));
    assert!(refused.is_temporary());
    // Nothing was stored for the refused send; bob still has his whole budget.
    let sent = call(&service, send("bob", "b-1")).await.unwrap();
    assert_eq!(
        sent.message.seq,
        Seq(4),
        "group_created, a-1, a-2, then b-1"
    );
}

/// The codes and shapes docs/protocol.md gives for these refusals (each differed before).
#[tokio::test]
async fn refusals_have_the_documented_codes_and_shapes() {
    let (engine, _dir) = engine();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(
        Server::new(engine.clone(), ServerConfig::default()).run(listener, std::future::pending()),
    );

    let too_long = call(
        &engine,
        CreateGroup {
            actor: actor("alice"),
            title: "t".repeat(messenger_core::MAX_TITLE_BYTES + 1),
            members: vec![],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(too_long.refusal_code(), Some(ErrorCode::TooLarge));

    let group = call(
        &engine,
        CreateGroup {
            actor: actor("alice"),
            title: "t".into(),
            members: vec![],
        },
    )
    .await
    .unwrap();
    let owner = call(
        &engine,
        AddMembers {
            actor: actor("alice"),
            conversation: group.conversation.id.clone(),
            users: vec![UserId::new("bob").unwrap()],
            role: messenger_core::Role::Owner,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(owner.refusal_code(), Some(ErrorCode::InvalidRequest));

    // Over the WebSocket: a refused `read` carries neither `id` nor `conversation`, and an
    // over-long `unsubscribe_presence` is `too_large`.
    let mut mallory = device(&url, "mallory:phone").await;
    let read = json!({"type": "read", "conversation": group.conversation.id, "seq": 1});
    mallory.send(Message::text(read.to_string())).await.unwrap();
    let refusal = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), mallory.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "error" {
                break frame;
            }
        }
    };
    assert_eq!(refusal["code"], "not_member");
    assert!(refusal.get("conversation").is_none(), "{refusal}");
    assert!(refusal.get("id").is_none(), "{refusal}");

    let users: Vec<String> = (0..257).map(|n| format!("u{n}")).collect();
    let unsubscribe = json!({"type": "unsubscribe_presence", "id": "u", "users": users});
    mallory
        .send(Message::text(unsubscribe.to_string()))
        .await
        .unwrap();
    loop {
        if let ServerFrame::Error { id, code, .. } = frame(&mut mallory).await {
            assert_eq!(code, ErrorCode::TooLarge);
            assert_eq!(id.map(|id| id.to_string()), Some("u".to_owned()));
            break;
        }
    }
}

/// A retry the caller marks `resend` is answered with the original and spends no seq; one
/// that is not leaves a void behind (the append finds the key after a seq was given).
#[tokio::test]
async fn a_resend_through_the_engine_spends_no_seq() {
    let (engine, _dir) = engine();
    let chat = call(
        &engine,
        OpenDirect {
            actor: actor("alice"),
            other: UserId::new("bob").unwrap(),
        },
    )
    .await
    .unwrap()
    .conversation
    .id;
    let send = |key: &str, resend: bool| SendMessage {
        resend,
        actor: actor("alice"),
        conversation: chat.clone(),
        client_msg_id: ClientMsgId::new(key).unwrap(),
        body: text("once"),
    };
    assert_eq!(
        call(&engine, send("k", false)).await.unwrap().message.seq,
        Seq(1)
    );
    let again = call(&engine, send("k", true)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.seq, Seq(1));
    assert_eq!(
        call(&engine, send("next", false))
            .await
            .unwrap()
            .message
            .seq,
        Seq(2),
        "the resend spent no seq"
    );
    assert!(call(&engine, send("k", false)).await.unwrap().duplicate);
    assert_eq!(
        call(&engine, send("last", false))
            .await
            .unwrap()
            .message
            .seq,
        Seq(4),
        "the plain retry left a void at 3"
    );
}
