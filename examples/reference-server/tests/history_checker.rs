//! The history checker finds each fault it is named for, in a history made by hand (so these
//! tests fail if the checker stops seeing one), and passes a clean one.

mod common;

use std::sync::Arc;

use common::history::History;
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId,
};

fn chat() -> ConversationId {
    ConversationId::new("g:checked").unwrap()
}

fn entry(seq: u64, sender: &str, client_msg_id: &str) -> Message {
    Message {
        conversation: chat(),
        seq: Seq(seq),
        sender: UserId::new(sender).unwrap(),
        sender_device: DeviceId::new("phone").unwrap(),
        client_msg_id: ClientMsgId::new(client_msg_id).unwrap(),
        sent_at: Timestamp(1),
        body: Body::text(client_msg_id),
    }
}

/// Alice sends a1..a3, acked at 1..3; bob's device streams them over two sessions.
fn clean() -> Arc<History> {
    let history = History::new("clean");
    for seq in 1..=3 {
        history.acked("alice:phone", &chat(), &format!("a{seq}"), Seq(seq));
    }
    history.session("bob:phone", &chat(), Seq(0));
    history
        .received("bob:phone", &entry(1, "alice", "a1"))
        .unwrap();
    history.session("bob:phone", &chat(), Seq(1));
    history
        .received("bob:phone", &entry(2, "alice", "a2"))
        .unwrap();
    history
        .received("bob:phone", &entry(3, "alice", "a3"))
        .unwrap();
    history
}

fn log(entries: &[Message]) -> Vec<Arc<Message>> {
    entries.iter().cloned().map(Arc::new).collect()
}

#[test]
fn a_clean_history_has_no_problem() {
    let history = clean();
    history.stored(&log(&[
        entry(1, "alice", "a1"),
        entry(2, "alice", "a2"),
        entry(3, "alice", "a3"),
    ]));
    assert_eq!(history.problems(), Vec::<String>::new());
    history.assert_clean();
}

#[test]
fn a_duplicate_is_found_as_it_arrives() {
    let history = clean();
    let err = history
        .received("bob:phone", &entry(3, "alice", "a3"))
        .unwrap_err();
    assert!(err.contains("duplicate"), "{err}");
    assert_eq!(history.problems().len(), 1, "{:?}", history.problems());
}

#[test]
fn a_gap_and_a_reorder_are_found() {
    let history = History::new("gap");
    history.session("bob:phone", &chat(), Seq(0));
    history
        .received("bob:phone", &entry(2, "alice", "a2"))
        .unwrap_err();
    history
        .received("bob:phone", &entry(1, "alice", "a1"))
        .unwrap_err();
    let problems = history.problems();
    assert!(problems[0].contains("gap"), "{problems:?}");
    assert!(problems[1].contains("reordered"), "{problems:?}");
}

#[test]
fn two_messages_at_one_seq_are_found() {
    let history = clean();
    history.stored(&log(&[
        entry(1, "alice", "a1"),
        entry(2, "carol", "c1"),
        entry(3, "alice", "a3"),
    ]));
    let problems = history.problems();
    assert!(
        problems.iter().any(|p| p.contains("two messages at seq 2")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("lost: alice:phone a2")),
        "{problems:?}"
    );
}

#[test]
fn one_message_at_two_seqs_is_found() {
    let history = clean();
    history.stored(&log(&[
        entry(1, "alice", "a1"),
        entry(2, "alice", "a2"),
        entry(3, "alice", "a3"),
        entry(4, "alice", "a1"),
    ]));
    let problems = history.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("one message at two seqs"),
        "{problems:?}"
    );
}

#[test]
fn a_lost_message_and_a_hole_are_found() {
    let history = clean();
    history.stored(&log(&[entry(1, "alice", "a1"), entry(3, "alice", "a3")]));
    let problems = history.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("a2 acknowledged at seq 2") && p.contains("missing")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("skips from 1 to 3")),
        "{problems:?}"
    );
}

#[test]
fn a_void_is_an_entry_of_no_one() {
    let history = History::new("void");
    history.session("bob:phone", &chat(), Seq(0));
    let void = Message::void(chat(), Seq(1), Timestamp(1));
    history.received("bob:phone", &void).unwrap();
    history
        .received("bob:phone", &entry(2, "alice", "a2"))
        .unwrap();
    history.stored(&log(&[void.clone(), entry(2, "alice", "a2")]));
    assert_eq!(history.problems(), Vec::<String>::new());
}

#[test]
#[should_panic(expected = "log in")]
fn a_failing_history_keeps_its_log() {
    let history = clean();
    history
        .received("bob:phone", &entry(2, "alice", "a2"))
        .unwrap_err();
    history.assert_clean();
}
