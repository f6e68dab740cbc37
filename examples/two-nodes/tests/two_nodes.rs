//! Two engines joined by the example's own fanout and presence: a device on one node talks
//! with devices on the other, live, in order, with typing, receipts and presence.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = next(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn device(port: u16, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "v": 1, "token": token});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    until(&mut ws, "welcome").await;
    ws.send(Message::text(r#"{"type":"sync"}"#)).await.unwrap();
    until(&mut ws, "synced").await;
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn devices_on_two_nodes_chat_live() {
    let dir = tempfile::tempdir().unwrap();
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = [
        first.local_addr().unwrap().port(),
        second.local_addr().unwrap().port(),
    ];
    let _nodes = two_nodes::start(dir.path(), [first, second]).unwrap();

    let mut alice = device(ports[0], "alice:phone").await;
    send(
        &mut alice,
        json!({"type": "subscribe_presence", "id": "p", "users": ["bob"]}),
    )
    .await;
    let mut bob = device(ports[1], "bob:laptop").await;
    let mut carol = device(ports[1], "carol:phone").await;
    // Bob came online on the other node: the example's presence feed told alice's node.
    loop {
        let frame = until(&mut alice, "presence").await;
        if frame["user"] == "bob" && frame["online"] == true {
            break;
        }
    }

    send(
        &mut alice,
        json!({"type": "create_group", "id": "g", "title": "across", "members": ["bob", "carol"]}),
    )
    .await;
    let group = until(&mut alice, "conversation").await;
    let id = group["conversation"]["id"].as_str().unwrap().to_owned();
    for n in 0..20 {
        send(
            &mut alice,
            json!({"type": "send", "conversation": id, "client_msg_id": format!("a-{n}"),
                   "body": {"kind": "text", "text": format!("m{n}")}}),
        )
        .await;
    }
    // Both devices of the other node get the whole log, each seq once, in order.
    for ws in [&mut bob, &mut carol] {
        let mut seqs = Vec::new();
        while seqs.len() < 21 {
            let frame = next(ws).await;
            if frame["type"] == "message" && frame["message"]["conversation"] == id {
                seqs.push(frame["message"]["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
    }

    // Back the other way: typing and a read receipt from node 2 reach node 1.
    send(
        &mut bob,
        json!({"type": "typing", "conversation": id, "active": true}),
    )
    .await;
    let typing = until(&mut alice, "typing").await;
    assert_eq!(typing["user"], "bob");
    send(
        &mut bob,
        json!({"type": "read", "conversation": id, "seq": 21}),
    )
    .await;
    loop {
        let receipt = until(&mut alice, "receipt").await;
        if receipt["receipts"]["user"] == "bob" {
            assert_eq!(receipt["receipts"]["read"], 21);
            break;
        }
    }
}
