//! A fanout, and the stream of domain events beside it, from a URL: `local:` or
//! `kafka://HOST:PORT[,HOST:PORT...]`.

use std::sync::Arc;

use messenger_core::fanout::LocalDelivery;
use messenger_core::presence::NodeId;
use messenger_core::{DomainEvent, Error, ErrorKind};

use crate::local::LocalFanout;
use crate::presence::DynPresence;
use crate::{DynFanout, Fanout};

/// Why a URL names no fanout this build can run.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("unknown fanout URL scheme {0:?}: expected `local:` or `kafka://HOST:PORT[,...]`")]
    Unknown(String),
    #[error("`kafka://` needs at least one broker: `kafka://HOST:PORT[,HOST:PORT...]`")]
    NoBrokers,
    #[cfg(not(feature = "kafka"))]
    #[error("this build has no Kafka fanout: enable the `kafka` feature of messenger-fanout")]
    KafkaDisabled,
}

impl From<ConnectError> for Error {
    fn from(err: ConnectError) -> Self {
        Error::new(ErrorKind::InvalidRequest, err.to_string()).with_source(err)
    }
}

/// What a fanout URL names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Local,
    Kafka { brokers: &'a str },
}

fn target(url: &str) -> Result<Target<'_>, ConnectError> {
    let url = url.trim();
    if url.eq_ignore_ascii_case("local") {
        return Ok(Target::Local);
    }
    let (scheme, rest) = url.split_once(':').unwrap_or((url, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "local" => Ok(Target::Local),
        "kafka" => {
            let brokers = rest.trim_start_matches("//").trim_end_matches('/');
            if brokers.split(',').all(|broker| broker.trim().is_empty()) {
                return Err(ConnectError::NoBrokers);
            }
            Ok(Target::Kafka { brokers })
        }
        other => Err(ConnectError::Unknown(other.to_owned())),
    }
}

/// The fanout `url` names, for the node `node` whose connections `delivery` reaches:
///
/// - `local:` (or `local`): a [`LocalFanout`] — one node; `node` and `presence` unused.
/// - `kafka://HOST:PORT[,HOST:PORT...]`: `kafka::KafkaFanout` on those brokers (a topic per
///   node, routed by `presence`), every setting at its default. Needs the `kafka` feature.
///
/// [`Fanout::shutdown`] leaves the cluster when the node drains (the Kafka fanout deletes its
/// topic). Other settings need the backend built by hand and [`Fanout::new_dyn`].
///
/// ```
/// use messenger_core::UserId;
/// use messenger_core::Event;
/// use messenger_core::fanout::LocalDelivery;
/// use messenger_core::presence::NodeId;
///
/// #[derive(Debug)]
/// struct NoConnections;
///
/// impl LocalDelivery for NoConnections {
///     fn deliver_local(&self, _recipients: &[UserId], _event: &Event) -> usize {
///         0
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger_core::Error> {
/// let presence = messenger_fanout::presence::connect(
///     ["memory:"],
///     NodeId::from("node-1"),
///     std::time::Duration::from_secs(5),
/// )
/// .await?;
/// let fanout =
///     messenger_fanout::connect("local:", NodeId::from("node-1"), NoConnections, presence).await?;
/// // ... a `FanoutService`; when the node drains:
/// fanout.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// - [`ErrorKind::InvalidRequest`] for an unknown scheme, `kafka://` without brokers, or a
///   `kafka://` URL in a build without the `kafka` feature.
/// - As `KafkaFanout::start` when the brokers cannot be reached or refuse the node's topic.
pub async fn connect<D>(
    url: &str,
    node: NodeId,
    delivery: D,
    presence: DynPresence,
) -> Result<DynFanout, Error>
where
    D: LocalDelivery + 'static,
{
    match target(url)? {
        Target::Local => {
            let _ = (node, presence);
            Ok(Fanout::new_dyn(LocalFanout::new(delivery)))
        }
        Target::Kafka { brokers } => kafka_fanout(brokers, node, delivery, presence).await,
    }
}

#[cfg(feature = "kafka")]
async fn kafka_fanout<D: LocalDelivery + 'static>(
    brokers: &str,
    node: NodeId,
    delivery: D,
    presence: DynPresence,
) -> Result<DynFanout, Error> {
    use crate::kafka::{KafkaFanout, KafkaFanoutConfig};

    let fanout =
        KafkaFanout::start(KafkaFanoutConfig::new(brokers, node), delivery, presence).await?;
    Ok(Fanout::new_dyn(fanout))
}

#[cfg(not(feature = "kafka"))]
async fn kafka_fanout<D: LocalDelivery + 'static>(
    _brokers: &str,
    _node: NodeId,
    _delivery: D,
    _presence: DynPresence,
) -> Result<DynFanout, Error> {
    Err(ConnectError::KafkaDisabled.into())
}

/// Publishes a domain event to a stream other processes read: [`event_stream`].
pub type EventPublisher = Arc<dyn Fn(DomainEvent) + Send + Sync>;

/// Where the domain events of a node go beside its own process, for the fanout `url` names
/// (as [`connect`] takes it):
///
/// - `local:`: nowhere (`None`): events stay in the process.
/// - `kafka://HOST:PORT[,...]`: a `kafka::KafkaEventSink` publishing to `topic` (created if
///   missing; schema in `docs/events.md`). Needs the `kafka` feature.
///
/// # Errors
/// As [`connect`] for the URL; as `KafkaEventSink::new` when the brokers cannot be reached.
pub async fn event_stream(url: &str, topic: &str) -> Result<Option<EventPublisher>, Error> {
    match target(url)? {
        Target::Local => {
            let _ = topic;
            Ok(None)
        }
        Target::Kafka { brokers } => kafka_events(brokers, topic).await.map(Some),
    }
}

#[cfg(feature = "kafka")]
async fn kafka_events(brokers: &str, topic: &str) -> Result<EventPublisher, Error> {
    let sink = crate::kafka::KafkaEventSink::new(brokers, topic).await?;
    Ok(Arc::new(move |event| sink.publish(event)))
}

#[cfg(not(feature = "kafka"))]
async fn kafka_events(_brokers: &str, _topic: &str) -> Result<EventPublisher, Error> {
    Err(ConnectError::KafkaDisabled.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(target("local:").unwrap(), Target::Local);
        assert_eq!(target(" LOCAL ").unwrap(), Target::Local);
        assert_eq!(
            target("kafka://a:9092,b:9092").unwrap(),
            Target::Kafka {
                brokers: "a:9092,b:9092"
            }
        );
        assert_eq!(
            target("kafka:a:9092/").unwrap(),
            Target::Kafka { brokers: "a:9092" }
        );
        assert!(matches!(target("kafka://"), Err(ConnectError::NoBrokers)));
        assert!(matches!(target("kafka://,"), Err(ConnectError::NoBrokers)));
        assert!(matches!(target("nats://x"), Err(ConnectError::Unknown(s)) if s == "nats"));
    }
}
