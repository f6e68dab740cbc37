//! The chat engine: every chat operation as a [`tower::Service`] with a typed request, callable
//! from a WebSocket connection, an HTTP handler, a bot, an admin job or a test, with the same
//! guarantees (checked, sequenced, stored durably before the answer, idempotent, fanned out to
//! every online device of every member).
//!
//! [`Engine`] composes the backends ([`Services`]: store, sequencer, fanout, authenticator,
//! presence registry) and the node's [`Hub`] of local connections. It knows nothing of
//! WebSockets: [`crate::serve_connection`] is one client of it, [`crate::media::router`]
//! another, and an integrator's code is a third:
//!
//! ```
//! use std::sync::Arc;
//!
//! use messenger_core::auth::Identity;
//! use messenger_core::protocol::NewBody;
//! use messenger_core::{ClientMsgId, DeviceId, UserId, call};
//! use messenger_fanout::{Fanout, local::LocalFanout};
//! use messenger_sequencer::{Sequencer, memory::MemorySequencer};
//! use messenger_socket::auth::DevAuthenticator;
//! use messenger_socket::engine::{Engine, EngineConfig, Node, OpenDirect, SendMessage, Services};
//! use messenger_fanout::presence::{Presence, memory::MemoryPresence};
//! use messenger_store::{EmbeddedStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db"))?);
//! let node = Node::single();
//! let services = Services {
//!     sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
//!     fanout: Fanout::new(LocalFanout::new(node.hub())),
//!     store,
//!     auth: DevAuthenticator,
//!     presence: Presence::new(MemoryPresence::new()),
//! };
//! let engine = Engine::new(services, node, EngineConfig::default());
//!
//! // A bot posts as `alice` from its own device: no WebSocket involved.
//! let alice = Identity::new(UserId::new("alice")?, DeviceId::new("bot")?);
//! let chat = call(&engine, OpenDirect { actor: alice.clone(), other: UserId::new("bob")? }).await?;
//! let sent = call(&engine, SendMessage {
//!     resend: false,
//!     actor: alice,
//!     conversation: chat.conversation.id.clone(),
//!     client_msg_id: ClientMsgId::new("bot-1")?,
//!     body: NewBody::text("hello from a bot"),
//! })
//! .await?;
//! assert_eq!(sent.message.seq.0, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Every request type implements [`messenger_core::service::Operation`], so
//! [`messenger_core::call`] runs it. The engine's error is [`messenger_core::Error`]: a refusal
//! ([`Error::refused`]) carries the protocol [`ErrorCode`] and our own words, shown to clients as
//! they are; a backend's error keeps its text for logs and [`std::error::Error::source`], and
//! clients see only its code and generic words ([`Error::client_message`]). See `docs/architecture.md` for the one send pipeline and which tower layers
//! fit these services.

mod amend;
pub(crate) mod holes;
pub mod layer;
pub(crate) mod media;
mod membership;
mod node;
mod pipeline;
mod requests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use messenger_core::auth::AuthService;
use messenger_core::fanout::FanoutService;
use messenger_core::presence::{NodeId, PresenceFeed, PresenceService, SubscribePresence};
use messenger_core::protocol::{ErrorCode, Limits};
use messenger_core::sequencer::SequencerService;
use messenger_core::store::{ConversationInfo, GetConversation, StoreService};
use messenger_core::{
    ClientMsgId, ConversationId, DomainEvent, Error, Role, Timestamp, UserId, call,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

pub use self::node::Node;
pub(crate) use self::pipeline::{Draft, Prepared};
pub use self::requests::{
    AddMembers, CreateGroup, GetMembers, GetPresence, LeaveGroup, ListConversations, MarkReceipt,
    MessageSent, OpenDirect, ReadHistory, ReadReceipts, RemoveMember, SendMessage, SetRole,
    SetTyping,
};
use crate::hub::Hub;
use crate::last_seen::LastSeenWriter;
use crate::members::MemberCacheStats;

/// The services an engine composes. Implemented by [`Services`]; integrators rarely implement
/// it themselves.
pub trait Backends: Send + Sync + 'static {
    /// The message store.
    type Store: StoreService;
    /// The sequencer.
    type Sequencer: SequencerService;
    /// The fanout.
    type Fanout: FanoutService;
    /// The authenticator.
    type Auth: AuthService;
    /// The presence registry.
    type Presence: PresenceService;

    /// The store.
    fn store(&self) -> &Self::Store;
    /// The sequencer.
    fn sequencer(&self) -> &Self::Sequencer;
    /// The fanout.
    fn fanout(&self) -> &Self::Fanout;
    /// The authenticator.
    fn auth(&self) -> &Self::Auth;
    /// The presence registry.
    fn presence(&self) -> &Self::Presence;
}

/// The five services of an engine, as plain fields.
#[derive(Debug, Clone)]
pub struct Services<St, Sq, F, A, P> {
    /// The message store.
    pub store: St,
    /// The sequencer.
    pub sequencer: Sq,
    /// The fanout.
    pub fanout: F,
    /// The authenticator.
    pub auth: A,
    /// The presence registry.
    pub presence: P,
}

impl<St, Sq, F, A, P> Backends for Services<St, Sq, F, A, P>
where
    St: StoreService,
    Sq: SequencerService,
    F: FanoutService,
    A: AuthService,
    P: PresenceService,
{
    type Store = St;
    type Sequencer = Sq;
    type Fanout = F;
    type Auth = A;
    type Presence = P;

    fn store(&self) -> &St {
        &self.store
    }
    fn sequencer(&self) -> &Sq {
        &self.sequencer
    }
    fn fanout(&self) -> &F {
        &self.fanout
    }
    fn auth(&self) -> &A {
        &self.auth
    }
    fn presence(&self) -> &P {
        &self.presence
    }
}

/// How an engine and its connections behave. Every field has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// How long a new connection may take to send `hello`. Default: 10 s.
    pub hello_timeout: Duration,
    /// Interval of WebSocket pings. Default: 30 s.
    pub ping_interval: Duration,
    /// A connection is dropped when writing to it stalls this long. Default: 10 s.
    pub write_timeout: Duration,
    /// Frames queued for one connection before it is closed as a slow consumer. Default: 4096.
    pub outbound_queue: usize,
    /// Sends queued per connection waiting for their seq; when full, the connection is read
    /// more slowly (backpressure). Default: 256.
    pub send_queue: usize,
    /// How long a hole (a seq missing below a stored one) may stay missing before readers
    /// store it as void, counted from the `sent_at` of the entry stored after it or from when
    /// the reader saw it missing; all the holes of a page resolve together. Default: 2 s.
    pub void_after: Duration,
    /// How long cached member lists are trusted. Default: 2 s. Changes made through this node
    /// invalidate them at once.
    pub members_cache_ttl: Duration,
    /// Consecutive bad frames before the connection is closed. Default: 32.
    pub max_bad_frames: u32,
    /// Entries per store read when streaming a backlog. Default: 256.
    pub sync_page: usize,
    /// The limits announced to clients and enforced.
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            outbound_queue: 4096,
            send_queue: 256,
            void_after: Duration::from_secs(2),
            members_cache_ttl: Duration::from_secs(2),
            max_bad_frames: 32,
            sync_page: 256,
            limits: Limits::default(),
        }
    }
}

/// Receives every domain event the engine produces.
pub type EventSink = Arc<dyn Fn(DomainEvent) + Send + Sync>;

/// The chat engine of one node: services, the hub of local connections, config. Cheap to
/// clone; every clone is the same engine.
pub struct Engine<B> {
    pub(crate) inner: Arc<EngineInner<B>>,
}

impl<B> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.inner.node_id)
            .field("connections", &self.inner.hub.connection_count())
            .finish_non_exhaustive()
    }
}

pub(crate) struct EngineInner<B> {
    services: B,
    node_id: NodeId,
    hub: Arc<Hub>,
    config: EngineConfig,
    next_connection: AtomicU64,
    presence_feed: tokio::sync::OnceCell<()>,
    shutdown: watch::Sender<bool>,
    events: Option<EventSink>,
    media: Option<Arc<media::MediaState>>,
    last_seen: Arc<LastSeenWriter>,
}

impl<B: Backends> Engine<B> {
    /// The engine of `node` over `services`: its connections register in `node`'s hub, the
    /// one `services.fanout` delivers to ([`Node::hub`]).
    pub fn new(services: B, node: Node, config: EngineConfig) -> Self {
        let (node_id, hub) = node.into_parts();
        let (shutdown, _) = watch::channel(false);
        hub.bind();
        hub.members().set_ttl(config.members_cache_ttl);
        Self {
            inner: Arc::new(EngineInner {
                services,
                node_id,
                hub,
                config,
                next_connection: AtomicU64::new(1),
                presence_feed: tokio::sync::OnceCell::new(),
                shutdown,
                events: None,
                media: None,
                last_seen: Arc::default(),
            }),
        }
    }

    /// Sends every domain event (message stored, receipt, device connected...) to `sink`.
    ///
    /// Call it before cloning the engine (later calls on a shared engine are ignored).
    #[must_use]
    pub fn with_event_sink(mut self, sink: EventSink) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.events = Some(sink);
        }
        self
    }

    /// Takes media messages (see [`crate::media`]): uploads staged under `config.dir`,
    /// objects kept in `storage`. Announces `config.max_bytes` as the media limit.
    ///
    /// Call it before cloning the engine (later calls on a shared engine are ignored).
    ///
    /// # Errors
    /// When the staging or journal directories cannot be created or read.
    pub fn with_media(
        mut self,
        config: media::MediaConfig,
        storage: Arc<dyn media::ObjectStore>,
    ) -> std::io::Result<Self> {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.config.limits.max_media_bytes = config.max_bytes;
            inner.media = Some(Arc::new(media::MediaState::open(config, storage)?));
        }
        Ok(self)
    }

    /// The engine's config.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    /// The hub of this node's connections.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// The backends, for what the engine does not wrap (reading a conversation's raw log in
    /// an admin job, say). Writes through them bypass the engine's checks and fanout.
    pub fn services(&self) -> &B {
        &self.inner.services
    }

    /// Asks every connection to reconnect elsewhere (a `reconnect` frame, then close 1012).
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Whether [`Engine::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Hits, misses and invalidations of the member cache.
    pub fn member_cache_stats(&self) -> MemberCacheStats {
        self.inner.hub.members().stats()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub(crate) fn media(&self) -> Option<&media::MediaState> {
        self.inner.media.as_deref()
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.inner.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn publish(&self, event: DomainEvent) {
        if let Some(sink) = &self.inner.events {
            sink(event);
        }
    }

    /// Records that `user` was online at `at` without waiting: the time is written behind,
    /// in batches (see [`crate::last_seen`]).
    pub(crate) fn record_last_seen(&self, user: &UserId, at: Timestamp) {
        self.inner
            .last_seen
            .record(self.services().store(), user, at);
    }

    /// Writes every last-seen time recorded so far and waits for the writes.
    pub(crate) async fn flush_last_seen(&self) {
        self.inner.last_seen.flush(self.services().store()).await;
    }

    /// The conversation and its members, from a short-lived cache (see [`crate::members`]).
    pub(crate) async fn conversation(
        &self,
        id: &ConversationId,
    ) -> Result<Option<Arc<ConversationInfo>>, Error> {
        let cache = self.inner.hub.members();
        if let Some(info) = cache.get(id) {
            return Ok(Some(info));
        }
        let read_at = Instant::now();
        let found = call(
            self.services().store(),
            GetConversation {
                conversation: id.clone(),
            },
        )
        .await?;
        let Some(info) = found else {
            return Ok(None);
        };
        let info = Arc::new(info);
        cache.insert(id.clone(), Arc::clone(&info), read_at);
        Ok(Some(info))
    }

    pub(crate) fn invalidate(&self, id: &ConversationId) {
        self.inner.hub.members().invalidate(id);
    }

    /// Subscribes this node to the registry's presence feed, once: every change then reaches
    /// the local connections watching that user. Called before the first connection registers,
    /// so its own change is not missed. A failed subscription is retried by the next
    /// connection.
    pub(crate) async fn ensure_presence_feed(&self) {
        let subscribed = self
            .inner
            .presence_feed
            .get_or_try_init(|| async {
                let feed = call(self.services().presence(), SubscribePresence).await?;
                tokio::spawn(relay_presence(feed, Arc::downgrade(&self.inner.hub)));
                Ok::<(), Error>(())
            })
            .await;
        if let Err(err) = subscribed {
            tracing::warn!(error = %err, "cannot subscribe to presence changes");
        }
    }

    /// The conversation, if `user` is a member of it.
    pub(crate) async fn membership(
        &self,
        id: &ConversationId,
        user: &UserId,
    ) -> Result<(Arc<ConversationInfo>, Role), Error> {
        let Some(info) = self.conversation(id).await? else {
            return Err(Error::refused(
                ErrorCode::NotFound,
                format!("no conversation {id}"),
            ));
        };
        match info.role_of(user) {
            Some(role) => Ok((info, role)),
            None => Err(Error::refused(
                ErrorCode::NotMember,
                format!("{user} is not a member of {id}"),
            )),
        }
    }
}

/// Hands every presence change to the local watchers until the feed closes or the hub is gone.
async fn relay_presence(mut feed: PresenceFeed, hub: std::sync::Weak<Hub>) {
    loop {
        match feed.recv().await {
            Ok(change) => {
                let Some(hub) = hub.upgrade() else { return };
                hub.notify_presence(&change.user, change.online, Some(change.at));
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "presence feed lagged: changes skipped");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

pub(crate) fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

pub(crate) fn random_client_msg_id(prefix: &str) -> Result<ClientMsgId, Error> {
    Ok(ClientMsgId::new(format!("{prefix}:{}", random_suffix()))?)
}
