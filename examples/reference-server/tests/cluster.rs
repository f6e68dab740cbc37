//! Three reference servers as one cluster (shared MariaDB, Redis, Kafka-compatible broker),
//! clients spread over them. Skips with one line when the services are not configured.

#![cfg(feature = "kafka")]

mod common;

use std::time::Duration;

use common::cluster::{cluster_env, nodes, unique};
use common::{WAIT, connect, connect_with, messages, text_of, user};
use messenger_core::{Seq, UserId};
use messenger_socket::client::{ClientConfig, ClientEvent, HistoryRange};

#[tokio::test]
async fn chat_receipts_and_presence_across_three_nodes() {
    let Some(env) = cluster_env("cross-node chat") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = nodes(&env, dir.path(), "chat", 3);
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));

    let (alice_a, mut alice_a_events) = connect(&cluster[0], &format!("{alice}:phone")).await;
    let (_alice_c, mut alice_c_events) = connect(&cluster[2], &format!("{alice}:laptop")).await;
    let (bob_b, mut bob_b_events) = connect(&cluster[1], &format!("{bob}:phone")).await;

    // 1:1 across nodes: both of Alice's devices and Bob's see every message.
    let direct = alice_a
        .open_direct(&user(&bob))
        .await
        .unwrap()
        .conversation
        .id;
    alice_a.send_text(&direct, "hi bob").await.unwrap();
    bob_b.send_text(&direct, "hi alice").await.unwrap();
    for events in [&mut alice_a_events, &mut alice_c_events, &mut bob_b_events] {
        let log = messages(events, &direct, 2).await;
        let texts: Vec<&str> = log.iter().map(|m| text_of(m)).collect();
        assert_eq!(texts, ["hi bob", "hi alice"]);
        assert_eq!(log[1].seq, Seq(2));
    }

    // Receipts across nodes: Bob reads on node b, Alice sees it on node a.
    bob_b.read(&direct, Seq(2)).await.unwrap();
    alice_a_events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Receipt { receipts, .. }
                if receipts.user.as_str() == bob && receipts.read == Seq(2))
        })
        .await
        .expect("bob's read receipt reaches alice on another node");

    // A group spread over the three nodes.
    let (carol_c, mut carol_c_events) = connect(&cluster[2], &format!("{carol}:phone")).await;
    let group = alice_a
        .create_group("spread", &[user(&bob), user(&carol)])
        .await
        .unwrap()
        .conversation
        .id;
    alice_a.send_text(&group, "from a").await.unwrap();
    bob_b.send_text(&group, "from b").await.unwrap();
    carol_c.send_text(&group, "from c").await.unwrap();
    for events in [
        &mut alice_a_events,
        &mut alice_c_events,
        &mut bob_b_events,
        &mut carol_c_events,
    ] {
        let log = messages(events, &group, 4).await;
        let texts: Vec<&str> = log[1..].iter().map(|m| text_of(m)).collect();
        assert_eq!(texts, ["from a", "from b", "from c"]);
    }

    // Presence across nodes: Alice (node a) watches Bob; he leaves node b, then comes back on
    // node c.
    alice_a.subscribe_presence(&[user(&bob)]).await.unwrap();
    bob_b.close().await;
    alice_a_events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Presence { user, online: false, last_seen: Some(_) }
                if user.as_str() == bob)
        })
        .await
        .expect("bob offline, seen from another node");
    let status = alice_a.last_seen(&[user(&bob)]).await.unwrap();
    assert!(!status[0].online);
    let (_bob_c, _bob_c_events) = connect(&cluster[2], &format!("{bob}:phone")).await;
    alice_a_events
        .wait_for(WAIT, |event| {
            matches!(event, ClientEvent::Presence { user, online: true, .. } if user.as_str() == bob)
        })
        .await
        .expect("bob online again, on a third node");
    let status = alice_a.last_seen(&[user(&bob)]).await.unwrap();
    assert!(status[0].online);
}

#[tokio::test]
async fn concurrent_senders_on_three_nodes_see_one_order() {
    const PER_MEMBER: usize = 30;
    let Some(env) = cluster_env("cross-node ordering") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = nodes(&env, dir.path(), "order", 3);
    let names: Vec<String> = (0..3).map(|i| unique(&format!("order{i}u"))).collect();
    let mut clients = Vec::new();
    for (index, name) in names.iter().enumerate() {
        clients.push(connect(&cluster[index], &format!("{name}:phone")).await);
    }
    // A second device of the first member, on another node.
    clients.push(connect(&cluster[1], &format!("{}:tablet", names[0])).await);
    let others: Vec<UserId> = names[1..].iter().map(|name| user(name)).collect();
    let id = clients[0]
        .0
        .create_group("busy", &others)
        .await
        .unwrap()
        .conversation
        .id;

    let history = common::history::History::new("concurrent_senders_on_three_nodes");
    let devices: Vec<String> = names
        .iter()
        .map(|name| format!("{name}:phone"))
        .chain([format!("{}:tablet", names[0])])
        .collect();
    let mut senders = Vec::new();
    for (index, (client, _)) in clients.iter().take(3).enumerate() {
        let client = client.clone();
        let id = id.clone();
        let history = std::sync::Arc::clone(&history);
        let device = devices[index].clone();
        senders.push(tokio::spawn(async move {
            for n in 0..PER_MEMBER {
                let sent = client.send_text(&id, format!("{index}-{n}")).await.unwrap();
                history.acked(&device, &id, sent.client_msg_id.as_str(), sent.seq);
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let total = 1 + 3 * PER_MEMBER;
    let mut logs = Vec::new();
    for (index, (_, events)) in clients.iter_mut().enumerate() {
        // Every device synced before the group was made: its stream starts at seq 1.
        history.session(&devices[index], &id, messenger_core::Seq::ZERO);
        let log = messages(events, &id, total).await;
        for message in &log {
            let _ = history.received(&devices[index], message);
        }
        logs.push(log);
    }
    history.stored(&common::full_history(&clients[0].0, &id).await);
    history.assert_clean();
    for log in &logs[1..] {
        assert_eq!(
            log, &logs[0],
            "every device on every node sees the same order"
        );
    }
    let seqs: Vec<u64> = logs[0].iter().map(|m| m.seq.get()).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    for index in 0..3 {
        let mine: Vec<String> = logs[0][1..]
            .iter()
            .map(|m| text_of(m).to_owned())
            .filter(|text| text.starts_with(&format!("{index}-")))
            .collect();
        let expected: Vec<String> = (0..PER_MEMBER).map(|n| format!("{index}-{n}")).collect();
        assert_eq!(mine, expected, "each sender's own order is kept");
    }
}

#[tokio::test]
async fn a_killed_node_is_left_and_its_clients_resync_elsewhere() {
    const SENDS: usize = 60;
    let Some(env) = cluster_env("node failure") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = nodes(&env, dir.path(), "kill", 3);
    let (alice, bob) = (unique("killalice"), unique("killbob"));

    // Alice on node 0, with nodes 1 and 2 as fallbacks; Bob on node 1.
    let config = ClientConfig::new(cluster[0].url(), format!("{alice}:phone"))
        .fallback_urls([cluster[2].url(), cluster[1].url()])
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let (alice_client, mut alice_events) = connect_with(config).await;
    let (bob_client, _bob_events) = connect(&cluster[1], &format!("{bob}:phone")).await;
    let id = bob_client
        .open_direct(&user(&alice))
        .await
        .unwrap()
        .conversation
        .id;
    bob_client
        .subscribe_presence(&[user(&alice)])
        .await
        .unwrap();

    // Bob sends while Alice's node dies under her.
    let sender = {
        let bob_client = bob_client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..SENDS {
                let sent = bob_client.send_text(&id, format!("m{n}")).await.unwrap();
                acked.push(sent.seq);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    messages(&mut alice_events, &id, 5).await;
    cluster[0].kill();

    // The registry drops the dead node's devices within its lease: Bob sees Alice offline
    // (unless her client already came back on another node, which is online again).
    let acked = sender.await.unwrap();
    assert_eq!(acked.len(), SENDS);

    // Alice's client moved to another node by itself and resynced: she ends up with every
    // acknowledged message exactly once, in order.
    let mut texts = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        // The first 5 were collected above.
        while texts.len() < SENDS - 5 {
            let message = alice_events
                .wait_for_message(WAIT, |message| message.conversation == id)
                .await
                .expect("message after failover");
            texts.push(text_of(&message).to_owned());
        }
    })
    .await;
    assert!(all.is_ok(), "only {} messages after failover", texts.len());
    let expected: Vec<String> = (5..SENDS).map(|n| format!("m{n}")).collect();
    assert_eq!(texts, expected);
    let page = alice_client
        .history(&id, HistoryRange::After(Seq::ZERO), None)
        .await
        .unwrap();
    assert_eq!(page.head, *acked.last().unwrap());
    let seqs: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, acked, "every acked seq stored once, in order");
}

#[tokio::test]
async fn a_dead_node_stops_being_routed_to_within_its_lease() {
    let Some(env) = cluster_env("node lease") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = nodes(&env, dir.path(), "lease", 2);
    let (alice, bob) = (unique("leasealice"), unique("leasebob"));
    let (_alice_client, _alice_events) = connect(&cluster[0], &format!("{alice}:phone")).await;
    let (bob_client, mut bob_events) = connect(&cluster[1], &format!("{bob}:phone")).await;
    bob_client
        .subscribe_presence(&[user(&alice)])
        .await
        .unwrap();
    assert!(bob_client.last_seen(&[user(&alice)]).await.unwrap()[0].online);

    // SIGKILL: no unregister, no lease release. Bob's node must see Alice gone once the
    // lease lapses (2 s in these tests), and tell Bob.
    cluster[0].kill();
    bob_events
        .wait_for(Duration::from_secs(20), |event| {
            matches!(event, ClientEvent::Presence { user, online: false, .. } if user.as_str() == alice)
        })
        .await
        .expect("alice reported offline after her node's lease lapsed");
    assert!(!bob_client.last_seen(&[user(&alice)]).await.unwrap()[0].online);
}
