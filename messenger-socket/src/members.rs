//! The node's cache of conversations and their members: every send needs its conversation's
//! member list, so it is read from the store once and then trusted for a short time.
//!
//! Bounded staleness, across nodes: an entry is dropped
//! - at once on the node that makes a membership change;
//! - on every other node that holds a connected member, as soon as the membership entry
//!   reaches it through the fanout (the hub drops the entry when it delivers it), which is
//!   what keeps the sender's node current: a sender is a connected member;
//! - everywhere else after the TTL ([`EngineConfig::members_cache_ttl`](crate::EngineConfig)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use messenger_core::ConversationId;
use messenger_core::store::ConversationInfo;

/// Entries above which expired ones are swept on insert.
const SWEEP_ABOVE: usize = 100_000;

/// Counters of the member cache, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCacheStats {
    /// Look-ups answered from the cache.
    pub hits: u64,
    /// Look-ups that read the store (absent or expired).
    pub misses: u64,
    /// Entries dropped because the membership changed.
    pub invalidations: u64,
}

impl MemberCacheStats {
    /// Hits over look-ups, `0.0` before the first look-up.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            // Counters far below 2^52: the conversion is exact enough for a ratio.
            #[allow(clippy::cast_precision_loss)]
            let rate = self.hits as f64 / total as f64;
            rate
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    /// Conversations by id, each with the instant it was read.
    fresh: HashMap<ConversationId, (Instant, Arc<ConversationInfo>)>,
    /// When each conversation was last invalidated (kept for one TTL), so a read that started
    /// before an invalidation is not cached after it.
    invalidated: HashMap<ConversationId, Instant>,
}

/// The cache: conversations by id, with counters.
#[derive(Debug)]
pub(crate) struct MemberCache {
    entries: Mutex<Entries>,
    ttl_ms: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl Default for MemberCache {
    fn default() -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            ttl_ms: AtomicU64::new(2_000),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }
}

impl MemberCache {
    pub(crate) fn set_ttl(&self, ttl: Duration) {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms.store(millis, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The cached conversation, when fresh; counts a hit or a miss.
    pub(crate) fn get(&self, id: &ConversationId) -> Option<Arc<ConversationInfo>> {
        let ttl = self.ttl();
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.fresh.get(id) {
            Some((at, info)) if at.elapsed() < ttl => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(Arc::clone(info))
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Caches `info`, read from the store starting at `read_at`, unless the conversation was
    /// invalidated since (the read may predate the change).
    pub(crate) fn insert(&self, id: ConversationId, info: Arc<ConversationInfo>, read_at: Instant) {
        let ttl = self.ttl();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries
            .invalidated
            .get(&id)
            .is_some_and(|at| *at >= read_at)
        {
            return;
        }
        if entries.fresh.len() > SWEEP_ABOVE {
            entries.fresh.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.fresh.insert(id, (read_at, info));
    }

    /// Drops the entry of `id`: its membership changed.
    pub(crate) fn invalidate(&self, id: &ConversationId) {
        let ttl = self.ttl();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.invalidated.len() > SWEEP_ABOVE {
            entries.invalidated.retain(|_, at| at.elapsed() < ttl);
        }
        entries.invalidated.insert(id.clone(), Instant::now());
        if entries.fresh.remove(id).is_some() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> MemberCacheStats {
        MemberCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::{Conversation, ConversationKind, Seq, Timestamp, UserId};

    fn a_user() -> UserId {
        UserId::new("a").unwrap()
    }

    fn info(id: &ConversationId) -> Arc<ConversationInfo> {
        Arc::new(ConversationInfo {
            conversation: Conversation {
                id: id.clone(),
                kind: ConversationKind::Direct,
                title: None,
                created_by: a_user(),
                created_at: Timestamp(0),
            },
            members: Vec::new(),
            head: Seq(0),
        })
    }

    #[test]
    fn a_read_older_than_an_invalidation_is_not_cached() {
        let cache = MemberCache::default();
        let a = UserId::new("a").unwrap();
        let b = UserId::new("b").unwrap();
        let id = ConversationId::direct(&a, &b).unwrap();
        let read_at = Instant::now();
        cache.invalidate(&id);
        cache.insert(id.clone(), info(&id), read_at);
        assert!(cache.get(&id).is_none());
        cache.insert(id.clone(), info(&id), Instant::now());
        assert!(cache.get(&id).is_some());
        cache.invalidate(&id);
        assert!(cache.get(&id).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.invalidations), (1, 2, 1));
        assert!((stats.hit_rate() - 1.0 / 3.0).abs() < 1e-9);
    }
}
