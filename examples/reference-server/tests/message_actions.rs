//! End to end: replies, edits, deletes for everyone, and resends that cost no void — real
//! server, real sockets, devices online and offline.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::media::{get, next_message, open_direct, png, put, send_media};
use common::{
    Server, connect, full_history, messages, next_frame, raw_authed, send_json, text_of, user,
};
use messenger_core::protocol::{ErrorCode, ServerFrame};
use messenger_core::{Body, ConversationId, Error, Message, ReplyKind, Seq};
use messenger_socket::client::{Client, ClientEvent};

fn code(result: Result<messenger_socket::client::Sent, Error>) -> Option<ErrorCode> {
    result.err().and_then(|err| err.refusal_code())
}

/// The entry at `seq` as the store holds it now.
async fn stored(client: &Client, conversation: &ConversationId, seq: u64) -> Message {
    full_history(client, conversation)
        .await
        .into_iter()
        .find(|message| message.seq == Seq(seq))
        .map(|message| (*message).clone())
        .unwrap_or_else(|| panic!("seq {seq} is stored"))
}

/// Connects a device that was offline and collects the backlog its sync brings, up to
/// `synced`.
async fn connect_syncing(server: &Server, token: &str) -> (Client, Vec<Arc<Message>>) {
    let config = messenger_socket::client::ClientConfig::new(server.url(), token);
    let (client, mut events) = Client::connect(config).await.expect("connect");
    let mut backlog = Vec::new();
    loop {
        let event = tokio::time::timeout(common::WAIT, events.next())
            .await
            .expect("the backlog in time")
            .expect("the client is open");
        match event {
            ClientEvent::Message(message) => backlog.push(message),
            ClientEvent::Synced(_) => return (client, backlog),
            _ => {}
        }
    }
}

async fn head(client: &Client, conversation: &ConversationId) -> Seq {
    full_history(client, conversation)
        .await
        .last()
        .map_or(Seq::ZERO, |message| message.seq)
}

/// A reply carries a quote of its target (sender, kind, a bounded excerpt) to every member,
/// on the wire exactly as `docs/protocol.md` shows it.
#[tokio::test]
async fn a_reply_quotes_its_target_for_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = connect(&server, "alice:phone").await;
    let mut bob = raw_authed(&server, "bob:phone").await;
    let chat = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let long = "x".repeat(500);
    alice.send_text(&chat, long.as_str()).await.unwrap();
    send_json(
        &mut bob,
        serde_json::json!({"type": "send", "conversation": chat, "client_msg_id": "r1",
            "body": {"kind": "text", "text": "agreed", "reply_to": 1}}),
    )
    .await;

    let got = messages(&mut alice_events, &chat, 2).await;
    let Body::Text { text, reply_to, .. } = &got[1].body else {
        panic!("a text reply: {:?}", got[1]);
    };
    assert_eq!(text, "agreed");
    let quote = reply_to.as_deref().expect("the reply quotes its target");
    assert_eq!(quote.seq, Seq(1));
    assert_eq!(quote.sender.as_str(), "alice");
    assert_eq!(quote.kind, ReplyKind::Text);
    assert_eq!(quote.excerpt, "x".repeat(messenger_core::MAX_EXCERPT_CHARS));

    // The raw frame bob's own connection gets (as any member does).
    let reply = loop {
        if let Some(frame) = raw_json(&mut bob).await {
            if frame["type"] == "message" && frame["message"]["seq"] == 2 {
                break frame;
            }
        }
    };
    assert_eq!(
        reply["message"]["body"],
        serde_json::json!({"kind": "text", "text": "agreed", "reply_to": {
            "seq": 1, "sender": "alice", "kind": "text",
            "excerpt": "x".repeat(messenger_core::MAX_EXCERPT_CHARS)}})
    );
}

/// The next text frame of a raw socket as JSON (`None` for other frames).
async fn raw_json(ws: &mut common::Raw) -> Option<serde_json::Value> {
    use futures_util::StreamExt;
    let frame = tokio::time::timeout(common::WAIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("the socket is open")
        .expect("a frame");
    match frame {
        tokio_tungstenite::tungstenite::Message::Text(text) => serde_json::from_str(&text).ok(),
        _ => None,
    }
}

/// A reply to nothing, to a membership change or to a deleted message is refused with its
/// own code, and nothing is stored.
#[tokio::test]
async fn replies_to_what_cannot_be_quoted_are_refused_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let group = alice.create_group("team", &[user("bob")]).await.unwrap();
    let id = group.conversation.id;
    let sent = alice.send_text(&id, "soon gone").await.unwrap();
    alice.delete(&id, sent.seq).await.unwrap();
    let before = head(&alice, &id).await;

    assert_eq!(
        code(alice.reply_text(&id, Seq(99), "to nothing").await),
        Some(ErrorCode::TargetNotFound)
    );
    assert_eq!(
        code(alice.reply_text(&id, Seq(1), "to group_created").await),
        Some(ErrorCode::NotEditable)
    );
    assert_eq!(
        code(alice.reply_text(&id, sent.seq, "to a deleted one").await),
        Some(ErrorCode::TargetDeleted)
    );
    assert_eq!(head(&alice, &id).await, before, "refusals store nothing");
}

/// An edit is an entry of the log: devices online get it in order, a device offline gets
/// the target already edited and the edit entry when it syncs, and history shows the latest
/// text with `edited_at`.
#[tokio::test]
async fn an_edit_reaches_every_device_in_order_and_history_shows_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (phone, mut phone_events) = connect(&server, "alice:phone").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;
    let chat = phone
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let first = phone.send_text(&chat, "helo").await.unwrap();
    let edit = phone.edit(&chat, first.seq, "hello").await.unwrap();
    assert_eq!(edit.seq, Seq(2), "the edit has its own seq");
    let after = bob.send_text(&chat, "hi").await.unwrap();
    assert_eq!(after.seq, Seq(3));

    for events in [&mut phone_events, &mut bob_events] {
        let got = messages(events, &chat, 3).await;
        assert_eq!(
            text_of(&got[0]),
            "helo",
            "the entry as it was when delivered"
        );
        assert!(
            matches!(&got[1].body, Body::Edit { target, text } if *target == Seq(1) && text == "hello"),
            "{:?}",
            got[1]
        );
        assert_eq!(text_of(&got[2]), "hi");
    }

    // Alice's tablet was offline all along: it syncs the edited entry and the edit entry.
    let (tablet, synced) = connect_syncing(&server, "alice:tablet").await;
    assert_eq!(synced.len(), 3, "{synced:?}");
    let Body::Text {
        text,
        edited_at,
        edits,
        ..
    } = &synced[0].body
    else {
        panic!("text at seq 1: {:?}", synced[0]);
    };
    assert_eq!(text, "hello", "the stored body holds the latest version");
    assert_eq!(*edits, 1);
    assert_eq!(*edited_at, Some(stored(&bob, &chat, 2).await.sent_at));
    assert!(matches!(synced[1].body, Body::Edit { .. }));

    // A second edit, from the other device of the same user.
    tablet.edit(&chat, first.seq, "hello!").await.unwrap();
    let now = stored(&bob, &chat, 1).await;
    assert!(
        matches!(&now.body, Body::Text { text, edits: 2, .. } if text == "hello!"),
        "{now:?}"
    );
    for client in [&phone, &bob, &tablet] {
        common::assert_exactly_once(client);
    }
}

/// Each refusal of an edit has its own code and stores nothing: another user's message,
/// anything but text, too many edits, nothing there, a deleted message, the window closed.
#[tokio::test]
async fn edit_refusals_have_their_own_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-edits", "1"]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (bob, _bob_events) = connect(&server, "bob:phone").await;
    let group = alice.create_group("team", &[user("bob")]).await.unwrap();
    let id = group.conversation.id;
    let mine = alice.send_text(&id, "mine").await.unwrap();
    let gone = alice.send_text(&id, "gone").await.unwrap();
    alice.delete(&id, gone.seq).await.unwrap();
    alice.edit(&id, mine.seq, "mine, once").await.unwrap();
    let before = head(&alice, &id).await;

    assert_eq!(
        code(bob.edit(&id, mine.seq, "bob's words").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(alice.edit(&id, Seq(1), "not a message").await),
        Some(ErrorCode::NotEditable)
    );
    assert_eq!(
        code(alice.edit(&id, mine.seq, "twice").await),
        Some(ErrorCode::TooManyEdits)
    );
    assert_eq!(
        code(alice.edit(&id, Seq(999), "nothing").await),
        Some(ErrorCode::TargetNotFound)
    );
    assert_eq!(
        code(alice.edit(&id, gone.seq, "undelete").await),
        Some(ErrorCode::TargetDeleted)
    );
    assert_eq!(
        code(alice.edit(&id, mine.seq, " ").await),
        Some(ErrorCode::InvalidRequest),
        "the text rules of a message"
    );
    assert_eq!(head(&alice, &id).await, before, "refusals store nothing");

    let late_dir = tempfile::tempdir().unwrap();
    let late = Server::start(late_dir.path(), &["--edit-window-s", "0"]);
    let (alice, _events) = connect(&late, "alice:phone").await;
    let chat = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let sent = alice.send_text(&chat, "typo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        code(alice.edit(&chat, sent.seq, "fixed").await),
        Some(ErrorCode::EditWindowClosed)
    );
}

/// A delete leaves a tombstone in place for everyone (live and after a sync); senders
/// delete their own messages within the window, group admins and owners any message at any
/// time, nobody else.
#[tokio::test]
async fn deletes_leave_a_tombstone_and_follow_roles_and_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--delete-window-s", "0"]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;
    let (carol, _carol_events) = connect(&server, "carol:phone").await;
    let group = alice
        .create_group("team", &[user("bob"), user("carol")])
        .await
        .unwrap();
    let id = group.conversation.id;
    let bobs = bob.send_text(&id, "bob's").await.unwrap();
    let carols = carol.send_text(&id, "carol's").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    assert_eq!(
        code(bob.delete(&id, bobs.seq).await),
        Some(ErrorCode::DeleteWindowClosed),
        "a sender's window (0 s here) has closed"
    );
    assert_eq!(
        code(carol.delete(&id, bobs.seq).await),
        Some(ErrorCode::Forbidden),
        "a plain member deletes nobody else's message"
    );
    let deleted = alice.delete(&id, carols.seq).await.unwrap();
    alice
        .set_role(&id, &user("bob"), messenger_core::Role::Admin)
        .await
        .unwrap();
    bob.delete(&id, bobs.seq).await.unwrap();

    let live = messages(&mut bob_events, &id, 5).await;
    assert!(
        live.iter().any(|m| m.seq == deleted.seq
            && matches!(m.body, Body::Delete { target } if target == carols.seq)),
        "the delete entry is delivered live: {live:?}"
    );
    assert_eq!(
        code(alice.delete(&id, carols.seq).await),
        Some(ErrorCode::TargetDeleted)
    );

    // A device offline until now sees both tombstones in place.
    let (_laptop, synced) = connect_syncing(&server, "carol:laptop").await;
    for (seq, by) in [(bobs.seq, "bob"), (carols.seq, "alice")] {
        let entry = synced.iter().find(|m| m.seq == seq).expect("synced");
        assert!(
            matches!(&entry.body, Body::Deleted { by: who, .. } if who.as_str() == by),
            "seq {seq}: {entry:?}"
        );
        assert_eq!(
            entry.sender.as_str(),
            if by == "bob" { "bob" } else { "carol" }
        );
    }
}

/// A media message deleted for everyone is no longer served at its download URL.
#[tokio::test]
async fn a_deleted_media_message_is_no_longer_downloadable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut phone = raw_authed(&server, "alice:phone").await;
    let chat = open_direct(&mut phone, "bob").await;
    let bytes = png(2_000);
    let media = serde_json::json!({"name": "cat.png", "mime": "image/png", "size": bytes.len()});
    let (seq, ticket) = send_media(&mut phone, &chat, "m1", media).await;
    let done = put(server.address, &ticket, "alice:phone", &bytes).await;
    assert_eq!(done.status, 201, "{}", done.text());
    let path = format!("/media/files/{chat}/{seq}");
    let before = get(server.address, &path, Some("bob:phone"), &[]).await;
    assert_eq!(before.status, 200, "{}", before.text());

    send_json(
        &mut phone,
        serde_json::json!({"type": "send", "conversation": chat, "client_msg_id": "d1",
            "body": {"kind": "delete", "target": seq.get()}}),
    )
    .await;
    loop {
        let message = next_message(&mut phone).await;
        if matches!(message.body, Body::Delete { target } if target == seq) {
            break;
        }
    }
    let after = get(server.address, &path, Some("bob:phone"), &[]).await;
    assert_eq!(after.status, 410, "{}", after.text());
    let files: Vec<_> = walk(&dir.path().join("media"));
    assert!(files.is_empty(), "the bytes are removed: {files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// An outbox replayed with `resend: true` (20 messages stored already) is acknowledged with
/// the original seqs and spends no seq: the next message follows the last original. The
/// same replay without the flag leaves one void per message.
#[tokio::test]
async fn resent_messages_are_acknowledged_without_a_void() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut ws = raw_authed(&server, "alice:phone").await;
    let chat = open_direct(&mut ws, "bob").await;
    let send = |key: String, resend: bool| {
        serde_json::json!({"type": "send", "conversation": chat, "client_msg_id": key,
            "body": {"kind": "text", "text": "once"}, "resend": resend})
    };
    let mut originals = Vec::new();
    for n in 0..20 {
        send_json(&mut ws, send(format!("k{n}"), false)).await;
        originals.push(next_sent(&mut ws).await);
    }
    for (n, original) in originals.iter().enumerate() {
        send_json(&mut ws, send(format!("k{n}"), true)).await;
        assert_eq!(next_sent(&mut ws).await, (original.0, true));
    }
    send_json(&mut ws, send("new".into(), true)).await;
    assert_eq!(
        next_sent(&mut ws).await,
        (Seq(21), false),
        "the replay spent no seq"
    );

    // Without the flag: the append finds the key, and the seq it was given is void.
    send_json(&mut ws, send("k0".into(), false)).await;
    assert_eq!(next_sent(&mut ws).await, (Seq(1), true));
    send_json(&mut ws, send("after".into(), false)).await;
    assert_eq!(next_sent(&mut ws).await.0, Seq(23), "seq 22 went to a void");
}

/// The seq and `duplicate` of the next `sent` on `ws`.
async fn next_sent(ws: &mut common::Raw) -> (Seq, bool) {
    loop {
        match next_frame(ws).await {
            ServerFrame::Sent { seq, duplicate, .. } => return (seq, duplicate),
            ServerFrame::Error { code, message, .. } => panic!("refused: {code:?} {message}"),
            _ => {}
        }
    }
}

/// `unread` counts what a reader would show: another user's messages, not edits, deletes or
/// the reader's own; a message deleted before it was read stops counting.
#[tokio::test]
async fn unread_counts_messages_of_others_not_edits_or_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (bob, _bob_events) = connect(&server, "bob:phone").await;
    let chat = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let first = alice.send_text(&chat, "one").await.unwrap();
    let second = alice.send_text(&chat, "two").await.unwrap();
    bob.send_text(&chat, "bob's own").await.unwrap();
    alice.edit(&chat, first.seq, "one!").await.unwrap();
    assert_eq!(
        counts(&bob, &chat).await.0,
        2,
        "alice's two messages, not the edit"
    );
    alice.delete(&chat, second.seq).await.unwrap();
    assert_eq!(
        counts(&bob, &chat).await.0,
        1,
        "the deleted one stops counting"
    );
    assert_eq!(counts(&alice, &chat).await.0, 1, "bob's message, for alice");
}

/// Reactions are entries of the log that change their target's summary: devices online get
/// them in order, a device syncing later gets the summary in place, and ten users reacting
/// to one message at once all land (the store decides each race; retries do the rest).
#[tokio::test]
async fn reactions_are_ordered_summarised_and_survive_a_rush() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = connect(&server, "alice:phone").await;
    let names: Vec<String> = (0..10).map(|n| format!("u{n}")).collect();
    let members: Vec<_> = names.iter().map(|name| user(name)).collect();
    let group = alice.create_group("party", &members).await.unwrap();
    let id = group.conversation.id;
    let lunch = alice.send_text(&id, "lunch?").await.unwrap();

    let mut clients = Vec::new();
    for name in &names {
        clients.push(connect(&server, &format!("{name}:phone")).await);
    }
    let rush: Vec<_> = clients
        .iter()
        .map(|(client, _)| client.react(&id, lunch.seq, "👍"))
        .collect();
    for reacted in futures_util::future::join_all(rush).await {
        reacted.expect("every reaction lands");
    }
    clients[0].0.react(&id, lunch.seq, "🎉").await.unwrap();
    clients[0].0.unreact(&id, lunch.seq, "🎉").await.unwrap();
    assert_eq!(
        code(clients[1].0.react(&id, lunch.seq, "👍").await),
        Some(ErrorCode::InvalidRequest),
        "once per user and emoji"
    );
    assert_eq!(
        code(clients[1].0.unreact(&id, lunch.seq, "🎉").await),
        Some(ErrorCode::InvalidRequest),
        "nothing to take back"
    );

    let live = messages(&mut alice_events, &id, 14).await;
    let reactions = live
        .iter()
        .filter(|m| matches!(m.body, Body::React { .. } | Body::Unreact { .. }))
        .count();
    assert_eq!(reactions, 12, "every reaction is an entry, in order");

    let (_tablet, synced) = connect_syncing(&server, "alice:tablet").await;
    let target = synced.iter().find(|m| m.seq == lunch.seq).expect("synced");
    let summary = target.body.reactions().expect("a text message");
    assert_eq!(summary.len(), 1, "the 🎉 was taken back: {summary:?}");
    assert_eq!(summary[0].emoji, "👍");
    let mut who: Vec<String> = summary[0].users.iter().map(ToString::to_string).collect();
    who.sort();
    assert_eq!(who, names, "all ten reactions, each once");
    assert_eq!(
        counts(&clients[1].0, &id).await.0,
        1,
        "alice's message, not the reactions of the others"
    );
}

/// `(unread, mentions)` of `conversation` in `client`'s conversation list.
async fn counts(client: &Client, conversation: &ConversationId) -> (u64, u64) {
    let summary = client
        .conversations()
        .await
        .unwrap()
        .into_iter()
        .find(|summary| &summary.conversation.id == conversation)
        .expect("listed");
    (summary.unread, summary.mentions)
}

/// A device that asks for at most N entries per conversation gets `limited` before the
/// latest N of a conversation further behind (no gap to repair), exactly those entries, and
/// pages back through the rest with `history`; a device within N of the head gets all it
/// missed as before.
#[tokio::test]
async fn a_bounded_sync_sends_the_latest_entries_and_says_where_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let chat = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    for n in 1..=30 {
        alice.send_text(&chat, format!("m{n}")).await.unwrap();
    }

    // On the wire, for a client written from docs/protocol.md.
    let mut ws = common::raw_hello(&server, "bob:phone").await;
    send_json(
        &mut ws,
        serde_json::json!({"type": "sync", "cursors": {}, "limit": 5}),
    )
    .await;
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(&mut ws).await;
        let done = matches!(frame, ServerFrame::Synced { .. });
        frames.push(frame);
        if done {
            break;
        }
    }
    assert!(
        matches!(&frames[0], ServerFrame::Limited { conversation, from } if *conversation == chat && *from == Seq(25)),
        "{:?}",
        frames[0]
    );
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::Message { message } => Some(message.seq.get()),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![26, 27, 28, 29, 30]);

    // The Rust client: skips ahead without a repair, and history has the rest.
    let config =
        messenger_socket::client::ClientConfig::new(server.url(), "bob:tablet").sync_limit(5);
    let (tablet, mut events) = Client::connect(config).await.unwrap();
    let limited = events
        .wait_for(common::WAIT, |event| {
            matches!(event, ClientEvent::Limited { .. })
        })
        .await
        .unwrap();
    assert!(matches!(limited, ClientEvent::Limited { from, .. } if from == Seq(25)));
    let got = messages(&mut events, &chat, 5).await;
    assert_eq!(text_of(&got[0]), "m26");
    assert_eq!(tablet.cursors().get(&chat), Some(&Seq(30)));
    common::assert_exactly_once(&tablet);
    let older = tablet
        .history(
            &chat,
            messenger_socket::client::HistoryRange::Before(Seq(26)),
            Some(10),
        )
        .await
        .unwrap();
    let older: Vec<u64> = older.messages.iter().map(|m| m.seq.get()).collect();
    assert_eq!(older, (16..=25).collect::<Vec<_>>());

    // Within the limit of its cursor: no `limited`, everything it missed.
    let mut near = common::raw_hello(&server, "bob:laptop").await;
    send_json(
        &mut near,
        serde_json::json!({"type": "sync", "cursors": {chat.as_str(): 27}, "limit": 5}),
    )
    .await;
    let first = next_frame(&mut near).await;
    assert!(
        matches!(&first, ServerFrame::Message { message } if message.seq == Seq(28)),
        "{first:?}"
    );
}

/// Mentions: members named in a text (or everyone, by an admin or the owner) get a mention
/// count derived from the log, cleared by reading; `@all` from a plain member and mentions
/// of non-members are refused.
#[tokio::test]
async fn mentions_are_counted_for_those_named_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (bob, _bob_events) = connect(&server, "bob:phone").await;
    let (carol, _carol_events) = connect(&server, "carol:phone").await;
    let group = alice
        .create_group("team", &[user("bob"), user("carol")])
        .await
        .unwrap();
    let id = group.conversation.id;
    mention(&alice, &id, "m1", &["bob"], false).await.unwrap();
    mention(&alice, &id, "m2", &[], true).await.unwrap();
    assert_eq!(counts(&bob, &id).await, (2, 2));
    assert_eq!(counts(&carol, &id).await, (2, 1), "the @all only");
    assert_eq!(
        code(mention(&bob, &id, "m3", &[], true).await),
        Some(ErrorCode::Forbidden),
        "@all is for admins and the owner"
    );
    assert_eq!(
        code(mention(&alice, &id, "m4", &["dave"], false).await),
        Some(ErrorCode::InvalidRequest),
        "only members are mentioned"
    );
    let head = head(&bob, &id).await;
    bob.read(&id, head).await.unwrap();
    // `read` is fire-and-forget: wait until the watermark shows in the summary.
    for _ in 0..100 {
        if counts(&bob, &id).await == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counts(&bob, &id).await, (0, 0), "reading clears both");
}

/// A text that mentions `mentions` (and everyone, with `all`), sent with key `key`.
fn mention(
    client: &Client,
    conversation: &ConversationId,
    key: &str,
    mentions: &[&str],
    all: bool,
) -> impl std::future::Future<Output = Result<messenger_socket::client::Sent, Error>> + 'static {
    let body = messenger_core::protocol::NewBody::Text {
        text: "look".into(),
        reply_to: None,
        mentions: mentions.iter().map(|name| user(name)).collect(),
        mention_all: all,
    };
    let key = messenger_core::ClientMsgId::new(key).expect("key");
    client.send_with_id(conversation, key, body)
}
