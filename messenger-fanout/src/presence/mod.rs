//! The presence registry: which devices of which users are connected, to which node, which
//! nodes are alive, and a feed of users coming online and going offline. It is the routing
//! table the fanout reads.
//!
//! A [`Presence`] is a [`tower::Service`] for every request of [`messenger_core::presence`]
//! over any [`PresenceBackend`], so it satisfies
//! [`PresenceService`](messenger_core::presence::PresenceService). The memory backend needs no
//! server:
//!
//! ```
//! use messenger_core::presence::{LookupPresence, NodeId, RegisterDevice};
//! use messenger_core::{call, DeviceId, Timestamp, UserId};
//! use messenger_fanout::presence::{Presence, memory::MemoryPresence};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), messenger_core::Error> {
//! let presence = Presence::new(MemoryPresence::new());
//! let alice = UserId::new("alice")?;
//! let came_online = call(&presence, RegisterDevice {
//!     user: alice.clone(),
//!     device: DeviceId::new("phone")?,
//!     node: NodeId::from("node-1"),
//!     connection: 1,
//!     at: Timestamp::now(),
//! })
//! .await?;
//! assert!(came_online);
//! let online = call(&presence, LookupPresence { users: vec![alice] }).await?;
//! assert_eq!(&*online[0].node, "node-1");
//! # Ok(())
//! # }
//! ```
//!
//! # Backends
//!
//! | module | feature | what |
//! |---|---|---|
//! | [`memory`] | always built | one process: every node id it is told about, in memory |
//! | `redis` | `redis` | many nodes: Redis or Redis Cluster, with node leases (`redis::RedisPresence`) |
//!
//! # Chosen at run time
//!
//! [`DynPresence`] is a [`Presence`] over any backend behind an `Arc<dyn DynPresenceBackend>`:
//! one type whatever the configuration says, so the code using it is compiled once and the
//! integrator needs no enum of their own. [`connect`] builds one from URLs (`memory:`, or one
//! or several `redis://` URLs); [`Presence::new_dyn`] and [`Presence::into_dyn`] from a
//! backend built by hand.
//!
//! With the `conformance` feature, `conformance` holds the behaviour tests every backend
//! passes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use messenger_core::Error;
use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, OnlineDevice, PresenceFeed, RegisterDevice,
    SubscribePresence, UnregisterDevice,
};

#[cfg(feature = "conformance")]
pub mod conformance;
mod connect;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use self::connect::connect;

/// How many presence changes a slow subscriber may fall behind before it skips ahead.
pub const FEED_CAPACITY: usize = 4096;

/// What a presence registry backend implements: one plain async method per request of
/// [`messenger_core::presence`], with the semantics documented on each request type.
///
/// Backend authors implement this trait and never write `poll_ready`; [`Presence`] turns it
/// into tower services.
pub trait PresenceBackend: Send + Sync + 'static {
    /// Records that a device is connected to a node ([`RegisterDevice`]); answers whether the
    /// user just came online, and publishes that change to every subscriber when they did.
    ///
    /// # Errors
    /// Backend specific: a shared registry answers `InvalidRequest` for a device of another
    /// node than its own, `Unavailable` or `Timeout` when its server cannot be reached.
    ///
    /// # Cancellation safety
    /// Backend specific: a dropped call may have registered the device (and announced the
    /// user online).
    fn register(&self, request: RegisterDevice)
    -> impl Future<Output = Result<bool, Error>> + Send;

    /// Records that a connection closed ([`UnregisterDevice`]); answers whether the user went
    /// offline, and publishes that change when they did. Unregistering a connection that is
    /// not registered (an older connection of a device that reconnected) changes nothing.
    ///
    /// # Errors
    /// As [`register`](Self::register).
    ///
    /// # Cancellation safety
    /// Backend specific: a dropped call may have removed the device.
    fn unregister(
        &self,
        request: UnregisterDevice,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The online devices of some users, each with its node ([`LookupPresence`]). Devices of
    /// nodes known to be dead are left out.
    ///
    /// # Errors
    /// Backend specific (`Unavailable`, `Timeout`).
    ///
    /// # Cancellation safety
    /// Cancellation safe: a read.
    fn lookup(
        &self,
        request: LookupPresence,
    ) -> impl Future<Output = Result<Vec<OnlineDevice>, Error>> + Send;

    /// A receiver of every presence change of the cluster from now on ([`SubscribePresence`]).
    ///
    /// # Errors
    /// Backend specific: a released registry answers `Unavailable`.
    ///
    /// # Cancellation safety
    /// Cancellation safe.
    fn subscribe(
        &self,
        request: SubscribePresence,
    ) -> impl Future<Output = Result<PresenceFeed, Error>> + Send;

    /// The nodes that are alive ([`ListNodes`]).
    ///
    /// # Errors
    /// Backend specific (`Unavailable`, `Timeout`).
    ///
    /// # Cancellation safety
    /// Cancellation safe: a read.
    fn list_nodes(
        &self,
        request: ListNodes,
    ) -> impl Future<Output = Result<Vec<NodeId>, Error>> + Send;

    /// Graceful shutdown of this node's part of the registry: its devices are removed (their
    /// users announced offline when no other device is left) and, for a shared registry, its
    /// lease is dropped. Not a request: the node calls it once, after its connections closed.
    ///
    /// The default does nothing (a registry in this process goes away with it).
    ///
    /// # Errors
    /// Backend specific (`Unavailable`, `Timeout`): what is left is cleaned up as after a
    /// crash.
    ///
    /// # Cancellation safety
    /// Backend specific: dropped midway, part of the devices may be left; they are cleaned
    /// up as after a crash.
    fn release(&self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The presence registry as a [`tower::Service`] for every request of
/// [`messenger_core::presence`], over any [`PresenceBackend`].
///
/// Cheap to clone: clones share the backend.
#[derive(Debug)]
pub struct Presence<B> {
    backend: Arc<B>,
}

impl<B: PresenceBackend> Presence<B> {
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

    /// Graceful shutdown of this node's part of the registry: see
    /// [`PresenceBackend::release`].
    ///
    /// # Errors
    /// As the backend's `release`.
    ///
    /// # Cancellation safety
    /// As the backend's `release`.
    pub async fn release(&self) -> Result<(), Error> {
        self.backend.release().await
    }

    /// The same registry as a [`DynPresence`] (sharing the backend with `self`).
    pub fn into_dyn(self) -> DynPresence {
        let backend: Arc<dyn DynPresenceBackend> = self.backend;
        Presence::new(backend)
    }
}

impl DynPresence {
    /// Wraps `backend` behind an `Arc<dyn DynPresenceBackend>`.
    pub fn new_dyn(backend: impl PresenceBackend) -> Self {
        Presence::new(backend).into_dyn()
    }
}

impl<B> Clone for Presence<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
        }
    }
}

messenger_core::forward_service!(Presence<B: PresenceBackend>, RegisterDevice => register);
messenger_core::forward_service!(Presence<B: PresenceBackend>, UnregisterDevice => unregister);
messenger_core::forward_service!(Presence<B: PresenceBackend>, LookupPresence => lookup);
messenger_core::forward_service!(Presence<B: PresenceBackend>, SubscribePresence => subscribe);
messenger_core::forward_service!(Presence<B: PresenceBackend>, ListNodes => list_nodes);

/// A boxed future answering `T`, as the methods of [`DynPresenceBackend`] return it.
type BoxedResult<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The object-safe form of [`PresenceBackend`]: the same methods with boxed futures.
///
/// Every [`PresenceBackend`] implements it (a blanket impl), and `Arc<dyn DynPresenceBackend>`
/// implements [`PresenceBackend`] again, so [`DynPresence`] is an ordinary [`Presence`].
/// Implement [`PresenceBackend`], not this trait.
pub trait DynPresenceBackend: Send + Sync + 'static {
    /// [`PresenceBackend::register`], boxed.
    fn register_dyn(&self, request: RegisterDevice) -> BoxedResult<'_, bool>;
    /// [`PresenceBackend::unregister`], boxed.
    fn unregister_dyn(&self, request: UnregisterDevice) -> BoxedResult<'_, bool>;
    /// [`PresenceBackend::lookup`], boxed.
    fn lookup_dyn(&self, request: LookupPresence) -> BoxedResult<'_, Vec<OnlineDevice>>;
    /// [`PresenceBackend::subscribe`], boxed.
    fn subscribe_dyn(&self, request: SubscribePresence) -> BoxedResult<'_, PresenceFeed>;
    /// [`PresenceBackend::list_nodes`], boxed.
    fn list_nodes_dyn(&self, request: ListNodes) -> BoxedResult<'_, Vec<NodeId>>;
    /// [`PresenceBackend::release`], boxed.
    fn release_dyn(&self) -> BoxedResult<'_, ()>;
}

impl<B: PresenceBackend> DynPresenceBackend for B {
    fn register_dyn(&self, request: RegisterDevice) -> BoxedResult<'_, bool> {
        Box::pin(self.register(request))
    }

    fn unregister_dyn(&self, request: UnregisterDevice) -> BoxedResult<'_, bool> {
        Box::pin(self.unregister(request))
    }

    fn lookup_dyn(&self, request: LookupPresence) -> BoxedResult<'_, Vec<OnlineDevice>> {
        Box::pin(self.lookup(request))
    }

    fn subscribe_dyn(&self, request: SubscribePresence) -> BoxedResult<'_, PresenceFeed> {
        Box::pin(self.subscribe(request))
    }

    fn list_nodes_dyn(&self, request: ListNodes) -> BoxedResult<'_, Vec<NodeId>> {
        Box::pin(self.list_nodes(request))
    }

    fn release_dyn(&self) -> BoxedResult<'_, ()> {
        Box::pin(self.release())
    }
}

// Each method calls the trait object's own method (`&**self`): on `self` it would resolve to
// the blanket impl of `Arc<dyn DynPresenceBackend>` and recurse.
impl PresenceBackend for Arc<dyn DynPresenceBackend> {
    fn register(
        &self,
        request: RegisterDevice,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        DynPresenceBackend::register_dyn(&**self, request)
    }

    fn unregister(
        &self,
        request: UnregisterDevice,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        DynPresenceBackend::unregister_dyn(&**self, request)
    }

    fn lookup(
        &self,
        request: LookupPresence,
    ) -> impl Future<Output = Result<Vec<OnlineDevice>, Error>> + Send {
        DynPresenceBackend::lookup_dyn(&**self, request)
    }

    fn subscribe(
        &self,
        request: SubscribePresence,
    ) -> impl Future<Output = Result<PresenceFeed, Error>> + Send {
        DynPresenceBackend::subscribe_dyn(&**self, request)
    }

    fn list_nodes(
        &self,
        request: ListNodes,
    ) -> impl Future<Output = Result<Vec<NodeId>, Error>> + Send {
        DynPresenceBackend::list_nodes_dyn(&**self, request)
    }

    fn release(&self) -> impl Future<Output = Result<(), Error>> + Send {
        DynPresenceBackend::release_dyn(&**self)
    }
}

impl fmt::Debug for dyn DynPresenceBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn DynPresenceBackend")
    }
}

/// A presence registry whose backend is chosen at run time: one type for all of them.
///
/// Built by [`connect`], [`Presence::new_dyn`] or [`Presence::into_dyn`].
pub type DynPresence = Presence<Arc<dyn DynPresenceBackend>>;
