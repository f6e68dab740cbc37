//! A socket node: the services it composes and the chat operations every connection uses
//! (send, membership changes, receipts, presence).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use messenger_core::auth::{AuthService, Identity};
use messenger_core::fanout::{Deliver, FanoutService};
use messenger_core::presence::{
    LookupPresence, NodeId, PresenceFeed, PresenceService, SubscribePresence,
};
use messenger_core::protocol::{ErrorCode, Limits, ServerFrame};
use messenger_core::sequencer::{FenceSeq, NextSeq, SequencerService};
use messenger_core::store::{
    AppendMessage, Appended, ConversationInfo, CreateConversation, FindMessage, GetConversation,
    GetLastSeen, StoreService, UpdateReceipt, VoidSeq,
};
use messenger_core::{
    Body, ClientMsgId, Conversation, ConversationId, ConversationKind, DomainEvent, Error,
    ErrorKind, Event, Member, Message, ReceiptKind, Role, Seq, Timestamp, UserId, call,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::last_seen::LastSeenWriter;
use crate::members::MemberCacheStats;

/// The services a node composes. Implemented by [`Services`]; integrators rarely implement it
/// themselves.
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

/// The five services of a node, as plain fields.
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

/// How a node behaves. Every field has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// This node's id in the cluster. Default: `"node-1"`.
    pub node_id: NodeId,
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

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: Arc::from("node-1"),
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

/// Receives every domain event the node produces.
pub type EventSink = Arc<dyn Fn(DomainEvent) + Send + Sync>;

/// A socket node: services, the hub of local connections, config. Cheap to clone.
pub struct Node<B> {
    pub(crate) inner: Arc<NodeInner<B>>,
}

impl<B> Clone for Node<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> fmt::Debug for Node<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.inner.config.node_id)
            .field("connections", &self.inner.hub.connection_count())
            .finish_non_exhaustive()
    }
}

pub(crate) struct NodeInner<B> {
    pub(crate) services: B,
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: NodeConfig,
    next_connection: AtomicU64,
    presence_feed: tokio::sync::OnceCell<()>,
    pub(crate) shutdown: watch::Sender<bool>,
    events: Option<EventSink>,
    media: Option<Arc<crate::media::MediaState>>,
    last_seen: Arc<LastSeenWriter>,
}

/// Why an operation was refused: the code and message of the error frame.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<messenger_core::InvalidId> for Refusal {
    fn from(err: messenger_core::InvalidId) -> Self {
        Refusal::new(ErrorCode::InvalidId, err.to_string())
    }
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        if !matches!(
            err.kind(),
            ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::Forbidden
        ) {
            tracing::warn!(error = %err, "backend error");
        }
        Refusal::new(ErrorCode::from(&err), err.message().to_owned())
    }
}

/// An entry that has its seq and waits to be stored.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) message: Arc<Message>,
    pub(crate) recipients: Arc<[UserId]>,
}

/// A stored entry: the one just appended, or the original of a retried send.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) message: Arc<Message>,
    pub(crate) duplicate: bool,
    /// The entry still to fan out, and to whom ([`Node::deliver_stored`]): the sender is
    /// acked first, so a slow fanout (a broker round trip) never delays the ack.
    pub(crate) fanout: Option<(Arc<[UserId]>, Arc<Message>)>,
}

impl<B: Backends> Node<B> {
    /// A node over `services`, delivering local events through `hub` (give the same hub to
    /// the local fanout).
    pub fn new(services: B, hub: Arc<Hub>, config: NodeConfig) -> Self {
        let (shutdown, _) = watch::channel(false);
        hub.members().set_ttl(config.members_cache_ttl);
        Self {
            inner: Arc::new(NodeInner {
                services,
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
    /// # Panics
    /// Never; call it before cloning the node (later calls on a shared node are ignored).
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
    /// Call it before cloning the node (later calls on a shared node are ignored).
    ///
    /// # Errors
    /// When the staging or journal directories cannot be created or read.
    pub fn with_media(
        mut self,
        config: crate::media::MediaConfig,
        storage: Arc<dyn crate::media::ObjectStore>,
    ) -> std::io::Result<Self> {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.config.limits.max_media_bytes = config.max_bytes;
            inner.media = Some(Arc::new(crate::media::MediaState::open(config, storage)?));
        }
        Ok(self)
    }

    pub(crate) fn media(&self) -> Option<&crate::media::MediaState> {
        self.inner.media.as_deref()
    }

    /// The node's config.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The hub of this node's connections.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// Asks every connection to reconnect elsewhere (a `reconnect` frame, then close 1012).
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Whether [`Node::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    pub(crate) fn services(&self) -> &B {
        &self.inner.services
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

    fn invalidate(&self, id: &ConversationId) {
        self.inner.hub.members().invalidate(id);
    }

    /// Hits, misses and invalidations of the member cache.
    pub fn member_cache_stats(&self) -> MemberCacheStats {
        self.inner.hub.members().stats()
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
    ) -> Result<(Arc<ConversationInfo>, Role), Refusal> {
        let Some(info) = self.conversation(id).await? else {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("no conversation {id}"),
            ));
        };
        match info.role_of(user) {
            Some(role) => Ok((info, role)),
            None => Err(Refusal::new(
                ErrorCode::NotMember,
                format!("{user} is not a member of {id}"),
            )),
        }
    }

    /// Checks a send and allocates its seq. Called in the order the device sent, so a
    /// device's messages get increasing seqs.
    pub(crate) async fn prepare_send(
        &self,
        identity: &Identity,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: Body,
    ) -> Result<Result<Pending, Stored>, Refusal> {
        let (info, _) = self.membership(&conversation, &identity.user).await?;
        // Idempotency is the append's: it finds an earlier entry with this key atomically and
        // answers it (voiding the new seq). Looking first costs a store read per send and only
        // spares that void on a retry, so only media sends look first: their pending upload
        // must not be recorded for a seq that ends up void.
        if matches!(body, Body::Media(_)) {
            let earlier = call(
                self.services().store(),
                FindMessage {
                    conversation: conversation.clone(),
                    sender: identity.user.clone(),
                    client_msg_id: client_msg_id.clone(),
                },
            )
            .await?;
            if let Some(message) = earlier {
                return Ok(Err(Stored {
                    message,
                    duplicate: true,
                    fanout: None,
                }));
            }
        }
        let seq = call(
            self.services().sequencer(),
            NextSeq {
                conversation: conversation.clone(),
            },
        )
        .await?;
        let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
        Ok(Ok(Pending {
            message: Arc::new(Message {
                conversation,
                seq,
                sender: identity.user.clone(),
                sender_device: identity.device.clone(),
                client_msg_id,
                sent_at: Timestamp::now(),
                body,
            }),
            recipients,
        }))
    }

    /// Stores a prepared entry (retrying with a new seq on a conflict) and resolves its seq as
    /// void if it cannot be stored. The caller fans the stored entry out with
    /// [`Node::deliver_stored`] (after acking the sender).
    pub(crate) async fn store_pending(&self, pending: Pending) -> Result<Stored, Refusal> {
        let Pending {
            mut message,
            recipients,
        } = pending;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = call(
                self.services().store(),
                AppendMessage {
                    message: Arc::clone(&message),
                },
            )
            .await;
            match result {
                Ok(Appended {
                    message: stored,
                    duplicate,
                }) => {
                    let entry = if duplicate {
                        // The store voided our seq in the same write: tell the readers.
                        Arc::new(Message::void(
                            message.conversation.clone(),
                            message.seq,
                            message.sent_at,
                        ))
                    } else {
                        if stored.body.is_membership_change() {
                            self.invalidate(&stored.conversation);
                        }
                        self.publish(DomainEvent::MessageStored {
                            message: Arc::clone(&stored),
                        });
                        Arc::clone(&stored)
                    };
                    return Ok(Stored {
                        message: stored,
                        duplicate,
                        fanout: Some((Arc::clone(&recipients), entry)),
                    });
                }
                Err(err) if err.kind() == ErrorKind::Conflict && attempts < 4 => {
                    // The seq was taken (a reader voided it, or the sequencer lost state):
                    // fence the sequencer past it and try again with a fresh seq.
                    let conversation = message.conversation.clone();
                    call(
                        self.services().sequencer(),
                        FenceSeq {
                            conversation: conversation.clone(),
                            at_least: message.seq,
                        },
                    )
                    .await?;
                    let seq = call(self.services().sequencer(), NextSeq { conversation }).await?;
                    let mut retry = (*message).clone();
                    retry.seq = seq;
                    // Just after the allocation, as for the first seq: readers judge the holes
                    // below an entry by its `sent_at` (see `holes`).
                    retry.sent_at = Timestamp::now();
                    message = Arc::new(retry);
                }
                Err(err) => {
                    self.void_after_failure(&message, &recipients).await;
                    return Err(err.into());
                }
            }
        }
    }

    /// Fans out what [`Node::store_pending`] stored (once: the entry is taken).
    pub(crate) async fn deliver_stored(&self, stored: &mut Stored) {
        if let Some((recipients, entry)) = stored.fanout.take() {
            self.fan_out(recipients, entry).await;
        }
    }

    async fn void_after_failure(&self, message: &Message, recipients: &Arc<[UserId]>) {
        let voided = call(
            self.services().store(),
            VoidSeq {
                conversation: message.conversation.clone(),
                seq: message.seq,
            },
        )
        .await;
        if let Ok(entry) = voided {
            self.fan_out(Arc::clone(recipients), entry).await;
        }
    }

    /// Delivers a log entry to every online device of `recipients`.
    pub(crate) async fn fan_out(&self, recipients: Arc<[UserId]>, message: Arc<Message>) {
        self.deliver(recipients, Event::Message { message }).await;
    }

    pub(crate) async fn deliver(&self, recipients: Arc<[UserId]>, event: Event) {
        if recipients.is_empty() {
            return;
        }
        if let Err(err) = call(self.services().fanout(), Deliver { recipients, event }).await {
            // Nothing is lost: devices that miss a live entry fetch it from the store.
            tracing::warn!(error = %err, "fanout failed");
        }
    }

    /// Appends a membership change as the next entry of `conversation`.
    async fn commit_change(
        &self,
        identity: &Identity,
        info: &ConversationInfo,
        body: Body,
        extra_recipients: &[UserId],
    ) -> Result<Arc<Message>, Refusal> {
        let conversation = info.conversation.id.clone();
        let seq = call(
            self.services().sequencer(),
            NextSeq {
                conversation: conversation.clone(),
            },
        )
        .await?;
        let mut recipients: Vec<UserId> = info.members.iter().map(|m| m.user.clone()).collect();
        for user in extra_recipients {
            if !recipients.contains(user) {
                recipients.push(user.clone());
            }
        }
        let pending = Pending {
            message: Arc::new(Message {
                conversation,
                seq,
                sender: identity.user.clone(),
                sender_device: identity.device.clone(),
                client_msg_id: random_client_msg_id("op")?,
                sent_at: Timestamp::now(),
                body,
            }),
            recipients: recipients.into(),
        };
        let mut stored = self.store_pending(pending).await?;
        self.deliver_stored(&mut stored).await;
        Ok(stored.message)
    }

    /// Creates (if needed) the direct conversation with `other`; answers its `conversation`
    /// frame.
    pub(crate) async fn open_direct(
        &self,
        request: Option<messenger_core::RequestId>,
        identity: &Identity,
        other: UserId,
    ) -> Result<ServerFrame, Refusal> {
        let id = ConversationId::direct(&identity.user, &other)?;
        let members = vec![
            Member {
                user: identity.user.clone(),
                role: Role::Member,
            },
            Member {
                user: other,
                role: Role::Member,
            },
        ];
        call(
            self.services().store(),
            CreateConversation {
                conversation: Conversation {
                    id: id.clone(),
                    kind: ConversationKind::Direct,
                    title: None,
                    created_by: identity.user.clone(),
                    created_at: Timestamp::now(),
                },
                members,
            },
        )
        .await?;
        self.invalidate(&id);
        self.conversation_frame(request, &id).await
    }

    pub(crate) async fn conversation_frame(
        &self,
        request: Option<messenger_core::RequestId>,
        id: &ConversationId,
    ) -> Result<ServerFrame, Refusal> {
        let info = call(
            self.services().store(),
            GetConversation {
                conversation: id.clone(),
            },
        )
        .await?
        .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no conversation {id}")))?;
        Ok(ServerFrame::Conversation {
            id: request,
            conversation: info.conversation,
            members: info.members,
            head: info.head,
        })
    }

    pub(crate) async fn create_group(
        &self,
        identity: &Identity,
        title: String,
        others: Vec<UserId>,
    ) -> Result<ConversationId, Refusal> {
        let limits = &self.inner.config.limits;
        if title.is_empty() || title.len() > messenger_core::MAX_TITLE_BYTES {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a title needs 1 to {} bytes",
                    messenger_core::MAX_TITLE_BYTES
                ),
            ));
        }
        let mut members = vec![Member {
            user: identity.user.clone(),
            role: Role::Owner,
        }];
        for user in others {
            if !members.iter().any(|m| m.user == user) {
                members.push(Member {
                    user,
                    role: Role::Member,
                });
            }
        }
        if members.len() > limits.max_group_members {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("a group has at most {} members", limits.max_group_members),
            ));
        }
        let id = ConversationId::new(format!("g:{}", random_suffix()))?;
        let conversation = Conversation {
            id: id.clone(),
            kind: ConversationKind::Group,
            title: Some(title.clone()),
            created_by: identity.user.clone(),
            created_at: Timestamp::now(),
        };
        call(
            self.services().store(),
            CreateConversation {
                conversation: conversation.clone(),
                members: members.clone(),
            },
        )
        .await?;
        let info = ConversationInfo {
            conversation,
            members: members.clone(),
            head: Seq::ZERO,
        };
        self.commit_change(identity, &info, Body::GroupCreated { title, members }, &[])
            .await?;
        Ok(id)
    }

    async fn group(
        &self,
        identity: &Identity,
        id: &ConversationId,
    ) -> Result<(Arc<ConversationInfo>, Role), Refusal> {
        // Membership changes read fresh state, not the cache.
        self.invalidate(id);
        let (info, role) = self.membership(id, &identity.user).await?;
        if info.conversation.kind != ConversationKind::Group {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "direct conversations have no membership changes",
            ));
        }
        Ok((info, role))
    }

    pub(crate) async fn add_members(
        &self,
        identity: &Identity,
        id: &ConversationId,
        users: Vec<UserId>,
        role: Role,
    ) -> Result<Seq, Refusal> {
        let (info, my_role) = self.group(identity, id).await?;
        let allowed = match role {
            Role::Member => my_role >= Role::Admin,
            Role::Admin => my_role == Role::Owner,
            Role::Owner => false,
        };
        if !allowed {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("a {} cannot add a {}", my_role.as_str(), role.as_str()),
            ));
        }
        let mut new_users: Vec<UserId> = Vec::new();
        for user in users {
            if info.role_of(&user).is_some() {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    format!("{user} is already a member"),
                ));
            }
            if !new_users.contains(&user) {
                new_users.push(user);
            }
        }
        if new_users.is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "no users to add"));
        }
        let limit = self.inner.config.limits.max_group_members;
        if info.members.len() + new_users.len() > limit {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("a group has at most {limit} members"),
            ));
        }
        let body = Body::MembersAdded {
            users: new_users.clone(),
            role,
        };
        Ok(self
            .commit_change(identity, &info, body, &new_users)
            .await?
            .seq)
    }

    pub(crate) async fn remove_member(
        &self,
        identity: &Identity,
        id: &ConversationId,
        user: UserId,
    ) -> Result<Seq, Refusal> {
        let (info, my_role) = self.group(identity, id).await?;
        if user == identity.user {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "use leave to leave a group",
            ));
        }
        let Some(their_role) = info.role_of(&user) else {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                format!("{user} is not a member"),
            ));
        };
        let allowed = match my_role {
            Role::Owner => true,
            Role::Admin => their_role == Role::Member,
            Role::Member => false,
        };
        if !allowed {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!(
                    "a {} cannot remove a {}",
                    my_role.as_str(),
                    their_role.as_str()
                ),
            ));
        }
        let body = Body::MemberRemoved { user };
        Ok(self.commit_change(identity, &info, body, &[]).await?.seq)
    }

    pub(crate) async fn leave(
        &self,
        identity: &Identity,
        id: &ConversationId,
    ) -> Result<Seq, Refusal> {
        let (info, my_role) = self.group(identity, id).await?;
        if my_role == Role::Owner && info.members.len() > 1 {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "the owner must transfer ownership (set_role ... owner) before leaving",
            ));
        }
        Ok(self
            .commit_change(identity, &info, Body::MemberLeft, &[])
            .await?
            .seq)
    }

    pub(crate) async fn set_role(
        &self,
        identity: &Identity,
        id: &ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Seq, Refusal> {
        let (info, my_role) = self.group(identity, id).await?;
        if my_role != Role::Owner {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the owner changes roles",
            ));
        }
        if user == identity.user {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "the owner's role changes by transferring ownership",
            ));
        }
        if info.role_of(&user).is_none() {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                format!("{user} is not a member"),
            ));
        }
        let body = Body::RoleChanged { user, role };
        Ok(self.commit_change(identity, &info, body, &[]).await?.seq)
    }

    pub(crate) async fn update_receipt(
        &self,
        identity: &Identity,
        conversation: ConversationId,
        kind: ReceiptKind,
        seq: Seq,
    ) -> Result<(), Refusal> {
        let (info, _) = self.membership(&conversation, &identity.user).await?;
        let updated = call(
            self.services().store(),
            UpdateReceipt {
                conversation: conversation.clone(),
                user: identity.user.clone(),
                kind,
                seq,
            },
        )
        .await?;
        if updated.changed {
            let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
            self.publish(DomainEvent::ReceiptUpdated {
                conversation: conversation.clone(),
                user: identity.user.clone(),
                kind,
                receipts: updated.receipts.clone(),
            });
            self.deliver(
                recipients,
                Event::Receipt {
                    conversation,
                    receipts: updated.receipts,
                },
            )
            .await;
        }
        Ok(())
    }

    pub(crate) async fn typing(
        &self,
        identity: &Identity,
        conversation: ConversationId,
        active: bool,
    ) -> Result<(), Refusal> {
        let (info, _) = self.membership(&conversation, &identity.user).await?;
        let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
        self.deliver(
            recipients,
            Event::Typing {
                conversation,
                user: identity.user.clone(),
                device: identity.device.clone(),
                active,
            },
        )
        .await;
        Ok(())
    }

    pub(crate) async fn presence_of(
        &self,
        users: Vec<UserId>,
    ) -> Result<Vec<messenger_core::protocol::UserPresence>, Refusal> {
        let online = call(
            self.services().presence(),
            LookupPresence {
                users: users.clone(),
            },
        )
        .await?;
        // Times recorded here and not yet written are written first: the answer is durable.
        self.inner
            .last_seen
            .flush_users(self.services().store(), &users)
            .await;
        let seen = call(self.services().store(), GetLastSeen { users }).await?;
        Ok(seen
            .into_iter()
            .map(|(user, last_seen)| messenger_core::protocol::UserPresence {
                online: online.iter().any(|device| device.user == user),
                user,
                last_seen,
            })
            .collect())
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

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn random_client_msg_id(prefix: &str) -> Result<ClientMsgId, Refusal> {
    Ok(ClientMsgId::new(format!("{prefix}:{}", random_suffix()))?)
}
