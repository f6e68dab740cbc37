//! End to end, in raw JSON frames: what docs/protocol.md decides for the cases it used to
//! leave open (issue #12, item 7). Each test names the part of the document it checks.

mod common;

use common::{Raw, Server, WAIT, raw, send_json};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

/// The next text frame as raw JSON (WebSocket pings skipped).
async fn next_json(ws: &mut Raw) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream open")
            .expect("a frame");
        match message {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(&text).expect("a JSON frame");
            }
            tungstenite::Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads frames until one with `"id": id` (an answer or an error to that request); returns
/// it and the frames read before it.
async fn answer(ws: &mut Raw, id: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let frame = next_json(ws).await;
        if frame["id"] == id {
            return (frame, before);
        }
        before.push(frame);
    }
}

/// Reads frames until one matches `pick`; returns it.
async fn until(ws: &mut Raw, pick: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = next_json(ws).await;
        if pick(&frame) {
            return frame;
        }
    }
}

/// Every frame written before the `pong` to a `ping` sent now.
async fn until_pong(ws: &mut Raw, fence: &str) -> Vec<Value> {
    send_json(ws, json!({"type": "ping", "id": fence})).await;
    let (pong, before) = answer(ws, fence).await;
    assert_eq!(pong["type"], "pong");
    before
}

/// A raw connection after `hello` and an empty `sync` (its `synced` read).
async fn authed(server: &Server, token: &str) -> Raw {
    let mut ws = raw(server).await;
    send_json(&mut ws, json!({"type": "hello", "v": 1, "token": token})).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    send_json(&mut ws, json!({"type": "sync", "cursors": {}})).await;
    until(&mut ws, |frame| frame["type"] == "synced").await;
    ws
}

/// Sends `request` (which has `"id": id`) and returns its answer.
async fn request(ws: &mut Raw, id: &str, request: Value) -> Value {
    send_json(ws, request).await;
    answer(ws, id).await.0
}

/// The conversation's head, as `members` answers it.
async fn head(ws: &mut Raw, id: &str) -> u64 {
    let members = request(
        ws,
        "m",
        json!({"type": "members", "id": "m", "conversation": id}),
    )
    .await;
    members["head"]
        .as_u64()
        .unwrap_or_else(|| panic!("no head in {members}"))
}

/// A group of `owner` (connection `ws`) with `members`; its id.
async fn group(ws: &mut Raw, members: &[&str]) -> String {
    let created = request(
        ws,
        "g",
        json!({"type": "create_group", "id": "g", "title": "t", "members": members}),
    )
    .await;
    assert_eq!(created["type"], "conversation", "{created}");
    created["conversation"]["id"].as_str().unwrap().to_owned()
}

fn text_send(conversation: &str, key: &str) -> Value {
    json!({"type": "send", "conversation": conversation, "client_msg_id": key,
           "body": {"kind": "text", "text": key}})
}

/// The `sent` (or the `error`) answering the send with `key`.
async fn sent(ws: &mut Raw, key: &str) -> Value {
    until(ws, |frame| {
        (frame["type"] == "sent" || frame["type"] == "error") && frame["client_msg_id"] == key
    })
    .await
}

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["seq"].as_u64().unwrap())
        .collect()
}

/// §4.1 "Several connections of one device": both are served, neither closes the other.
#[tokio::test]
async fn two_connections_of_one_device_are_both_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut first = authed(&server, "alice:phone").await;
    let mut second = authed(&server, "alice:phone").await;
    let mut bob = authed(&server, "bob:laptop").await;
    let dm = request(
        &mut bob,
        "o",
        json!({"type": "open_direct", "id": "o", "user": "alice"}),
    )
    .await;
    let dm = dm["conversation"]["id"].as_str().unwrap().to_owned();

    // Every entry reaches both.
    send_json(&mut bob, text_send(&dm, "b1")).await;
    for ws in [&mut first, &mut second] {
        let message = until(ws, |frame| frame["type"] == "message").await;
        assert_eq!(message["message"]["seq"], 1);
    }

    // `sent` only to the connection that sent; the entry to both.
    send_json(&mut first, text_send(&dm, "a1")).await;
    assert_eq!(sent(&mut first, "a1").await["seq"], 2);
    let message = until(&mut second, |frame| {
        assert_ne!(frame["type"], "sent", "{frame}");
        frame["type"] == "message"
    })
    .await;
    assert_eq!(message["message"]["client_msg_id"], "a1");

    // Typing from one is not sent to the other: it is the same device.
    send_json(
        &mut first,
        json!({"type": "typing", "conversation": dm, "active": true}),
    )
    .await;
    until(&mut bob, |frame| frame["type"] == "typing").await;
    let frames = until_pong(&mut second, "fence").await;
    assert!(
        frames.iter().all(|frame| frame["type"] != "typing"),
        "{frames:?}"
    );

    // One leaving leaves the other served.
    drop(first);
    send_json(&mut bob, text_send(&dm, "b2")).await;
    let message = until(&mut second, |frame| frame["type"] == "message").await;
    assert_eq!(message["message"]["seq"], 3);
}

/// §11 "Pipelined sends": seqs follow the order the frames were sent; `sent` may come in any
/// order; the entries come back in seq order.
#[tokio::test]
async fn pipelined_sends_get_seqs_in_the_order_sent() {
    const COUNT: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let dm = request(
        &mut alice,
        "o",
        json!({"type": "open_direct", "id": "o", "user": "bob"}),
    )
    .await;
    let dm = dm["conversation"]["id"].as_str().unwrap().to_owned();
    for n in 0..COUNT {
        send_json(&mut alice, text_send(&dm, &format!("p{n}"))).await;
    }
    let mut acks = Vec::new();
    let mut entries = Vec::new();
    while acks.len() < COUNT || entries.len() < COUNT {
        let frame = next_json(&mut alice).await;
        match frame["type"].as_str().unwrap() {
            "sent" => acks.push((
                frame["seq"].as_u64().unwrap(),
                frame["client_msg_id"].as_str().unwrap().to_owned(),
            )),
            "message" => entries.push((
                frame["message"]["seq"].as_u64().unwrap(),
                frame["message"]["client_msg_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )),
            other => panic!("{other}: {frame}"),
        }
    }
    let in_order: Vec<(u64, String)> = (0..COUNT)
        .map(|n| (n as u64 + 1, format!("p{n}")))
        .collect();
    assert_eq!(entries, in_order, "entries in seq order = send order");
    acks.sort();
    assert_eq!(acks, in_order, "each send acked with its seq");
}

/// §5 add_members: an empty `users` list is `invalid_request`; nothing is written.
#[tokio::test]
async fn add_members_with_no_users_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let id = group(&mut alice, &["bob"]).await;
    let refused = request(
        &mut alice,
        "a",
        json!({"type": "add_members", "id": "a", "conversation": id, "users": []}),
    )
    .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "invalid_request");
    assert_eq!(head(&mut alice, &id).await, 1, "nothing written");
}

/// §5 create_group: the caller listed in `members`, or a user listed twice, counts once; the
/// caller stays the owner.
#[tokio::test]
async fn create_group_counts_the_caller_and_repeated_members_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    send_json(
        &mut alice,
        json!({"type": "create_group", "id": "g", "title": "t", "members": ["bob", "alice", "bob"]}),
    )
    .await;
    let expected = json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "member"}]);
    let (created, before) = answer(&mut alice, "g").await;
    assert_eq!(created["type"], "conversation", "{created}");
    assert_eq!(created["members"], expected);
    let mut frames = before.into_iter();
    let first = loop {
        match frames.next() {
            Some(frame) if frame["type"] == "message" => break frame,
            Some(_) => {}
            None => break until(&mut alice, |frame| frame["type"] == "message").await,
        }
    };
    assert_eq!(first["message"]["seq"], 1);
    assert_eq!(first["message"]["body"]["kind"], "group_created");
    assert_eq!(first["message"]["body"]["members"], expected);
}

/// §11 "Removed and added again": the re-added user is a member like any other: `sync` from
/// their cursor streams what was stored while they were out, and `history` has the whole log.
#[tokio::test]
async fn a_re_added_member_reads_what_was_stored_while_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let id = group(&mut alice, &["bob"]).await;
    let removed = request(
        &mut alice,
        "r",
        json!({"type": "remove_member", "id": "r", "conversation": id, "user": "bob"}),
    )
    .await;
    assert_eq!(removed["seq"], 2);
    send_json(&mut alice, text_send(&id, "while-out")).await;
    assert_eq!(sent(&mut alice, "while-out").await["seq"], 3);
    // Out: `history` answers `not_member`.
    let mut bob = authed(&server, "bob:phone").await;
    let refused = request(
        &mut bob,
        "h",
        json!({"type": "history", "id": "h", "conversation": id}),
    )
    .await;
    assert_eq!(refused["code"], "not_member");
    drop(bob);
    let added = request(
        &mut alice,
        "a",
        json!({"type": "add_members", "id": "a", "conversation": id, "users": ["bob"]}),
    )
    .await;
    assert_eq!(added["seq"], 4);

    // A device of bob's that held the log up to his removal.
    let mut bob = raw(&server).await;
    send_json(
        &mut bob,
        json!({"type": "hello", "v": 1, "token": "bob:phone"}),
    )
    .await;
    assert_eq!(next_json(&mut bob).await["type"], "welcome");
    send_json(
        &mut bob,
        json!({"type": "sync", "cursors": {id.as_str(): 2}}),
    )
    .await;
    let mut streamed = Vec::new();
    loop {
        let frame = next_json(&mut bob).await;
        match frame["type"].as_str().unwrap() {
            "message" => streamed.push(frame["message"]["seq"].as_u64().unwrap()),
            "synced" => break,
            other => panic!("{other}: {frame}"),
        }
    }
    assert_eq!(
        streamed,
        [3, 4],
        "from the cursor on, the time out included"
    );
    let page = request(
        &mut bob,
        "h",
        json!({"type": "history", "id": "h", "conversation": id, "after": 0}),
    )
    .await;
    assert_eq!(seqs(&page["messages"]), [1, 2, 3, 4]);
}

/// §5 set_role: giving a member the role they have is `invalid_request`; nothing is written.
#[tokio::test]
async fn set_role_to_the_current_role_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let id = group(&mut alice, &["bob"]).await;
    let set = |n: &str, role: &str| json!({"type": "set_role", "id": n, "conversation": id, "user": "bob", "role": role});
    let same = request(&mut alice, "1", set("1", "member")).await;
    assert_eq!(same["type"], "error");
    assert_eq!(same["code"], "invalid_request");
    let changed = request(&mut alice, "2", set("2", "admin")).await;
    assert_eq!(changed["type"], "changed");
    assert_eq!(changed["seq"], 2);
    let again = request(&mut alice, "3", set("3", "admin")).await;
    assert_eq!(again["code"], "invalid_request");
    assert_eq!(
        head(&mut alice, &id).await,
        2,
        "only the real change was written"
    );
}

/// §12 "A group with no members": once its last member left, the group still exists (its
/// log is kept) but nobody can act on it: every request about it answers `not_member`, and
/// it is in nobody's `conversations`.
#[tokio::test]
async fn a_group_whose_last_member_left_answers_not_member_to_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let id = group(&mut alice, &[]).await;
    send_json(&mut alice, text_send(&id, "alone")).await;
    assert_eq!(sent(&mut alice, "alone").await["seq"], 2);
    let left = request(
        &mut alice,
        "l",
        json!({"type": "leave", "id": "l", "conversation": id}),
    )
    .await;
    assert_eq!(left["type"], "changed");
    assert_eq!(left["seq"], 3);
    let mut bob = authed(&server, "bob:phone").await;
    for ws in [&mut alice, &mut bob] {
        for (n, frame) in [
            json!({"type": "history", "id": "1", "conversation": id}),
            json!({"type": "members", "id": "2", "conversation": id}),
            json!({"type": "add_members", "id": "3", "conversation": id, "users": ["bob"]}),
            json!({"type": "leave", "id": "4", "conversation": id}),
        ]
        .into_iter()
        .enumerate()
        {
            let answer = request(ws, &(n + 1).to_string(), frame).await;
            assert_eq!(answer["code"], "not_member", "{answer}");
        }
        send_json(ws, text_send(&id, "anyone")).await;
        assert_eq!(sent(ws, "anyone").await["code"], "not_member");
        let listed = request(ws, "c", json!({"type": "conversations", "id": "c"})).await;
        assert_eq!(listed["conversations"], json!([]));
    }
}

/// §5 history: `limit: 0` is taken as 1.
#[tokio::test]
async fn history_with_limit_zero_answers_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let id = group(&mut alice, &["bob"]).await;
    for key in ["h1", "h2"] {
        send_json(&mut alice, text_send(&id, key)).await;
        sent(&mut alice, key).await;
    }
    let latest = request(
        &mut alice,
        "1",
        json!({"type": "history", "id": "1", "conversation": id, "limit": 0}),
    )
    .await;
    assert_eq!(seqs(&latest["messages"]), [3]);
    assert_eq!(latest["head"], 3);
    let first = request(
        &mut alice,
        "2",
        json!({"type": "history", "id": "2", "conversation": id, "after": 0, "limit": 0}),
    )
    .await;
    assert_eq!(seqs(&first["messages"]), [1]);
}

/// §5 send (media): a name over 255 bytes is `too_large`, an empty one `invalid_request`.
#[tokio::test]
async fn an_over_long_media_name_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let id = group(&mut alice, &["bob"]).await;
    let media = |key: &str, name: String| {
        json!({"type": "send", "conversation": id, "client_msg_id": key,
               "body": {"kind": "media", "name": name, "mime": "image/png", "size": 10}})
    };
    send_json(&mut alice, media("long", "é".repeat(128))).await;
    let refused = sent(&mut alice, "long").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "too_large");
    assert_eq!(refused["conversation"], id.as_str());
    send_json(&mut alice, media("empty", String::new())).await;
    assert_eq!(sent(&mut alice, "empty").await["code"], "invalid_request");
    send_json(&mut alice, media("longest", "a".repeat(255))).await;
    assert_eq!(sent(&mut alice, "longest").await["type"], "sent");
}

/// §2 "Absent values": in frames a field without a value is sent as `null` (answer `id`s,
/// `title`, `last_seen`), except in `error` frames and in message bodies, where it is
/// omitted; a client may send `null` for an optional media field.
#[tokio::test]
async fn absent_values_are_null_in_frames_and_omitted_in_errors_and_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;

    send_json(&mut alice, json!({"type": "ping"})).await;
    let pong = next_json(&mut alice).await;
    assert_eq!(pong, json!({"type": "pong", "id": null}));

    let dm = request(
        &mut alice,
        "o",
        json!({"type": "open_direct", "id": "o", "user": "bob"}),
    )
    .await;
    assert_eq!(dm["conversation"].get("title"), Some(&Value::Null));
    let dm = dm["conversation"]["id"].as_str().unwrap().to_owned();

    send_json(
        &mut alice,
        json!({"type": "subscribe_presence", "id": "s", "users": ["nobody"]}),
    )
    .await;
    let presence = until(&mut alice, |frame| frame["type"] == "presence").await;
    assert_eq!(presence.get("last_seen"), Some(&Value::Null));

    send_json(&mut alice, json!({"type": "teleport"})).await;
    let error = until(&mut alice, |frame| frame["type"] == "error").await;
    let mut keys: Vec<&str> = error
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "retryable", "type"], "{error}");

    send_json(
        &mut alice,
        json!({"type": "send", "conversation": dm, "client_msg_id": "pic",
               "body": {"kind": "media", "name": "a.png", "mime": "image/png", "size": 10,
                        "width": null, "height": 20}}),
    )
    .await;
    assert_eq!(sent(&mut alice, "pic").await["type"], "sent");
    let entry = until(&mut alice, |frame| frame["type"] == "message").await;
    let body = entry["message"]["body"].as_object().unwrap();
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["height", "kind", "mime", "name", "size", "status"],
        "{body:?}"
    );
}

/// §11 "Idempotency": a retried `send` is answered with the original seq; a retried text
/// send also leaves a `void` at the seq it was given, a retried media send does not.
#[tokio::test]
async fn a_retried_send_is_answered_with_its_original_seq() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = authed(&server, "alice:phone").await;
    let dm = request(
        &mut alice,
        "o",
        json!({"type": "open_direct", "id": "o", "user": "bob"}),
    )
    .await;
    let dm = dm["conversation"]["id"].as_str().unwrap().to_owned();

    send_json(&mut alice, text_send(&dm, "t1")).await;
    let first = sent(&mut alice, "t1").await;
    assert_eq!(
        (first["seq"].as_u64(), first["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    send_json(&mut alice, text_send(&dm, "t1")).await;
    let retried = sent(&mut alice, "t1").await;
    assert_eq!(
        (retried["seq"].as_u64(), retried["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    let void = until(&mut alice, |frame| {
        frame["type"] == "message" && frame["message"]["seq"] == 2
    })
    .await;
    assert_eq!(void["message"]["body"], json!({"kind": "void"}));

    let media = json!({"type": "send", "conversation": dm, "client_msg_id": "m1",
                       "body": {"kind": "media", "name": "a.png", "mime": "image/png", "size": 10}});
    send_json(&mut alice, media.clone()).await;
    assert_eq!(sent(&mut alice, "m1").await["seq"], 3);
    send_json(&mut alice, media).await;
    let retried = sent(&mut alice, "m1").await;
    assert_eq!(
        (retried["seq"].as_u64(), retried["duplicate"].as_bool()),
        (Some(3), Some(true))
    );
    send_json(&mut alice, text_send(&dm, "t2")).await;
    assert_eq!(
        sent(&mut alice, "t2").await["seq"],
        4,
        "no void for the media retry"
    );

    let page = request(
        &mut alice,
        "h",
        json!({"type": "history", "id": "h", "conversation": dm, "after": 0}),
    )
    .await;
    let kinds: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["body"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["text", "void", "media", "text"]);
}
