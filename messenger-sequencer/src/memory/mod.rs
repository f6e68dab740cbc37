//! The memory sequencer: counters in this process, always built.
//!
//! Each conversation's counter lives in memory. On the first use of a conversation the
//! sequencer asks a [`SeqFloor`] (the store's head) for the highest seq already used, so
//! numbers never repeat after a restart. Use [`NoFloor`] when nothing was stored before
//! (tests, a purely in-memory server).
//!
//! # Memory
//!
//! A counter is kept for every conversation seen since start, a few dozen bytes each plus the
//! conversation id (shared with the caller's `Arc<str>`). There is no eviction yet: a process
//! that sees millions of conversations keeps millions of counters. Eviction would be safe
//! (an evicted counter is rebuilt from the floor) but is not needed now.
//!
//! # Several processes
//!
//! Counters are not shared between processes: two processes sequencing the same
//! conversation collide. The store's conditional append detects that and the caller fences
//! the sequencer forward; for real scale-out use the Redis backend.

mod config;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use messenger_core::sequencer::{FenceSeq, NextSeq, SeqFloor};
use messenger_core::{ConversationId, Error, ErrorKind, Seq};
use tokio::sync::OnceCell;

pub use config::MemorySequencerConfig;

use crate::SequencerBackend;

/// The backend name errors carry.
const BACKEND: &str = "memory";

/// A floor that is always [`Seq::ZERO`]: nothing was ever stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoFloor;

impl SeqFloor for NoFloor {
    async fn floor(&self, _conversation: &ConversationId) -> Result<Seq, Error> {
        Ok(Seq::ZERO)
    }
}

/// Per-conversation counters in memory, with the floor read once per conversation from `F`.
///
/// Wrap it in [`Sequencer`](crate::Sequencer) to get a tower service:
/// `Sequencer::new(MemorySequencer::new(NoFloor))`.
pub struct MemorySequencer<F> {
    floor: F,
    hasher: RandomState,
    shards: Box<[Shard]>,
}

/// A part of the conversation map under one lock.
type Shard = Mutex<HashMap<ConversationId, Arc<Counter>>>;

/// One conversation's counter.
#[derive(Debug, Default)]
struct Counter {
    /// The highest seq allocated, fenced or known from the floor.
    last: AtomicU64,
    /// Set once the floor was read and folded into `last`; allocations wait for it.
    floor_read: OnceCell<()>,
}

impl<F: SeqFloor> MemorySequencer<F> {
    /// A sequencer that reads each conversation's floor from `floor`, with the default
    /// configuration.
    pub fn new(floor: F) -> Self {
        Self::with_config(floor, MemorySequencerConfig::default())
    }

    /// A sequencer with an explicit configuration.
    pub fn with_config(floor: F, config: MemorySequencerConfig) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Self {
            floor,
            hasher: RandomState::new(),
            shards,
        }
    }

    /// The floor this sequencer reads.
    pub fn floor(&self) -> &F {
        &self.floor
    }

    /// How many conversations have a counter in memory.
    pub fn conversations(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// The counter of `conversation`, created on first sight.
    fn counter(&self, conversation: &ConversationId) -> Arc<Counter> {
        let hash = self.hasher.hash_one(conversation);
        // The modulo keeps the index below `shards.len()`, which fits in usize.
        let index = (hash % self.shards.len() as u64) as usize;
        // The map only ever gains entries, so a poisoned lock still guards a valid map.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(shard.entry(conversation.clone()).or_default())
    }

    /// Allocates the next seq of `conversation`.
    ///
    /// The first call for a conversation reads its floor; concurrent first calls share one
    /// read (single flight).
    ///
    /// # Errors
    /// - The floor's error, unchanged, when reading the floor failed. Nothing was allocated;
    ///   the next call reads the floor again.
    /// - [`ErrorKind::Unexpected`] when the conversation's counter reached `u64::MAX`.
    ///
    /// # Cancellation safety
    /// Cancellation safe. Dropped while reading the floor: nothing happened, and another
    /// waiting caller takes the read over. The allocation itself does not await, so a dropped
    /// call burns no number.
    pub async fn next_seq(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        let counter = self.counter(conversation);
        counter
            .floor_read
            .get_or_try_init(|| async {
                let floor = self.floor.floor(conversation).await?;
                counter.last.fetch_max(floor.get(), Ordering::AcqRel);
                Ok::<(), Error>(())
            })
            .await?;
        counter
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                last.checked_add(1)
            })
            .map(|previous| Seq(previous + 1))
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("the seq counter of {conversation} is exhausted"),
                )
                .with_backend(BACKEND)
            })
    }

    /// Moves the counter of `conversation` so the next allocation is above `at_least`; never
    /// moves it backward. Does not read the floor: the next allocation folds it in.
    ///
    /// # Errors
    /// None: always `Ok`.
    ///
    /// # Cancellation safety
    /// Cancellation safe: the fence does not await.
    pub async fn fence_seq(
        &self,
        conversation: &ConversationId,
        at_least: Seq,
    ) -> Result<(), Error> {
        self.counter(conversation)
            .last
            .fetch_max(at_least.get(), Ordering::AcqRel);
        Ok(())
    }
}

impl<F: SeqFloor> SequencerBackend for MemorySequencer<F> {
    /// See [`MemorySequencer::next_seq`].
    async fn next(&self, request: NextSeq) -> Result<Seq, Error> {
        self.next_seq(&request.conversation).await
    }

    /// See [`MemorySequencer::fence_seq`].
    async fn fence(&self, request: FenceSeq) -> Result<(), Error> {
        self.fence_seq(&request.conversation, request.at_least)
            .await
    }
}

impl Default for MemorySequencer<NoFloor> {
    fn default() -> Self {
        Self::new(NoFloor)
    }
}

impl<F> fmt::Debug for MemorySequencer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySequencer")
            .field("floor", &std::any::type_name::<F>())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_are_created_once_per_conversation() {
        let sequencer =
            MemorySequencer::with_config(NoFloor, MemorySequencerConfig::default().with_shards(0));
        let a = ConversationId::new("g:a").unwrap();
        let b = ConversationId::new("g:b").unwrap();
        assert_eq!(sequencer.next_seq(&a).await.unwrap(), Seq(1));
        assert_eq!(sequencer.next_seq(&a).await.unwrap(), Seq(2));
        assert_eq!(sequencer.next_seq(&b).await.unwrap(), Seq(1));
        assert_eq!(sequencer.conversations(), 2);
    }

    #[tokio::test]
    async fn an_exhausted_counter_is_an_error_not_a_wrap() {
        let sequencer = MemorySequencer::default();
        let a = ConversationId::new("g:a").unwrap();
        sequencer.fence_seq(&a, Seq(u64::MAX)).await.unwrap();
        let err = sequencer.next_seq(&a).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unexpected);
        assert_eq!(err.backend(), Some("memory"));
    }
}
