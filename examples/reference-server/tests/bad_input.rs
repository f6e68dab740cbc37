//! End to end: every kind of bad input gets its documented error frame or close code, the
//! node keeps serving, and nothing stored is lost.

mod common;

use std::time::Duration;

use common::{
    Server, close_code, connect, next_answer, next_frame, raw, raw_authed, send_json, send_text,
    user,
};
use futures_util::SinkExt;
use messenger_core::protocol::{ErrorCode, ServerFrame, close};
use messenger_core::{Seq, Timestamp};
use messenger_socket::client::HistoryRange;
use serde_json::json;
use tokio_tungstenite::tungstenite;

fn error_code(frame: &ServerFrame) -> ErrorCode {
    match frame {
        ServerFrame::Error { code, .. } => *code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut ws = raw_authed(&server, "alice:phone").await;

    send_text(&mut ws, "{not json").await;
    assert_eq!(error_code(&next_frame(&mut ws).await), ErrorCode::BadFrame);
    send_text(&mut ws, "[1,2]").await;
    assert_eq!(error_code(&next_frame(&mut ws).await), ErrorCode::BadFrame);
    send_json(&mut ws, json!({"type": "teleport", "id": "r1"})).await;
    let frame = next_frame(&mut ws).await;
    assert_eq!(error_code(&frame), ErrorCode::UnknownType);
    assert!(matches!(frame, ServerFrame::Error { id: Some(ref id), .. } if id.as_str() == "r1"));
    send_json(&mut ws, json!({"type": "read", "conversation": "dm:a:b"})).await;
    assert_eq!(error_code(&next_frame(&mut ws).await), ErrorCode::BadFrame);
    send_json(
        &mut ws,
        json!({"type": "open_direct", "id": "r2", "user": "no spaces"}),
    )
    .await;
    assert_eq!(error_code(&next_frame(&mut ws).await), ErrorCode::InvalidId);
    send_json(
        &mut ws,
        json!({"type": "open_direct", "id": "r3", "user": "x".repeat(65)}),
    )
    .await;
    assert_eq!(error_code(&next_frame(&mut ws).await), ErrorCode::InvalidId);
    send_json(
        &mut ws,
        json!({"type": "hello", "v": 1, "token": "alice:phone"}),
    )
    .await;
    assert_eq!(
        error_code(&next_frame(&mut ws).await),
        ErrorCode::NotAuthenticated
    );

    send_json(&mut ws, json!({"type": "ping", "id": "still-there"})).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Pong { .. }
    ));
}

#[tokio::test]
async fn too_many_bad_frames_in_a_row_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut ws = raw_authed(&server, "alice:phone").await;
    for _ in 0..40 {
        if ws
            .send(tungstenite::Message::text("garbage".to_owned()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(close::TOO_MANY_ERRORS));
}

/// A client that keeps writing after the frame that gets it closed still receives the close
/// frame with its code: the server reads (and discards) what the client sent after it, instead
/// of closing the socket on unread bytes (which resets the connection, and the client sees
/// 1006 without a close frame). Ten rounds each of 4009, 1003 and 1009.
#[tokio::test]
async fn a_client_that_keeps_writing_still_gets_its_close_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let cases: [(&str, u16); 3] = [
        ("bad frames", close::TOO_MANY_ERRORS),
        ("binary frame", close::UNSUPPORTED_DATA),
        ("oversize frame", close::TOO_BIG),
    ];
    for (case, expected) in cases {
        for round in 0..10 {
            let ws = raw_authed(&server, "alice:phone").await;
            let (mut outgoing, mut incoming) = futures_util::StreamExt::split(ws);
            let writer = tokio::spawn(async move {
                let garbage = || tungstenite::Message::text("garbage".to_owned());
                // Bad frames first (fewer than 32), so error frames the client has not read
                // yet stand in front of the close frame, then the frame that closes.
                let trigger = match expected {
                    close::UNSUPPORTED_DATA => tungstenite::Message::binary(vec![0; 16]),
                    close::TOO_BIG => tungstenite::Message::text("x".repeat(70 * 1024)),
                    _ => garbage(),
                };
                for frame in std::iter::repeat_with(garbage).take(20).chain([trigger]) {
                    if outgoing.send(frame).await.is_err() {
                        return;
                    }
                }
                // Keep writing until the connection refuses: the server closes meanwhile.
                while outgoing
                    .send(tungstenite::Message::text("garbage".to_owned()))
                    .await
                    .is_ok()
                {}
            });
            let code = loop {
                match tokio::time::timeout(
                    common::WAIT,
                    futures_util::StreamExt::next(&mut incoming),
                )
                .await
                .expect("close in time")
                {
                    Some(Ok(tungstenite::Message::Close(frame))) => {
                        break frame.map(|frame| u16::from(frame.code));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break None,
                }
            };
            writer.abort();
            assert_eq!(code, Some(expected), "{case}, round {round}");
        }
    }
}

#[tokio::test]
async fn sends_that_break_the_rules_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let mut mallory = raw_authed(&server, "mallory:phone").await;

    let send = |conversation: &str, key: &str, text: String| {
        json!({"type": "send", "conversation": conversation, "client_msg_id": key,
               "body": {"kind": "text", "text": text}})
    };
    send_json(&mut mallory, send(id.as_str(), "m1", "sneaky".into())).await;
    let frame = next_frame(&mut mallory).await;
    assert_eq!(error_code(&frame), ErrorCode::NotMember);
    assert!(
        matches!(frame, ServerFrame::Error { client_msg_id: Some(ref key), retryable: false, .. } if key.as_str() == "m1")
    );
    send_json(&mut mallory, send("g:nope", "m2", "hello?".into())).await;
    assert_eq!(
        error_code(&next_frame(&mut mallory).await),
        ErrorCode::NotFound
    );

    let mut bob = raw_authed(&server, "bob:phone").await;
    send_json(&mut bob, send(id.as_str(), "b1", "x".repeat(16 * 1024 + 1))).await;
    assert_eq!(error_code(&next_frame(&mut bob).await), ErrorCode::TooLarge);
    send_json(&mut bob, send(id.as_str(), "b2", "   ".into())).await;
    assert_eq!(
        error_code(&next_frame(&mut bob).await),
        ErrorCode::InvalidRequest
    );
    send_json(&mut bob, send(id.as_str(), "bad key!", "hi".into())).await;
    assert_eq!(
        error_code(&next_frame(&mut bob).await),
        ErrorCode::InvalidId
    );

    // Mallory can read nothing either.
    send_json(
        &mut mallory,
        json!({"type": "history", "id": "h", "conversation": id.as_str()}),
    )
    .await;
    assert_eq!(
        error_code(&next_frame(&mut mallory).await),
        ErrorCode::NotMember
    );
    send_json(
        &mut mallory,
        json!({"type": "read", "conversation": id.as_str(), "seq": 1}),
    )
    .await;
    assert_eq!(
        error_code(&next_frame(&mut mallory).await),
        ErrorCode::NotMember
    );

    let page = alice
        .history(&id, HistoryRange::Latest, None)
        .await
        .unwrap();
    assert!(
        page.messages.is_empty(),
        "nothing was stored: {:?}",
        page.messages
    );
    assert_eq!(page.head, Seq::ZERO);
}

#[tokio::test]
async fn group_operations_need_the_right_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _events) = connect(&server, "alice:phone").await;
    let group = alice
        .create_group("roles", &[user("bob")])
        .await
        .unwrap()
        .conversation
        .id;
    let direct = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let mut bob = raw_authed(&server, "bob:phone").await;
    for frame in [
        json!({"type": "add_members", "id": "1", "conversation": group.as_str(), "users": ["carol"]}),
        json!({"type": "remove_member", "id": "2", "conversation": group.as_str(), "user": "alice"}),
        json!({"type": "set_role", "id": "3", "conversation": group.as_str(), "user": "bob", "role": "owner"}),
    ] {
        send_json(&mut bob, frame).await;
        let answer = next_answer(&mut bob).await;
        assert!(
            matches!(
                error_code(&answer),
                ErrorCode::Forbidden | ErrorCode::InvalidRequest
            ),
            "{answer:?}"
        );
    }
    send_json(&mut bob, json!({"type": "add_members", "id": "4", "conversation": direct.as_str(), "users": ["carol"]})).await;
    assert_eq!(
        error_code(&next_answer(&mut bob).await),
        ErrorCode::InvalidRequest
    );
    send_json(
        &mut bob,
        json!({"type": "create_group", "id": "5", "title": ""}),
    )
    .await;
    assert_eq!(
        error_code(&next_answer(&mut bob).await),
        ErrorCode::InvalidRequest
    );

    let members = alice.members(&group).await.unwrap();
    assert_eq!(members.members.len(), 2, "nothing changed");
    assert_eq!(members.head, Seq(1));
}

#[tokio::test]
async fn the_handshake_rejects_bad_hellos_with_close_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--hello-timeout-ms", "300"]);

    let mut ws = raw(&server).await;
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::PROTOCOL_ERROR));

    let mut ws = raw(&server).await;
    send_text(&mut ws, "hello?").await;
    assert_eq!(close_code(&mut ws).await, Some(close::PROTOCOL_ERROR));

    let mut ws = raw(&server).await;
    send_json(
        &mut ws,
        json!({"type": "hello", "v": 1, "token": "no-device"}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, Some(close::UNAUTHORIZED));

    let mut ws = raw(&server).await;
    send_json(
        &mut ws,
        json!({"type": "hello", "v": 99, "token": "alice:phone"}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, Some(close::UNSUPPORTED_VERSION));

    let mut ws = raw(&server).await;
    ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(close::UNSUPPORTED_DATA));

    let mut ws = raw(&server).await;
    assert_eq!(close_code(&mut ws).await, Some(close::HELLO_TIMEOUT));
}

#[tokio::test]
async fn oversize_and_binary_frames_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut ws = raw_authed(&server, "alice:phone").await;
    let _ = ws
        .send(tungstenite::Message::text("x".repeat(70 * 1024)))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(close::TOO_BIG));

    let mut ws = raw_authed(&server, "alice:phone").await;
    ws.send(tungstenite::Message::binary(vec![0; 16]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(close::UNSUPPORTED_DATA));
}

fn jwt(secret: &str, user: &str, exp: u64) -> String {
    let claims = json!({"sub": user, "device": "phone", "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn signed_tokens_are_checked_and_expiry_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--auth", "jwt", "--jwt-secret", "s3cret"]);
    let now = Timestamp::now().as_millis() / 1000;

    for token in [
        "alice:phone".to_owned(),
        jwt("wrong", "alice", now + 60),
        jwt("s3cret", "alice", now.saturating_sub(3600)),
    ] {
        let mut ws = raw(&server).await;
        send_json(&mut ws, json!({"type": "hello", "v": 1, "token": token})).await;
        assert_eq!(
            close_code(&mut ws).await,
            Some(close::UNAUTHORIZED),
            "{token}"
        );
    }

    let mut ws = raw(&server).await;
    send_json(
        &mut ws,
        json!({"type": "hello", "v": 1, "token": jwt("s3cret", "alice", now + 2)}),
    )
    .await;
    let welcome = next_frame(&mut ws).await;
    assert!(matches!(welcome, ServerFrame::Welcome { ref user, .. } if user.as_str() == "alice"));
    // Open until the token expires, then closed with 4003.
    send_json(&mut ws, json!({"type": "ping", "id": "p"})).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Pong { .. }
    ));
    assert_eq!(close_code(&mut ws).await, Some(close::TOKEN_EXPIRED));
}

/// With `--jwt-issuer` and `--jwt-audience`, a token must carry both claims (docs/protocol.md
/// §4.1): one without `iss` or without `aud` is refused with 4001, as a wrong one is.
#[tokio::test]
async fn a_configured_issuer_and_audience_are_required_claims() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--auth",
            "jwt",
            "--jwt-secret",
            "s3cret",
            "--jwt-issuer",
            "chat",
            "--jwt-audience",
            "app",
        ],
    );
    let exp = Timestamp::now().as_millis() / 1000 + 60;
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    };
    for (case, claims) in [
        (
            "no iss",
            json!({"sub": "alice", "device": "phone", "exp": exp, "aud": "app"}),
        ),
        (
            "no aud",
            json!({"sub": "alice", "device": "phone", "exp": exp, "iss": "chat"}),
        ),
        (
            "wrong iss",
            json!({"sub": "alice", "device": "phone", "exp": exp, "iss": "x", "aud": "app"}),
        ),
    ] {
        let mut ws = raw(&server).await;
        send_json(
            &mut ws,
            json!({"type": "hello", "v": 1, "token": sign(claims)}),
        )
        .await;
        assert_eq!(
            close_code(&mut ws).await,
            Some(close::UNAUTHORIZED),
            "{case}"
        );
    }
    let mut ws = raw(&server).await;
    let good = json!({"sub": "alice", "device": "phone", "exp": exp, "iss": "chat", "aud": "app"});
    send_json(
        &mut ws,
        json!({"type": "hello", "v": 1, "token": sign(good)}),
    )
    .await;
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Welcome { .. }
    ));
}

/// A device that never reads: its queue overflows and the node closes it; everyone else is
/// served and every message is stored.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_loses_nothing() {
    const COUNT: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--outbound-queue", "1024", "--write-timeout-ms", "1000"],
    );
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    alice.close().await;
    let mut stalled = raw_authed(&server, "bob:phone").await;

    // The sender is a raw connection that never syncs, so only its small `sent` acks come
    // back (entries are not delivered before a sync); a reader task takes them.
    let mut sender = common::raw(&server).await;
    send_json(
        &mut sender,
        json!({"type": "hello", "v": 1, "token": "alice:laptop"}),
    )
    .await;
    assert!(matches!(
        next_frame(&mut sender).await,
        ServerFrame::Welcome { .. }
    ));
    let (mut outgoing, mut incoming) = futures_util::StreamExt::split(sender);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < COUNT {
            match futures_util::StreamExt::next(&mut incoming).await {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    let frame: ServerFrame = serde_json::from_str(&text).unwrap();
                    match frame {
                        ServerFrame::Sent { .. } => acked += 1,
                        ServerFrame::Error { .. } => panic!("{frame:?}"),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("sender connection ended: {other:?}"),
            }
        }
    });
    let text = "y".repeat(16_000);
    for n in 0..COUNT {
        let frame = json!({"type": "send", "conversation": id.as_str(), "client_msg_id": format!("big-{n}"),
                           "body": {"kind": "text", "text": text}});
        outgoing
            .send(tungstenite::Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    acks.await.unwrap();
    // Now drain what reached the stalled socket: it ends with the slow-consumer close, or
    // with the connection dropped when even the close frame could not be written.
    let code = close_code(&mut stalled).await;
    assert!(
        code.is_none() || code == Some(close::SLOW_CONSUMER),
        "unexpected close {code:?}"
    );

    let (bob, _bob_events) = connect(&server, "bob:tablet").await;
    let page = bob
        .history(&id, HistoryRange::Before(Seq(COUNT as u64 + 1)), Some(1))
        .await
        .unwrap();
    assert_eq!(page.head, Seq(COUNT as u64));
    assert_eq!(page.messages[0].seq, Seq(COUNT as u64));
}

#[tokio::test]
async fn the_connection_limit_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "1"]);
    let _first = raw_authed(&server, "alice:phone").await;
    let refused = tokio_tungstenite::connect_async(server.url()).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    // Still serving.
    let mut first = _first;
    send_json(&mut first, json!({"type": "ping", "id": "p"})).await;
    assert!(matches!(
        next_frame(&mut first).await,
        ServerFrame::Pong { .. }
    ));
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let health = http_status(&server, "/healthz").await;
    assert_eq!(health, 200);
    assert_eq!(http_status(&server, "/readyz").await, 200);
    let mut ws = raw_authed(&server, "alice:phone").await;
    let stopping = std::thread::spawn(move || {
        let status = server.terminate();
        (server, status)
    });
    let frame = next_frame(&mut ws).await;
    assert!(matches!(frame, ServerFrame::Reconnect { .. }), "{frame:?}");
    assert_eq!(close_code(&mut ws).await, Some(close::SERVICE_RESTART));
    let (_server, status) = stopping.join().unwrap();
    assert!(status.success(), "{status:?}");
}

/// During the drain the node keeps its listener: `/readyz` answers 503 and `/healthz` 200, a
/// new WebSocket upgrade is refused with HTTP 503, and the process exits once the last client
/// has left (docs/operations.md).
#[tokio::test]
async fn draining_answers_503_until_the_last_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--drain-timeout-ms", "60000", "--hello-timeout-ms", "60000"],
    );
    // The drain waits for this connection: it has not said hello yet, so it is told to
    // reconnect only once it does.
    let mut last = raw(&server).await;
    server.signal_terminate();

    // Ready until the signal is handled, then 503 while draining.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        match http_status(&server, "/readyz").await {
            503 => break,
            200 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("/readyz answered {other} while draining"),
        }
    }
    assert_eq!(http_status(&server, "/healthz").await, 200);
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected HTTP 503 for an upgrade while draining, got {other:?}"),
    }
    // Still draining: the last client is there.
    assert_eq!(http_status(&server, "/readyz").await, 503);

    // The last client says hello, is told to reconnect, and leaves.
    send_json(
        &mut last,
        json!({"type": "hello", "v": 1, "token": "alice:phone"}),
    )
    .await;
    assert!(matches!(
        next_frame(&mut last).await,
        ServerFrame::Welcome { .. }
    ));
    let frame = next_frame(&mut last).await;
    assert!(matches!(frame, ServerFrame::Reconnect { .. }), "{frame:?}");
    assert_eq!(close_code(&mut last).await, Some(close::SERVICE_RESTART));
    drop(last);
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

async fn http_status(server: &Server, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
