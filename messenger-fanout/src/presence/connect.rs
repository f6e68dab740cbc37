//! A presence registry from URLs: `memory:`, or one or several `redis://` URLs.

use std::time::Duration;

use messenger_core::presence::NodeId;
use messenger_core::{Error, ErrorKind};

use super::memory::MemoryPresence;
use super::{DynPresence, Presence};

/// Why URLs name no registry this build can run.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("no presence registry URL given (`memory:` or `redis://...`)")]
    Empty,
    #[error("unknown presence registry URL scheme {0:?}: expected `memory:` or `redis://...`")]
    Unknown(String),
    #[error("`memory:` is a registry of its own: it takes no other URL")]
    MemoryWithOthers,
    #[cfg(not(feature = "redis"))]
    #[error(
        "this build has no Redis presence registry: enable the `redis` feature of messenger-fanout"
    )]
    RedisDisabled,
}

impl From<ConnectError> for Error {
    fn from(err: ConnectError) -> Self {
        Error::new(ErrorKind::InvalidRequest, err.to_string()).with_source(err)
    }
}

/// What `url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Memory,
    Redis,
}

fn scheme(url: &str) -> Option<Scheme> {
    if url.eq_ignore_ascii_case("memory") {
        return Some(Scheme::Memory);
    }
    let (scheme, _) = url.split_once(':')?;
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => Some(Scheme::Memory),
        "redis" | "rediss" => Some(Scheme::Redis),
        _ => None,
    }
}

/// The presence registry `urls` name, as this node (`node`) uses it:
///
/// - `memory:` (or `memory`, alone): a [`MemoryPresence`] for one process (`node` and `lease` unused);
/// - one `redis://` (or `rediss://`) URL: `redis::RedisPresence` on a standalone server;
///   several: on the Redis Cluster they are the seed nodes of. `lease` is the node's lease
///   (`RedisPresenceConfig::with_lease`); every other setting at its default. Needs the
///   `redis` feature.
///
/// Other settings (a key prefix, a device TTL) need the backend built by hand and
/// [`Presence::new_dyn`].
///
/// ```
/// use std::time::Duration;
///
/// use messenger_core::presence::NodeId;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger_core::Error> {
/// let presence =
///     messenger_fanout::presence::connect(["memory:"], NodeId::from("node-1"), Duration::from_secs(5))
///         .await?;
/// // ... a `PresenceService`; on shutdown:
/// presence.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// - [`ErrorKind::InvalidRequest`] for no URL, an unknown scheme, `memory:` with other URLs,
///   a `redis://` URL in a build without the `redis` feature, or a Redis configuration that
///   cannot work.
/// - [`ErrorKind::Unavailable`] / [`ErrorKind::Timeout`] when Redis cannot be reached,
///   [`ErrorKind::Conflict`] when another live process holds this node id's lease (see
///   `RedisPresence::connect`).
///
/// # Cancellation safety
/// As `RedisPresence::connect`: dropped midway, this node's lease may be left taken; it
/// lapses after one lease.
pub async fn connect<I>(urls: I, node: NodeId, lease: Duration) -> Result<DynPresence, Error>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let urls: Vec<String> = urls
        .into_iter()
        .map(|url| url.as_ref().trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    let mut schemes = Vec::with_capacity(urls.len());
    for url in &urls {
        match scheme(url) {
            Some(scheme) => schemes.push(scheme),
            // Only the scheme: the rest may hold a password.
            None => {
                let named = url.split_once(':').map_or("", |(scheme, _)| scheme);
                return Err(ConnectError::Unknown(named.to_owned()).into());
            }
        }
    }
    match schemes.as_slice() {
        [] => Err(ConnectError::Empty.into()),
        [Scheme::Memory] => Ok(Presence::new_dyn(MemoryPresence::new())),
        schemes if schemes.contains(&Scheme::Memory) => Err(ConnectError::MemoryWithOthers.into()),
        _ => connect_redis(urls, node, lease).await,
    }
}

#[cfg(feature = "redis")]
async fn connect_redis(
    urls: Vec<String>,
    node: NodeId,
    lease: Duration,
) -> Result<DynPresence, Error> {
    use super::redis::{RedisPresence, RedisPresenceConfig};

    let config = RedisPresenceConfig::new(urls, node).with_lease(lease);
    Ok(Presence::new_dyn(RedisPresence::connect(config).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(
    _urls: Vec<String>,
    _node: NodeId,
    _lease: Duration,
) -> Result<DynPresence, Error> {
    Err(ConnectError::RedisDisabled.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_recognised() {
        assert_eq!(scheme("memory:"), Some(Scheme::Memory));
        assert_eq!(scheme("redis://127.0.0.1:6379/"), Some(Scheme::Redis));
        assert_eq!(scheme("REDISS://host/"), Some(Scheme::Redis));
        assert_eq!(scheme("mysql://host/"), None);
        assert_eq!(scheme("memory"), Some(Scheme::Memory));
        assert_eq!(scheme("memcached"), None);
    }
}
