//! Configuration of the memory sequencer.

/// Settings of a [`MemorySequencer`](super::MemorySequencer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemorySequencerConfig {
    /// How many independently locked shards the conversation map is split into. A lock is
    /// held only to look a conversation up, never while allocating or reading the floor, so
    /// a few dozen shards keep contention negligible. Values below 1 count as 1.
    ///
    /// Default: 64.
    pub shards: usize,
}

impl MemorySequencerConfig {
    /// The default number of shards.
    pub const DEFAULT_SHARDS: usize = 64;

    /// Sets [`shards`](Self::shards).
    #[must_use]
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }
}

impl Default for MemorySequencerConfig {
    fn default() -> Self {
        Self {
            shards: Self::DEFAULT_SHARDS,
        }
    }
}
