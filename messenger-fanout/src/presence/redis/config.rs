//! Configuration of the Redis presence registry.

use std::fmt;
use std::time::Duration;

use messenger_core::presence::NodeId;

/// Settings of a [`RedisPresence`](super::RedisPresence).
///
/// There is no `Default`: the Redis URLs and the node id have none. Every other setting has a
/// documented default, changed with a `with_*` setter.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisPresenceConfig {
    /// Redis URLs: one names a standalone server, several are the seed nodes of a Redis
    /// Cluster (`redis://host:port/`; `rediss://` and passwords as the `redis` crate accepts
    /// them).
    pub urls: Vec<String>,
    /// This node's id: the name its devices are registered under and its lease is held as.
    /// Must not be empty or contain `{`, `}` or `|`. Two live processes must never share
    /// one; a restarted process may reuse its id (it waits for the old lease to lapse, then
    /// removes what the old process left).
    pub node: NodeId,
    /// The prefix of every key and of the channel. Must not contain `{` or `}`.
    ///
    /// Default: `"messenger"`.
    pub key_prefix: String,
    /// How long a node's lease lasts without renewal. When it lapses, every other node treats
    /// the node's devices as gone at once.
    ///
    /// Default: 5 s.
    pub lease: Duration,
    /// How often the lease is renewed. Must be shorter than [`lease`](Self::lease); a third
    /// leaves room for two missed beats.
    ///
    /// Default: `lease / 3` (1.67 s with the default lease).
    pub heartbeat: Duration,
    /// The backstop TTL of a user's device hash: if no node refreshes it for this long (every
    /// node holding one of the user's devices refreshes it every third of this), Redis drops
    /// it. Only matters when the sweeper could not run (see the module docs).
    ///
    /// Default: 10 min.
    pub device_ttl: Duration,
    /// How often a node tries to become the sweeper (one node at a time) that removes the
    /// entries of nodes whose lease lapsed and announces their users offline.
    ///
    /// Default: the lease (5 s).
    pub sweep_interval: Duration,
}

impl RedisPresenceConfig {
    /// The default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "messenger";
    /// The default lease.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
    /// The default device TTL backstop.
    pub const DEFAULT_DEVICE_TTL: Duration = Duration::from_secs(600);

    /// One URL: a standalone server; several: Redis Cluster seed nodes. Every other setting
    /// at its default.
    pub fn new(urls: Vec<String>, node: NodeId) -> Self {
        Self {
            urls,
            node,
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            lease: Self::DEFAULT_LEASE,
            heartbeat: Self::DEFAULT_LEASE / 3,
            device_ttl: Self::DEFAULT_DEVICE_TTL,
            sweep_interval: Self::DEFAULT_LEASE,
        }
    }

    /// Sets [`key_prefix`](Self::key_prefix).
    #[must_use]
    pub fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// Sets [`lease`](Self::lease), and also [`heartbeat`](Self::heartbeat) to a third of it
    /// and [`sweep_interval`](Self::sweep_interval) to it (set those afterwards to change
    /// them).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = lease / 3;
        self.sweep_interval = lease;
        self
    }

    /// Sets [`heartbeat`](Self::heartbeat).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets [`device_ttl`](Self::device_ttl).
    #[must_use]
    pub fn with_device_ttl(mut self, device_ttl: Duration) -> Self {
        self.device_ttl = device_ttl;
        self
    }

    /// Sets [`sweep_interval`](Self::sweep_interval).
    #[must_use]
    pub fn with_sweep_interval(mut self, sweep_interval: Duration) -> Self {
        self.sweep_interval = sweep_interval;
        self
    }

    /// Why this configuration cannot work, if it cannot.
    pub(super) fn problem(&self) -> Option<String> {
        if self.urls.is_empty() {
            return Some("no Redis URL given".to_owned());
        }
        if self.node.is_empty() || self.node.contains(['{', '}', '|']) {
            return Some(format!(
                "node id {:?} must be non-empty without '{{', '}}' or '|'",
                self.node
            ));
        }
        if self.key_prefix.contains(['{', '}']) {
            return Some(format!(
                "key prefix {:?} must not contain '{{' or '}}'",
                self.key_prefix
            ));
        }
        if self.lease < Duration::from_millis(10) {
            return Some(format!("lease {:?} is below 10 ms", self.lease));
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.lease {
            return Some(format!(
                "heartbeat {:?} must be above zero and shorter than the lease {:?}",
                self.heartbeat, self.lease
            ));
        }
        if self.device_ttl < self.lease {
            return Some(format!(
                "device TTL {:?} must not be shorter than the lease {:?}",
                self.device_ttl, self.lease
            ));
        }
        if self.sweep_interval.is_zero() {
            return Some("the sweep interval must be above zero".to_owned());
        }
        None
    }
}

/// URLs may carry passwords: only their host part is shown.
impl fmt::Debug for RedisPresenceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact(url)).collect();
        f.debug_struct("RedisPresenceConfig")
            .field("urls", &urls)
            .field("node", &self.node)
            .field("key_prefix", &self.key_prefix)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat)
            .field("device_ttl", &self.device_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

/// `url` with any `user:password@` replaced by `***@`.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let config = RedisPresenceConfig::new(
            vec!["redis://user:secret@host:6379/".to_owned()],
            NodeId::from("n1"),
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("***@host:6379"), "{shown}");
    }

    #[test]
    fn bad_settings_are_named() {
        let node = NodeId::from("n1");
        let url = vec!["redis://127.0.0.1/".to_owned()];
        assert!(
            RedisPresenceConfig::new(url.clone(), node.clone())
                .problem()
                .is_none()
        );
        for config in [
            RedisPresenceConfig::new(Vec::new(), node.clone()),
            RedisPresenceConfig::new(url.clone(), NodeId::from("a{b}")),
            RedisPresenceConfig::new(url.clone(), NodeId::from("")),
            RedisPresenceConfig::new(url.clone(), node.clone()).with_key_prefix("x{y}"),
            RedisPresenceConfig::new(url.clone(), node.clone())
                .with_heartbeat(Duration::from_secs(6)),
        ] {
            assert!(config.problem().is_some(), "{config:?}");
        }
    }
}
