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
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// The new watermarks.
        receipts: Receipts,
    },
    /// Someone is typing (or stopped).
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        user: UserId,
        /// On which device.
        device: DeviceId,
        /// Typing now (`false`: stopped).
        active: bool,
    },
    /// A user came online or went offline.
    Presence {
        /// Who.
        user: UserId,
        /// Whether any of their devices is connected.
        online: bool,
        /// Their last-seen time.
        last_seen: Option<Timestamp>,
    },
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
