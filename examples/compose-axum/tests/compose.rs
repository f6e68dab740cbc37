//! The composed app end to end: the app's own login, a message sent over HTTP reaching a
//! WebSocket device in seq order, the bot answering through the engine, refusals over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn start() -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let data = dir.path().to_owned();
    tokio::spawn(async move {
        compose_axum::serve(&data, listener, std::future::pending())
            .await
            .unwrap();
    });
    (address, dir)
}

/// One HTTP/1.1 request on its own connection: the status and the JSON body.
async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let cookie = session
        .map(|session| format!("Cookie: session={session}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{cookie}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))
    };
    (status, body)
}

async fn login(address: SocketAddr, user: &str) -> String {
    let (status, body) = http(
        address,
        "POST",
        "/login",
        None,
        Some(json!({ "user": user })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["session"].as_str().unwrap().to_owned()
}

/// A WebSocket device of `session`: hello with the app's session id as token, then sync.
async fn device(address: SocketAddr, session: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .unwrap();
    let hello = json!({ "type": "hello", "v": 1, "token": session });
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let welcome = next_frame(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws.send(Message::text(r#"{"type":"sync","cursors":{}}"#))
        .await
        .unwrap();
    loop {
        if next_frame(&mut ws).await["type"] == "synced" {
            return ws;
        }
    }
}

async fn next_frame(ws: &mut Ws) -> Value {
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

/// The next `message` frames of `conversation`, every one checked as it arrives.
async fn messages(ws: &mut Ws, conversation: &str, count: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let frame = next_frame(ws).await;
        if frame["type"] == "message" && frame["message"]["conversation"] == conversation {
            seen.push(frame["message"].clone());
        }
    }
    seen
}

#[tokio::test]
async fn http_sends_reach_websocket_devices_and_the_bot_answers() {
    let (address, _dir) = start().await;
    let alice = login(address, "alice").await;
    let bob = login(address, "bob").await;
    let mut bob_phone = device(address, &bob).await;

    // Alice, over HTTP only, opens a chat with bob and writes twice.
    let (status, opened) = http(address, "POST", "/direct/bob", Some(&alice), None).await;
    assert_eq!(status, 200, "{opened}");
    let chat = opened["conversation"].as_str().unwrap().to_owned();
    for (key, text) in [("a-1", "hi bob"), ("a-2", "are you there?")] {
        let (status, sent) = http(
            address,
            "POST",
            &format!("/conversations/{chat}/messages"),
            Some(&alice),
            Some(json!({ "text": text, "client_msg_id": key })),
        )
        .await;
        assert_eq!(status, 201, "{sent}");
        assert_eq!(sent["duplicate"], false);
    }
    // A retry of the first send answers its original seq.
    let (status, retried) = http(
        address,
        "POST",
        &format!("/conversations/{chat}/messages"),
        Some(&alice),
        Some(json!({ "text": "hi bob", "client_msg_id": "a-1" })),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(retried["duplicate"], true);
    assert_eq!(retried["seq"], 1);

    // Bob's device got both, live, in seq order, each once: the retry burned seq 3 as a void.
    let live = messages(&mut bob_phone, &chat, 3).await;
    let seqs: Vec<u64> = live.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(live[0]["body"]["text"], "hi bob");
    assert_eq!(live[0]["sender"], "alice");
    assert_eq!(live[1]["body"]["text"], "are you there?");
    assert_eq!(live[2]["body"]["kind"], "void");

    // Bob answers over his WebSocket; alice reads it over HTTP.
    let send = json!({
        "type": "send", "conversation": chat, "client_msg_id": "b-1",
        "body": { "kind": "text", "text": "here" }
    });
    bob_phone
        .send(Message::text(send.to_string()))
        .await
        .unwrap();
    loop {
        let frame = next_frame(&mut bob_phone).await;
        if frame["type"] == "sent" {
            assert_eq!(frame["seq"], 4);
            break;
        }
    }
    let (status, page) = http(
        address,
        "GET",
        &format!("/conversations/{chat}/messages?after=3"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["body"]["text"], "here");
    assert_eq!(page["head"], 4);

    // The bot: bob writes to it from his device and its answer arrives there.
    let (_, opened) = http(address, "POST", "/direct/echo-bot", Some(&bob), None).await;
    let bot_chat = opened["conversation"].as_str().unwrap().to_owned();
    let send = json!({
        "type": "send", "conversation": bot_chat, "client_msg_id": "b-2",
        "body": { "kind": "text", "text": "ping" }
    });
    bob_phone
        .send(Message::text(send.to_string()))
        .await
        .unwrap();
    let exchange = messages(&mut bob_phone, &bot_chat, 2).await;
    assert_eq!(exchange[0]["body"]["text"], "ping");
    assert_eq!(exchange[1]["sender"], "echo-bot");
    assert_eq!(exchange[1]["body"]["text"], "echo: ping");
    assert_eq!(exchange[1]["seq"], 2);
}

#[tokio::test]
async fn http_refusals_carry_the_engines_codes() {
    let (address, _dir) = start().await;
    let alice = login(address, "alice").await;
    let carol = login(address, "carol").await;

    let (status, _) = http(address, "POST", "/direct/bob", None, None).await;
    assert_eq!(status, 401, "no session");

    let (_, opened) = http(address, "POST", "/direct/bob", Some(&alice), None).await;
    let chat = opened["conversation"].as_str().unwrap().to_owned();
    let (status, refused) = http(
        address,
        "POST",
        &format!("/conversations/{chat}/messages"),
        Some(&carol),
        Some(json!({ "text": "let me in", "client_msg_id": "c-1" })),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["code"], "not_member");

    let (status, refused) = http(
        address,
        "POST",
        &format!("/conversations/{chat}/messages"),
        Some(&alice),
        Some(json!({ "text": "x".repeat(70_000), "client_msg_id": "a-1" })),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["code"], "too_large");

    let (status, refused) = http(address, "POST", "/direct/alice", Some(&alice), None).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["code"], "invalid_request");
    assert_eq!(
        refused["message"],
        "a direct conversation needs two different users"
    );
}
