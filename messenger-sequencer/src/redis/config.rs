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
}

impl RedisSequencerConfig {
    /// The default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "messenger";
    /// The default number of shards.
    pub const DEFAULT_SHARDS: usize = 64;

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
}

impl Default for RedisSequencerConfig {
    fn default() -> Self {
        Self {
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            shards: Self::DEFAULT_SHARDS,
        }
    }
}
