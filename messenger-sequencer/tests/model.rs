//! Model-based test: the memory sequencer against a `BTreeMap` of counters, over random
//! interleavings of allocations and fences on a few conversations with random floors.

use std::collections::BTreeMap;

use messenger_core::sequencer::{FenceSeq, NextSeq, SeqFloor};
use messenger_core::{ConversationId, Error, Seq, call};
use messenger_sequencer::Sequencer;
use messenger_sequencer::memory::MemorySequencer;
use proptest::prelude::*;

const CONVERSATIONS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Next(usize),
    Fence(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..CONVERSATIONS).prop_map(Op::Next),
        1 => (0..CONVERSATIONS, 0u64..80).prop_map(|(conv, at)| Op::Fence(conv, at)),
    ]
}

/// Floors given per conversation index.
#[derive(Debug)]
struct FixedFloors(Vec<u64>);

impl SeqFloor for FixedFloors {
    async fn floor(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        let index = conversation_index(conversation);
        Ok(Seq(self.0[index]))
    }
}

fn conversation(index: usize) -> ConversationId {
    ConversationId::new(format!("g:{index}")).unwrap()
}

fn conversation_index(conversation: &ConversationId) -> usize {
    conversation.as_str()[2..].parse().unwrap()
}

proptest! {
    #[test]
    fn memory_sequencer_matches_the_model(
        floors in proptest::collection::vec(0u64..40, CONVERSATIONS),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let sequencer = Sequencer::new(MemorySequencer::new(FixedFloors(floors.clone())));
            // The model: the highest seq used or fenced per conversation; a conversation
            // starts at its floor.
            let mut model: BTreeMap<usize, u64> =
                floors.iter().copied().enumerate().collect();
            for op in &ops {
                match *op {
                    Op::Next(index) => {
                        let last = model.get_mut(&index).unwrap();
                        *last += 1;
                        let seq = call(&sequencer, NextSeq { conversation: conversation(index) })
                            .await
                            .unwrap();
                        prop_assert_eq!(seq, Seq(*last), "after {:?}", ops);
                    }
                    Op::Fence(index, at_least) => {
                        let last = model.get_mut(&index).unwrap();
                        *last = (*last).max(at_least);
                        call(
                            &sequencer,
                            FenceSeq { conversation: conversation(index), at_least: Seq(at_least) },
                        )
                        .await
                        .unwrap();
                    }
                }
            }
            Ok(())
        })?;
    }
}
