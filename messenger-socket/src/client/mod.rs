//! The Rust client of the messenger protocol: connect, authenticate, send through an outbox
//! with retries, resume from cursors, fill gaps, and reconnect.
//!
//! [`Client::connect`] opens the WebSocket, says `hello`, waits for `welcome` (so a refused
//! token surfaces there), sends `sync` with the saved cursors and hands the socket to one
//! background task. The returned [`Client`] is a cheap handle for sends and requests; the
//! [`Events`] receiver yields [`ClientEvent`]s: entries in seq order per conversation, each
//! once, then receipts, typing, presence and connection changes.
//!
//! On a lost connection, a `1012` restart or a `4008` slow-consumer close the task reconnects
//! with jittered exponential backoff, sends `sync` from its cursors (so nothing is missed or
//! repeated) and re-sends unacknowledged messages in order with their original
//! `client_msg_id`, which the server deduplicates. A `4003` (token expired) waits for
//! [`Client::set_token`]; a refused token or an unsupported version ends the client with
//! [`ClientEvent::Closed`].
//!
//! ```no_run
//! use messenger_socket::client::{Client, ClientConfig, ClientEvent};
//! use messenger_core::UserId;
//!
//! # async fn run() -> Result<(), messenger_core::Error> {
//! let (client, mut events) =
//!     Client::connect(ClientConfig::new("ws://127.0.0.1:8080/ws", "alice:phone")).await?;
//! let chat = client.open_direct(&UserId::new("bob")?).await?;
//! let sent = client.send_text(&chat.conversation.id, "hi bob").await?;
//! println!("stored at seq {}", sent.seq);
//! while let Some(event) = events.next().await {
//!     if let ClientEvent::Message(message) = event {
//!         println!("{} #{}: {:?}", message.conversation, message.seq, message.body);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod config;
mod connection;
mod error;
mod event;
mod order;
mod outbox;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use messenger_core::protocol::{ClientFrame, Limits, NewBody, ServerFrame, UserPresence};
use messenger_core::{
    ClientMsgId, Conversation, ConversationId, ConversationSummary, DeviceId, Error, ErrorKind,
    Member, Message, Receipts, RequestId, Role, Seq, Timestamp, UserId,
};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

pub use config::ClientConfig;
pub use event::{ClientEvent, Events};
pub use order::RepairCounts;

use connection::{Command, Driver, handshake};
use error::client_closed;

/// The acknowledgement of a send: the message is durably stored at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// The conversation.
    pub conversation: ConversationId,
    /// The message's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Where it is stored.
    pub seq: Seq,
    /// When the server accepted it.
    pub sent_at: Timestamp,
    /// True when the server had stored it before (a retry); `seq` is the original.
    pub duplicate: bool,
}

/// A conversation's facts and members, as answered to `open_direct`, `create_group` and
/// `members`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConversationInfo {
    /// The conversation's facts.
    pub conversation: Conversation,
    /// Its members.
    pub members: Vec<Member>,
    /// Its latest seq.
    pub head: Seq,
}

/// A page of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryPage {
    /// The conversation.
    pub conversation: ConversationId,
    /// The entries, ascending by seq (void entries included, as the server sends them).
    pub messages: Vec<Arc<Message>>,
    /// The conversation's latest seq.
    pub head: Seq,
}

/// Which part of a log [`Client::history`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryRange {
    /// The latest entries.
    Latest,
    /// Entries after this seq, oldest first.
    After(Seq),
    /// Entries before this seq (scrolling back).
    Before(Seq),
}

/// State the task shares with the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    cursors: Mutex<BTreeMap<ConversationId, Seq>>,
    limits: Mutex<Limits>,
    outbox_len: AtomicUsize,
    closed: AtomicBool,
    next_request: AtomicU64,
    repairs: Mutex<RepairCounts>,
}

impl Shared {
    fn set_cursor(&self, conversation: &ConversationId, seq: Seq) {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        cursors.insert(conversation.clone(), seq);
    }

    fn set_repairs(&self, repairs: RepairCounts) {
        *self.repairs.lock().unwrap_or_else(PoisonError::into_inner) = repairs;
    }

    fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
    }
}

/// A handle on a connection to a messenger server. Cheap to clone; every clone drives the
/// same background task, which ends when [`Client::close`] is called or the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    user: UserId,
    device: DeviceId,
    request_timeout: Duration,
}

impl Client {
    /// Connects, authenticates, starts the sync and spawns the background task.
    ///
    /// Returns once the server said `welcome`; the backlog then arrives on [`Events`],
    /// after a [`ClientEvent::Connected`], followed by [`ClientEvent::Synced`].
    ///
    /// # Errors
    /// [`ErrorKind::Unauthorized`] for a refused token (close 4001),
    /// [`ErrorKind::InvalidRequest`] for a bad URL or an unsupported protocol version,
    /// [`ErrorKind::Unavailable`] when the server cannot be reached,
    /// [`ErrorKind::Timeout`] after [`ClientConfig::connect_timeout`].
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), Error> {
        let (socket, welcome) = handshake(&config.url, &config.token, config.connect_timeout)
            .await
            .map_err(|failure| failure.error)?;
        let shared = Arc::new(Shared {
            cursors: Mutex::new(config.cursors.clone()),
            limits: Mutex::new(welcome.limits.clone()),
            outbox_len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            next_request: AtomicU64::new(1),
            repairs: Mutex::new(RepairCounts::default()),
        });
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, event_receiver) = mpsc::channel(config.event_capacity.max(1));
        let client = Client {
            commands,
            shared: Arc::clone(&shared),
            user: welcome.user.clone(),
            device: welcome.device.clone(),
            request_timeout: config.request_timeout,
        };
        let driver = Driver::new(&config, shared, command_receiver, event_sender);
        tokio::spawn(driver.run(socket, welcome));
        Ok((client, Events::new(event_receiver)))
    }

    /// The authenticated user.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The authenticated device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The limits the server announced in its latest `welcome`.
    pub fn limits(&self) -> Limits {
        self.shared
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Per conversation, the last contiguous seq received: save it and pass it to
    /// [`ClientConfig::cursors`] to resume later without a full sync.
    pub fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.shared
            .cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the ordering layer repaired in the server's stream so far: entries dropped as
    /// duplicates and entries filled from `history` because the stream skipped them. The
    /// server promises neither happens (docs/protocol.md §11), so both stay zero against it;
    /// a test of delivery can assert that, since the events alone cannot show it (they are
    /// repaired before they surface).
    pub fn repairs(&self) -> RepairCounts {
        *self
            .shared
            .repairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sends wait for their acknowledgement.
    pub fn outbox_len(&self) -> usize {
        self.shared.outbox_len.load(Ordering::Acquire)
    }

    /// Whether the client is closed for good.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Replaces the token used for the next connection; after a `4003` (token expired) it
    /// also triggers the reconnect.
    pub fn set_token(&self, token: impl Into<String>) {
        let _ = self.commands.send(Command::SetToken(token.into()));
    }

    /// Sends a text message with a fresh random `client_msg_id`.
    ///
    /// The message enters the outbox when this function is called (so calls are sent in
    /// call order); the returned future resolves with the acknowledgement. See
    /// [`Client::send_with_id`].
    ///
    /// # Errors
    /// As [`Client::send_with_id`]; also [`ErrorKind::InvalidRequest`] for a text over the
    /// server's limit.
    pub fn send_text(
        &self,
        conversation: &ConversationId,
        text: impl Into<String>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let text = text.into();
        let max = self.limits().max_text_bytes;
        let queued = if text.len() > max {
            Err(Error::new(
                ErrorKind::InvalidRequest,
                format!("the text is {} bytes; the limit is {max}", text.len()),
            ))
        } else {
            Ok(self.enqueue_send(conversation, new_client_msg_id(), NewBody::text(text)))
        };
        async move { queued?.await }
    }

    /// Sends a text message that replies to the message at `reply_to` (the stored entry
    /// quotes it: [`messenger_core::Reply`]).
    ///
    /// # Errors
    /// As [`Client::send_text`]; also `target_not_found`, `target_deleted` or `not_editable`
    /// (as [`ErrorKind::NotFound`] / [`ErrorKind::InvalidRequest`]) for a seq one cannot reply
    /// to.
    pub fn reply_text(
        &self,
        conversation: &ConversationId,
        reply_to: Seq,
        text: impl Into<String>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let body = NewBody::Text {
            text: text.into(),
            reply_to: Some(reply_to),
            mentions: Vec::new(),
            mention_all: false,
        };
        self.enqueue_send(conversation, new_client_msg_id(), body)
    }

    /// Replaces the text of one's own text message at `target`. The edit is an entry of the
    /// log (its seq is in the answer); every device sees it in order, and history shows the
    /// new text with `edited_at`.
    ///
    /// # Errors
    /// As [`Client::send_with_id`]; the refusals of `docs/protocol.md` (another user's
    /// message, not text, the edit window closed, too many edits).
    pub fn edit(
        &self,
        conversation: &ConversationId,
        target: Seq,
        text: impl Into<String>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let body = NewBody::Edit {
            target,
            text: text.into(),
        };
        self.enqueue_send(conversation, new_client_msg_id(), body)
    }

    /// Deletes the message at `target` for everyone (one's own within the delete window; any
    /// message of a group for its admins and owner). Its entry then holds a tombstone.
    ///
    /// # Errors
    /// As [`Client::send_with_id`]; the refusals of `docs/protocol.md`.
    pub fn delete(
        &self,
        conversation: &ConversationId,
        target: Seq,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        self.enqueue_send(
            conversation,
            new_client_msg_id(),
            NewBody::Delete { target },
        )
    }

    /// Reacts to the text or media message at `target` with `emoji` (once per emoji; several
    /// emojis per message are fine). The reaction is an entry of the log; the target's
    /// `reactions` list it.
    ///
    /// # Errors
    /// As [`Client::send_with_id`]; the refusals of `docs/protocol.md` (already reacted, too
    /// many different reactions, not a message).
    pub fn react(
        &self,
        conversation: &ConversationId,
        target: Seq,
        emoji: impl Into<String>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let body = NewBody::React {
            target,
            emoji: emoji.into(),
        };
        self.enqueue_send(conversation, new_client_msg_id(), body)
    }

    /// Takes back one's `emoji` reaction to the message at `target`.
    ///
    /// # Errors
    /// As [`Client::react`]; `invalid_request` when there is no such reaction of the user.
    pub fn unreact(
        &self,
        conversation: &ConversationId,
        target: Seq,
        emoji: impl Into<String>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let body = NewBody::Unreact {
            target,
            emoji: emoji.into(),
        };
        self.enqueue_send(conversation, new_client_msg_id(), body)
    }

    /// Sends a message with a `client_msg_id` the caller chose (reuse it to retry: the server
    /// answers a repeat with the original seq and `duplicate: true`).
    ///
    /// The message enters the outbox when this function is called and stays there until the
    /// server stores it or refuses it for good: across lost connections it is re-sent, in
    /// order with the other pending sends, with the same id.
    ///
    /// # Errors
    /// The mapped error of a non-retryable `error` frame ([`ErrorKind::Forbidden`] for a
    /// non-member, [`ErrorKind::InvalidRequest`]...), or [`ErrorKind::Unavailable`] when the
    /// client was closed first.
    ///
    /// # Cancellation safety
    /// Dropping the future does not withdraw the message: it stays in the outbox.
    pub fn send_with_id(
        &self,
        conversation: &ConversationId,
        client_msg_id: ClientMsgId,
        body: NewBody,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        self.enqueue_send(conversation, client_msg_id, body)
    }

    fn enqueue_send(
        &self,
        conversation: &ConversationId,
        client_msg_id: ClientMsgId,
        body: NewBody,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.commands.send(Command::Send {
            conversation: conversation.clone(),
            client_msg_id,
            body,
            reply,
        });
        async move {
            queued.map_err(|_| client_closed())?;
            answer.await.map_err(|_| client_closed())?
        }
    }

    /// Opens (creating if needed) the direct conversation with `user`.
    ///
    /// # Errors
    /// The server's refusal mapped to an [`ErrorKind`]; [`ErrorKind::Timeout`] after
    /// [`ClientConfig::request_timeout`]; [`ErrorKind::Unavailable`] when the connection
    /// dropped before the answer (the request may have taken effect) or the client is
    /// closed. The other request methods fail the same ways.
    ///
    /// # Cancellation safety
    /// Like every request: once written, dropping the future does not undo it.
    pub async fn open_direct(&self, user: &UserId) -> Result<ConversationInfo, Error> {
        let user = user.clone();
        let answer = self
            .request(|id| ClientFrame::OpenDirect { id, user })
            .await?;
        conversation_info(answer)
    }

    /// Creates a group with the caller as owner.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn create_group(
        &self,
        title: impl Into<String>,
        members: &[UserId],
    ) -> Result<ConversationInfo, Error> {
        let title = title.into();
        let members = members.to_vec();
        let answer = self
            .request(|id| ClientFrame::CreateGroup { id, title, members })
            .await?;
        conversation_info(answer)
    }

    /// Adds users to a group (`role`: `member` when `None`); returns the membership entry's
    /// seq.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn add_members(
        &self,
        conversation: &ConversationId,
        users: &[UserId],
        role: Option<Role>,
    ) -> Result<Seq, Error> {
        let conversation = conversation.clone();
        let users = users.to_vec();
        let answer = self
            .request(|id| ClientFrame::AddMembers {
                id,
                conversation,
                users,
                role,
            })
            .await?;
        changed(answer)
    }

    /// Removes a member from a group; returns the membership entry's seq.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn remove_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Seq, Error> {
        let conversation = conversation.clone();
        let user = user.clone();
        let answer = self
            .request(|id| ClientFrame::RemoveMember {
                id,
                conversation,
                user,
            })
            .await?;
        changed(answer)
    }

    /// Leaves a group; returns the membership entry's seq.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn leave(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        let conversation = conversation.clone();
        let answer = self
            .request(|id| ClientFrame::Leave { id, conversation })
            .await?;
        changed(answer)
    }

    /// Changes a member's role (`Owner` transfers ownership); returns the entry's seq.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn set_role(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        role: Role,
    ) -> Result<Seq, Error> {
        let conversation = conversation.clone();
        let user = user.clone();
        let answer = self
            .request(|id| ClientFrame::SetRole {
                id,
                conversation,
                user,
                role,
            })
            .await?;
        changed(answer)
    }

    /// Reads a page of a conversation's log. This does not touch the event stream.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn history(
        &self,
        conversation: &ConversationId,
        range: HistoryRange,
        limit: Option<usize>,
    ) -> Result<HistoryPage, Error> {
        let (after, before) = match range {
            HistoryRange::Latest => (None, None),
            HistoryRange::After(seq) => (Some(seq), None),
            HistoryRange::Before(seq) => (None, Some(seq)),
        };
        let conversation = conversation.clone();
        let answer = self
            .request(|id| ClientFrame::History {
                id,
                conversation,
                after,
                before,
                limit,
            })
            .await?;
        match answer {
            ServerFrame::History {
                conversation,
                messages,
                head,
                ..
            } => Ok(HistoryPage {
                conversation,
                messages,
                head,
            }),
            other => Err(unexpected_answer("history", &other)),
        }
    }

    /// The user's conversations with unread counts.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>, Error> {
        match self.request(|id| ClientFrame::Conversations { id }).await? {
            ServerFrame::Conversations { conversations, .. } => Ok(conversations),
            other => Err(unexpected_answer("conversations", &other)),
        }
    }

    /// A conversation's facts and members.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn members(&self, conversation: &ConversationId) -> Result<ConversationInfo, Error> {
        let conversation = conversation.clone();
        let answer = self
            .request(|id| ClientFrame::Members { id, conversation })
            .await?;
        conversation_info(answer)
    }

    /// Every member's receipt watermarks in a conversation.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn receipts(&self, conversation: &ConversationId) -> Result<Vec<Receipts>, Error> {
        let conversation = conversation.clone();
        match self
            .request(|id| ClientFrame::Receipts { id, conversation })
            .await?
        {
            ServerFrame::Receipts { receipts, .. } => Ok(receipts),
            other => Err(unexpected_answer("receipts", &other)),
        }
    }

    /// Online state and last-seen time of some users.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn last_seen(&self, users: &[UserId]) -> Result<Vec<UserPresence>, Error> {
        let users = users.to_vec();
        match self
            .request(|id| ClientFrame::LastSeen { id, users })
            .await?
        {
            ServerFrame::LastSeen { users, .. } => Ok(users),
            other => Err(unexpected_answer("last_seen", &other)),
        }
    }

    /// Asks for [`ClientEvent::Presence`] events about these users. Subscriptions belong to
    /// the connection: after a reconnect, subscribe again.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn subscribe_presence(&self, users: &[UserId]) -> Result<(), Error> {
        let users = users.to_vec();
        let answer = self
            .request(|id| ClientFrame::SubscribePresence { id, users })
            .await?;
        ok(answer, "subscribe_presence")
    }

    /// Stops the presence events about these users.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn unsubscribe_presence(&self, users: &[UserId]) -> Result<(), Error> {
        let users = users.to_vec();
        let answer = self
            .request(|id| ClientFrame::UnsubscribePresence { id, users })
            .await?;
        ok(answer, "unsubscribe_presence")
    }

    /// A protocol-level ping; returns the round-trip time.
    ///
    /// # Errors
    /// As [`Client::open_direct`].
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = tokio::time::Instant::now();
        match self.request(|id| ClientFrame::Ping { id }).await? {
            ServerFrame::Pong { .. } => Ok(started.elapsed()),
            other => Err(unexpected_answer("ping", &other)),
        }
    }

    /// Reports that this device received everything up to `seq` (done automatically unless
    /// [`ClientConfig::auto_delivered`] is off). Has no answer.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] while disconnected or closed: receipts are not queued.
    pub async fn delivered(&self, conversation: &ConversationId, seq: Seq) -> Result<(), Error> {
        self.notify(ClientFrame::Delivered {
            conversation: conversation.clone(),
            seq,
        })
        .await
    }

    /// Reports that the user read everything up to `seq`. Has no answer.
    ///
    /// # Errors
    /// As [`Client::delivered`].
    pub async fn read(&self, conversation: &ConversationId, seq: Seq) -> Result<(), Error> {
        self.notify(ClientFrame::Read {
            conversation: conversation.clone(),
            seq,
        })
        .await
    }

    /// Reports that the user is typing (`active: false`: stopped). Has no answer.
    ///
    /// # Errors
    /// As [`Client::delivered`].
    pub async fn typing(&self, conversation: &ConversationId, active: bool) -> Result<(), Error> {
        self.notify(ClientFrame::Typing {
            conversation: conversation.clone(),
            active,
        })
        .await
    }

    /// Closes the connection cleanly (close code 1000) and ends the background task; pending
    /// sends and requests fail with [`ErrorKind::Unavailable`] and [`ClientEvent::Closed`]
    /// is the last event. Closing a closed client does nothing.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }

    async fn request(
        &self,
        build: impl FnOnce(Option<RequestId>) -> ClientFrame,
    ) -> Result<ServerFrame, Error> {
        let number = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::new(format!("r-{number}"))?;
        let frame = build(Some(id.clone()));
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request { id, frame, reply })
            .map_err(|_| client_closed())?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(client_closed()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("no answer within {:?}", self.request_timeout),
            )),
        }
    }

    async fn notify(&self, frame: ClientFrame) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Notify { frame, reply })
            .map_err(|_| client_closed())?;
        answer.await.map_err(|_| client_closed())?
    }
}

/// A fresh random `client_msg_id`: 128 random bits in hex.
fn new_client_msg_id() -> ClientMsgId {
    let bits: u128 = rand::rng().random();
    ClientMsgId::new(format!("m-{bits:032x}"))
        .unwrap_or_else(|_| unreachable!("hex ids are valid client_msg_ids"))
}

fn unexpected_answer(request: &str, answer: &ServerFrame) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("unexpected answer to {request}: {answer:?}"),
    )
}

fn conversation_info(answer: ServerFrame) -> Result<ConversationInfo, Error> {
    match answer {
        ServerFrame::Conversation {
            conversation,
            members,
            head,
            ..
        } => Ok(ConversationInfo {
            conversation,
            members,
            head,
        }),
        other => Err(unexpected_answer("a conversation request", &other)),
    }
}

fn changed(answer: ServerFrame) -> Result<Seq, Error> {
    match answer {
        ServerFrame::Changed { seq, .. } => Ok(seq),
        other => Err(unexpected_answer("a membership change", &other)),
    }
}

fn ok(answer: ServerFrame, request: &str) -> Result<(), Error> {
    match answer {
        ServerFrame::Ok { .. } => Ok(()),
        other => Err(unexpected_answer(request, &other)),
    }
}
