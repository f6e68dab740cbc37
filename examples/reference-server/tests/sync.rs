//! End to end: offline devices, reconnects during traffic, restarts and crashes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, WAIT, connect, messages, text_of, user};
use messenger_core::{Body, ConversationId, Message, Seq};
use messenger_socket::client::{ClientConfig, ClientEvent, HistoryRange};

#[tokio::test]
async fn an_offline_device_gets_exactly_what_it_missed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    alice.send_text(&id, "before").await.unwrap();
    messages(&mut bob_events, &id, 1).await;
    let cursors = bob.cursors();
    assert_eq!(cursors.get(&id), Some(&Seq(1)));
    bob.close().await;

    for n in 0..30 {
        alice.send_text(&id, format!("missed {n}")).await.unwrap();
    }
    let (_bob, mut bob_events) = messenger_socket::client::Client::connect(
        ClientConfig::new(server.url(), "bob:phone").cursors(cursors),
    )
    .await
    .unwrap();
    let mut backlog = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, bob_events.next())
            .await
            .unwrap()
            .unwrap();
        match event {
            ClientEvent::Message(message) => backlog.push(message),
            ClientEvent::Synced(summaries) => {
                assert_eq!(summaries[0].head, Seq(31));
                break;
            }
            _ => {}
        }
    }
    let texts: Vec<&str> = backlog.iter().map(|m| text_of(m)).collect();
    let expected: Vec<String> = (0..30).map(|n| format!("missed {n}")).collect();
    assert_eq!(texts, expected, "exactly the missed messages, in order");
    assert_eq!(backlog[0].seq, Seq(2));
    alice.send_text(&id, "live").await.unwrap();
    let live = messages(&mut bob_events, &id, 1).await;
    assert_eq!(text_of(&live[0]), "live");
    assert_eq!(live[0].seq, Seq(32));
}

/// Bob's device reconnects again and again while Alice sends; across all its sessions it
/// receives every message exactly once, in order.
#[tokio::test]
async fn reconnecting_during_traffic_loses_and_duplicates_nothing() {
    const TOTAL: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;

    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let alice = alice.clone();
        let id = id.clone();
        let sending = Arc::clone(&sending);
        tokio::spawn(async move {
            for n in 0..TOTAL {
                alice.send_text(&id, format!("{n}")).await.unwrap();
                if n % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            sending.store(false, Ordering::SeqCst);
        })
    };

    let mut received: Vec<Arc<Message>> = Vec::new();
    let mut cursors = BTreeMap::new();
    let mut sessions = 0;
    while received.len() < TOTAL {
        sessions += 1;
        let (bob, mut events) = messenger_socket::client::Client::connect(
            ClientConfig::new(server.url(), "bob:phone").cursors(cursors.clone()),
        )
        .await
        .unwrap();
        // Read for a short while (or to the end), then drop the connection mid-stream.
        let deadline = tokio::time::Instant::now()
            + if sending.load(Ordering::SeqCst) {
                Duration::from_millis(40)
            } else {
                WAIT
            };
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(ClientEvent::Message(message))) if message.conversation == id => {
                    received.push(message);
                    if received.len() == TOTAL {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        cursors = bob.cursors();
        common::assert_exactly_once(&bob);
        bob.close().await;
        assert!(sessions < 500, "no progress");
    }
    sender.await.unwrap();
    assert!(sessions > 1, "the test must reconnect at least once");
    let texts: Vec<String> = received.iter().map(|m| text_of(m).to_owned()).collect();
    let expected: Vec<String> = (0..TOTAL).map(|n| n.to_string()).collect();
    common::assert_same(&texts, &expected);
    eprintln!("{sessions} sessions");
    let seqs: Vec<u64> = received.iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, (1..=TOTAL as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_user_added_while_offline_gets_the_group_on_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .create_group("later", &[])
        .await
        .unwrap()
        .conversation
        .id;
    alice.send_text(&id, "first").await.unwrap();
    alice.add_members(&id, &[user("dave")], None).await.unwrap();
    alice.send_text(&id, "second").await.unwrap();

    let (_dave, mut dave_events) = connect(&server, "dave:phone").await;
    // Not strictly before `synced`: `connect` skipped to it. Ask the log instead.
    let _ = dave_events.try_next();
    let (dave, _) = connect(&server, "dave:laptop").await;
    let summaries = dave.conversations().await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].conversation.id, id);
    assert_eq!(summaries[0].head, Seq(4));
    let page = dave
        .history(&id, HistoryRange::After(Seq::ZERO), None)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 4);
    assert!(matches!(page.messages[2].body, Body::MembersAdded { .. }));
}

/// The backlog streamed by `sync` and the live messages that arrive meanwhile interleave
/// with no gap and no duplicate.
#[tokio::test]
async fn sync_backlog_and_live_traffic_meet_without_gap_or_duplicate() {
    const BACKLOG: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let mut pending = Vec::new();
    for n in 0..BACKLOG {
        pending.push(alice.send_text(&id, format!("{n}")));
    }
    for sent in pending {
        sent.await.unwrap();
    }
    let live = {
        let alice = alice.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for n in BACKLOG..BACKLOG + 100 {
                alice.send_text(&id, format!("{n}")).await.unwrap();
            }
        })
    };
    let (bob, mut events) =
        messenger_socket::client::Client::connect(ClientConfig::new(server.url(), "bob:phone"))
            .await
            .unwrap();
    let got = messages(&mut events, &id, BACKLOG + 100).await;
    live.await.unwrap();
    let texts: Vec<String> = got.iter().map(|m| text_of(m).to_owned()).collect();
    let expected: Vec<String> = (0..BACKLOG + 100).map(|n| n.to_string()).collect();
    common::assert_same(&texts, &expected);
    assert_eq!(bob.cursors().get(&id), Some(&Seq((BACKLOG + 100) as u64)));
    common::assert_exactly_once(&bob);
}

fn conversation(
    summaries: &[messenger_core::ConversationSummary],
    id: &ConversationId,
) -> messenger_core::ConversationSummary {
    summaries
        .iter()
        .find(|summary| &summary.conversation.id == id)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_killed_server_keeps_every_acknowledged_write_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;
    let direct = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let group = alice
        .create_group("durable", &[user("bob")])
        .await
        .unwrap()
        .conversation
        .id;
    let mut acked = Vec::new();
    let mut pending = Vec::new();
    for n in 0..50 {
        pending.push(alice.send_text(&direct, format!("d{n}")));
        pending.push(alice.send_text(&group, format!("g{n}")));
    }
    for sent in pending {
        acked.push(sent.await.unwrap());
    }
    messages(&mut bob_events, &direct, 50).await;
    bob.read(&direct, Seq(40)).await.unwrap();
    bob.ping().await.unwrap();
    // The receipt is fanned out only once it is stored.
    let mut alice_check = alice.receipts(&direct).await.unwrap();
    for _ in 0..100 {
        if alice_check
            .iter()
            .any(|r| r.user.as_str() == "bob" && r.read == Seq(40))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        alice_check = alice.receipts(&direct).await.unwrap();
    }
    bob.close().await;
    let seen_before = alice.last_seen(&[user("bob")]).await.unwrap()[0]
        .last_seen
        .unwrap();
    alice.close().await;

    server.kill();
    server.restart();

    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let direct_page = alice
        .history(&direct, HistoryRange::After(Seq::ZERO), Some(200))
        .await
        .unwrap();
    let group_page = alice
        .history(&group, HistoryRange::After(Seq::ZERO), Some(200))
        .await
        .unwrap();
    for sent in &acked {
        let page = if sent.conversation == direct {
            &direct_page
        } else {
            &group_page
        };
        let stored = page
            .messages
            .iter()
            .find(|m| m.seq == sent.seq)
            .unwrap_or_else(|| panic!("acknowledged {sent:?} lost"));
        assert_eq!(stored.client_msg_id, sent.client_msg_id);
    }
    let receipts = alice.receipts(&direct).await.unwrap();
    assert!(
        receipts
            .iter()
            .any(|r| r.user.as_str() == "bob" && r.read == Seq(40))
    );
    let members = alice.members(&group).await.unwrap();
    assert_eq!(members.members.len(), 2);
    let seen_after = alice.last_seen(&[user("bob")]).await.unwrap()[0]
        .last_seen
        .unwrap();
    assert_eq!(seen_after, seen_before);
    let summaries = alice.conversations().await.unwrap();
    assert_eq!(conversation(&summaries, &direct).head, Seq(50));

    // Seqs continue after the restart: never reused.
    let next = alice.send_text(&direct, "after restart").await.unwrap();
    assert_eq!(next.seq, Seq(51));
    let next = alice.send_text(&group, "after restart").await.unwrap();
    assert_eq!(next.seq, Seq(52));
}

#[tokio::test]
async fn the_outbox_survives_a_server_restart_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = messenger_socket::client::Client::connect(
        ClientConfig::new(server.url(), "alice:phone")
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    alice.send_text(&id, "one").await.unwrap();

    server.kill();
    alice_events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Disconnected { .. })
        })
        .await
        .unwrap();
    // Sent while the server is down: they wait in the outbox.
    let two = alice.send_text(&id, "two");
    let three = alice.send_text(&id, "three");
    server.restart();
    let two = tokio::time::timeout(WAIT, two).await.unwrap().unwrap();
    let three = tokio::time::timeout(WAIT, three).await.unwrap().unwrap();
    assert_eq!((two.seq, three.seq), (Seq(2), Seq(3)));

    let (bob, _bob_events) = connect(&server, "bob:phone").await;
    let page = bob
        .history(&id, HistoryRange::After(Seq::ZERO), None)
        .await
        .unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|m| text_of(m)).collect();
    assert_eq!(texts, ["one", "two", "three"]);
}

/// Reads `ws` until `deadline` (or until `want` entries of `id` came), checking each
/// `message` frame of `id` against `device`'s stream as it arrives; returns the last seq.
async fn read_checked(
    ws: &mut common::Raw,
    history: &common::history::History,
    device: &str,
    id: &ConversationId,
    mut cursor: Seq,
    deadline: tokio::time::Instant,
    want: u64,
) -> Seq {
    use futures_util::StreamExt;
    use messenger_core::protocol::ServerFrame;
    use tokio_tungstenite::tungstenite;

    while cursor.get() < want {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(tungstenite::Message::Text(text)))) => text,
            Ok(Some(Ok(tungstenite::Message::Close(frame)))) => panic!("closed: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => panic!("read: {err}"),
            Ok(None) => panic!("the server ended the connection"),
            Err(_) => break,
        };
        let frame: ServerFrame =
            serde_json::from_str(&frame).unwrap_or_else(|err| panic!("{err}: {frame}"));
        if let ServerFrame::Message { message } = frame {
            if &message.conversation != id {
                continue;
            }
            if let Err(problem) = history.received(device, &message) {
                history.assert_clean();
                panic!("{problem}");
            }
            cursor = message.seq;
        }
    }
    cursor
}

/// A raw WebSocket after `hello`, with `sync` from `cursor` sent for `id`.
async fn raw_session(
    server: &Server,
    token: &str,
    id: &ConversationId,
    cursor: Seq,
) -> common::Raw {
    let mut ws = common::raw_hello(server, token).await;
    common::send_json(
        &mut ws,
        serde_json::json!({"type": "sync", "cursors": {id.as_str(): cursor.get()}}),
    )
    .await;
    ws
}

/// The raw-WebSocket form of `reconnecting_during_traffic_loses_and_duplicates_nothing`: no
/// client library between the server and the check. Every `message` frame is checked as it
/// arrives (seq = the previous + 1, from each session's cursor), and the history checker
/// checks acks, streams and the stored log together.
#[tokio::test]
async fn raw_reconnects_during_traffic_see_each_seq_once_in_order() {
    const TOTAL: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let history = common::history::History::new("raw_reconnects_during_traffic");
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;

    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let (alice, id, sending, history) = (
            alice.clone(),
            id.clone(),
            Arc::clone(&sending),
            Arc::clone(&history),
        );
        tokio::spawn(async move {
            for n in 0..TOTAL {
                let sent = alice.send_text(&id, format!("{n}")).await.unwrap();
                history.acked("alice:phone", &id, sent.client_msg_id.as_str(), sent.seq);
                if n % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            sending.store(false, Ordering::SeqCst);
        })
    };

    let mut cursor = Seq::ZERO;
    let mut sessions = 0;
    while cursor.get() < TOTAL {
        sessions += 1;
        assert!(sessions < 500, "no progress");
        let mut ws = raw_session(&server, "bob:phone", &id, cursor).await;
        history.session("bob:phone", &id, cursor);
        let read_for = if sending.load(Ordering::SeqCst) {
            Duration::from_millis(40)
        } else {
            WAIT
        };
        let deadline = tokio::time::Instant::now() + read_for;
        cursor = read_checked(&mut ws, &history, "bob:phone", &id, cursor, deadline, TOTAL).await;
        // Dropped mid-stream, without a close frame.
        drop(ws);
    }
    sender.await.unwrap();
    assert!(sessions > 1, "the test must reconnect at least once");
    history.stored(&common::full_history(&alice, &id).await);
    history.assert_clean();
    assert_eq!(cursor, Seq(TOTAL));
}

/// The raw-WebSocket form of `sync_backlog_and_live_traffic_meet_without_gap_or_duplicate`:
/// a device syncs a backlog of 600 while 100 more are sent; every frame is checked as it
/// arrives.
#[tokio::test]
async fn raw_backlog_and_live_traffic_meet_frame_by_frame() {
    const BACKLOG: u64 = 600;
    const LIVE: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let history = common::history::History::new("raw_backlog_and_live");
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    let mut pending = Vec::new();
    for n in 0..BACKLOG {
        pending.push(alice.send_text(&id, format!("{n}")));
    }
    for sent in pending {
        let sent = sent.await.unwrap();
        history.acked("alice:phone", &id, sent.client_msg_id.as_str(), sent.seq);
    }
    let mut ws = raw_session(&server, "bob:phone", &id, Seq::ZERO).await;
    history.session("bob:phone", &id, Seq::ZERO);
    let live = {
        let (alice, id, history) = (alice.clone(), id.clone(), Arc::clone(&history));
        tokio::spawn(async move {
            for n in BACKLOG..BACKLOG + LIVE {
                let sent = alice.send_text(&id, format!("{n}")).await.unwrap();
                history.acked("alice:phone", &id, sent.client_msg_id.as_str(), sent.seq);
            }
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let cursor = read_checked(
        &mut ws,
        &history,
        "bob:phone",
        &id,
        Seq::ZERO,
        deadline,
        BACKLOG + LIVE,
    )
    .await;
    live.await.unwrap();
    history.stored(&common::full_history(&alice, &id).await);
    history.assert_clean();
    assert_eq!(cursor, Seq(BACKLOG + LIVE));
}
