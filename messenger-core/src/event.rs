//! Events: what is delivered to connected devices, and the domain events published for other
//! services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ConversationId, DeviceId, Message, ReceiptKind, Receipts, Seq, Timestamp, UserId};

/// Something to push to the online devices of some users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A new log entry (message, membership change or void).
    Message {
        /// The entry.
        message: Arc<Message>,
    },
    /// A member's receipt watermarks moved.
    Receipt(ReceiptUpdate),
    /// Someone is typing (or stopped).
    Typing(TypingUpdate),
    /// A user came online or went offline.
    Presence(PresenceUpdate),
}

/// A member's receipt watermarks moved: [`Event::Receipt`], and the `receipt` frame
/// ([`ServerFrame::Receipt`](crate::protocol::ServerFrame::Receipt)) it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptUpdate {
    /// The conversation.
    pub conversation: ConversationId,
    /// The new watermarks.
    pub receipts: Receipts,
}

/// Someone is typing (or stopped): [`Event::Typing`], and the `typing` frame
/// ([`ServerFrame::Typing`](crate::protocol::ServerFrame::Typing)) it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingUpdate {
    /// The conversation.
    pub conversation: ConversationId,
    /// Who.
    pub user: UserId,
    /// On which device.
    pub device: DeviceId,
    /// Typing now (`false`: stopped).
    pub active: bool,
}

/// A user came online or went offline: [`Event::Presence`], and the `presence` frame
/// ([`ServerFrame::Presence`](crate::protocol::ServerFrame::Presence)) it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// Who.
    pub user: UserId,
    /// Whether any of their devices is connected.
    pub online: bool,
    /// Their last-seen time.
    pub last_seen: Option<Timestamp>,
}

/// A state change, published on the event bus for analytics and other services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DomainEvent {
    /// A message or membership change was stored.
    MessageStored {
        /// The entry.
        message: Arc<Message>,
    },
    /// A receipt watermark moved.
    ReceiptUpdated {
        /// The conversation.
        conversation: ConversationId,
        /// Whose.
        user: UserId,
        /// Which watermark.
        kind: ReceiptKind,
        /// The watermarks now.
        receipts: Receipts,
    },
    /// A device connected.
    DeviceConnected {
        /// Who.
        user: UserId,
        /// Which device.
        device: DeviceId,
        /// When.
        at: Timestamp,
    },
    /// A device disconnected.
    DeviceDisconnected {
        /// Who.
        user: UserId,
        /// Which device.
        device: DeviceId,
        /// When.
        at: Timestamp,
    },
    /// A media message's upload finished: the entry is `ready` and `url` serves it.
    MediaReady {
        /// The media entry, as stored now.
        message: Arc<Message>,
        /// Where its bytes are served.
        url: String,
    },
    /// A media message's upload failed or expired: the entry is `failed`.
    MediaFailed {
        /// The conversation.
        conversation: ConversationId,
        /// The media entry's seq.
        seq: Seq,
        /// Why.
        reason: String,
    },
}
