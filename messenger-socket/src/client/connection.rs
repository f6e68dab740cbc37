//! The background task: owns the socket, orders entries, runs the outbox, reconnects.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::{ClientFrame, NewBody, PROTOCOL_VERSION, ServerFrame};
use messenger_core::{
    ClientMsgId, ConversationId, DeviceId, Error, ErrorKind, Message, PresenceUpdate,
    ReceiptUpdate, RequestId, Seq, TypingUpdate, UserId,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use super::config::{Backoff, ClientConfig, jitter};
use super::error::{AfterClose, classify_close, client_closed, copy_error, from_error_frame};
use super::event::ClientEvent;
use super::order::{Order, Source};
use super::outbox::{Outbox, SendReply};
use super::{Sent, Shared};

/// The socket type.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where a request's answer goes.
pub(crate) type RequestReply = oneshot::Sender<Result<ServerFrame, Error>>;

/// How long received entries wait before their `delivered` is reported, so bursts coalesce.
const DELIVERED_DELAY: Duration = Duration::from_millis(100);

/// The history page size used to fill gaps.
const FILL_PAGE: usize = messenger_core::protocol::MAX_HISTORY_LIMIT;

/// What a [`super::Client`] handle asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A request with an id; answered by the frame carrying the same id.
    Request {
        id: RequestId,
        frame: ClientFrame,
        reply: RequestReply,
    },
    /// A message for the outbox.
    Send {
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: NewBody,
        reply: SendReply,
    },
    /// A frame without an answer (`delivered`, `read`, `typing`): written now or refused.
    Notify {
        frame: ClientFrame,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A fresh token for the next connection.
    SetToken(String),
    /// Close cleanly and end the task.
    Close { reply: oneshot::Sender<()> },
}

/// The authenticated session a `welcome` describes.
#[derive(Debug)]
pub(crate) struct Welcome {
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    pub(crate) limits: messenger_core::protocol::Limits,
}

/// A failed connection attempt.
#[derive(Debug)]
pub(crate) struct HandshakeError {
    pub(crate) error: Error,
    pub(crate) after: AfterClose,
}

/// Connects, says `hello` and waits for `welcome`, all within `timeout`.
pub(crate) async fn handshake(
    url: &str,
    token: &str,
    timeout: Duration,
) -> Result<(Socket, Welcome), HandshakeError> {
    match tokio::time::timeout(timeout, handshake_untimed(url, token)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError {
            error: Error::new(
                ErrorKind::Timeout,
                format!("no welcome from {url} within {timeout:?}"),
            ),
            after: AfterClose::Reconnect,
        }),
    }
}

async fn handshake_untimed(url: &str, token: &str) -> Result<(Socket, Welcome), HandshakeError> {
    // `TCP_NODELAY` (the `true`): with Nagle's algorithm a small frame written while an
    // earlier one is unacknowledged waits for the server's delayed ACK, ~40 ms per message
    // under moderate load. The connection coalesces its own writes.
    let connecting = connect_async_with_config(url, None, true);
    let (mut socket, _response) = connecting.await.map_err(|err| {
        let (kind, after) = match err {
            tokio_tungstenite::tungstenite::Error::Url(_) => {
                (ErrorKind::InvalidRequest, AfterClose::Fatal)
            }
            _ => (ErrorKind::Unavailable, AfterClose::Reconnect),
        };
        HandshakeError {
            error: Error::new(kind, format!("cannot connect to {url}")).with_source(err),
            after,
        }
    })?;
    let hello = ClientFrame::Hello {
        v: PROTOCOL_VERSION,
        token: token.to_owned(),
    };
    socket
        .send(WsMessage::text(hello.to_json()))
        .await
        .map_err(lost_in_handshake)?;
    loop {
        let Some(received) = socket.next().await else {
            return Err(HandshakeError {
                error: Error::new(ErrorKind::Unavailable, "the server closed before welcome"),
                after: AfterClose::Reconnect,
            });
        };
        match received.map_err(lost_in_handshake)? {
            WsMessage::Text(text) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Welcome {
                    v,
                    user,
                    device,
                    limits,
                    ..
                }) => {
                    if v != PROTOCOL_VERSION {
                        return Err(HandshakeError {
                            error: Error::new(
                                ErrorKind::InvalidRequest,
                                format!("the server speaks protocol v{v}, not v{PROTOCOL_VERSION}"),
                            ),
                            after: AfterClose::Fatal,
                        });
                    }
                    let welcome = Welcome {
                        user,
                        device,
                        limits,
                    };
                    return Ok((socket, welcome));
                }
                Ok(ServerFrame::Error {
                    code,
                    message,
                    retryable,
                    ..
                }) => {
                    let after = if retryable {
                        AfterClose::Reconnect
                    } else {
                        AfterClose::Fatal
                    };
                    let error = from_error_frame(code, &message);
                    return Err(HandshakeError { error, after });
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "undecodable frame before welcome"),
            },
            WsMessage::Close(frame) => {
                let (error, after) = match frame {
                    Some(frame) => classify_close(Some(u16::from(frame.code)), &frame.reason),
                    None => classify_close(None, ""),
                };
                return Err(HandshakeError { error, after });
            }
            _ => {}
        }
    }
}

fn lost_in_handshake(err: tokio_tungstenite::tungstenite::Error) -> HandshakeError {
    HandshakeError {
        error: Error::new(ErrorKind::Unavailable, "the connection was lost").with_source(err),
        after: AfterClose::Reconnect,
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// Closed on purpose (by [`super::Client::close`] or because every handle was dropped).
    Closed(Option<oneshot::Sender<()>>),
    /// Lost; what to do next.
    Lost(Error, AfterClose),
}

fn lost(err: tokio_tungstenite::tungstenite::Error) -> End {
    End::Lost(
        Error::new(ErrorKind::Unavailable, "the connection was lost").with_source(err),
        AfterClose::Reconnect,
    )
}

/// What an offline command asks of the reconnect loop.
enum Flow {
    Continue,
    TokenSet,
    Close(oneshot::Sender<()>),
}

/// A sleep that never fires when `at` is `None` (its `select!` branch is disabled anyway).
fn sleep_opt(at: Option<Instant>) -> Sleep {
    sleep_until(at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)))
}

/// The background task's state.
#[derive(Debug)]
pub(crate) struct Driver {
    /// The endpoints: the configured one first, then the fallbacks.
    urls: Vec<String>,
    /// Which endpoint the next attempt uses (modulo `urls.len()`).
    next_url: usize,
    token: String,
    connect_timeout: Duration,
    keepalive: Duration,
    auto_delivered: bool,
    sync_limit: Option<u32>,
    event_capacity: usize,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<ClientEvent>,
    events_open: bool,
    pending_events: VecDeque<ClientEvent>,
    order: Order,
    outbox: Outbox,
    /// Requests written on the current connection, waiting for their answer.
    requests: HashMap<RequestId, RequestReply>,
    /// Requests made while disconnected, written after the next `welcome`.
    queued: VecDeque<(RequestId, ClientFrame, RequestReply)>,
    /// Gap fills in flight: request id → conversation.
    fills: HashMap<RequestId, ConversationId>,
    next_fill: u64,
    delivered_dirty: BTreeSet<ConversationId>,
    delivered_sent: HashMap<ConversationId, Seq>,
    delivered_due: Option<Instant>,
    synced: bool,
    /// When refused-but-retryable sends go out again.
    retry_at: Option<Instant>,
    send_backoff: Backoff,
    reconnect_backoff: Backoff,
    /// The delay a `reconnect` frame asked for.
    suggested_delay: Option<Duration>,
}

impl Driver {
    pub(crate) fn new(
        config: &ClientConfig,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<ClientEvent>,
    ) -> Self {
        let mut urls = vec![config.url.clone()];
        urls.extend(config.fallback_urls.iter().cloned());
        Driver {
            urls,
            next_url: 0,
            token: config.token.clone(),
            connect_timeout: config.connect_timeout,
            keepalive: config.keepalive.max(Duration::from_millis(10)),
            auto_delivered: config.auto_delivered,
            sync_limit: config.sync_limit,
            event_capacity: config.event_capacity.max(1),
            shared,
            commands,
            events,
            events_open: true,
            pending_events: VecDeque::new(),
            order: Order::new(&config.cursors),
            outbox: Outbox::default(),
            requests: HashMap::new(),
            queued: VecDeque::new(),
            fills: HashMap::new(),
            next_fill: 0,
            delivered_dirty: BTreeSet::new(),
            delivered_sent: HashMap::new(),
            delivered_due: None,
            synced: false,
            retry_at: None,
            send_backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            reconnect_backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            suggested_delay: None,
        }
    }

    /// Runs until the client is closed, starting on an authenticated socket.
    pub(crate) async fn run(mut self, socket: Socket, welcome: Welcome) {
        let mut socket = socket;
        let mut welcome = welcome;
        loop {
            self.shared.set_limits(welcome.limits.clone());
            self.push_event(ClientEvent::Connected {
                user: welcome.user,
                device: welcome.device,
                limits: welcome.limits,
            });
            let (error, after) = match self.connected(&mut socket).await {
                End::Closed(reply) => {
                    self.finish(None).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    }
                    return;
                }
                End::Lost(error, after) => (error, after),
            };
            drop(socket);
            self.connection_lost();
            match self.reconnect(error, after).await {
                Some((next_socket, next_welcome)) => {
                    socket = next_socket;
                    welcome = next_welcome;
                }
                None => return,
            }
        }
    }

    // ---- connected -------------------------------------------------------------------

    async fn connected(&mut self, socket: &mut Socket) -> End {
        if let Err(end) = self.start_session(socket).await {
            return end;
        }
        let mut keepalive =
            tokio::time::interval_at(Instant::now() + self.keepalive, self.keepalive);
        let mut last_received = Instant::now();
        let events = self.events.clone();
        loop {
            let can_read = self.pending_events.len() < self.event_capacity;
            let has_events = self.events_open && !self.pending_events.is_empty();
            let step: Result<(), End> = tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.online_command(socket, command).await,
                    None => {
                        close_socket(socket).await;
                        Err(End::Closed(None))
                    }
                },
                received = socket.next(), if can_read => {
                    last_received = Instant::now();
                    self.on_socket(socket, received).await
                }
                permit = events.reserve(), if has_events => {
                    self.deliver_event(permit);
                    Ok(())
                }
                () = sleep_opt(self.delivered_due), if self.delivered_due.is_some() => {
                    self.flush_delivered(socket).await
                }
                () = sleep_opt(self.retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.transmit_outbox(socket).await
                }
                _ = keepalive.tick() => {
                    if last_received.elapsed() > self.keepalive * 2 {
                        Err(End::Lost(
                            Error::new(ErrorKind::Timeout, "the server went silent"),
                            AfterClose::Reconnect,
                        ))
                    } else {
                        socket.send(WsMessage::Ping(Default::default())).await.map_err(lost)
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// After `welcome`: `sync`, then the outbox in order, then the queued requests.
    async fn start_session(&mut self, socket: &mut Socket) -> Result<(), End> {
        let sync = ClientFrame::Sync {
            cursors: self.order.cursors(),
            limit: self.sync_limit,
        };
        write(socket, &sync).await?;
        self.transmit_outbox(socket).await?;
        while let Some((id, frame, reply)) = self.queued.pop_front() {
            if reply.is_closed() {
                continue;
            }
            write(socket, &frame).await?;
            self.requests.insert(id, reply);
        }
        Ok(())
    }

    async fn transmit_outbox(&mut self, socket: &mut Socket) -> Result<(), End> {
        for frame in self.outbox.take_unsent() {
            write(socket, &frame).await?;
        }
        Ok(())
    }

    async fn online_command(&mut self, socket: &mut Socket, command: Command) -> Result<(), End> {
        match command {
            Command::Request { id, frame, reply } => {
                self.requests.retain(|_, waiting| !waiting.is_closed());
                write(socket, &frame).await?;
                self.requests.insert(id, reply);
            }
            Command::Send {
                conversation,
                client_msg_id,
                body,
                reply,
            } => {
                self.outbox.push(conversation, client_msg_id, body, reply);
                self.update_outbox_len();
                if self.retry_at.is_none() {
                    self.transmit_outbox(socket).await?;
                }
            }
            Command::Notify { frame, reply } => {
                let result = write(socket, &frame).await;
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Error::new(
                        ErrorKind::Unavailable,
                        "the connection was lost",
                    )),
                };
                let _ = reply.send(answer);
                result?;
            }
            Command::SetToken(token) => self.token = token,
            Command::Close { reply } => {
                close_socket(socket).await;
                return Err(End::Closed(Some(reply)));
            }
        }
        Ok(())
    }

    async fn on_socket(
        &mut self,
        socket: &mut Socket,
        received: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), End> {
        let message = match received {
            None => {
                let (error, after) = classify_close(None, "");
                return Err(End::Lost(error, after));
            }
            Some(Err(err)) => return Err(lost(err)),
            Some(Ok(message)) => message,
        };
        match message {
            WsMessage::Text(text) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(frame) => self.on_frame(socket, frame).await,
                Err(err) => {
                    tracing::warn!(%err, "ignoring an undecodable server frame");
                    Ok(())
                }
            },
            WsMessage::Close(frame) => {
                let (error, after) = match frame {
                    Some(frame) => classify_close(Some(u16::from(frame.code)), &frame.reason),
                    None => classify_close(None, ""),
                };
                Err(End::Lost(error, after))
            }
            _ => Ok(()),
        }
    }

    async fn on_frame(&mut self, socket: &mut Socket, frame: ServerFrame) -> Result<(), End> {
        match frame {
            ServerFrame::Message { message } => {
                self.on_message(socket, message, Source::Stream).await?;
            }
            ServerFrame::Sent {
                conversation,
                client_msg_id,
                seq,
                sent_at,
                duplicate,
            } => {
                if let Some(entry) = self.outbox.remove(&conversation, &client_msg_id) {
                    self.send_backoff.reset();
                    let sent = Sent {
                        conversation,
                        client_msg_id,
                        seq,
                        sent_at,
                        duplicate,
                    };
                    entry.resolve(|| Ok(sent.clone()));
                    self.update_outbox_len();
                }
            }
            ServerFrame::Limited { conversation, from } => {
                if self.order.skip_to(&conversation, from) {
                    self.shared.set_cursor(&conversation, from);
                    self.push_event(ClientEvent::Limited { conversation, from });
                }
            }
            ServerFrame::Synced { conversations } => {
                self.synced = true;
                self.push_event(ClientEvent::Synced(conversations));
                self.flush_delivered(socket).await?;
            }
            ServerFrame::Receipt(ReceiptUpdate {
                conversation,
                receipts,
            }) => self.push_event(ClientEvent::Receipt {
                conversation,
                receipts,
            }),
            ServerFrame::Typing(TypingUpdate {
                conversation,
                user,
                device,
                active,
            }) => self.push_event(ClientEvent::Typing {
                conversation,
                user,
                device,
                active,
            }),
            ServerFrame::Presence(PresenceUpdate {
                user,
                online,
                last_seen,
            }) => self.push_event(ClientEvent::Presence {
                user,
                online,
                last_seen,
            }),
            ServerFrame::Reconnect { after_ms, reason } => {
                tracing::info!(after_ms, %reason, "the server asks to reconnect");
                self.suggested_delay = Some(Duration::from_millis(after_ms));
            }
            ServerFrame::Error {
                id,
                conversation,
                client_msg_id,
                code,
                message,
                retryable,
            } => {
                let error = from_error_frame(code, &message);
                if let Some(id) = id {
                    if let Some(conversation) = self.fills.remove(&id) {
                        tracing::warn!(%conversation, %error, "filling a gap failed");
                        self.order.fill_failed(&conversation);
                    } else if let Some(reply) = self.requests.remove(&id) {
                        let _ = reply.send(Err(error));
                    }
                } else if let (Some(conversation), Some(client_msg_id)) =
                    (conversation, client_msg_id)
                {
                    if retryable {
                        self.outbox.requeue(&conversation, &client_msg_id);
                        if self.retry_at.is_none() {
                            self.retry_at = Some(Instant::now() + self.send_backoff.next_delay());
                        }
                    } else if let Some(entry) = self.outbox.remove(&conversation, &client_msg_id) {
                        entry.resolve(|| Err(copy_error(&error)));
                        self.update_outbox_len();
                    }
                } else {
                    tracing::warn!(%error, "the server refused a frame");
                }
            }
            ServerFrame::History {
                id: Some(id),
                conversation,
                messages,
                head,
            } if self.fills.contains_key(&id) => {
                self.fills.remove(&id);
                for message in messages {
                    if message.conversation == conversation {
                        self.on_message(socket, message, Source::Fill).await?;
                    }
                }
                if let Some(after) = self.order.fill_answered(&conversation, head) {
                    self.request_fill(socket, conversation, after).await?;
                }
            }
            ServerFrame::Welcome { .. } => tracing::warn!("ignoring a second welcome"),
            answer => {
                if let Some(id) = answer_id(&answer) {
                    if let Some(reply) = self.requests.remove(id) {
                        let _ = reply.send(Ok(answer));
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        socket: &mut Socket,
        message: Arc<Message>,
        source: Source,
    ) -> Result<(), End> {
        let conversation = message.conversation.clone();
        let before = self.order.repairs();
        let accepted = self.order.accept(message, source);
        let repairs = self.order.repairs();
        if repairs != before {
            tracing::warn!(%conversation, ?repairs, "the server's stream needed a repair");
            self.shared.set_repairs(repairs);
        }
        if !accepted.ready.is_empty() {
            for entry in accepted.ready {
                if !entry.is_void() {
                    self.push_event(ClientEvent::Message(entry));
                }
            }
            self.shared
                .set_cursor(&conversation, self.order.cursor(&conversation));
            if self.auto_delivered {
                self.delivered_dirty.insert(conversation.clone());
                if self.synced && self.delivered_due.is_none() {
                    self.delivered_due = Some(Instant::now() + DELIVERED_DELAY);
                }
            }
        }
        if let Some(after) = accepted.fill_after {
            self.request_fill(socket, conversation, after).await?;
        }
        Ok(())
    }

    async fn request_fill(
        &mut self,
        socket: &mut Socket,
        conversation: ConversationId,
        after: Seq,
    ) -> Result<(), End> {
        self.next_fill += 1;
        let Ok(id) = RequestId::new(format!("gap-{}", self.next_fill)) else {
            return Ok(());
        };
        let frame = ClientFrame::History {
            id: Some(id.clone()),
            conversation: conversation.clone(),
            after: Some(after),
            before: None,
            limit: Some(FILL_PAGE),
        };
        write(socket, &frame).await?;
        self.fills.insert(id, conversation);
        Ok(())
    }

    async fn flush_delivered(&mut self, socket: &mut Socket) -> Result<(), End> {
        self.delivered_due = None;
        for conversation in std::mem::take(&mut self.delivered_dirty) {
            let cursor = self.order.cursor(&conversation);
            let reported = self.delivered_sent.get(&conversation).copied();
            if cursor > Seq::ZERO && reported.is_none_or(|seq| cursor > seq) {
                let frame = ClientFrame::Delivered {
                    conversation: conversation.clone(),
                    seq: cursor,
                };
                write(socket, &frame).await?;
                self.delivered_sent.insert(conversation, cursor);
            }
        }
        Ok(())
    }

    // ---- disconnected ----------------------------------------------------------------

    fn connection_lost(&mut self) {
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(Error::new(
                ErrorKind::Unavailable,
                "the connection was lost before the answer; the request may or may not have \
                 taken effect",
            )));
        }
        self.fills.clear();
        self.outbox.connection_lost();
        self.order.connection_lost();
        self.synced = false;
        self.delivered_due = None;
        self.retry_at = None;
    }

    /// Waits and reconnects until a connection is authenticated (`Some`) or the client is
    /// closed (`None`, after [`Driver::finish`]).
    async fn reconnect(&mut self, error: Error, after: AfterClose) -> Option<(Socket, Welcome)> {
        let mut error = error;
        let mut after = after;
        loop {
            let wait = match after {
                AfterClose::Fatal => {
                    self.finish(Some(error)).await;
                    return None;
                }
                AfterClose::NeedToken => None,
                AfterClose::Reconnect => Some(match self.suggested_delay.take() {
                    Some(delay) => delay + jitter(self.reconnect_backoff.next_delay()),
                    None => self.reconnect_backoff.next_delay(),
                }),
            };
            tracing::info!(%error, ?wait, "disconnected");
            self.push_event(ClientEvent::Disconnected {
                reason: error,
                retry_in: wait,
            });
            let deadline = wait.map(|wait| Instant::now() + wait);
            let events = self.events.clone();
            loop {
                let has_events = self.events_open && !self.pending_events.is_empty();
                tokio::select! {
                    command = self.commands.recv() => match self.offline_command(command) {
                        Flow::Continue => {}
                        Flow::TokenSet => if deadline.is_none() { break },
                        Flow::Close(reply) => {
                            self.finish(None).await;
                            let _ = reply.send(());
                            return None;
                        }
                    },
                    permit = events.reserve(), if has_events => self.deliver_event(permit),
                    () = sleep_opt(deadline), if deadline.is_some() => break,
                }
            }
            let url = self.urls[self.next_url % self.urls.len()].clone();
            let (token, timeout) = (self.token.clone(), self.connect_timeout);
            let attempt = async move { handshake(&url, &token, timeout).await };
            let result = self.while_offline(attempt).await?;
            match result {
                Ok(connected) => {
                    self.reconnect_backoff.reset();
                    return Some(connected);
                }
                Err(failure) => {
                    // The next attempt tries the next node.
                    self.next_url = self.next_url.wrapping_add(1);
                    error = failure.error;
                    after = failure.after;
                }
            }
        }
    }

    /// Runs `work` while serving commands and events; `None` when the client was closed
    /// meanwhile.
    async fn while_offline<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        let events = self.events.clone();
        loop {
            let has_events = self.events_open && !self.pending_events.is_empty();
            tokio::select! {
                result = &mut work => return Some(result),
                command = self.commands.recv() => {
                    if let Flow::Close(reply) = self.offline_command(command) {
                        self.finish(None).await;
                        let _ = reply.send(());
                        return None;
                    }
                }
                permit = events.reserve(), if has_events => self.deliver_event(permit),
            }
        }
    }

    fn offline_command(&mut self, command: Option<Command>) -> Flow {
        let Some(command) = command else {
            let (reply, _) = oneshot::channel();
            return Flow::Close(reply);
        };
        match command {
            Command::Request { id, frame, reply } => self.queued.push_back((id, frame, reply)),
            Command::Send {
                conversation,
                client_msg_id,
                body,
                reply,
            } => {
                self.outbox.push(conversation, client_msg_id, body, reply);
                self.update_outbox_len();
            }
            Command::Notify { reply, .. } => {
                let _ = reply.send(Err(Error::new(
                    ErrorKind::Unavailable,
                    "not connected; reconnecting",
                )));
            }
            Command::SetToken(token) => {
                self.token = token;
                return Flow::TokenSet;
            }
            Command::Close { reply } => return Flow::Close(reply),
        }
        Flow::Continue
    }

    // ---- the end ---------------------------------------------------------------------

    /// Fails everything still waiting and emits the final event.
    async fn finish(&mut self, reason: Option<Error>) {
        self.shared.closed.store(true, AtomicOrdering::Release);
        self.commands.close();
        let failure = || match &reason {
            Some(reason) => copy_error(reason),
            None => client_closed(),
        };
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Request { reply, .. } => {
                    let _ = reply.send(Err(failure()));
                }
                Command::Send { reply, .. } => {
                    let _ = reply.send(Err(failure()));
                }
                Command::Notify { reply, .. } => {
                    let _ = reply.send(Err(failure()));
                }
                Command::Close { reply } => {
                    let _ = reply.send(());
                }
                Command::SetToken(_) => {}
            }
        }
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(failure()));
        }
        for (_, _, reply) in self.queued.drain(..) {
            let _ = reply.send(Err(failure()));
        }
        for entry in self.outbox.drain() {
            entry.resolve(|| Err(failure()));
        }
        self.update_outbox_len();
        if self.events_open {
            while let Some(event) = self.pending_events.pop_front() {
                if self.events.send(event).await.is_err() {
                    return;
                }
            }
            let _ = self.events.send(ClientEvent::Closed { reason }).await;
        }
    }

    // ---- events ----------------------------------------------------------------------

    fn push_event(&mut self, event: ClientEvent) {
        if self.events_open {
            self.pending_events.push_back(event);
        }
    }

    fn deliver_event(
        &mut self,
        permit: Result<mpsc::Permit<'_, ClientEvent>, mpsc::error::SendError<()>>,
    ) {
        match permit {
            Ok(permit) => {
                if let Some(event) = self.pending_events.pop_front() {
                    permit.send(event);
                }
            }
            Err(_) => {
                self.events_open = false;
                self.pending_events.clear();
            }
        }
    }

    fn update_outbox_len(&self) {
        self.shared
            .outbox_len
            .store(self.outbox.len(), AtomicOrdering::Release);
    }
}

/// The request id an answer frame carries.
fn answer_id(frame: &ServerFrame) -> Option<&RequestId> {
    match frame {
        ServerFrame::Conversation { id, .. }
        | ServerFrame::Changed { id, .. }
        | ServerFrame::History { id, .. }
        | ServerFrame::Conversations { id, .. }
        | ServerFrame::Receipts { id, .. }
        | ServerFrame::LastSeen { id, .. }
        | ServerFrame::Ok { id }
        | ServerFrame::Pong { id }
        | ServerFrame::Error { id, .. } => id.as_ref(),
        _ => None,
    }
}

async fn write(socket: &mut Socket, frame: &ClientFrame) -> Result<(), End> {
    socket
        .send(WsMessage::text(frame.to_json()))
        .await
        .map_err(lost)
}

/// Sends a normal close and waits briefly for the server's answer.
async fn close_socket(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client closed".into(),
    };
    if socket.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}
