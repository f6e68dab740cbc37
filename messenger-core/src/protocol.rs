//! The wire protocol, version 1: JSON text frames over WebSocket.
//!
//! Every frame is one JSON object with a `"type"` field. [`ClientFrame`] is what devices send,
//! [`ServerFrame`] what the server sends. `docs/protocol.md` is the full specification, with
//! examples; this module is its source of truth in code.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    ClientMsgId, Conversation, ConversationId, ConversationSummary, DeviceId, Event, Member,
    Message, PresenceUpdate, ReceiptUpdate, Receipts, RequestId, Role, Seq, Timestamp,
    TypingUpdate, UserId,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame a client may send, in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The most entries one `history` request returns.
pub const MAX_HISTORY_LIMIT: usize = 200;

/// The most users in one `last_seen` or `subscribe_presence` request.
pub const MAX_USERS_PER_REQUEST: usize = 256;

/// A frame a device sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientFrame {
    /// First frame of every connection: protocol version and credentials.
    Hello {
        /// Must be [`PROTOCOL_VERSION`].
        v: u32,
        /// The bearer token.
        token: String,
    },
    /// "Here is what I have": per conversation, the last contiguous seq the device holds.
    /// Conversations left out are sent from the beginning. The server streams what is missing,
    /// then `synced`, and keeps delivering live entries with no gap and no duplicate.
    Sync {
        /// Conversation → last contiguous seq held.
        #[serde(default)]
        cursors: BTreeMap<ConversationId, Seq>,
        /// At most this many of the latest entries per conversation (absent: everything
        /// after each cursor). A conversation further behind starts with a `limited` frame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Send a message.
    Send {
        /// The conversation.
        conversation: ConversationId,
        /// The device's idempotency key: the same on every retry of this message.
        client_msg_id: ClientMsgId,
        /// The content.
        body: NewBody,
        /// Set on a send that may have reached the server before (an outbox replayed after a
        /// reconnect or a restart): the server looks the key up before it spends a seq, so a
        /// message stored already is acknowledged without leaving a void behind.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resend: bool,
    },
    /// The device received everything up to `seq`.
    Delivered {
        /// The conversation.
        conversation: ConversationId,
        /// Up to which seq.
        seq: Seq,
    },
    /// The user read everything up to `seq`.
    Read {
        /// The conversation.
        conversation: ConversationId,
        /// Up to which seq.
        seq: Seq,
    },
    /// The user is typing (or stopped). Ephemeral: never stored, rate-limited.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// `false` to say the user stopped typing.
        #[serde(default = "default_true")]
        active: bool,
    },
    /// Open (create if needed) the direct conversation with `user`.
    OpenDirect {
        /// Request id, echoed in the answer.
        #[serde(default)]
        id: Option<RequestId>,
        /// The other user.
        user: UserId,
    },
    /// Create a group; the sender becomes its owner.
    CreateGroup {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The title.
        title: String,
        /// The other founding members.
        #[serde(default)]
        members: Vec<UserId>,
    },
    /// Add users to a group (owner or admin).
    AddMembers {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The group.
        conversation: ConversationId,
        /// Who to add.
        users: Vec<UserId>,
        /// Their role (`member` when absent; `admin` needs the owner).
        #[serde(default)]
        role: Option<Role>,
    },
    /// Remove a member from a group (owner: anyone; admin: plain members).
    RemoveMember {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The group.
        conversation: ConversationId,
        /// Who to remove.
        user: UserId,
    },
    /// Leave a group.
    Leave {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The group.
        conversation: ConversationId,
    },
    /// Change a member's role (owner only; `owner` transfers ownership).
    SetRole {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The group.
        conversation: ConversationId,
        /// Whose role.
        user: UserId,
        /// The new role.
        role: Role,
    },
    /// Read a page of a conversation's log.
    History {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The conversation.
        conversation: ConversationId,
        /// Entries after this seq, ascending (for filling gaps).
        #[serde(default)]
        after: Option<Seq>,
        /// Entries before this seq, the latest first in the page (for scrolling back).
        /// Ignored when `after` is given.
        #[serde(default)]
        before: Option<Seq>,
        /// At most this many (default and maximum [`MAX_HISTORY_LIMIT`]).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// List the user's conversations with unread counts.
    Conversations {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
    },
    /// A conversation's facts and members.
    Members {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The conversation.
        conversation: ConversationId,
    },
    /// Every member's receipt watermarks in a conversation.
    Receipts {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// The conversation.
        conversation: ConversationId,
    },
    /// Online state and last-seen time of some users.
    LastSeen {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// Whose.
        users: Vec<UserId>,
    },
    /// Get a `presence` frame whenever one of these users comes online or goes offline.
    SubscribePresence {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// Whose.
        users: Vec<UserId>,
    },
    /// Stop the `presence` frames for these users.
    UnsubscribePresence {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
        /// Whose.
        users: Vec<UserId>,
    },
    /// Keep-alive at the protocol level; answered with `pong`.
    Ping {
        /// Request id.
        #[serde(default)]
        id: Option<RequestId>,
    },
}

fn default_true() -> bool {
    true
}

impl ClientFrame {
    /// The `type` names of every client frame, for error messages and the protocol document.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "sync",
        "send",
        "delivered",
        "read",
        "typing",
        "open_direct",
        "create_group",
        "add_members",
        "remove_member",
        "leave",
        "set_role",
        "history",
        "conversations",
        "members",
        "receipts",
        "last_seen",
        "subscribe_presence",
        "unsubscribe_presence",
        "ping",
    ];

    /// The request id the frame carries, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            ClientFrame::OpenDirect { id, .. }
            | ClientFrame::CreateGroup { id, .. }
            | ClientFrame::AddMembers { id, .. }
            | ClientFrame::RemoveMember { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::SetRole { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Conversations { id }
            | ClientFrame::Members { id, .. }
            | ClientFrame::Receipts { id, .. }
            | ClientFrame::LastSeen { id, .. }
            | ClientFrame::SubscribePresence { id, .. }
            | ClientFrame::UnsubscribePresence { id, .. }
            | ClientFrame::Ping { id } => id.as_ref(),
            _ => None,
        }
    }

    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| unreachable!("frames serialize: {err}"))
    }
}

/// The content of a message a device sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum NewBody {
    /// Text, at most [`crate::MAX_TEXT_BYTES`] of UTF-8.
    Text {
        /// The text.
        text: String,
        /// The seq of the message this one replies to (a text or media message of the same
        /// conversation); the stored entry quotes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Seq>,
        /// Members it mentions (at most [`crate::MAX_MENTIONS`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
        /// `@all`: it mentions every member (group admins and owners only).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mention_all: bool,
    },
    /// An image, video or file. Sequenced at once as `pending`; the sender gets an `upload`
    /// frame with the ticket to upload the bytes (see `docs/media.md`).
    Media(NewMedia),
    /// Replace the text of the sender's own text message at `target`.
    Edit {
        /// The seq of the message to edit.
        target: Seq,
        /// Its new text (the same limits as a text message).
        text: String,
    },
    /// Delete the message at `target` for everyone: the sender's own, or (in a group) any
    /// message for an admin or owner.
    Delete {
        /// The seq of the message to delete.
        target: Seq,
    },
    /// React to the text or media message at `target` with `emoji` (once per user and emoji).
    React {
        /// The seq of the message.
        target: Seq,
        /// The reaction, 1 to [`crate::MAX_EMOJI_BYTES`] bytes, no whitespace.
        emoji: String,
    },
    /// Take back one's `emoji` reaction to the message at `target`.
    Unreact {
        /// The seq of the message.
        target: Seq,
        /// The reaction.
        emoji: String,
    },
}

impl NewBody {
    /// A plain text body (no reply).
    pub fn text(text: impl Into<String>) -> NewBody {
        NewBody::Text {
            text: text.into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
        }
    }
}

/// A media message as the device declares it, before its bytes are uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMedia {
    /// The file name shown to users (1 to [`crate::MAX_MEDIA_NAME_BYTES`] bytes).
    pub name: String,
    /// The type of the bytes (`type/subtype`); checked against their magic bytes on upload.
    pub mime: String,
    /// The exact size in bytes (at most [`Limits::max_media_bytes`]).
    pub size: u64,
    /// The SHA-256 of the bytes, 64 hex digits; checked on upload when given.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Width in pixels.
    #[serde(default)]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default)]
    pub height: Option<u32>,
    /// Duration in milliseconds.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The seq of the message this one replies to, as for text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
}

/// Where and how to upload a media message's bytes: `PUT` (or resume with `HEAD` + `PATCH`)
/// to `url` with the header `Upload-Ticket: <ticket>` and the user's bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTicket {
    /// The upload URL of this message.
    pub url: String,
    /// The signed ticket, bound to the message, the user and the declared size and type.
    pub ticket: String,
    /// When the ticket expires; the message becomes `failed` if not uploaded by then.
    pub expires_at: Timestamp,
}

/// The frame a pushed [`Event`] becomes on a device's connection: the same payload, as
/// `message`, `receipt`, `typing` or `presence`.
impl From<&Event> for ServerFrame {
    fn from(event: &Event) -> Self {
        match event {
            Event::Message { message } => ServerFrame::Message {
                message: Arc::clone(message),
            },
            Event::Receipt(update) => ServerFrame::Receipt(update.clone()),
            Event::Typing(update) => ServerFrame::Typing(update.clone()),
            Event::Presence(update) => ServerFrame::Presence(update.clone()),
        }
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// Answer to a good `hello`.
    Welcome {
        /// The protocol version in use.
        v: u32,
        /// The authenticated user.
        user: UserId,
        /// The authenticated device.
        device: DeviceId,
        /// The server's clock.
        server_time: Timestamp,
        /// The limits this server enforces.
        limits: Limits,
    },
    /// During a `sync` with a `limit`: the backlog of `conversation` starts after `from`,
    /// not after the device's cursor; `history` with `before: from + 1` pages back through
    /// what was skipped. Sent before any entry of that backlog.
    Limited {
        /// The conversation.
        conversation: ConversationId,
        /// The seq the device's cursor moves to.
        from: Seq,
    },
    /// A log entry, delivered in seq order per conversation.
    Message {
        /// The entry.
        message: Arc<Message>,
    },
    /// The sender's acknowledgement: the message is durably stored at `seq`.
    Sent {
        /// The conversation.
        conversation: ConversationId,
        /// The key the device sent.
        client_msg_id: ClientMsgId,
        /// The message's seq.
        seq: Seq,
        /// When the server accepted it.
        sent_at: Timestamp,
        /// True when this was a retry of a message stored before (the seq is the original).
        duplicate: bool,
    },
    /// The backlog asked for by `sync` has been delivered; live delivery continues.
    Synced {
        /// The user's conversations as of the sync.
        conversations: Vec<ConversationSummary>,
    },
    /// A member's receipt watermarks moved.
    Receipt(ReceiptUpdate),
    /// Someone is typing.
    Typing(TypingUpdate),
    /// A subscribed user came online or went offline.
    Presence(PresenceUpdate),
    /// Answer to `open_direct`, `create_group` and `members`.
    Conversation {
        /// The request id.
        id: Option<RequestId>,
        /// The conversation's facts.
        conversation: Conversation,
        /// Its members.
        members: Vec<Member>,
        /// Its head.
        head: Seq,
    },
    /// Answer to a membership change: it is stored at `seq`.
    Changed {
        /// The request id.
        id: Option<RequestId>,
        /// The conversation.
        conversation: ConversationId,
        /// The seq of the membership entry.
        seq: Seq,
    },
    /// Sent to the sending device right after the `sent` of a media message that is still
    /// `pending` (also on a retried send): where to upload its bytes.
    Upload {
        /// The conversation.
        conversation: ConversationId,
        /// The key the device sent.
        client_msg_id: ClientMsgId,
        /// The media entry's seq.
        seq: Seq,
        /// The upload ticket.
        upload: UploadTicket,
    },
    /// Answer to `history`.
    History {
        /// The request id.
        id: Option<RequestId>,
        /// The conversation.
        conversation: ConversationId,
        /// The entries, ascending by seq.
        messages: Vec<Arc<Message>>,
        /// The conversation's head.
        head: Seq,
    },
    /// Answer to `conversations`.
    Conversations {
        /// The request id.
        id: Option<RequestId>,
        /// The user's conversations.
        conversations: Vec<ConversationSummary>,
    },
    /// Answer to `receipts`.
    Receipts {
        /// The request id.
        id: Option<RequestId>,
        /// The conversation.
        conversation: ConversationId,
        /// Every member's watermarks.
        receipts: Vec<Receipts>,
    },
    /// Answer to `last_seen`.
    LastSeen {
        /// The request id.
        id: Option<RequestId>,
        /// One entry per user asked about.
        users: Vec<UserPresence>,
    },
    /// Answer to a request with nothing else to say (`subscribe_presence`...).
    Ok {
        /// The request id.
        id: Option<RequestId>,
    },
    /// Answer to `ping`.
    Pong {
        /// The request id.
        id: Option<RequestId>,
    },
    /// Something the device sent was refused. Nothing was written.
    Error {
        /// The request id of the refused frame, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// For a refused `send`: its conversation and key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<ConversationId>,
        /// For a refused `send`: its key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<ClientMsgId>,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail; not part of the contract.
        message: String,
        /// Whether sending the same frame again later may succeed.
        retryable: bool,
    },
    /// The server is going away: reconnect (to any node) after `after_ms`.
    Reconnect {
        /// Suggested delay before reconnecting.
        after_ms: u64,
        /// Why.
        reason: String,
    },
}

impl ServerFrame {
    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| unreachable!("frames serialize: {err}"))
    }

    /// An error frame answering a request.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            conversation: None,
            client_msg_id: None,
            code,
            message: message.into(),
            retryable: code.is_retryable(),
        }
    }
}

/// One user's online state, as answered to `last_seen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    /// Who.
    pub user: UserId,
    /// Whether any of their devices is connected now.
    pub online: bool,
    /// The last time they were seen online (`None`: never).
    pub last_seen: Option<Timestamp>,
}

/// The limits a server enforces, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest client frame, in bytes.
    pub max_frame_bytes: usize,
    /// Largest text body, in bytes.
    pub max_text_bytes: usize,
    /// Most entries per `history` page.
    pub max_history_limit: usize,
    /// Most members per group.
    pub max_group_members: usize,
    /// Most users per `last_seen` / `subscribe_presence` request.
    pub max_users_per_request: usize,
    /// Most `typing` frames per second per connection (excess ones are dropped).
    pub typing_per_second: u32,
    /// Frames per second the server reads from one connection (bursts of five times as
    /// many are read at once). A faster device is read more slowly: TCP backpressure, no
    /// error, nothing lost.
    pub frames_per_second: u32,
    /// Largest media upload, in bytes (`0`: this server takes no media).
    #[serde(default)]
    pub max_media_bytes: u64,
    /// How long after sending a text message its sender may edit it, in milliseconds.
    #[serde(default = "default_edit_window_ms")]
    pub edit_window_ms: u64,
    /// How many times one message may be edited.
    #[serde(default = "default_max_edits")]
    pub max_edits: u32,
    /// How long after sending a message its sender may delete it for everyone, in
    /// milliseconds (group admins and owners may delete any message at any time).
    #[serde(default = "default_delete_window_ms")]
    pub delete_window_ms: u64,
    /// Most distinct reactions (emojis) on one message.
    #[serde(default = "default_max_reactions")]
    pub max_reactions_per_message: usize,
}

const fn default_max_reactions() -> usize {
    20
}

/// 48 hours.
const fn default_edit_window_ms() -> u64 {
    48 * 60 * 60 * 1000
}

const fn default_max_edits() -> u32 {
    10
}

/// 48 hours.
const fn default_delete_window_ms() -> u64 {
    48 * 60 * 60 * 1000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: MAX_FRAME_BYTES,
            max_text_bytes: crate::MAX_TEXT_BYTES,
            max_history_limit: MAX_HISTORY_LIMIT,
            max_group_members: crate::MAX_GROUP_MEMBERS,
            max_users_per_request: MAX_USERS_PER_REQUEST,
            typing_per_second: 4,
            frames_per_second: 200,
            max_media_bytes: 0,
            edit_window_ms: default_edit_window_ms(),
            max_edits: default_max_edits(),
            delete_window_ms: default_delete_window_ms(),
            max_reactions_per_message: default_max_reactions(),
        }
    }
}

pub use crate::error::ErrorCode;

/// WebSocket close codes the server uses.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A binary frame was sent: the protocol is text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server hit a bug handling this connection.
    pub const INTERNAL: u16 = 1011;
    /// The server is shutting down or restarting: reconnect (a `reconnect` frame came first).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server is at its connection limit: try again later (or another node).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The first frame was not a valid `hello`.
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// The token is missing, malformed or not valid.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `hello` arrived in time.
    pub const HELLO_TIMEOUT: u16 = 4002;
    /// The token expired while connected: reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// The `hello` asked for a protocol version this server does not speak.
    pub const UNSUPPORTED_VERSION: u16 = 4004;
    /// The device did not read its frames fast enough: its queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Too many bad frames in a row.
    pub const TOO_MANY_ERRORS: u16 = 4009;
}

/// Why a text frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The code to answer with.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The frame's request id, when it could be read.
    pub id: Option<RequestId>,
}

/// Decodes one client text frame, telling malformed JSON, unknown types, invalid ids and
/// oversize bodies apart.
///
/// # Errors
/// A [`DecodeError`] with the code to send back.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(DecodeError {
            code: ErrorCode::TooLarge,
            message: format!(
                "frame is {} bytes; the limit is {MAX_FRAME_BYTES}",
                text.len()
            ),
            id: None,
        });
    }
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        Err(err) => Err(explain_decode_error(text, &err)),
    }
}

fn explain_decode_error(text: &str, err: &serde_json::Error) -> DecodeError {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => {
            return DecodeError {
                code: ErrorCode::BadFrame,
                message: format!("not JSON: {err}"),
                id: None,
            };
        }
    };
    let Some(object) = value.as_object() else {
        return DecodeError {
            code: ErrorCode::BadFrame,
            message: "a frame must be a JSON object".into(),
            id: None,
        };
    };
    let id = object
        .get("id")
        .and_then(|id| id.as_str())
        .and_then(|id| RequestId::new(id).ok());
    let Some(kind) = object.get("type").and_then(|kind| kind.as_str()) else {
        return DecodeError {
            code: ErrorCode::BadFrame,
            message: "a frame needs a string field \"type\"".into(),
            id,
        };
    };
    if !ClientFrame::TYPES.contains(&kind) {
        return DecodeError {
            code: ErrorCode::UnknownType,
            message: format!("unknown frame type {kind:?}"),
            id,
        };
    }
    let detail = err.to_string();
    let code = if detail.starts_with("invalid id:") {
        ErrorCode::InvalidId
    } else {
        ErrorCode::BadFrame
    };
    DecodeError {
        code,
        message: format!("bad {kind} frame: {detail}"),
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_send() {
        let frame = decode_client_frame(
            r#"{"type":"send","conversation":"dm:a:b","client_msg_id":"m1","body":{"kind":"text","text":"hi"}}"#,
        )
        .unwrap();
        assert!(matches!(frame, ClientFrame::Send { .. }));
    }

    #[test]
    fn decodes_a_media_send_strictly() {
        let frame = decode_client_frame(
            r#"{"type":"send","conversation":"dm:a:b","client_msg_id":"m2","body":{"kind":"media","name":"cat.png","mime":"image/png","size":1234,"width":640}}"#,
        )
        .unwrap();
        let ClientFrame::Send {
            body: NewBody::Media(media),
            ..
        } = frame
        else {
            panic!("expected a media send: {frame:?}");
        };
        assert_eq!(
            (media.size, media.width, media.sha256),
            (1234, Some(640), None)
        );
        let unknown = decode_client_frame(
            r#"{"type":"send","conversation":"dm:a:b","client_msg_id":"m3","body":{"kind":"media","name":"x","mime":"image/png","size":1,"status":"ready"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            unknown.code,
            ErrorCode::BadFrame,
            "a client cannot set the status"
        );
        let missing = decode_client_frame(
            r#"{"type":"send","conversation":"dm:a:b","client_msg_id":"m4","body":{"kind":"media","name":"x","mime":"image/png"}}"#,
        )
        .unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadFrame);
    }

    #[test]
    fn media_bodies_round_trip_with_their_kind() {
        let body = crate::Body::MediaStatus(Box::new(crate::MediaUpdate {
            media_seq: Seq(5),
            status: crate::MediaStatus::Failed,
            url: None,
            reason: Some("upload expired".into()),
        }));
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"media_status","media_seq":5,"status":"failed","reason":"upload expired"}"#
        );
        assert_eq!(serde_json::from_str::<crate::Body>(&json).unwrap(), body);
    }

    #[test]
    fn tells_errors_apart() {
        assert_eq!(
            decode_client_frame("{").unwrap_err().code,
            ErrorCode::BadFrame
        );
        assert_eq!(
            decode_client_frame("[1]").unwrap_err().code,
            ErrorCode::BadFrame
        );
        let unknown = decode_client_frame(r#"{"type":"fly","id":"r1"}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownType);
        assert_eq!(unknown.id.unwrap().as_str(), "r1");
        let bad_id = decode_client_frame(r#"{"type":"open_direct","id":"r2","user":"not valid"}"#)
            .unwrap_err();
        assert_eq!(bad_id.code, ErrorCode::InvalidId, "{}", bad_id.message);
        let missing = decode_client_frame(r#"{"type":"read","conversation":"c"}"#).unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadFrame);
        let huge = "x".repeat(MAX_FRAME_BYTES + 1);
        assert_eq!(
            decode_client_frame(&huge).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let frame = ServerFrame::error(None, ErrorCode::NotMember, "no");
        let json = frame.to_json();
        assert!(json.contains("\"code\":\"not_member\""), "{json}");
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, frame);
    }
}
