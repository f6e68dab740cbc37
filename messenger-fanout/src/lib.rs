//! Delivery of events to every online device of a set of users, across socket nodes, the
//! presence registry it routes by, and the in-process domain event bus of the messenger SDK.
//!
//! A [`Fanout`] is a [`tower::Service`] for [`Deliver`] over any [`FanoutBackend`], so it
//! satisfies [`messenger_core::fanout::FanoutService`]. The [`presence`] registry (which
//! devices are connected to which node: memory, Redis) is a
//! [`PresenceService`](messenger_core::presence::PresenceService) built the same way
//! ([`presence::Presence`] over a [`presence::PresenceBackend`]). The [`bus::EventBus`]
//! carries [`DomainEvent`](messenger_core::DomainEvent)s to other parts of the process.
//!
//! ```
//! use std::sync::Arc;
//!
//! use messenger_core::fanout::{Deliver, DeliveryReport, LocalDelivery};
//! use messenger_core::{call, ConversationId, DeviceId, Event, TypingUpdate, UserId};
//! use messenger_fanout::local::LocalFanout;
//! use messenger_fanout::Fanout;
//!
//! /// This node's connections: here, every user has one.
//! #[derive(Debug)]
//! struct OneConnectionEach;
//!
//! impl LocalDelivery for OneConnectionEach {
//!     fn deliver_local(&self, recipients: &[UserId], _event: &Event) -> usize {
//!         recipients.len()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), messenger_core::Error> {
//! let fanout = Fanout::new(LocalFanout::new(OneConnectionEach));
//! let alice = UserId::new("alice")?;
//! let bob = UserId::new("bob")?;
//! let event = Event::Typing(TypingUpdate {
//!     conversation: ConversationId::direct(&alice, &bob)?,
//!     user: alice.clone(),
//!     device: DeviceId::new("phone")?,
//!     active: true,
//! });
//! let report = call(&fanout, Deliver { recipients: Arc::from([bob]), event }).await?;
//! assert_eq!(report, DeliveryReport { local_connections: 1, remote_nodes: 0 });
//! # Ok(())
//! # }
//! ```
//!
//! # Backends
//!
//! | module | feature | what |
//! |---|---|---|
//! | [`local`] | always built | one node: hands events to this process's connections |
//! | `kafka` | `kafka` | many nodes: one Kafka topic per node, plus the Kafka topic of domain events (`kafka::KafkaEventSink`, schema in `docs/events.md`) |
//!
//! Presence registries, in [`presence`]:
//!
//! | module | feature | what |
//! |---|---|---|
//! | [`presence::memory`] | always built | one process |
//! | `presence::redis` | `redis` | many nodes: Redis or Redis Cluster, with node leases |
//!
//! The `conformance` feature exposes the suites every backend runs (`conformance` module,
//! `presence::conformance`).
//!
//! A backend chosen at run time: [`Fanout::new_dyn`] erases the type of any backend, so the
//! local and the Kafka fanout have one type, [`DynFanout`] (see [`DynFanoutBackend`]).
//! [`connect`] builds the one a URL names (`local:`, `kafka://...`) from this node's
//! connections and presence registry, and [`event_stream`] the stream of domain events beside
//! it.
//!

use std::future::Future;
use std::sync::Arc;

use messenger_core::Error;
use messenger_core::fanout::{Deliver, DeliveryReport};

pub mod bus;
#[cfg(feature = "conformance")]
pub mod conformance;
mod connect;
mod dynamic;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod local;
pub mod presence;

pub use connect::{EventPublisher, connect, event_stream};
pub use dynamic::{DynFanout, DynFanoutBackend};

/// What a fanout backend implements: one plain async method.
///
/// Wrap a backend in [`Fanout`] to get a [`tower::Service`].
pub trait FanoutBackend: Send + Sync + 'static {
    /// Hands `request.event` to every online device of `request.recipients`, once per
    /// connection even when a recipient is listed twice.
    ///
    /// # Errors
    /// Backend specific (a broker that cannot be reached).
    ///
    /// # Cancellation safety
    /// Backend specific: a dropped call may have delivered to some recipients and not others.
    /// Devices that missed an event catch up from the store on their next gap or reconnect.
    fn deliver(
        &self,
        request: Deliver,
    ) -> impl Future<Output = Result<DeliveryReport, Error>> + Send;

    /// Leaves the cluster when the node drains, after its connections are gone: stops
    /// consuming and lets other nodes stop routing here (the Kafka fanout deletes this node's
    /// topic). Failures are logged, not returned: the node is going away. Default: nothing to
    /// do.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The fanout as a [`tower::Service`] for [`Deliver`], over any [`FanoutBackend`].
///
/// Cheap to clone: clones share the backend.
#[derive(Debug)]
pub struct Fanout<B> {
    backend: Arc<B>,
}

impl<B: FanoutBackend> Fanout<B> {
    /// Wraps `backend`.
    pub fn new(backend: B) -> Self {
        Self::from_arc(Arc::new(backend))
    }

    /// Wraps a backend that is already shared.
    pub fn from_arc(backend: Arc<B>) -> Self {
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// [`FanoutBackend::shutdown`]: leaves the cluster when the node drains.
    pub async fn shutdown(&self) {
        self.backend.shutdown().await;
    }
}

impl<B> Clone for Fanout<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
        }
    }
}

messenger_core::forward_service!(Fanout<B: FanoutBackend>, Deliver => deliver);

/// The guides under `docs/`, as rustdoc pages: their Rust code blocks are compiled and run by
/// `cargo test --doc`, so they cannot drift from the API.
// Markdown written for people, not for clippy's doc style.
#[allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
pub mod docs {
    #[doc = include_str!("../../docs/presence.md")]
    pub mod presence {}
}
