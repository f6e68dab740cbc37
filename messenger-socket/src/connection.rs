//! One WebSocket connection: hello, then frames in, events out, in seq order per conversation.
//!
//! [`serve_connection`] is generic over the byte stream, so tests can drive it over
//! `tokio::io::duplex` and servers over TCP or TLS.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use messenger_core::auth::{Authenticate, Identity};
use messenger_core::presence::{RegisterDevice, UnregisterDevice};
use messenger_core::protocol::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame, close, decode_client_frame,
};
use messenger_core::store::{MessagePage, ReadRange, UserConversations};
use messenger_core::{
    Body, ClientMsgId, ConversationId, ConversationSummary, DomainEvent, Error, ErrorKind, Message,
    ReceiptKind, RequestId, Role, Seq, Timestamp, UserId, call,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

use crate::engine::layer::CLOCK;
use crate::engine::{
    AddMembers, Backends, CreateGroup, Engine, GetMembers, GetPresence, LeaveGroup,
    ListConversations, MarkReceipt, OpenDirect, Prepared, ReadHistory, ReadReceipts, RemoveMember,
    SetRole, SetTyping,
};
use crate::hub::{ConnectionHandle, Outbound, PresenceFrame, Taken};

/// How long to wait before asking the store again for a seq that is still missing.
const HOLE_RETRY: Duration = Duration::from_millis(50);
/// Batches taken from the queue (beyond the one that woke the connection) before it flushes
/// and looks at its socket again.
const WRITE_BATCHES: usize = 4;

/// Serves one WebSocket connection until it closes.
///
/// The caller has completed the WebSocket handshake; this runs the protocol: `hello`
/// (authentication), then frames until the peer leaves, the node shuts down or the
/// connection breaks a limit. Never panics on input from the peer.
pub async fn serve_connection<B, S>(node: Engine<B>, mut ws: WebSocketStream<S>)
where
    B: Backends,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = node.config().clone();
    let identity = match timeout(config.hello_timeout, hello(&node, &mut ws)).await {
        Err(_) => {
            close_with(&mut ws, close::HELLO_TIMEOUT, "no hello in time", &config).await;
            return;
        }
        Ok(Err(Some((code, reason)))) => {
            close_with(&mut ws, code, &reason, &config).await;
            return;
        }
        Ok(Err(None)) => return,
        Ok(Ok(identity)) => identity,
    };

    let handle = ConnectionHandle::new(
        node.next_connection_id(),
        identity.device.clone(),
        config.outbound_queue.max(16),
    );
    node.hub().register(&identity.user, handle.clone());
    node.ensure_presence_feed().await;
    let now = Timestamp::now();
    // The registry announces the user coming online to every node's watchers.
    if let Err(err) = call(
        node.services().presence(),
        RegisterDevice {
            user: identity.user.clone(),
            device: identity.device.clone(),
            node: config.node_id.clone(),
            connection: handle.id,
            at: now,
        },
    )
    .await
    {
        tracing::warn!(error = %err, user = %identity.user, "presence registration failed");
    }
    // Written behind, never awaited: while the device is connected, presence says it is online.
    node.record_last_seen(&identity.user, now);
    node.publish(DomainEvent::DeviceConnected {
        user: identity.user.clone(),
        device: identity.device.clone(),
        at: now,
    });
    tracing::debug!(user = %identity.user, device = %identity.device, connection = handle.id, "connected");

    // The send worker starts with the first `send`: an idle connection carries none.
    let mut connection = Connection::new(node.clone(), identity, handle, SendWorker::default());
    // What stays alive in this task while the connection idles is its memory per
    // connection: the rare, large steps (closing, finishing) are boxed so they take room only
    // while they run.
    drop(config);
    let end = connection.run(&mut ws).await;
    match end {
        End::Close(code, reason) => {
            Box::pin(close_with(&mut ws, code, &reason, node.config())).await;
        }
        End::Quiet => {}
    }
    Box::pin(connection.finish()).await;
}

/// Reads the `hello` frame and authenticates. `Err(Some(close))` closes with a code;
/// `Err(None)` means the peer went away.
async fn hello<B, S>(
    node: &Engine<B>,
    ws: &mut WebSocketStream<S>,
) -> Result<Identity, Option<(u16, String)>>
where
    B: Backends,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let text = match ws.next().await {
            Some(Ok(tungstenite::Message::Text(text))) => text,
            Some(Ok(tungstenite::Message::Binary(_))) => {
                return Err(Some((close::UNSUPPORTED_DATA, "text frames only".into())));
            }
            Some(Ok(tungstenite::Message::Close(_))) | None => return Err(None),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(transport_close(&err)),
        };
        let (v, token) = match decode_client_frame(&text) {
            Ok(ClientFrame::Hello { v, token }) => (v, token),
            Ok(_) => {
                return Err(Some((
                    close::PROTOCOL_ERROR,
                    "the first frame must be hello".into(),
                )));
            }
            Err(err) => return Err(Some((close::PROTOCOL_ERROR, err.message))),
        };
        if v != PROTOCOL_VERSION {
            return Err(Some((
                close::UNSUPPORTED_VERSION,
                format!("this server speaks protocol {PROTOCOL_VERSION}"),
            )));
        }
        let identity = call(
            node.services().auth(),
            Authenticate {
                token: Arc::from(token),
            },
        )
        .await
        .map_err(|err| Some((close::UNAUTHORIZED, truncate(err.client_message().1))))?;
        if identity
            .expires_at
            .is_some_and(|expiry| expiry <= Timestamp::now())
        {
            return Err(Some((close::TOKEN_EXPIRED, "token expired".into())));
        }
        let welcome = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            user: identity.user.clone(),
            device: identity.device.clone(),
            server_time: Timestamp::now(),
            limits: node.config().limits.clone(),
        };
        ws.send(tungstenite::Message::text(welcome.to_json()))
            .await
            .map_err(|_| None)?;
        return Ok(identity);
    }
}

/// A close reason must fit a control frame (123 bytes).
fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn transport_close(err: &tungstenite::Error) -> Option<(u16, String)> {
    match err {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "frame too large".into())),
        _ => None,
    }
}

/// After its close frame, how long the server keeps reading what the peer still sends.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// After its close frame, how many bytes the server reads (and discards) at most.
const CLOSE_LINGER_BYTES: usize = 1024 * 1024;

/// Sends a close frame, then lingers: half-closes the socket and reads (discarding) until the
/// peer closes its side, [`CLOSE_LINGER`] passes or [`CLOSE_LINGER_BYTES`] were read.
///
/// Closing a socket that still holds unread bytes makes the kernel reset the connection, and
/// a peer that was still writing (a flood of bad frames, the rest of an oversize frame) then
/// loses the close frame with its code and sees 1006 instead. Reading below the WebSocket
/// codec also works after an oversize frame, whose payload the codec never read.
async fn close_with<S>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
    config: &crate::EngineConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(truncate(reason)),
    };
    match timeout(config.write_timeout, ws.close(Some(frame))).await {
        Ok(Ok(())) => {}
        // Not written (the peer does not read, or is gone): nothing to linger for.
        Ok(Err(_)) | Err(_) => return,
    }
    let deadline = tokio::time::Instant::now() + CLOSE_LINGER;
    let socket = ws.get_mut();
    // Our FIN right after the close frame: a peer that answers the close frame then reads
    // the end of the stream and closes its side, which ends the loop below at once.
    if !matches!(
        tokio::time::timeout_at(deadline, socket.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let mut scratch = vec![0u8; 8 * 1024];
    let mut budget = CLOSE_LINGER_BYTES;
    while budget > 0 {
        match tokio::time::timeout_at(deadline, socket.read(&mut scratch)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(read)) => budget = budget.saturating_sub(read),
        }
    }
}

/// A send waiting for its seq, in the order the device sent it.
struct QueuedSend {
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    body: Body,
}

/// The connection's send worker, started by its first `send`: a connection that never sends
/// carries no task and no queue.
#[derive(Default)]
struct SendWorker(Option<mpsc::Sender<QueuedSend>>);

impl SendWorker {
    /// Queues `send` for the worker (starting it if needed); waits while the queue is full.
    async fn send<B: Backends>(
        &mut self,
        node: &Engine<B>,
        identity: &Identity,
        handle: &ConnectionHandle,
        send: QueuedSend,
    ) -> Result<(), mpsc::error::SendError<QueuedSend>> {
        let queue = self.0.get_or_insert_with(|| {
            spawn_send_worker(node.clone(), identity.clone(), handle.clone())
        });
        queue.send(send).await
    }
}

/// Checks and sequences sends one at a time, in order, then stores them concurrently: the
/// engine's send pipeline in two stages ([`Engine::prepare_send`], [`Engine::commit_send`]),
/// so a device's pipelined sends get increasing seqs without waiting for each other's
/// durable write.
fn spawn_send_worker<B: Backends>(
    node: Engine<B>,
    identity: Identity,
    handle: ConnectionHandle,
) -> mpsc::Sender<QueuedSend> {
    let (sender, mut receiver) = mpsc::channel::<QueuedSend>(node.config().send_queue.max(1));
    tokio::spawn(async move {
        while let Some(send) = receiver.recv().await {
            let QueuedSend {
                conversation,
                client_msg_id,
                body,
            } = send;
            let prepared = node
                .prepare_send(&identity, conversation.clone(), client_msg_id.clone(), body)
                .await;
            match prepared {
                Ok(Prepared::Pending(pending)) => {
                    let node = node.clone();
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        match node.commit_send(pending).await {
                            Ok(mut stored) => {
                                // Durable: ack first, then deliver.
                                let upload = node.upload_ticket(&stored.message).await;
                                push_sent(&handle, &stored.message, stored.duplicate, upload);
                                node.deliver_stored(&mut stored).await;
                            }
                            Err(err) => {
                                let frame = send_error(conversation, client_msg_id, &err);
                                handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
                            }
                        }
                    });
                }
                Ok(Prepared::Duplicate(stored)) => {
                    let upload = node.upload_ticket(&stored.message).await;
                    push_sent(&handle, &stored.message, stored.duplicate, upload);
                }
                Err(err) => {
                    let frame = send_error(conversation, client_msg_id, &err);
                    handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
                }
            }
        }
    });
    sender
}

/// Queues the ack of a stored send, and its upload ticket for a pending media message.
fn push_sent(
    handle: &ConnectionHandle,
    message: &Message,
    duplicate: bool,
    upload: Option<messenger_core::protocol::UploadTicket>,
) {
    let sent = ServerFrame::Sent {
        conversation: message.conversation.clone(),
        client_msg_id: message.client_msg_id.clone(),
        seq: message.seq,
        sent_at: message.sent_at,
        duplicate,
    };
    handle.push(Outbound::Frame(Utf8Bytes::from(sent.to_json())));
    if let Some(upload) = upload {
        let frame = ServerFrame::Upload {
            conversation: message.conversation.clone(),
            client_msg_id: message.client_msg_id.clone(),
            seq: message.seq,
            upload,
        };
        handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
    }
}

/// The code and words an error frame carries for `err`; a backend's error is logged here and
/// reaches the client only as its code and generic words.
fn refusal_words(err: &Error) -> (ErrorCode, String) {
    if err.refusal_code().is_none()
        && !matches!(
            err.kind(),
            ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::Forbidden
        )
    {
        tracing::warn!(error = %err, "backend error");
    }
    let (code, message) = err.client_message();
    (code, message.to_owned())
}

/// The error frame answering request `id`.
fn request_error(id: Option<RequestId>, err: &Error) -> ServerFrame {
    let (code, message) = refusal_words(err);
    ServerFrame::error(id, code, message)
}

fn send_error(
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    err: &Error,
) -> ServerFrame {
    let (code, message) = refusal_words(err);
    ServerFrame::Error {
        id: None,
        conversation: Some(conversation),
        client_msg_id: Some(client_msg_id),
        code,
        message,
        retryable: code.is_retryable(),
    }
}

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer left or the socket broke: nothing more to send.
    Quiet,
}

/// A log entry waiting for its turn.
struct Held {
    message: Arc<Message>,
    /// The frame, when the fanout already serialized it.
    text: Option<Utf8Bytes>,
}

/// Per-conversation delivery state of one connection.
struct Track {
    /// Every entry up to here was written to the device.
    delivered: Seq,
    /// The highest seq known to exist.
    known_head: Seq,
    /// Entries above `delivered + 1`, waiting for the gap to fill.
    held: BTreeMap<Seq, Held>,
    /// A store read is in flight.
    fetching: bool,
    /// Don't ask the store again before this.
    retry_at: Option<Instant>,
    /// When `delivered + 1` was first seen missing.
    missing_since: Option<Instant>,
    /// The highest seq known when `missing_since` was set: a hole at or below it has been
    /// missing at least since then.
    missing_upto: Seq,
}

impl Track {
    fn new(delivered: Seq) -> Self {
        Self {
            delivered,
            known_head: delivered,
            held: BTreeMap::new(),
            fetching: false,
            retry_at: None,
            missing_since: None,
            missing_upto: Seq::ZERO,
        }
    }
}

/// What an internal task brings back to the loop.
enum Done {
    /// The user's conversations, for a `sync`.
    SyncLoaded(
        Result<Vec<ConversationSummary>, Error>,
        BTreeMap<ConversationId, Seq>,
    ),
    /// A page of entries for a gap or a backlog.
    Fetched(ConversationId, Result<MessagePage, Error>),
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

struct PendingSync {
    summaries: Vec<ConversationSummary>,
    /// Conversations whose backlog is not yet fully written, with the head to reach.
    remaining: HashMap<ConversationId, Seq>,
}

struct Connection<B> {
    node: Engine<B>,
    identity: Identity,
    handle: ConnectionHandle,
    sends: SendWorker,
    synced: bool,
    tracks: HashMap<ConversationId, Track>,
    pending_sync: Option<PendingSync>,
    /// Store reads in flight; created by the first one, dropped when the last one is done.
    tasks: Option<FuturesUnordered<Task>>,
    hole_deadline: Option<Instant>,
    /// The users whose presence this connection watches, and whether a live change about each
    /// was written since it subscribed (a later snapshot of that user is then stale).
    watched: HashMap<UserId, bool>,
    bad_frames: u32,
    frames: DefaultDirectRateLimiter,
    typing: DefaultDirectRateLimiter,
    last_inbound: Instant,
    write_timeout: Duration,
}

fn limiter(per_second: u32, burst: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), CLOCK.clone())
}

impl<B: Backends> Connection<B> {
    fn new(
        node: Engine<B>,
        identity: Identity,
        handle: ConnectionHandle,
        sends: SendWorker,
    ) -> Self {
        let limits = node.config().limits.clone();
        let node_write_timeout = node.config().write_timeout;
        Self {
            node,
            identity,
            handle,
            sends,
            synced: false,
            tracks: HashMap::new(),
            pending_sync: None,
            tasks: None,
            hole_deadline: None,
            watched: HashMap::new(),
            bad_frames: 0,
            frames: limiter(
                limits.frames_per_second,
                limits.frames_per_second.saturating_mul(5),
            ),
            typing: limiter(limits.typing_per_second, limits.typing_per_second),
            last_inbound: Instant::now(),
            write_timeout: node_write_timeout,
        }
    }

    /// Runs the connection until it ends; then refuses further pushes to its queue.
    async fn run<S>(&mut self, ws: &mut WebSocketStream<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let end = self.serve(ws).await;
        self.handle.queue.close();
        end
    }

    async fn serve<S>(&mut self, ws: &mut WebSocketStream<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let ping_interval = self.node.config().ping_interval;
        let mut shutdown = self.node.shutdown_signal();
        if *shutdown.borrow_and_update() {
            return Box::pin(self.reconnect_notice(ws)).await;
        }
        // Created once: a fresh `changed()` per wake-up would lock the watch's waiter list
        // twice per loop.
        let shutdown_changed = shutdown.changed();
        tokio::pin!(shutdown_changed);
        let queue = Arc::clone(&self.handle.queue);
        let expiry = self.identity.expires_at.map(|at| {
            let left = at.as_millis().saturating_sub(Timestamp::now().as_millis());
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        // One timer for the ping, the token's expiry and the hole retry: the earliest of them.
        let mut next_ping = tokio::time::Instant::now() + ping_interval;
        let timer = sleep_until(next_ping);
        tokio::pin!(timer);
        // A fired timer stays ready until reset.
        let mut fired = false;

        loop {
            let mut deadline = next_ping;
            if let Some(expiry) = expiry {
                deadline = deadline.min(expiry);
            }
            if let Some(hole) = self.hole_deadline {
                deadline = deadline.min(tokio::time::Instant::from_std(hole));
            }
            if fired || timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
                fired = false;
            }
            let step = tokio::select! {
                biased;
                _ = &mut shutdown_changed => Step::Shutdown,
                taken = std::future::poll_fn(|cx| queue.poll_take(cx)) => match taken {
                    Taken::Overflowed => Step::Overflow,
                    Taken::Items(items) => Step::Outbound(items),
                },
                done = next_done(&mut self.tasks), if self.tasks.is_some() => Step::Done(done),
                frame = ws.next() => Step::Inbound(frame),
                () = &mut timer => Step::Timer,
            };
            let result = match step {
                // Rare or per inbound frame: boxed, so that the loop's own future (which an
                // idle connection keeps) stays small.
                Step::Shutdown => return Box::pin(self.reconnect_notice(ws)).await,
                Step::Overflow => {
                    return End::Close(close::SLOW_CONSUMER, "outgoing queue overflowed".into());
                }
                Step::Outbound(items) => self.outbound_batch(ws, items).await,
                Step::Done(done) => {
                    if self.tasks.as_ref().is_some_and(FuturesUnordered::is_empty) {
                        self.tasks = None;
                    }
                    match done {
                        Some(done) => Box::pin(self.done(ws, done)).await,
                        None => Ok(()),
                    }
                }
                Step::Inbound(frame) => Box::pin(self.inbound(ws, frame)).await,
                Step::Timer => {
                    fired = true;
                    let now = tokio::time::Instant::now();
                    if expiry.is_some_and(|at| at <= now) {
                        return End::Close(close::TOKEN_EXPIRED, "token expired".into());
                    }
                    let mut result = Ok(());
                    if self
                        .hole_deadline
                        .is_some_and(|at| tokio::time::Instant::from_std(at) <= now)
                    {
                        self.hole_deadline = None;
                        result = Box::pin(self.pump_waiting(ws)).await;
                    }
                    if result.is_ok() && next_ping <= now {
                        next_ping = now + ping_interval;
                        // Idle long enough for a ping: free the queue's buffer.
                        self.handle.queue.release();
                        if self.last_inbound.elapsed() > ping_interval * 3 {
                            return End::Quiet;
                        }
                        result = feed(
                            ws,
                            tungstenite::Message::Ping(Default::default()),
                            self.write_timeout,
                        )
                        .await;
                    }
                    result
                }
            };
            if let Err(end) = result {
                return end;
            }
            // Write what else was queued meanwhile, then flush once: one syscall for many
            // frames, one write deadline per batch.
            let mut batches = 0;
            while batches < WRITE_BATCHES {
                let Some(items) = queue.try_take() else {
                    break;
                };
                if let Err(end) = self.outbound_batch(ws, items).await {
                    return end;
                }
                batches += 1;
            }
            if let Err(end) = flush(ws, self.write_timeout).await {
                return end;
            }
        }
    }

    /// Writes a batch taken from the queue, in order, then hands its buffer back to the
    /// queue.
    async fn outbound_batch<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        mut items: VecDeque<Outbound>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        while let Some(item) = items.pop_front() {
            self.outbound(ws, item).await?;
        }
        self.handle.queue.recycle(items);
        Ok(())
    }

    /// Queues a store read whose result comes back through [`Step::Done`].
    fn spawn_task(&mut self, task: Task) {
        self.tasks
            .get_or_insert_with(FuturesUnordered::new)
            .push(task);
    }

    async fn reconnect_notice<S>(&mut self, ws: &mut WebSocketStream<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let frame = ServerFrame::Reconnect {
            after_ms: 500,
            reason: "server shutting down".into(),
        };
        let _ = feed(
            ws,
            tungstenite::Message::text(frame.to_json()),
            self.write_timeout,
        )
        .await;
        End::Close(close::SERVICE_RESTART, "server shutting down".into())
    }

    /// Unregisters the connection everywhere and records last seen.
    async fn finish(self) {
        let node = self.node;
        let user = self.identity.user;
        node.hub().unregister(&user, self.handle.id);
        let watched: HashSet<UserId> = self.watched.into_keys().collect();
        node.hub().unwatch(self.handle.id, &watched);
        let now = Timestamp::now();
        node.record_last_seen(&user, now);
        if node.is_shutting_down() {
            // The process is about to exit: write what is pending now, not behind.
            node.flush_last_seen().await;
        }
        // The registry announces the user going offline to every node's watchers.
        if let Err(err) = call(
            node.services().presence(),
            UnregisterDevice {
                user: user.clone(),
                device: self.identity.device.clone(),
                node: node.config().node_id.clone(),
                connection: self.handle.id,
                at: now,
            },
        )
        .await
        {
            tracing::warn!(error = %err, user = %user, "presence unregistration failed");
        }
        node.publish(DomainEvent::DeviceDisconnected {
            user: user.clone(),
            device: self.identity.device.clone(),
            at: now,
        });
        tracing::debug!(user = %user, connection = self.handle.id, "disconnected");
    }

    async fn outbound<S>(&mut self, ws: &mut WebSocketStream<S>, item: Outbound) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match item {
            Outbound::Frame(text) => self.write_text(ws, text).await,
            Outbound::Presence(frame) => {
                let PresenceFrame {
                    user,
                    text,
                    snapshot,
                } = *frame;
                match self.watched.get_mut(&user) {
                    // A live change was written since the subscription: this state is older.
                    Some(true) if snapshot => return Ok(()),
                    Some(live) if !snapshot => *live = true,
                    Some(_) => {}
                    // Unsubscribed meanwhile.
                    None => return Ok(()),
                }
                self.write_text(ws, text).await
            }
            Outbound::Entry(message, text) => {
                if !self.synced {
                    // See `hold`: the device's sync reads these from the store.
                    return Ok(());
                }
                // Fast path, the common case of a live fanout: the entry is exactly the next
                // one of its conversation and nothing is held or known beyond it. Written
                // straight away, without going through the held map.
                if let Some(track) = self.tracks.get_mut(&message.conversation) {
                    if message.seq == track.delivered.next()
                        && track.held.is_empty()
                        && track.known_head <= message.seq
                    {
                        track.delivered = message.seq;
                        track.known_head = message.seq;
                        track.missing_since = None;
                        track.retry_at = None;
                        feed(ws, tungstenite::Message::Text(text), self.write_timeout).await?;
                        if self.pending_sync.is_some() {
                            Box::pin(self.check_synced(ws, Some(&message.conversation))).await?;
                        }
                        return Ok(());
                    }
                }
                let conversation = message.conversation.clone();
                if self.hold(message, Some(text)) {
                    Box::pin(self.pump(ws, &conversation)).await?;
                }
                Ok(())
            }
        }
    }

    async fn write_text<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        text: Utf8Bytes,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        feed(ws, tungstenite::Message::Text(text), self.write_timeout).await
    }

    async fn reply<S>(&mut self, ws: &mut WebSocketStream<S>, frame: ServerFrame) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.write_text(ws, Utf8Bytes::from(frame.to_json())).await
    }

    /// Takes a live or fetched entry into its conversation's track. Returns whether the track
    /// should be pumped.
    fn hold(&mut self, message: Arc<Message>, text: Option<Utf8Bytes>) -> bool {
        if !self.synced {
            // Until the device syncs, live entries are not delivered: its sync reads them
            // from the store, so dropping them here loses nothing and duplicates nothing.
            return false;
        }
        let (track, known) = match self.tracks.entry(message.conversation.clone()) {
            std::collections::hash_map::Entry::Occupied(entry) => (entry.into_mut(), true),
            // A conversation first seen live (a group the user was just added to): its
            // whole log is read from the store, from seq 0, right away.
            std::collections::hash_map::Entry::Vacant(entry) => {
                (entry.insert(Track::new(Seq::ZERO)), false)
            }
        };
        if message.seq <= track.delivered {
            return false;
        }
        if known
            && message.seq > track.delivered.next()
            && track.missing_since.is_none()
            && track.retry_at.is_none()
            && !track.fetching
        {
            // A new gap in a live stream: the missing entries are most likely still on their
            // way (sends are stored concurrently, so the fanout can hand entries over out of
            // order). Give them a moment before asking the store, rather than one store read
            // per connection of a large group for every reordering.
            let now = Instant::now();
            track.missing_since = Some(now);
            track.missing_upto = message.seq;
            track.retry_at = Some(now + HOLE_RETRY);
        }
        track.known_head = track.known_head.max(message.seq);
        track
            .held
            .entry(message.seq)
            .or_insert(Held { message, text });
        true
    }

    /// Writes every entry of `conversation` that is next in line; asks the store for what is
    /// missing.
    async fn pump<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        conversation: &ConversationId,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let write_timeout = self.write_timeout;
        let sync_page = self.node.config().sync_page;
        let void_after = self.node.config().void_after;
        let Some(track) = self.tracks.get_mut(conversation) else {
            return Ok(());
        };
        let mut progressed = false;
        while let Some(entry) = track.held.first_entry() {
            let seq = *entry.key();
            if seq <= track.delivered {
                entry.remove();
                continue;
            }
            if seq != track.delivered.next() {
                break;
            }
            let held = entry.remove();
            track.delivered = seq;
            progressed = true;
            let text = held.text.unwrap_or_else(|| {
                Utf8Bytes::from(
                    ServerFrame::Message {
                        message: held.message,
                    }
                    .to_json(),
                )
            });
            feed(ws, tungstenite::Message::Text(text), write_timeout).await?;
        }
        if progressed {
            track.missing_since = None;
            track.retry_at = None;
        }
        let delivered = track.delivered;
        if track.delivered < track.known_head && !track.fetching {
            let now = Instant::now();
            if track.missing_since.is_none() {
                track.missing_since = Some(now);
                track.missing_upto = track.known_head;
            }
            let missing_since = track.missing_since.unwrap_or(now);
            match track.retry_at {
                Some(at) if at > now => {
                    self.hole_deadline = Some(self.hole_deadline.map_or(at, |d| d.min(at)));
                }
                _ => {
                    track.fetching = true;
                    let store = self.node.services().store().clone();
                    let conversation = conversation.clone();
                    let until = track.known_head;
                    let limit = sync_page;
                    // Watched for `void_after`: what was known missing then is dead.
                    let overdue = if now.duration_since(missing_since) >= void_after {
                        track.missing_upto
                    } else {
                        Seq::ZERO
                    };
                    self.spawn_task(Box::pin(async move {
                        // Dead holes come back as voids, all of them in one store write.
                        let range = ReadRange {
                            conversation: conversation.clone(),
                            after: delivered,
                            until: Some(until),
                            limit,
                        };
                        let result =
                            crate::engine::holes::read_after(&store, range, void_after, overdue)
                                .await
                                .map(MessagePage::from);
                        Done::Fetched(conversation, result)
                    }));
                }
            }
        }
        self.check_synced(ws, Some(conversation)).await
    }

    async fn pump_waiting<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let now = Instant::now();
        let due: Vec<ConversationId> = self
            .tracks
            .iter()
            .filter(|(_, track)| {
                !track.fetching
                    && track.delivered < track.known_head
                    && track.retry_at.is_some_and(|at| at <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for conversation in due {
            self.pump(ws, &conversation).await?;
        }
        Ok(())
    }

    /// Sends `synced` once every conversation of the pending sync reached its target;
    /// `conversation` is the one that just moved.
    async fn check_synced<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        conversation: Option<&ConversationId>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(pending) = &mut self.pending_sync else {
            return Ok(());
        };
        if let Some(conversation) = conversation {
            let delivered = self
                .tracks
                .get(conversation)
                .map_or(Seq::ZERO, |track| track.delivered);
            if pending
                .remaining
                .get(conversation)
                .is_some_and(|target| delivered >= *target)
            {
                pending.remaining.remove(conversation);
            }
        }
        if pending.remaining.is_empty() {
            if let Some(pending) = self.pending_sync.take() {
                let frame = ServerFrame::Synced {
                    conversations: pending.summaries,
                };
                self.reply(ws, frame).await?;
            }
        }
        Ok(())
    }

    async fn done<S>(&mut self, ws: &mut WebSocketStream<S>, done: Done) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match done {
            Done::SyncLoaded(Ok(summaries), cursors) => {
                self.synced = true;
                let mut remaining = HashMap::new();
                let mut ids = Vec::with_capacity(summaries.len());
                for summary in &summaries {
                    let id = summary.conversation.id.clone();
                    let cursor = cursors
                        .get(&id)
                        .copied()
                        .unwrap_or(Seq::ZERO)
                        .min(summary.head);
                    let track = self
                        .tracks
                        .entry(id.clone())
                        .or_insert_with(|| Track::new(cursor));
                    track.delivered = cursor;
                    track.known_head = track.known_head.max(summary.head);
                    track.retry_at = None;
                    track.missing_since = None;
                    if summary.head > cursor {
                        remaining.insert(id.clone(), summary.head);
                    }
                    ids.push(id);
                }
                self.pending_sync = Some(PendingSync {
                    summaries,
                    remaining,
                });
                for id in &ids {
                    self.pump(ws, id).await?;
                }
                // Conversations with nothing to stream (or none at all) are done already.
                self.check_synced(ws, None).await
            }
            Done::SyncLoaded(Err(err), _) => self.reply(ws, request_error(None, &err)).await,
            Done::Fetched(conversation, result) => {
                let Some(track) = self.tracks.get_mut(&conversation) else {
                    return Ok(());
                };
                track.fetching = false;
                match result {
                    Ok(page) => {
                        track.known_head = track.known_head.max(page.head);
                        for message in page.messages {
                            if message.seq > track.delivered {
                                track.held.entry(message.seq).or_insert(Held {
                                    message,
                                    text: None,
                                });
                            }
                        }
                        if !track.held.contains_key(&track.delivered.next()) {
                            track.retry_at = Some(Instant::now() + HOLE_RETRY);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, %conversation, "store read for delivery failed");
                        track.retry_at = Some(Instant::now() + HOLE_RETRY * 10);
                    }
                }
                self.pump(ws, &conversation).await
            }
        }
    }

    async fn inbound<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        frame: Option<Result<tungstenite::Message, tungstenite::Error>>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.last_inbound = Instant::now();
        let text = match frame {
            Some(Ok(tungstenite::Message::Text(text))) => text,
            Some(Ok(tungstenite::Message::Binary(_))) => {
                return Err(End::Close(
                    close::UNSUPPORTED_DATA,
                    "text frames only".into(),
                ));
            }
            Some(Ok(tungstenite::Message::Close(_))) | None => return Err(End::Quiet),
            Some(Ok(_)) => return Ok(()),
            Some(Err(err)) => {
                return Err(match transport_close(&err) {
                    Some((code, reason)) => End::Close(code, reason),
                    None => End::Quiet,
                });
            }
        };
        let frame = match decode_client_frame(&text) {
            Ok(frame) => frame,
            Err(err) => {
                self.bad_frames += 1;
                if self.bad_frames >= self.node.config().max_bad_frames {
                    return Err(End::Close(
                        close::TOO_MANY_ERRORS,
                        "too many bad frames".into(),
                    ));
                }
                return self
                    .reply(ws, ServerFrame::error(err.id, err.code, err.message))
                    .await;
            }
        };
        self.bad_frames = 0;
        // Pacing, not refusal: a device over its frame rate is simply read more slowly, and
        // TCP backpressure slows it down. Nothing it sent is lost.
        self.frames.until_ready().await;
        self.handle_frame(ws, frame).await
    }

    /// Runs a request off the loop: `work` gets the request id for its answer; the answer (or
    /// the error frame) comes back through the connection's queue.
    fn spawn_request<F, W>(&self, id: Option<RequestId>, work: W) -> Result<(), End>
    where
        W: FnOnce(Option<RequestId>) -> F,
        F: std::future::Future<Output = Result<ServerFrame, Error>> + Send + 'static,
    {
        let handle = self.handle.clone();
        let work = work(id.clone());
        tokio::spawn(async move {
            let frame = match work.await {
                Ok(frame) => frame,
                Err(err) => request_error(id, &err),
            };
            handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
        });
        Ok(())
    }

    async fn handle_frame<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        frame: ClientFrame,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limits = self.node.config().limits.clone();
        let node = self.node.clone();
        let me = self.identity.clone();
        match frame {
            ClientFrame::Hello { .. } => {
                self.reply(
                    ws,
                    ServerFrame::error(None, ErrorCode::NotAuthenticated, "already authenticated"),
                )
                .await
            }
            ClientFrame::Sync { cursors } => {
                let store = node.services().store().clone();
                let user = me.user.clone();
                self.spawn_task(Box::pin(async move {
                    let result = call(&store, UserConversations { user }).await;
                    Done::SyncLoaded(result, cursors)
                }));
                Ok(())
            }
            ClientFrame::Send {
                conversation,
                client_msg_id,
                body,
            } => {
                let err = match node.validate_body(body) {
                    // A full send queue slows the reading of this connection (backpressure)
                    // rather than refusing: refusals would make retries overtake later sends.
                    Ok(body) => match self
                        .sends
                        .send(
                            &self.node,
                            &self.identity,
                            &self.handle,
                            QueuedSend {
                                conversation: conversation.clone(),
                                client_msg_id: client_msg_id.clone(),
                                body,
                            },
                        )
                        .await
                    {
                        Ok(()) => return Ok(()),
                        Err(_) => Error::refused(ErrorCode::Internal, "the send worker stopped"),
                    },
                    Err(err) => err,
                };
                self.reply(ws, send_error(conversation, client_msg_id, &err))
                    .await
            }
            ClientFrame::Delivered { conversation, seq } => {
                self.receipt(conversation, ReceiptKind::Delivered, seq);
                Ok(())
            }
            ClientFrame::Read { conversation, seq } => {
                self.receipt(conversation, ReceiptKind::Read, seq);
                Ok(())
            }
            ClientFrame::Typing {
                conversation,
                active,
            } => {
                if self.typing.check().is_ok() {
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let typing = SetTyping {
                            actor: me,
                            conversation,
                            active,
                        };
                        if let Err(err) = node.set_typing(typing).await {
                            let frame = request_error(None, &err);
                            handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
                        }
                    });
                }
                Ok(())
            }
            ClientFrame::OpenDirect { id, user } => self.spawn_request(id, |request| async move {
                let info = node
                    .open_direct(OpenDirect {
                        actor: me,
                        other: user,
                    })
                    .await?;
                Ok(conversation_frame(request, info))
            }),
            ClientFrame::CreateGroup { id, title, members } => {
                self.spawn_request(id, |request| async move {
                    let create = CreateGroup {
                        actor: me,
                        title,
                        members,
                    };
                    Ok(conversation_frame(
                        request,
                        node.create_group(create).await?,
                    ))
                })
            }
            ClientFrame::AddMembers {
                id,
                conversation,
                users,
                role,
            } => self.spawn_request(id, |request| async move {
                let add = AddMembers {
                    actor: me,
                    conversation: conversation.clone(),
                    users,
                    role: role.unwrap_or(Role::Member),
                };
                Ok(changed(request, conversation, node.add_members(add).await?))
            }),
            ClientFrame::RemoveMember {
                id,
                conversation,
                user,
            } => self.spawn_request(id, |request| async move {
                let remove = RemoveMember {
                    actor: me,
                    conversation: conversation.clone(),
                    user,
                };
                Ok(changed(
                    request,
                    conversation,
                    node.remove_member(remove).await?,
                ))
            }),
            ClientFrame::Leave { id, conversation } => {
                self.spawn_request(id, |request| async move {
                    let leave = LeaveGroup {
                        actor: me,
                        conversation: conversation.clone(),
                    };
                    Ok(changed(request, conversation, node.leave(leave).await?))
                })
            }
            ClientFrame::SetRole {
                id,
                conversation,
                user,
                role,
            } => self.spawn_request(id, |request| async move {
                let set = SetRole {
                    actor: me,
                    conversation: conversation.clone(),
                    user,
                    role,
                };
                Ok(changed(request, conversation, node.set_role(set).await?))
            }),
            ClientFrame::History {
                id,
                conversation,
                after,
                before,
                limit,
            } => self.spawn_request(id, |request| async move {
                let read = ReadHistory {
                    actor: me,
                    conversation: conversation.clone(),
                    after,
                    before,
                    limit,
                };
                let page = node.read_history(read).await?;
                Ok(ServerFrame::History {
                    id: request,
                    conversation,
                    messages: page.messages,
                    head: page.head,
                })
            }),
            ClientFrame::Conversations { id } => self.spawn_request(id, |request| async move {
                let conversations = node
                    .list_conversations(ListConversations { user: me.user })
                    .await?;
                Ok(ServerFrame::Conversations {
                    id: request,
                    conversations,
                })
            }),
            ClientFrame::Members { id, conversation } => {
                self.spawn_request(id, |request| async move {
                    let info = node
                        .get_members(GetMembers {
                            actor: me,
                            conversation,
                        })
                        .await?;
                    Ok(conversation_frame(request, info))
                })
            }
            ClientFrame::Receipts { id, conversation } => {
                self.spawn_request(id, |request| async move {
                    let receipts = node
                        .read_receipts(ReadReceipts {
                            actor: me,
                            conversation: conversation.clone(),
                        })
                        .await?;
                    Ok(ServerFrame::Receipts {
                        id: request,
                        conversation,
                        receipts,
                    })
                })
            }
            ClientFrame::LastSeen { id, users } => self.spawn_request(id, |request| async move {
                let users = node.presence_of(GetPresence { users }).await?;
                Ok(ServerFrame::LastSeen { id: request, users })
            }),
            ClientFrame::SubscribePresence { id, users } => {
                if let Err(err) = check_user_count(&users, limits.max_users_per_request) {
                    return self.reply(ws, request_error(id, &err)).await;
                }
                if self.watched.len() + users.len() > limits.max_users_per_request * 4 {
                    return self
                        .reply(
                            ws,
                            ServerFrame::error(
                                id,
                                ErrorCode::TooLarge,
                                "too many presence subscriptions on this connection",
                            ),
                        )
                        .await;
                }
                self.node.hub().watch(&self.handle, &users);
                // The snapshot below counts until a live change about the user is written.
                self.watched
                    .extend(users.iter().map(|user| (user.clone(), false)));
                self.reply(ws, ServerFrame::Ok { id }).await?;
                let handle = self.handle.clone();
                tokio::spawn(async move {
                    if let Ok(states) = node.presence_of(GetPresence { users }).await {
                        for state in states {
                            let frame = ServerFrame::Presence {
                                user: state.user.clone(),
                                online: state.online,
                                last_seen: state.last_seen,
                            };
                            handle.push(Outbound::Presence(Box::new(PresenceFrame {
                                user: state.user,
                                text: Utf8Bytes::from(frame.to_json()),
                                snapshot: true,
                            })));
                        }
                    }
                });
                Ok(())
            }
            ClientFrame::UnsubscribePresence { id, users } => {
                if let Err(err) = check_user_count(&users, limits.max_users_per_request) {
                    return self.reply(ws, request_error(id, &err)).await;
                }
                let users: HashSet<UserId> = users.into_iter().collect();
                self.node.hub().unwatch(self.handle.id, &users);
                self.watched.retain(|user, _| !users.contains(user));
                self.reply(ws, ServerFrame::Ok { id }).await
            }
            ClientFrame::Ping { id } => self.reply(ws, ServerFrame::Pong { id }).await,
            _ => {
                self.reply(
                    ws,
                    ServerFrame::error(None, ErrorCode::UnknownType, "unsupported frame"),
                )
                .await
            }
        }
    }

    fn receipt(&self, conversation: ConversationId, kind: ReceiptKind, seq: Seq) {
        let node = self.node.clone();
        let mark = MarkReceipt {
            actor: self.identity.clone(),
            conversation,
            kind,
            seq,
        };
        let handle = self.handle.clone();
        tokio::spawn(async move {
            // Refusals of receipts carry neither `id` nor `conversation` (docs/protocol.md).
            if let Err(err) = node.mark_receipt(mark).await {
                let frame = request_error(None, &err);
                handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
            }
        });
    }
}

fn conversation_frame(
    id: Option<RequestId>,
    info: messenger_core::store::ConversationInfo,
) -> ServerFrame {
    ServerFrame::Conversation {
        id,
        conversation: info.conversation,
        members: info.members,
        head: info.head,
    }
}

fn changed(id: Option<RequestId>, conversation: ConversationId, seq: Seq) -> ServerFrame {
    ServerFrame::Changed {
        id,
        conversation,
        seq,
    }
}

fn check_user_count(users: &[UserId], max: usize) -> Result<(), Error> {
    if users.len() > max {
        return Err(Error::refused(
            ErrorCode::TooLarge,
            format!("at most {max} users per request"),
        ));
    }
    Ok(())
}

enum Step {
    Shutdown,
    Overflow,
    Outbound(VecDeque<Outbound>),
    Done(Option<Done>),
    Inbound(Option<Result<tungstenite::Message, tungstenite::Error>>),
    Timer,
}

/// The next finished store read; never resolves while none is in flight.
async fn next_done(tasks: &mut Option<FuturesUnordered<Task>>) -> Option<Done> {
    match tasks {
        Some(tasks) => tasks.next().await,
        None => std::future::pending().await,
    }
}

/// Buffers `message` for writing. A frame that fits the write buffer costs no timer: the
/// write deadline is armed only when the socket pushes back.
async fn feed<S>(
    ws: &mut WebSocketStream<S>,
    message: tungstenite::Message,
    write_timeout: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Polled again below with the task's waker when pending, which registers it.
    match ws.poll_ready_unpin(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => return ws.start_send_unpin(message).map_err(|_| End::Quiet),
        Poll::Ready(Err(_)) => return Err(End::Quiet),
        Poll::Pending => {}
    }
    match Box::pin(timeout(write_timeout, ws.feed(message))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Quiet),
    }
}

/// Writes out what is buffered; the deadline is armed only when the socket pushes back.
async fn flush<S>(ws: &mut WebSocketStream<S>, write_timeout: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match ws.poll_flush_unpin(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => return Ok(()),
        Poll::Ready(Err(_)) => return Err(End::Quiet),
        Poll::Pending => {}
    }
    match Box::pin(timeout(write_timeout, ws.flush())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Quiet),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use messenger_core::protocol::ServerFrame;
    use messenger_fanout::presence::{Presence, memory::MemoryPresence};
    use messenger_fanout::{Fanout, local::LocalFanout};
    use messenger_sequencer::{Sequencer, memory::MemorySequencer};
    use messenger_store::{EmbeddedStore, Store};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::auth::DevAuthenticator;
    use crate::hub::Hub;
    use crate::{EngineConfig, Services};

    async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> ServerFrame
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let message = timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("frame");
            if let tungstenite::Message::Text(text) = message {
                return serde_json::from_str(&text).expect("a server frame");
            }
        }
    }

    /// The state read when a connection subscribes to someone's presence can be queued after a
    /// live change about them; written last, it would tell the client the older state.
    #[tokio::test]
    async fn a_presence_snapshot_older_than_a_live_change_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(EmbeddedStore::open(dir.path().join("m.db")).unwrap());
        let hub = Hub::new();
        let engine = Engine::new(
            Services {
                sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
                fanout: Fanout::new(LocalFanout::new(Arc::clone(&hub))),
                store,
                auth: DevAuthenticator,
                presence: Presence::new(MemoryPresence::new()),
            },
            hub,
            EngineConfig::default(),
        );
        let (server_side, client_side) = tokio::io::duplex(64 * 1024);
        let serving = engine.clone();
        tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_side, Role::Server, None).await;
            serve_connection(serving, ws).await;
        });
        let mut ws = WebSocketStream::from_raw_socket(client_side, Role::Client, None).await;
        let send = |text: &str| tungstenite::Message::text(text.to_owned());
        ws.send(send(r#"{"type":"hello","v":1,"token":"alice:phone"}"#))
            .await
            .unwrap();
        assert!(matches!(
            next_frame(&mut ws).await,
            ServerFrame::Welcome { .. }
        ));
        ws.send(send(
            r#"{"type":"subscribe_presence","id":"p","users":["carol"]}"#,
        ))
        .await
        .unwrap();
        // `ok`, then the snapshot (carol never seen): a live change of carol's counts from here.
        assert!(matches!(next_frame(&mut ws).await, ServerFrame::Ok { .. }));
        let snapshot = next_frame(&mut ws).await;
        assert!(matches!(
            snapshot,
            ServerFrame::Presence { online: false, .. }
        ));

        // Carol comes online (live), then a stale snapshot of the same subscription arrives.
        let alice = UserId::new("alice").unwrap();
        let carol = UserId::new("carol").unwrap();
        let handle = engine
            .hub()
            .handles(&alice)
            .pop()
            .expect("alice's connection");
        let frame = |online: bool| {
            Utf8Bytes::from(
                ServerFrame::Presence {
                    user: carol.clone(),
                    online,
                    last_seen: Some(Timestamp(5)),
                }
                .to_json(),
            )
        };
        handle.push(Outbound::Presence(Box::new(PresenceFrame {
            user: carol.clone(),
            text: frame(true),
            snapshot: false,
        })));
        handle.push(Outbound::Presence(Box::new(PresenceFrame {
            user: carol.clone(),
            text: frame(false),
            snapshot: true,
        })));
        ws.send(send(r#"{"type":"ping","id":"after"}"#))
            .await
            .unwrap();
        let mut presence = Vec::new();
        loop {
            match next_frame(&mut ws).await {
                ServerFrame::Presence { online, .. } => presence.push(online),
                ServerFrame::Pong { .. } => break,
                _ => {}
            }
        }
        assert_eq!(
            presence,
            [true],
            "the stale snapshot was written after the live change"
        );
    }
}
