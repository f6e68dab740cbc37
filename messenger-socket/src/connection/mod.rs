//! One WebSocket connection: hello, then frames in, events out, in seq order per conversation.
//!
//! [`serve_connection`] is generic over the byte stream, so tests can drive it over
//! `tokio::io::duplex` and servers over TCP or TLS. The concerns live in their own modules:
//! [`hello`] (authentication), [`dispatch`] (frames in and their answers), [`sends`] (the
//! send queue), [`delivery`] (ordered delivery and gap filling), [`sync`] (backlogs),
//! [`presence`] (subscriptions), [`closing`] and [`write`] (the socket's two ends); this module
//! is the loop that joins them.

mod closing;
mod delivery;
mod dispatch;
mod hello;
mod presence;
mod refusal;
mod sends;
mod sync;
#[cfg(test)]
mod testing;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use messenger_core::auth::Identity;
use messenger_core::presence::{RegisterDevice, UnregisterDevice};
use messenger_core::protocol::{ServerFrame, close};
use messenger_core::store::MessagePage;
use messenger_core::{
    ConversationId, ConversationSummary, DomainEvent, Error, Seq, Timestamp, UserId, call,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

use self::closing::close_with;
use self::delivery::Track;
use self::hello::hello;
use self::sends::SendWorker;
use self::sync::PendingSync;
use self::write::{feed, flush};
use crate::engine::layer::CLOCK;
use crate::engine::{Backends, Engine};
use crate::hub::{ConnectionHandle, Outbound, Taken};

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
    let config = node.config();
    let identity = match timeout(config.hello_timeout, hello(&node, &mut ws)).await {
        Err(_) => {
            close_with(&mut ws, close::HELLO_TIMEOUT, "no hello in time", config).await;
            return;
        }
        Ok(Err(Some((code, reason)))) => {
            close_with(&mut ws, code, &reason, config).await;
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
            node: node.node_id().clone(),
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
    let end = connection.run(&mut ws).await;
    match end {
        End::Close(code, reason) => {
            Box::pin(close_with(&mut ws, code, &reason, node.config())).await;
        }
        End::Quiet => {}
    }
    Box::pin(connection.finish()).await;
}

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer left or the socket broke: nothing more to send.
    Quiet,
}

/// What an internal task brings back to the loop.
enum Done {
    /// The user's conversations, for a `sync`.
    SyncLoaded(
        Result<Vec<ConversationSummary>, Error>,
        BTreeMap<ConversationId, Seq>,
        Option<u32>,
    ),
    /// A page of entries for a gap or a backlog.
    Fetched(ConversationId, Result<MessagePage, Error>),
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

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
                node: node.node_id().clone(),
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
            Outbound::Presence(frame) => self.write_presence(ws, *frame).await,
            Outbound::Entry(message, text) => self.deliver_live(ws, message, text).await,
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
    async fn done<S>(&mut self, ws: &mut WebSocketStream<S>, done: Done) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match done {
            Done::SyncLoaded(result, cursors, limit) => {
                self.sync_loaded(ws, result, cursors, limit).await
            }
            Done::Fetched(conversation, result) => self.fetched(ws, conversation, result).await,
        }
    }
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
