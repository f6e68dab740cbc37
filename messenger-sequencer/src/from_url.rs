//! A sequencer chosen by URL at run time (as object_store's `parse_url`): [`connect`].

use messenger_core::sequencer::SeqFloor;
use messenger_core::{Error, ErrorKind};

use crate::memory::MemorySequencer;
use crate::{DynSequencer, Sequencer};

/// The sequencer `urls` names, over `floor`, as a [`DynSequencer`].
///
/// | `urls` | backend | feature |
/// |---|---|---|
/// | `memory:` | [`MemorySequencer`]: counters in this process | always built |
/// | `redis://HOST:PORT/` (one URL) | `redis::RedisSequencer` on a standalone server, over a `ConnectionManager` (reconnects by itself) | `redis` |
/// | `redis://HOST:PORT,redis://HOST:PORT,...` (several, comma-separated) | `redis::RedisSequencer` on Redis Cluster, these URLs as seed nodes | `redis` |
///
/// Both Redis forms take `rediss://` too (TLS, when the `redis` client is built with it), and
/// use the default `RedisSequencerConfig`. `floor` is where every backend learns a
/// conversation's highest used seq (in a server, the store: `Store` implements [`SeqFloor`]).
///
/// ```
/// use messenger_core::sequencer::NextSeq;
/// use messenger_core::{call, ConversationId, Seq};
/// use messenger_sequencer::memory::NoFloor;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger_core::Error> {
/// let sequencer = messenger_sequencer::connect("memory:", NoFloor).await?;
/// let seq = call(&sequencer, NextSeq { conversation: ConversationId::new("g:lunch")? }).await?;
/// assert_eq!(seq, Seq(1));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// `InvalidRequest` for an empty or unknown URL, a malformed Redis URL, or `redis://` in a
/// build without the `redis` feature (the message names the feature); `Unavailable` when
/// Redis cannot be reached.
pub async fn connect<F: SeqFloor>(urls: &str, floor: F) -> Result<DynSequencer, Error> {
    let urls: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    match urls.as_slice() {
        ["memory:"] => Ok(Sequencer::new_dyn(MemorySequencer::new(floor))),
        [] => Err(invalid("no sequencer URL given (memory: or redis://...)")),
        urls if urls.iter().all(|url| is_redis(url)) => redis(urls, floor).await,
        _ => Err(invalid(
            "a sequencer URL is `memory:`, or one or several comma-separated redis:// URLs",
        )),
    }
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

#[cfg(feature = "redis")]
async fn redis<F: SeqFloor>(urls: &[&str], floor: F) -> Result<DynSequencer, Error> {
    use crate::redis::{BACKEND, RedisSequencer};

    let unavailable = |what: String, err: ::redis::RedisError| {
        Error::new(ErrorKind::Unavailable, what)
            .with_backend(BACKEND)
            .with_source(err)
    };
    // TCP_NODELAY: the redis crate leaves Nagle's algorithm on, and an INCR written while the
    // previous reply's ACK is delayed would wait up to ~40 ms (Nagle meeting delayed ACKs).
    let tcp = ::redis::io::tcp::TcpSettings::default().set_nodelay(true);
    if let [url] = urls {
        let client = ::redis::IntoConnectionInfo::into_connection_info(*url)
            .map(|info| info.set_tcp_settings(tcp))
            .and_then(::redis::Client::open)
            .map_err(|err| {
                invalid("a malformed Redis URL")
                    .with_backend(BACKEND)
                    .with_source(err)
            })?;
        let connection = ::redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|err| unavailable("cannot connect to Redis".to_owned(), err))?;
        return Ok(Sequencer::new_dyn(RedisSequencer::new(connection, floor)));
    }
    let connection = ::redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .tcp_settings(tcp)
        .build()
        .map_err(|err| {
            invalid("malformed Redis Cluster URLs")
                .with_backend(BACKEND)
                .with_source(err)
        })?
        .get_async_connection()
        .await
        .map_err(|err| unavailable("cannot connect to Redis Cluster".to_owned(), err))?;
    Ok(Sequencer::new_dyn(RedisSequencer::new(connection, floor)))
}

#[cfg(not(feature = "redis"))]
async fn redis<F: SeqFloor>(_urls: &[&str], _floor: F) -> Result<DynSequencer, Error> {
    Err(invalid(
        "redis:// sequencer URLs need the `redis` feature of messenger-sequencer, which this build lacks",
    ))
}

fn invalid(message: &str) -> Error {
    Error::new(ErrorKind::InvalidRequest, message)
}

#[cfg(test)]
mod tests {
    use messenger_core::sequencer::{FenceSeq, NextSeq};
    use messenger_core::{ConversationId, Seq, call};

    use super::*;
    use crate::memory::NoFloor;

    #[tokio::test]
    async fn memory_url_gives_a_working_sequencer() {
        let sequencer = connect(" memory: ", NoFloor).await.unwrap();
        let chat = ConversationId::new("g:lunch").unwrap();
        let next = || NextSeq {
            conversation: chat.clone(),
        };
        assert_eq!(call(&sequencer, next()).await.unwrap(), Seq(1));
        call(
            &sequencer,
            FenceSeq {
                conversation: chat.clone(),
                at_least: Seq(41),
            },
        )
        .await
        .unwrap();
        assert_eq!(call(&sequencer, next()).await.unwrap(), Seq(42));
    }

    #[tokio::test]
    async fn bad_urls_are_invalid_requests() {
        for urls in [
            "",
            " , ",
            "memory",
            "memory:,memory:",
            "memory:,redis://127.0.0.1:1/",
            "http://127.0.0.1:6379/",
        ] {
            let err = connect(urls, NoFloor).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{urls:?}: {err}");
        }
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn redis_without_its_feature_names_the_feature() {
        let err = connect("redis://127.0.0.1:6379/", NoFloor)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(err.to_string().contains("`redis` feature"), "{err}");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_malformed_redis_url_is_an_invalid_request() {
        let err = connect("redis://127.0.0.1:notaport/", NoFloor)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    }
}
