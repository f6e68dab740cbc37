//! End to end: the server is killed (SIGKILL) while a client pipelines sends into two groups
//! without waiting for acks, which leaves seqs missing below each group's head. After a
//! restart on the same data directory:
//! - `history` over the whole log returns every seq, the holes as voids, never skipping one;
//! - a device syncing from 0 receives every seq up to a message sent after the restart, the
//!   holes as voids, within a fixed deadline that does not grow with the number of holes
//!   (before, each hole cost its own ~2 s timeout, one after the other).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Raw, Server, next_frame, raw, send_json};
use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::ServerFrame;
use messenger_core::store::ReadRange;
use messenger_core::{ConversationId, ReceiptUpdate, Seq, call};
use messenger_socket::client::{Client, ClientConfig};
use messenger_store::Store;
use messenger_store::embedded::EmbeddedStore;
use tokio_tungstenite::tungstenite;

/// The server's `void_after` (the default of `NodeConfig`).
const VOID_AFTER: Duration = Duration::from_secs(2);
/// Holes each group must have before the checks run.
const MIN_HOLES: usize = 11;
/// Sends pipelined per crash, alternating between the two groups.
const SENDS: usize = 600;
/// Acks to wait for before the kill: the store is busy, many appends are in flight.
const ACKS_BEFORE_KILL: usize = 40;
/// Crashes tried before giving up on making enough holes.
const CRASHES: usize = 20;

/// A raw WebSocket after `hello` only: without `sync` it gets no `message` frames, so it does
/// not resolve holes itself (its ordered delivery would).
async fn hello_only(server: &Server, token: &str) -> Raw {
    let mut ws = raw(server).await;
    send_json(
        &mut ws,
        serde_json::json!({"type": "hello", "v": 1, "token": token}),
    )
    .await;
    let welcome = next_frame(&mut ws).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    ws
}

/// The seqs stored in `conversation` and its head, read from the data file of a stopped
/// server.
async fn stored_seqs(data_dir: &std::path::Path, conversation: &ConversationId) -> BTreeSet<u64> {
    let store = Store::new(EmbeddedStore::open(data_dir.join("messages.db")).expect("open store"));
    let page = call(
        &store,
        ReadRange {
            conversation: conversation.clone(),
            after: Seq::ZERO,
            until: None,
            limit: 1_000_000,
        },
    )
    .await
    .expect("read the log");
    page.messages
        .iter()
        .map(|message| message.seq.get())
        .collect()
}

/// The seqs missing below the highest stored one.
fn holes(stored: &BTreeSet<u64>) -> BTreeSet<u64> {
    let head = stored.last().copied().unwrap_or(0);
    (1..=head).filter(|seq| !stored.contains(seq)).collect()
}

/// Pipelines [`SENDS`] sends into `groups` (alternating) on a fresh connection, waits for
/// some acks, and kills the server while the rest are in flight.
async fn crash_mid_pipeline(server: &mut Server, groups: &[&ConversationId], round: usize) {
    let mut ws = hello_only(server, "alice:pipe").await;
    for n in 0..SENDS {
        let group = groups[n % groups.len()];
        let frame = serde_json::json!({
            "type": "send",
            "conversation": group.as_str(),
            "client_msg_id": format!("crash{round}-{n}"),
            "body": {"kind": "text", "text": format!("pipelined {round}/{n}")},
        });
        ws.feed(tungstenite::Message::text(frame.to_string()))
            .await
            .expect("queue a send");
    }
    ws.flush().await.expect("flush the sends");
    let mut acks = 0;
    while acks < ACKS_BEFORE_KILL {
        if let ServerFrame::Sent { .. } = next_frame(&mut ws).await {
            acks += 1;
        }
    }
    server.kill();
    drop(ws);
}

/// Pages through `history {after}` from 0 to the head with a raw connection, asserting that
/// every page is contiguous; an empty page below the head means "ask again".
async fn full_history(
    ws: &mut Raw,
    conversation: &ConversationId,
    deadline: Instant,
) -> Vec<(u64, bool)> {
    let mut log: Vec<(u64, bool)> = Vec::new();
    let mut request = 0;
    loop {
        let after = log.last().map_or(0, |(seq, _)| *seq);
        request += 1;
        send_json(
            ws,
            serde_json::json!({
                "type": "history",
                "id": format!("h{request}"),
                "conversation": conversation.as_str(),
                "after": after,
                "limit": 100,
            }),
        )
        .await;
        let (messages, head) = loop {
            match next_frame(ws).await {
                ServerFrame::History { messages, head, .. } => break (messages, head),
                ServerFrame::Message { .. } | ServerFrame::Receipt(ReceiptUpdate { .. }) => {
                    continue;
                }
                other => panic!("expected history, got {other:?}"),
            }
        };
        for (index, message) in messages.iter().enumerate() {
            assert_eq!(
                message.seq.get(),
                after + 1 + index as u64,
                "history after {after} skipped a seq: got {:?}",
                messages.iter().map(|m| m.seq.get()).collect::<Vec<_>>()
            );
            log.push((message.seq.get(), message.is_void()));
        }
        let last = log.last().map_or(0, |(seq, _)| *seq);
        if last >= head.get() {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "history still stops at {last} below head {head}"
        );
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_left_by_a_crash_resolve_together_and_history_never_skips() {
    let dir = tempfile::tempdir().unwrap();
    // The pipelined sends must reach the server at once, not at 200 frames/s.
    let mut server = Server::start(dir.path(), &["--frames-per-second", "100000"]);
    let (alice, _events) = Client::connect(ClientConfig::new(server.url(), "alice:phone"))
        .await
        .unwrap();
    let synced = alice
        .create_group("synced", &[common::user("bob")])
        .await
        .unwrap()
        .conversation
        .id;
    let paged = alice
        .create_group("paged", &[common::user("carol")])
        .await
        .unwrap()
        .conversation
        .id;
    alice.close().await;

    // Crash until both groups have enough holes below their heads.
    let mut stored_synced = BTreeSet::new();
    let mut stored_paged = BTreeSet::new();
    for round in 0..CRASHES {
        crash_mid_pipeline(&mut server, &[&synced, &paged], round).await;
        stored_synced = stored_seqs(dir.path(), &synced).await;
        stored_paged = stored_seqs(dir.path(), &paged).await;
        server.restart();
        if holes(&stored_synced).len() >= MIN_HOLES && holes(&stored_paged).len() >= MIN_HOLES {
            break;
        }
    }
    let restarted = Instant::now();
    let (holes_synced, holes_paged) = (holes(&stored_synced), holes(&stored_paged));
    println!(
        "holes after the crash: {} in the synced group (head {}), {} in the paged group (head {})",
        holes_synced.len(),
        stored_synced.last().copied().unwrap_or(0),
        holes_paged.len(),
        stored_paged.last().copied().unwrap_or(0),
    );
    assert!(
        holes_synced.len() >= MIN_HOLES && holes_paged.len() >= MIN_HOLES,
        "{CRASHES} crashes left too few holes: {holes_synced:?} / {holes_paged:?}"
    );
    // A fixed bound, whatever the number of holes: each gap waits at most `void_after` once.
    let bound = VOID_AFTER * 3 + Duration::from_secs(4);

    // A message after the restart, in the synced group.
    let mut sender = hello_only(&server, "alice:after").await;
    send_json(
        &mut sender,
        serde_json::json!({
            "type": "send",
            "conversation": synced.as_str(),
            "client_msg_id": "after-restart",
            "body": {"kind": "text", "text": "after the restart"},
        }),
    )
    .await;
    let after_seq = loop {
        if let ServerFrame::Sent { seq, .. } = next_frame(&mut sender).await {
            break seq.get();
        }
    };
    let head_synced = stored_synced.last().copied().unwrap_or(0);
    assert!(after_seq > head_synced);

    // At once, while the holes are fresh: history over the paged group, and a device syncing
    // the synced group from 0.
    let mut carol = hello_only(&server, "carol:phone").await;
    let history = tokio::spawn({
        let paged = paged.clone();
        async move {
            let started = Instant::now();
            let log = full_history(&mut carol, &paged, started + bound).await;
            (log, started.elapsed())
        }
    });
    let mut bob = hello_only(&server, "bob:laptop").await;
    let syncing = Instant::now();
    send_json(&mut bob, serde_json::json!({"type": "sync", "cursors": {}})).await;
    let mut received: Vec<(u64, bool)> = Vec::new();
    let outcome = tokio::time::timeout(bound, async {
        loop {
            let frame = bob.next().await.expect("open").expect("frame");
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let frame: ServerFrame = serde_json::from_str(&text).unwrap();
            if let ServerFrame::Message { message } = frame {
                if message.conversation == synced {
                    received.push((message.seq.get(), message.is_void()));
                    if message.seq.get() == after_seq {
                        assert_eq!(common::text_of(&message), "after the restart");
                        return;
                    }
                }
            }
        }
    })
    .await;
    let synced_in = syncing.elapsed();
    let delivered_up_to = received.last().map_or(0, |(seq, _)| *seq);
    assert!(
        outcome.is_ok(),
        "the message sent after the restart (seq {after_seq}) did not arrive within {bound:?} \
         of the sync: delivery reached seq {delivered_up_to} of {after_seq}, with {} holes below",
        holes_synced.len()
    );
    println!(
        "synced to seq {after_seq} over {} holes in {synced_in:?} ({:?} after the restart)",
        holes_synced.len(),
        syncing.duration_since(restarted) + synced_in,
    );
    let expected: Vec<u64> = (1..=after_seq).collect();
    let seqs: Vec<u64> = received.iter().map(|(seq, _)| *seq).collect();
    common::assert_same(&seqs, &expected);
    for (seq, void) in &received {
        assert_eq!(
            *void,
            holes_synced.contains(seq),
            "seq {seq}: holes arrive as voids, stored entries as themselves"
        );
    }

    // History: every seq up to the head, holes as voids, nothing skipped.
    let (log, paged_in) = history.await.unwrap();
    println!(
        "history of {} seqs over {} holes in {paged_in:?}",
        log.len(),
        holes_paged.len()
    );
    let head_paged = stored_paged.last().copied().unwrap_or(0);
    assert_eq!(log.len() as u64, head_paged, "every seq up to the head");
    for (seq, void) in &log {
        assert_eq!(
            *void,
            holes_paged.contains(seq),
            "seq {seq}: holes are voids, stored entries are themselves"
        );
    }
}
