//! Requests of the sequencer: per-conversation sequence numbers.

use std::future::Future;

use crate::service::{Handles, Operation};
use crate::{ConversationId, Error, Seq};

/// Allocates the next seq of a conversation.
///
/// # Cancellation safety
/// Not cancellation safe: a dropped call may still have burned a number. A burned number is a
/// hole that readers resolve as void, so this costs a little latency, never correctness.
#[derive(Debug, Clone)]
pub struct NextSeq {
    /// The conversation.
    pub conversation: ConversationId,
}

impl Operation for NextSeq {
    type Response = Seq;
    const NAME: &'static str = "next_seq";
}

/// Moves a conversation's counter forward so the next allocation is above `at_least`.
///
/// Called when the store reports that an allocated seq was already taken (a sequencer that
/// lost its state, a second writer): the counter is fenced past every stored seq.
#[derive(Debug, Clone)]
pub struct FenceSeq {
    /// The conversation.
    pub conversation: ConversationId,
    /// A seq known to be taken.
    pub at_least: Seq,
}

impl Operation for FenceSeq {
    type Response = ();
    const NAME: &'static str = "fence_seq";
}

/// Every sequencer operation, as one bound.
pub trait SequencerService: Handles<NextSeq> + Handles<FenceSeq> {}

impl<S> SequencerService for S where S: Handles<NextSeq> + Handles<FenceSeq> {}

/// Where a sequencer that starts empty learns the highest seq already used by a conversation,
/// so numbers never repeat after a restart. The store implements it (its head).
pub trait SeqFloor: Send + Sync + 'static {
    /// The highest seq of `conversation` already in use (`Seq::ZERO` when none).
    fn floor(
        &self,
        conversation: &ConversationId,
    ) -> impl Future<Output = Result<Seq, Error>> + Send;
}
