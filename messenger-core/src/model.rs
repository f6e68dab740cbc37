//! The message model: messages, conversations, members, receipts.

use serde::{Deserialize, Serialize};

use crate::{ClientMsgId, ConversationId, DeviceId, Seq, Timestamp, UserId};

/// The largest text body, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// The longest group title, in bytes of UTF-8.
pub const MAX_TITLE_BYTES: usize = 256;
/// The most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1024;

/// One entry of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Its position in the conversation.
    pub seq: Seq,
    /// Who sent it (for membership changes: who made the change).
    pub sender: UserId,
    /// From which device.
    pub sender_device: DeviceId,
    /// The sender's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// When the server accepted it.
    pub sent_at: Timestamp,
    /// What it says.
    pub body: Body,
}

impl Message {
    /// A void entry: `seq` was allocated but its message was never stored.
    pub fn void(conversation: ConversationId, seq: Seq, at: Timestamp) -> Message {
        Message {
            conversation,
            seq,
            sender: system_user(),
            sender_device: system_device(),
            client_msg_id: void_client_msg_id(seq),
            sent_at: at,
            body: Body::Void,
        }
    }

    /// Whether this entry is a void seq (clients skip it).
    pub fn is_void(&self) -> bool {
        matches!(self.body, Body::Void)
    }
}

fn system_user() -> UserId {
    UserId::new("system").unwrap_or_else(|_| unreachable!("a valid literal id"))
}

fn system_device() -> DeviceId {
    DeviceId::new("system").unwrap_or_else(|_| unreachable!("a valid literal id"))
}

fn void_client_msg_id(seq: Seq) -> ClientMsgId {
    ClientMsgId::new(format!("void:{seq}")).unwrap_or_else(|_| unreachable!("a valid id"))
}

/// The content of a log entry.
///
/// Membership changes are entries of the log like messages, so every member sees joins and
/// leaves in the same order as the messages around them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Body {
    /// A text message.
    Text {
        /// The text, at most [`MAX_TEXT_BYTES`]; after an edit, the latest version.
        text: String,
        /// The message it replies to, quoted as it was when the reply was sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Box<Reply>>,
        /// When it was last edited (absent: never).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited_at: Option<Timestamp>,
        /// How many times it was edited.
        #[serde(default, skip_serializing_if = "is_zero")]
        edits: u32,
        /// Who reacted with what, in the order the emojis were first used.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reactions: Vec<Reaction>,
        /// Whether it mentions every member (`@all`; group admins and owners only).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mention_all: bool,
        /// The members it mentions. Declared (so serialized) last: the SQL stores find a
        /// mention by searching the stored JSON after `"mentions":[` (messenger-store's
        /// `unread.rs`), where nothing but these ids follows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
    },
    /// A group was created with these members (the first entry of every group).
    GroupCreated {
        /// The group's title.
        title: String,
        /// The founding members with their roles.
        members: Vec<Member>,
    },
    /// Users joined the group with `role`.
    MembersAdded {
        /// Who joined.
        users: Vec<UserId>,
        /// Their role.
        role: Role,
    },
    /// A member was removed by the sender.
    MemberRemoved {
        /// Who was removed.
        user: UserId,
    },
    /// The sender left the group.
    MemberLeft,
    /// A member's role changed. Giving `owner` transfers ownership: the previous owner
    /// becomes an admin.
    RoleChanged {
        /// Whose role.
        user: UserId,
        /// The new role.
        role: Role,
    },
    /// The seq was allocated but its message was never stored; clients skip it.
    Void,
    /// An image, video or file. Sequenced as `pending` when sent; its `status` changes in
    /// place to `ready` (with `url`) or `failed`, and each change is also logged as a
    /// [`Body::MediaStatus`] entry so devices that already hold the entry learn of it.
    Media(Box<MediaBody>),
    /// The media entry at `media_seq` changed status (see `docs/media.md`).
    MediaStatus(Box<MediaUpdate>),
    /// The sender edited their text message at `target`: its stored body now holds `text`
    /// (with `edited_at` and `edits`), and this entry tells devices that hold it already.
    Edit {
        /// The seq of the edited message.
        target: Seq,
        /// Its new text.
        text: String,
    },
    /// The message at `target` was deleted for everyone: its stored body is now a
    /// [`Body::Deleted`] tombstone, and this entry tells devices that hold it already.
    Delete {
        /// The seq of the deleted message.
        target: Seq,
    },
    /// `sender` reacted to the message at `target` with `emoji`: its stored body lists them
    /// among its `reactions`, and this entry tells devices that hold it already.
    React {
        /// The seq of the message.
        target: Seq,
        /// The reaction.
        emoji: String,
    },
    /// `sender` took back their `emoji` reaction to the message at `target`.
    Unreact {
        /// The seq of the message.
        target: Seq,
        /// The reaction taken back.
        emoji: String,
    },
    /// What a deleted message's entry holds instead of its content (written in place by a
    /// [`Body::Delete`]; never sent by a device).
    Deleted {
        /// Who deleted it: its sender, or a group admin or owner.
        by: UserId,
        /// When.
        at: Timestamp,
    },
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// The most members one text message may mention.
pub const MAX_MENTIONS: usize = 50;

/// The longest reaction, in bytes of UTF-8 (room for emoji ZWJ sequences and short words).
pub const MAX_EMOJI_BYTES: usize = 64;

/// One reaction of a message: the emoji and everyone who reacted with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The reaction, at most [`MAX_EMOJI_BYTES`].
    pub emoji: String,
    /// Who reacted with it, in the order they did.
    pub users: Vec<UserId>,
}

/// The longest excerpt of a quoted message, in characters.
pub const MAX_EXCERPT_CHARS: usize = 120;

/// The message a reply answers, as it was when the reply was sent: enough to render a quote
/// without fetching it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Its seq.
    pub seq: Seq,
    /// Its sender.
    pub sender: UserId,
    /// `text` or `media`.
    pub kind: ReplyKind,
    /// The first [`MAX_EXCERPT_CHARS`] characters of its text, or a media message's file name.
    pub excerpt: String,
}

/// What kind of message a [`Reply`] quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// A text message.
    Text,
    /// A media message.
    Media,
}

impl Reply {
    /// The quote of `message`, when it is a message one can reply to (a text or a media
    /// message that is not deleted).
    pub fn quote(message: &Message) -> Option<Reply> {
        let (kind, excerpt) = match &message.body {
            Body::Text { text, .. } => (ReplyKind::Text, text.as_str()),
            Body::Media(media) => (ReplyKind::Media, media.name.as_str()),
            _ => return None,
        };
        Some(Reply {
            seq: message.seq,
            sender: message.sender.clone(),
            kind,
            excerpt: excerpt.chars().take(MAX_EXCERPT_CHARS).collect(),
        })
    }
}

impl Body {
    /// A plain text body: no reply, never edited.
    pub fn text(text: impl Into<String>) -> Body {
        Body::Text {
            text: text.into(),
            reply_to: None,
            edited_at: None,
            edits: 0,
            reactions: Vec::new(),
            mention_all: false,
            mentions: Vec::new(),
        }
    }

    /// The reactions of a text or media message (`None` for other entries).
    pub fn reactions(&self) -> Option<&[Reaction]> {
        match self {
            Body::Text { reactions, .. } => Some(reactions),
            Body::Media(media) => Some(&media.reactions),
            _ => None,
        }
    }

    /// The reactions of a text or media message, to change (`None` for other entries).
    pub fn reactions_mut(&mut self) -> Option<&mut Vec<Reaction>> {
        match self {
            Body::Text { reactions, .. } => Some(reactions),
            Body::Media(media) => Some(&mut media.reactions),
            _ => None,
        }
    }

    /// The seq of the message this entry changes in place: for an edit, a delete, a reaction
    /// and its removal.
    pub fn amends(&self) -> Option<Seq> {
        match self {
            Body::Edit { target, .. }
            | Body::Delete { target }
            | Body::React { target, .. }
            | Body::Unreact { target, .. } => Some(*target),
            _ => None,
        }
    }

    /// Whether this entry changes the membership of its conversation.
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            Body::GroupCreated { .. }
                | Body::MembersAdded { .. }
                | Body::MemberRemoved { .. }
                | Body::MemberLeft
                | Body::RoleChanged { .. }
        )
    }
}

/// The state of a media message's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaStatus {
    /// Sequenced; the bytes are being uploaded. Clients show a placeholder.
    Pending,
    /// Uploaded and checked: `url` serves the bytes.
    Ready,
    /// The upload failed or expired. Clients do not show the message.
    Failed,
}

impl MediaStatus {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaStatus::Pending => "pending",
            MediaStatus::Ready => "ready",
            MediaStatus::Failed => "failed",
        }
    }
}

/// A media message: what the sender declared, and the state of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaBody {
    /// The file name shown to users (at most [`MAX_MEDIA_NAME_BYTES`]).
    pub name: String,
    /// The declared type (`image/jpeg`, `video/mp4`, `application/pdf`...).
    pub mime: String,
    /// The declared size in bytes; the upload must be exactly this long.
    pub size: u64,
    /// The declared SHA-256 of the bytes (64 lower-case hex digits), checked on upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Width in pixels (images, videos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels (images, videos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Duration in milliseconds (videos, audio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Pending, ready or failed.
    pub status: MediaStatus,
    /// Where the bytes are served once `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why it failed, once `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The message it replies to, quoted as it was when the reply was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Reply>,
    /// Who reacted with what, as for text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
}

/// The longest media file name, in bytes of UTF-8.
pub const MAX_MEDIA_NAME_BYTES: usize = 255;

/// A status change of the media entry at `media_seq`, itself an entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUpdate {
    /// The seq of the media entry that changed.
    pub media_seq: Seq,
    /// Its new status (`ready` or `failed`).
    pub status: MediaStatus,
    /// The download URL, when `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why it failed, when `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A member's role in a group. Direct conversations only have `member`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Plain member: may send, read and leave.
    Member,
    /// May also add members and remove plain members.
    Admin,
    /// May do everything: remove admins, change roles, transfer ownership. One per group.
    Owner,
}

impl Role {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses [`Role::as_str`]'s output.
    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// A user's membership of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member.
    pub user: UserId,
    /// Their role.
    pub role: Role,
}

/// Whether a conversation is a direct chat or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly two users, id derived from the pair.
    Direct,
    /// Any number of members with roles.
    Group,
}

impl ConversationKind {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }

    /// Parses [`ConversationKind::as_str`]'s output.
    pub fn parse(value: &str) -> Option<ConversationKind> {
        match value {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// A conversation's fixed facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The group title (`None` for direct conversations).
    pub title: Option<String>,
    /// Who created it.
    pub created_by: UserId,
    /// When.
    pub created_at: Timestamp,
}

/// Which receipt a device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The message reached one of the user's devices.
    Delivered,
    /// The user saw the message. Read implies delivered.
    Read,
}

/// One user's receipt watermarks in one conversation. Both only ever grow, and
/// `delivered >= read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipts {
    /// Whose.
    pub user: UserId,
    /// Every message up to this seq reached one of the user's devices.
    pub delivered: Seq,
    /// The user has read every message up to this seq.
    pub read: Seq,
}

/// A conversation as one user sees it in their list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: Conversation,
    /// The user's role.
    pub role: Role,
    /// The seq of its latest entry.
    pub head: Seq,
    /// The user's delivered watermark.
    pub delivered: Seq,
    /// The user's read watermark.
    pub read: Seq,
    /// Messages from other users after the read watermark that a client shows: text and
    /// media messages (not failed, not deleted) whose sender is not the user, among the
    /// [`MAX_UNREAD_SPAN`] latest entries. Derived from the log and the watermark, so it
    /// never drifts; reading up to the head clears it.
    pub unread: u64,
    /// Of those, the text messages that mention the user (or everyone): derived the same
    /// way, among the same entries.
    #[serde(default)]
    pub mentions: u64,
}

/// How many of a conversation's latest entries `unread` looks at: the count is exact while
/// the user is at most this many entries behind, and counts the latest ones beyond that.
pub const MAX_UNREAD_SPAN: u64 = 1000;

impl Message {
    /// Whether this entry counts towards `user`'s unread count once past their read
    /// watermark: a text or media message (not failed, not deleted) someone else sent.
    pub fn counts_as_unread_for(&self, user: &UserId) -> bool {
        self.sender != *user && self.body.is_displayed_message()
    }

    /// Whether this entry counts towards `user`'s mention count once past their read
    /// watermark: a text message of someone else that mentions them (or everyone).
    pub fn mentions(&self, user: &UserId) -> bool {
        self.sender != *user
            && matches!(&self.body, Body::Text { mention_all, mentions, .. }
                if *mention_all || mentions.contains(user))
    }
}

impl Body {
    /// A text message, or a media message that is not failed: what a client shows as a
    /// message (not a membership change, a void, a status, an edit, a delete or a tombstone).
    pub fn is_displayed_message(&self) -> bool {
        match self {
            Body::Text { .. } => true,
            Body::Media(media) => media.status != MediaStatus::Failed,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies and summaries as the previous build stored and sent them (no reply, edit,
    /// reaction or mention fields) still decode, to the plain values: stores keep their old
    /// rows as they are, no migration.
    #[test]
    fn what_the_previous_build_stored_still_decodes() {
        let text: Body = serde_json::from_str(r#"{"kind":"text","text":"hi"}"#).expect("text");
        assert_eq!(text, Body::text("hi"));
        assert_eq!(
            serde_json::to_string(&text).expect("json"),
            r#"{"kind":"text","text":"hi"}"#,
            "a plain text is written as before"
        );
        let media: Body = serde_json::from_str(
            r#"{"kind":"media","name":"a.png","mime":"image/png","size":3,"status":"ready","url":"u"}"#,
        )
        .expect("media");
        let Body::Media(media) = media else {
            panic!("media")
        };
        assert!(media.reply_to.is_none() && media.reactions.is_empty());
        let summary: ConversationSummary = serde_json::from_str(
            r#"{"conversation":{"id":"dm:a:b","kind":"direct","title":null,"created_by":"a","created_at":1},"role":"member","head":4,"delivered":4,"read":2,"unread":2}"#,
        )
        .expect("summary");
        assert_eq!((summary.unread, summary.mentions), (2, 0));
    }
}
