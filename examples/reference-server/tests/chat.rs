//! End to end: 1:1 and group chat, receipts, typing, presence — real server, real sockets.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Server, WAIT, connect, messages, text_of, user};
use messenger_core::{Body, ErrorKind, Role, Seq};
use messenger_socket::client::ClientEvent;

#[tokio::test]
async fn direct_chat_reaches_every_device_of_both_users() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice_phone, mut alice_phone_events) = connect(&server, "alice:phone").await;
    let (_alice_laptop, mut alice_laptop_events) = connect(&server, "alice:laptop").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;

    let chat = alice_phone.open_direct(&user("bob")).await.unwrap();
    let id = chat.conversation.id.clone();
    assert_eq!(id.as_str(), "dm:alice:bob");
    // Opening again, from either side, gives the same conversation.
    assert_eq!(
        bob.open_direct(&user("alice"))
            .await
            .unwrap()
            .conversation
            .id,
        id
    );

    let sent = alice_phone.send_text(&id, "hello bob").await.unwrap();
    assert_eq!(sent.seq, Seq(1));
    assert!(!sent.duplicate);
    let reply = bob.send_text(&id, "hi alice").await.unwrap();
    assert_eq!(reply.seq, Seq(2));

    for events in [
        &mut alice_phone_events,
        &mut alice_laptop_events,
        &mut bob_events,
    ] {
        let got = messages(events, &id, 2).await;
        assert_eq!(
            got.iter().map(|m| (m.seq, text_of(m))).collect::<Vec<_>>(),
            vec![(Seq(1), "hello bob"), (Seq(2), "hi alice")]
        );
        assert_eq!(got[0].sender.as_str(), "alice");
        assert_eq!(got[0].sender_device.as_str(), "phone");
    }
    for client in [&alice_phone, &_alice_laptop, &bob] {
        common::assert_exactly_once(client);
    }
}

#[tokio::test]
async fn retried_send_returns_the_original_seq_and_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, _alice_events) = connect(&server, "alice:phone").await;
    let (_bob, mut bob_events) = connect(&server, "bob:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;

    let key = messenger_core::ClientMsgId::new("fixed-key-1").unwrap();
    let body = messenger_core::protocol::NewBody::text("only once");
    let first = alice
        .send_with_id(&id, key.clone(), body.clone())
        .await
        .unwrap();
    let again = alice.send_with_id(&id, key, body).await.unwrap();
    assert_eq!(again.seq, first.seq);
    assert!(again.duplicate);

    let next = alice.send_text(&id, "after").await.unwrap();
    let got = messages(&mut bob_events, &id, 2).await;
    assert_eq!(text_of(&got[0]), "only once");
    assert_eq!(text_of(&got[1]), "after");
    assert_eq!(got[1].seq, next.seq);
}

#[tokio::test]
async fn group_membership_changes_are_ordered_and_role_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = connect(&server, "alice:phone").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;
    let (carol, mut carol_events) = connect(&server, "carol:phone").await;

    let group = alice.create_group("team", &[user("bob")]).await.unwrap();
    let id = group.conversation.id.clone();
    assert!(id.as_str().starts_with("g:"));
    assert_eq!(group.members.len(), 2);

    // A plain member may not add anyone; the owner may.
    let refused = bob
        .add_members(&id, &[user("carol")], None)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden);
    // Carol is not a member yet: her send is refused and nothing is stored.
    let not_member = carol.send_text(&id, "let me in").await.unwrap_err();
    assert_eq!(not_member.kind(), ErrorKind::Forbidden, "{not_member}");

    alice.send_text(&id, "welcome bob").await.unwrap();
    alice
        .add_members(&id, &[user("carol")], None)
        .await
        .unwrap();
    carol.send_text(&id, "hi all").await.unwrap();
    alice
        .set_role(&id, &user("bob"), Role::Admin)
        .await
        .unwrap();
    bob.remove_member(&id, &user("carol")).await.unwrap();
    // Bob is an admin now but may not remove the owner.
    let refused = bob.remove_member(&id, &user("alice")).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden);
    // Carol is gone: her sends are refused again.
    assert!(carol.send_text(&id, "still here?").await.is_err());

    let alice_log = messages(&mut alice_events, &id, 6).await;
    let bob_log = messages(&mut bob_events, &id, 6).await;
    assert_eq!(alice_log, bob_log, "every member sees the same log");
    let kinds: Vec<&str> = alice_log
        .iter()
        .map(|m| match &m.body {
            Body::GroupCreated { .. } => "created",
            Body::Text { .. } => "text",
            Body::MembersAdded { .. } => "added",
            Body::RoleChanged { .. } => "role",
            Body::MemberRemoved { .. } => "removed",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["created", "text", "added", "text", "role", "removed"]
    );
    assert_eq!(
        alice_log.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );

    // Carol, added later, got the whole log up to her removal (history is visible to
    // members), and nothing after it.
    let carol_log = messages(&mut carol_events, &id, 6).await;
    assert_eq!(carol_log, alice_log);
    alice.send_text(&id, "carol cannot see this").await.unwrap();
    let members = alice.members(&id).await.unwrap();
    let roles: BTreeMap<String, Role> = members
        .members
        .iter()
        .map(|m| (m.user.to_string(), m.role))
        .collect();
    assert_eq!(
        roles,
        BTreeMap::from([("alice".into(), Role::Owner), ("bob".into(), Role::Admin)])
    );
    assert_eq!(
        carol
            .history(&id, messenger_socket::client::HistoryRange::Latest, None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Forbidden
    );

    // The owner cannot leave before handing over ownership; after it, they can.
    assert_eq!(
        alice.leave(&id).await.unwrap_err().kind(),
        ErrorKind::Forbidden
    );
    alice
        .set_role(&id, &user("bob"), Role::Owner)
        .await
        .unwrap();
    alice.leave(&id).await.unwrap();
    let members = bob.members(&id).await.unwrap();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].role, Role::Owner);
}

#[tokio::test]
async fn concurrent_senders_in_one_group_see_one_order() {
    const MEMBERS: usize = 5;
    const PER_MEMBER: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut clients = Vec::new();
    for index in 0..MEMBERS {
        clients.push(connect(&server, &format!("u{index}:phone")).await);
    }
    let others: Vec<_> = (1..MEMBERS).map(|i| user(&format!("u{i}"))).collect();
    let id = clients[0]
        .0
        .create_group("busy", &others)
        .await
        .unwrap()
        .conversation
        .id;

    let history = common::history::History::new("concurrent_senders_in_one_group");
    let mut senders = Vec::new();
    for (index, (client, _)) in clients.iter().enumerate() {
        let client = client.clone();
        let id = id.clone();
        let history = std::sync::Arc::clone(&history);
        senders.push(tokio::spawn(async move {
            for n in 0..PER_MEMBER {
                let sent = client.send_text(&id, format!("{index}-{n}")).await.unwrap();
                let me = format!("u{index}:phone");
                history.acked(&me, &id, sent.client_msg_id.as_str(), sent.seq);
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let total = 1 + MEMBERS * PER_MEMBER;
    let mut logs = Vec::new();
    for (index, (_, events)) in clients.iter_mut().enumerate() {
        let device = format!("u{index}:phone");
        // Each member's stream of the group starts at seq 1 (it synced before the group was
        // made); the client reports entries in the order the server sent them (it repaired
        // nothing: asserted below).
        history.session(&device, &id, Seq::ZERO);
        let log = messages(events, &id, total).await;
        for message in &log {
            let _ = history.received(&device, message);
        }
        logs.push(log);
    }
    history.stored(&common::full_history(&clients[0].0, &id).await);
    history.assert_clean();
    for log in &logs[1..] {
        assert_eq!(log, &logs[0], "every member sees the same order");
    }
    let seqs: Vec<u64> = logs[0].iter().map(|m| m.seq.get()).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    // Each sender's own messages keep the order they were sent in.
    for index in 0..MEMBERS {
        let mine: Vec<String> = logs[0][1..]
            .iter()
            .map(|m| text_of(m).to_owned())
            .filter(|text| text.starts_with(&format!("{index}-")))
            .collect();
        let expected: Vec<String> = (0..PER_MEMBER).map(|n| format!("{index}-{n}")).collect();
        assert_eq!(mine, expected);
    }
    for (client, _) in &clients {
        common::assert_exactly_once(client);
    }
}

#[tokio::test]
async fn receipts_reach_the_sender_and_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = connect(&server, "alice:phone").await;
    let (bob, mut bob_events) = connect(&server, "bob:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;
    for n in 1..=3 {
        alice.send_text(&id, format!("m{n}")).await.unwrap();
    }
    messages(&mut bob_events, &id, 3).await;

    bob.delivered(&id, Seq(3)).await.unwrap();
    bob.read(&id, Seq(2)).await.unwrap();
    // An older receipt never lowers a watermark.
    bob.read(&id, Seq(1)).await.unwrap();
    let mut last = None;
    while last
        .as_ref()
        .is_none_or(|r: &messenger_core::Receipts| r.read < Seq(2))
    {
        let event = alice_events
            .wait_for(WAIT, |event| {
                matches!(event, ClientEvent::Receipt { receipts, .. } if receipts.user.as_str() == "bob")
            })
            .await
            .unwrap();
        if let ClientEvent::Receipt { receipts, .. } = event {
            assert!(receipts.read <= receipts.delivered);
            last = Some(receipts);
        }
    }
    let receipts = alice.receipts(&id).await.unwrap();
    let bob_receipts = receipts.iter().find(|r| r.user.as_str() == "bob").unwrap();
    assert_eq!(
        (bob_receipts.delivered, bob_receipts.read),
        (Seq(3), Seq(2))
    );

    let summary = bob
        .conversations()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.conversation.id == id)
        .unwrap();
    assert_eq!(
        (summary.head, summary.read, summary.unread),
        (Seq(3), Seq(2), 1)
    );

    // A receipt past the head is refused and changes nothing; the connection stays up.
    bob.read(&id, Seq(99)).await.unwrap();
    bob.ping().await.unwrap();
    let summary = bob.conversations().await.unwrap();
    assert_eq!(summary[0].read, Seq(2));
}

#[tokio::test]
async fn typing_is_fanned_out_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = connect(&server, "alice:phone").await;
    let (bob, _bob_events) = connect(&server, "bob:phone").await;
    let id = alice
        .open_direct(&user("bob"))
        .await
        .unwrap()
        .conversation
        .id;

    for _ in 0..20 {
        bob.typing(&id, true).await.unwrap();
    }
    // A marker after the burst: once it arrives, every typing frame that passed has too.
    bob.send_text(&id, "marker").await.unwrap();
    let mut typing = 0;
    loop {
        let event = alice_events.next().await.unwrap();
        match event {
            ClientEvent::Typing { user, active, .. } => {
                assert_eq!(user.as_str(), "bob");
                assert!(active);
                typing += 1;
            }
            ClientEvent::Message(message) if text_of(&message) == "marker" => break,
            _ => {}
        }
    }
    assert!(typing >= 1, "typing reaches the other member");
    assert!(typing < 20, "typing is rate-limited, got {typing}");
}

#[tokio::test]
async fn last_seen_and_live_presence() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (alice, mut alice_events) = connect(&server, "alice:phone").await;
    let never = alice.last_seen(&[user("bob")]).await.unwrap();
    assert!(!never[0].online);
    assert_eq!(never[0].last_seen, None);

    alice.subscribe_presence(&[user("bob")]).await.unwrap();
    let (bob, _bob_events) = connect(&server, "bob:phone").await;
    alice_events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Presence { user, online: true, .. } if user.as_str() == "bob")
        })
        .await
        .unwrap();
    let online = alice.last_seen(&[user("bob")]).await.unwrap();
    assert!(online[0].online);
    let connected_at = online[0].last_seen.unwrap();

    tokio::time::sleep(Duration::from_millis(20)).await;
    bob.close().await;
    let event = alice_events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Presence { user, online: false, .. } if user.as_str() == "bob")
        })
        .await
        .unwrap();
    let ClientEvent::Presence { last_seen, .. } = event else {
        unreachable!()
    };
    assert!(
        last_seen.unwrap() >= connected_at,
        "last seen only moves forward"
    );
    let offline = alice.last_seen(&[user("bob")]).await.unwrap();
    assert!(!offline[0].online);
    assert_eq!(offline[0].last_seen, last_seen);
}
