//! Model-based test: random appends (gaps, retries, conflicts, voids) and reads on the
//! embedded store, compared with a `BTreeMap` model of the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use messenger_core::store::{AppendMessage, ReadBefore, ReadRange, VoidSeq};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, ErrorKind, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::Store;
use messenger_store::embedded::EmbeddedStore;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        seq: u64,
        sender: u8,
        key: u8,
    },
    Void {
        seq: u64,
    },
    Range {
        after: u64,
        until: Option<u64>,
        limit: usize,
    },
    Before {
        before: Option<u64>,
        limit: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..24u64, 0..3u8, 0..6u8).prop_map(|(seq, sender, key)| Op::Append { seq, sender, key }),
        1 => (1..24u64).prop_map(|seq| Op::Void { seq }),
        2 => (0..26u64, proptest::option::of(0..26u64), 0..12usize)
            .prop_map(|(after, until, limit)| Op::Range { after, until, limit }),
        2 => (proptest::option::of(0..26u64), 0..12usize)
            .prop_map(|(before, limit)| Op::Before { before, limit }),
    ]
}

/// What the model remembers of an entry: its identity, or void.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Entry { sender: u8, key: u8 },
    Void,
}

fn slot_of(message: &Message) -> Slot {
    if message.is_void() {
        return Slot::Void;
    }
    let sender = message
        .sender
        .as_str()
        .trim_start_matches('u')
        .parse()
        .expect("a model sender");
    let key = message
        .client_msg_id
        .as_str()
        .trim_start_matches('k')
        .parse()
        .expect("a model key");
    Slot::Entry { sender, key }
}

fn message(conversation: &ConversationId, seq: u64, sender: u8, key: u8) -> Arc<Message> {
    Arc::new(Message {
        conversation: conversation.clone(),
        seq: Seq(seq),
        sender: UserId::new(format!("u{sender}")).expect("id"),
        sender_device: DeviceId::new("d").expect("id"),
        client_msg_id: ClientMsgId::new(format!("k{key}")).expect("id"),
        sent_at: Timestamp(seq),
        body: Body::text(format!("{sender}/{key}")),
    })
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::new(EmbeddedStore::open(dir.path().join("model.db")).expect("open"));
    let conversation = ConversationId::new("g:model").expect("id");
    let mut log: BTreeMap<u64, Slot> = BTreeMap::new();

    runtime.block_on(async {
        for op in ops {
            match op {
                Op::Append { seq, sender, key } => {
                    let result = call(
                        &store,
                        AppendMessage {
                            message: message(&conversation, seq, sender, key),
                        },
                    )
                    .await;
                    let original = log
                        .iter()
                        .find(|(_, slot)| **slot == Slot::Entry { sender, key })
                        .map(|(seq, _)| *seq);
                    match original {
                        Some(original) => {
                            let appended = result.expect("a retry succeeds");
                            prop_assert!(appended.duplicate);
                            prop_assert_eq!(appended.message.seq, Seq(original));
                            log.entry(seq).or_insert(Slot::Void);
                        }
                        None if log.contains_key(&seq) => {
                            let err = result.expect_err("the seq is taken");
                            prop_assert_eq!(err.kind(), ErrorKind::Conflict);
                        }
                        None => {
                            let appended = result.expect("a free seq is appended");
                            prop_assert!(!appended.duplicate);
                            log.insert(seq, Slot::Entry { sender, key });
                        }
                    }
                }
                Op::Void { seq } => {
                    let held = call(
                        &store,
                        VoidSeq {
                            conversation: conversation.clone(),
                            seq: Seq(seq),
                        },
                    )
                    .await
                    .expect("void");
                    let expected = log.entry(seq).or_insert(Slot::Void).clone();
                    prop_assert_eq!(slot_of(&held), expected);
                }
                Op::Range {
                    after,
                    until,
                    limit,
                } => {
                    let page = call(
                        &store,
                        ReadRange {
                            conversation: conversation.clone(),
                            after: Seq(after),
                            until: until.map(Seq),
                            limit,
                        },
                    )
                    .await
                    .expect("range");
                    let upper = until.unwrap_or(u64::MAX);
                    let expected: Vec<_> = log
                        .range(after.saturating_add(1)..)
                        .take_while(|(seq, _)| **seq <= upper)
                        .take(limit)
                        .map(|(seq, slot)| (*seq, slot.clone()))
                        .collect();
                    let got: Vec<_> = page
                        .messages
                        .iter()
                        .map(|m| (m.seq.get(), slot_of(m)))
                        .collect();
                    prop_assert_eq!(got, expected);
                    prop_assert_eq!(
                        page.head.get(),
                        log.keys().next_back().copied().unwrap_or(0)
                    );
                }
                Op::Before { before, limit } => {
                    let page = call(
                        &store,
                        ReadBefore {
                            conversation: conversation.clone(),
                            before: before.map(Seq),
                            limit,
                        },
                    )
                    .await
                    .expect("before");
                    let mut expected: Vec<_> = log
                        .range(..before.unwrap_or(u64::MAX))
                        .rev()
                        .take(limit)
                        .map(|(seq, slot)| (*seq, slot.clone()))
                        .collect();
                    expected.reverse();
                    let got: Vec<_> = page
                        .messages
                        .iter()
                        .map(|m| (m.seq.get(), slot_of(m)))
                        .collect();
                    prop_assert_eq!(got, expected);
                    prop_assert_eq!(
                        page.head.get(),
                        log.keys().next_back().copied().unwrap_or(0)
                    );
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_log_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        check(ops)?;
    }
}
