//! Configuration of the Redis sequencer.

/// Settings of a [`RedisSequencer`](super::RedisSequencer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisSequencerConfig {
    /// The prefix of every key. A conversation's counter is `{key_prefix}:{<conversation>}:seq`
    /// and its fence epoch `{key_prefix}:{<conversation>}:epoch`: the braces around the
    /// conversation are a Redis Cluster hash tag, so both keys of a conversation live in one
    /// slot (the scripts touch both) while conversations spread over the cluster. The prefix
    /// must not contain `{` or `}` (it would become the hash tag and put every conversation in
    /// one slot).
    ///
    /// Default: `"messenger"`.
    pub key_prefix: String,
    /// How many independently locked shards this process's per-conversation state (floor
    /// applied, highest seq seen, the single-flight lock) is split into. A lock is held only
    /// to look a conversation up. Values below 1 count as 1.
    ///
    /// Default: 64.
    pub shards: usize,
    /// The most fast-path allocations one pipeline carries. Concurrent allocations (of any
    /// conversations) are gathered by a batching task and sent as one pipeline of `INCR`s
    /// (`n` allocations of one conversation share one `INCRBY n`); a batch is whatever
    /// accumulated while earlier pipelines were in flight, never a timer, so a lone caller
    /// waits for nothing. 0 or 1 turns batching off: every allocation is then its own `INCR`
    /// on the caller's connection.
    ///
    /// Default: 256.
    pub max_batch: usize,
    /// How many pipelines may be in flight at once (per sequencer, across all nodes of a
    /// cluster). While they all are, new allocations queue and leave together in the next
    /// pipeline. Values below 1 count as 1.
    ///
    /// Default: 2.
    pub pipelines_in_flight: usize,
}

impl RedisSequencerConfig {
    /// The default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "messenger";
    /// The default number of shards.
    pub const DEFAULT_SHARDS: usize = 64;
    /// The default [`max_batch`](Self::max_batch).
    pub const DEFAULT_MAX_BATCH: usize = 256;
    /// The default [`pipelines_in_flight`](Self::pipelines_in_flight).
    pub const DEFAULT_PIPELINES_IN_FLIGHT: usize = 2;

    /// Sets [`key_prefix`](Self::key_prefix).
    #[must_use]
    pub fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// Sets [`shards`](Self::shards).
    #[must_use]
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Sets [`max_batch`](Self::max_batch); 0 or 1 turns batching off.
    #[must_use]
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Sets [`pipelines_in_flight`](Self::pipelines_in_flight).
    #[must_use]
    pub fn with_pipelines_in_flight(mut self, pipelines_in_flight: usize) -> Self {
        self.pipelines_in_flight = pipelines_in_flight;
        self
    }
}

impl Default for RedisSequencerConfig {
    fn default() -> Self {
        Self {
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            shards: Self::DEFAULT_SHARDS,
            max_batch: Self::DEFAULT_MAX_BATCH,
            pipelines_in_flight: Self::DEFAULT_PIPELINES_IN_FLIGHT,
        }
    }
}
