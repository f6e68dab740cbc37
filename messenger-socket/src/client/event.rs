//! What the client reports: [`ClientEvent`]s, received through [`Events`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use messenger_core::protocol::Limits;
use messenger_core::{
    ConversationId, ConversationSummary, DeviceId, Error, ErrorKind, Message, Receipts, Seq,
    Timestamp, UserId,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Something that happened on the connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection was established and authenticated (the first one, and every reconnect).
    /// The backlog follows, then [`ClientEvent::Synced`].
    Connected {
        /// The authenticated user.
        user: UserId,
        /// The authenticated device.
        device: DeviceId,
        /// The server's limits.
        limits: Limits,
    },
    /// A log entry: a message or a membership change. Per conversation, entries come in seq
    /// order, each once, with no gap; void entries are skipped (the cursor still moves).
    Message(Arc<Message>),
    /// A sync with [`ClientConfig::sync_limit`](super::ClientConfig::sync_limit) skipped the
    /// older entries of a conversation: its entries continue after `from`, and
    /// [`Client::history`](super::Client::history) with `HistoryRange::Before(from + 1)`
    /// pages back through the rest.
    Limited {
        /// The conversation.
        conversation: ConversationId,
        /// Where its cursor moved.
        from: Seq,
    },
    /// The backlog after a (re)connect has been delivered; live delivery continues.
    Synced(Vec<ConversationSummary>),
    /// A member's receipt watermarks moved.
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// The member's watermarks.
        receipts: Receipts,
    },
    /// Someone started or stopped typing.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        user: UserId,
        /// On which device.
        device: DeviceId,
        /// `false`: stopped.
        active: bool,
    },
    /// A user the client subscribed to came online or went offline.
    Presence {
        /// Who.
        user: UserId,
        /// Whether any of their devices is connected.
        online: bool,
        /// Their last-seen time.
        last_seen: Option<Timestamp>,
    },
    /// The connection was lost or a reconnect attempt failed. Sends stay in the outbox.
    Disconnected {
        /// Why.
        reason: Error,
        /// When the next attempt is made; `None` when the token expired and the client waits
        /// for [`Client::set_token`](super::Client::set_token).
        retry_in: Option<Duration>,
    },
    /// The client is closed for good; this is the last event.
    Closed {
        /// Why: `None` after [`Client::close`](super::Client::close) or when every
        /// [`Client`](super::Client) handle was dropped; else the fatal error (a refused
        /// token, an unsupported protocol version...).
        reason: Option<Error>,
    },
}

/// The stream of [`ClientEvent`]s of one [`Client`](super::Client).
///
/// Read it steadily: when [`ClientConfig::event_capacity`](super::ClientConfig) events are
/// waiting, the client stops reading the socket (requests then time out, and the server may
/// close a slow connection). It also implements `futures_util::Stream`.
#[derive(Debug)]
pub struct Events {
    receiver: mpsc::Receiver<ClientEvent>,
}

impl Events {
    pub(crate) fn new(receiver: mpsc::Receiver<ClientEvent>) -> Self {
        Events { receiver }
    }

    /// The next event; `None` after [`ClientEvent::Closed`].
    ///
    /// # Cancellation safety
    /// Cancellation safe: no event is lost when the future is dropped.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        self.receiver.try_recv().ok()
    }

    /// Skips events until one matches `predicate`, and returns it.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when none matched within `timeout`; [`ErrorKind::Unavailable`]
    /// when the stream ended first.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut predicate: impl FnMut(&ClientEvent) -> bool,
    ) -> Result<ClientEvent, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(event)) if predicate(&event) => return Ok(event),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "the event stream ended (the client is closed)",
                    ));
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("no matching event within {timeout:?}"),
                    ));
                }
            }
        }
    }

    /// Skips events until a [`ClientEvent::Message`] matches `predicate`, and returns it.
    ///
    /// # Errors
    /// As [`Events::wait_for`].
    pub async fn wait_for_message(
        &mut self,
        timeout: Duration,
        mut predicate: impl FnMut(&Message) -> bool,
    ) -> Result<Arc<Message>, Error> {
        let event = self
            .wait_for(
                timeout,
                |event| matches!(event, ClientEvent::Message(message) if predicate(message)),
            )
            .await?;
        match event {
            ClientEvent::Message(message) => Ok(message),
            other => Err(Error::new(
                ErrorKind::Unexpected,
                format!("expected a message, got {other:?}"),
            )),
        }
    }
}

impl futures_util::Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.receiver.poll_recv(cx)
    }
}
