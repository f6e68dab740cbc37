//! [`ClientConfig`] and the reconnect backoff.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use messenger_core::{ConversationId, Seq};
use rand::Rng;

/// How a [`Client`](super::Client) connects, reconnects and waits.
///
/// Build it with [`ClientConfig::new`] and adjust it with the builder methods:
///
/// ```
/// use std::time::Duration;
/// use messenger_socket::client::ClientConfig;
///
/// let config = ClientConfig::new("ws://127.0.0.1:8080/ws", "alice:phone")
///     .request_timeout(Duration::from_secs(5))
///     .auto_delivered(false);
/// assert_eq!(config.request_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server's WebSocket endpoint, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// Other nodes of the same cluster. The first connection goes to [`url`](Self::url);
    /// after a failed attempt, the next attempt goes to the next endpoint, round robin, so a
    /// device whose node died moves to another one and resyncs there. Default: empty.
    pub fallback_urls: Vec<String>,
    /// The bearer token sent in `hello`. Redacted in `Debug`.
    pub token: String,
    /// The first reconnect delay; it doubles on every failed attempt. Default: 250 ms.
    pub reconnect_min: Duration,
    /// The longest reconnect delay. Default: 30 s. Every delay is jittered: between half of
    /// it and all of it.
    pub reconnect_max: Duration,
    /// How long connecting, the WebSocket handshake and `hello` → `welcome` may take.
    /// Default: 10 s.
    pub connect_timeout: Duration,
    /// How long a request (`open_direct`, `history`...) waits for its answer, including the
    /// time spent waiting for a connection. Default: 10 s.
    pub request_timeout: Duration,
    /// How often a WebSocket ping is sent; a connection silent for twice this long is
    /// considered lost. Default: 20 s.
    pub keepalive: Duration,
    /// How many events are buffered for [`Events`](super::Events) before the client stops
    /// reading the socket. Default: 1024.
    pub event_capacity: usize,
    /// Whether the client reports `delivered` for what it received (coalesced per
    /// conversation). Default: `true`.
    pub auto_delivered: bool,
    /// Where to resume: per conversation, the last contiguous seq the device already holds
    /// (for example [`Client::cursors`](super::Client::cursors) saved by a previous run).
    /// Default: empty (everything is synced from the beginning).
    pub cursors: BTreeMap<ConversationId, Seq>,
    /// At most this many of the latest entries per conversation on every (re)connect: a
    /// conversation further behind skips ahead ([`ClientEvent::Limited`](super::ClientEvent::Limited))
    /// and its older entries are left to [`Client::history`](super::Client::history).
    /// Default: `None` (everything after each cursor).
    pub sync_limit: Option<u32>,
}

impl ClientConfig {
    /// A configuration with the documented defaults.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            fallback_urls: Vec::new(),
            token: token.into(),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(20),
            event_capacity: 1024,
            auto_delivered: true,
            cursors: BTreeMap::new(),
            sync_limit: None,
        }
    }

    /// Sets [`fallback_urls`](Self::fallback_urls): other nodes to try when a connection
    /// attempt fails.
    #[must_use]
    pub fn fallback_urls<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.fallback_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the reconnect backoff bounds.
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Sets [`ClientConfig::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::keepalive`].
    #[must_use]
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = interval;
        self
    }

    /// Sets [`ClientConfig::event_capacity`] (at least 1).
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Sets [`ClientConfig::auto_delivered`].
    #[must_use]
    pub fn auto_delivered(mut self, enabled: bool) -> Self {
        self.auto_delivered = enabled;
        self
    }

    /// Sets [`ClientConfig::sync_limit`].
    #[must_use]
    pub fn sync_limit(mut self, limit: u32) -> Self {
        self.sync_limit = Some(limit);
        self
    }

    /// Sets [`ClientConfig::cursors`].
    #[must_use]
    pub fn cursors(mut self, cursors: BTreeMap<ConversationId, Seq>) -> Self {
        self.cursors = cursors;
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("fallback_urls", &self.fallback_urls)
            .field("token", &"<redacted>")
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive", &self.keepalive)
            .field("event_capacity", &self.event_capacity)
            .field("auto_delivered", &self.auto_delivered)
            .field("cursors", &self.cursors)
            .finish()
    }
}

/// Exponential backoff with jitter: `min · 2ⁿ` capped at `max`, then a random point between
/// half of that and all of it.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + jitter(ceiling - half)
    }

    /// Back to the first delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random duration between zero and `up_to`.
pub(crate) fn jitter(up_to: Duration) -> Duration {
    let millis = u64::try_from(up_to.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(min, max);
        for attempt in 0..10u32 {
            let ceiling = (min * 2u32.pow(attempt)).min(max);
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempt}: {delay:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn debug_redacts_the_token() {
        let config = ClientConfig::new("ws://x/ws", "secret-token");
        assert!(!format!("{config:?}").contains("secret-token"));
        assert!(config.auto_delivered);
    }
}
