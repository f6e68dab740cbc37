//! Requests of the message store: the log, conversations and members, receipts, last seen.
//!
//! The store crate (`messenger-store`) implements them on its backends; the socket crate calls
//! them through [`StoreService`].

use std::sync::Arc;

use crate::service::{Handles, Operation};
use crate::{
    ClientMsgId, Conversation, ConversationId, ConversationSummary, Member, Message, ReceiptKind,
    Receipts, Role, Seq, Timestamp, UserId,
};

/// Appends one entry at its already-allocated seq.
///
/// - Conditional: if the seq already holds another entry, the answer is a `Conflict` error and
///   nothing is written (the caller fences its sequencer and tries again with a new seq).
/// - Idempotent: if the conversation already holds an entry from the same sender with the same
///   `client_msg_id`, nothing new is stored; the answer carries the original entry with
///   `duplicate: true`, and the newly allocated seq is stored as void (so no hole is left).
/// - Membership changes ([`crate::Body::is_membership_change`]) update the member list in the
///   same atomic write, so the list always matches the log.
///
/// Answered only once the write is durable.
///
/// # Cancellation safety
/// Dropping the future does not cancel the write: it may still land. Retrying with the same
/// message is always safe.
#[derive(Debug, Clone)]
pub struct AppendMessage {
    /// The entry, with its seq set.
    pub message: Arc<Message>,
}

/// The answer to [`AppendMessage`].
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stored entry: the one appended, or the original on a duplicate.
    pub message: Arc<Message>,
    /// Whether the entry was a retry of one stored before.
    pub duplicate: bool,
}

impl Operation for AppendMessage {
    type Response = Appended;
    const NAME: &'static str = "append_message";
}

/// Stores a void entry at `seq` unless the seq is already taken, and returns what the seq
/// holds afterwards (the void, or the entry that was there).
///
/// Readers call it for a seq that stayed missing too long, so nobody waits on a hole forever;
/// a writer that arrives later gets a `Conflict` and retries with a new seq.
#[derive(Debug, Clone)]
pub struct VoidSeq {
    /// The conversation.
    pub conversation: ConversationId,
    /// The missing seq.
    pub seq: Seq,
}

impl Operation for VoidSeq {
    type Response = Arc<Message>;
    const NAME: &'static str = "void_seq";
}

/// Stores a void entry at every seq in `after < seq <= until` that holds nothing, in one
/// write, and returns the page of that range as stored afterwards: every seq of it present,
/// ascending (voids and the entries that were there).
///
/// The range form of [`VoidSeq`], for readers that found several holes at once (a node that
/// crashed with sends in flight leaves a run of them): one round trip resolves them all.
///
/// - Conditional per seq like [`VoidSeq`]: an entry already stored wins and is returned; a
///   writer arriving later at a voided seq gets `Conflict` and re-sequences.
/// - Only holes are voided: `until` is lowered to the conversation's head (a seq above the
///   head has no stored entry after it, so it is no hole yet), and the page's `head` is the
///   head after the write.
/// - A range with `until <= after` (or an empty conversation) writes nothing and answers an
///   empty page.
///
/// Voids written here carry the time of the write as `sent_at`.
///
/// # Errors
/// `InvalidRequest` when the range spans more than [`VoidHoles::MAX_SPAN`] seqs.
///
/// # Cancellation safety
/// As [`VoidSeq`]: the write may still land (in whole or, on a backend without multi-row
/// transactions, in part); sending the same request again is always safe.
#[derive(Debug, Clone)]
pub struct VoidHoles {
    /// The conversation.
    pub conversation: ConversationId,
    /// Exclusive lower bound: the last seq the reader holds.
    pub after: Seq,
    /// Inclusive upper bound (lowered to the head).
    pub until: Seq,
}

impl VoidHoles {
    /// The most seqs one request may span (`until - after`), which bounds the write and the
    /// page it answers.
    pub const MAX_SPAN: u64 = 4096;

    /// Checks the span: backends call it before writing anything.
    ///
    /// # Errors
    /// `InvalidRequest` when the range spans more than [`VoidHoles::MAX_SPAN`] seqs.
    pub fn check_span(&self) -> Result<(), crate::Error> {
        let span = self.until.get().saturating_sub(self.after.get());
        if span > Self::MAX_SPAN {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidRequest,
                format!(
                    "void_holes spans {span} seqs ({}..={}), at most {} allowed",
                    self.after.next(),
                    self.until,
                    Self::MAX_SPAN
                ),
            ));
        }
        Ok(())
    }

    /// The seqs the request covers once `until` is lowered to `head`, first and last
    /// inclusive: `None` when that range is empty.
    pub fn covered(&self, head: Seq) -> Option<(Seq, Seq)> {
        let until = self.until.min(head);
        (until > self.after).then_some((self.after.next(), until))
    }
}

impl Operation for VoidHoles {
    type Response = MessagePage;
    const NAME: &'static str = "void_holes";
}

/// Looks up an entry by its sender's idempotency key.
#[derive(Debug, Clone)]
pub struct FindMessage {
    /// The conversation.
    pub conversation: ConversationId,
    /// The sender.
    pub sender: UserId,
    /// The sender's key.
    pub client_msg_id: ClientMsgId,
}

impl Operation for FindMessage {
    type Response = Option<Arc<Message>>;
    const NAME: &'static str = "find_message";
}

/// Reads entries with `after < seq <= until`, in ascending order, at most `limit`.
#[derive(Debug, Clone)]
pub struct ReadRange {
    /// The conversation.
    pub conversation: ConversationId,
    /// Exclusive lower bound.
    pub after: Seq,
    /// Inclusive upper bound (`None`: up to the head).
    pub until: Option<Seq>,
    /// The most entries to return.
    pub limit: usize,
}

/// Reads the latest entries with `seq < before`, returned in ascending order, at most `limit`.
#[derive(Debug, Clone)]
pub struct ReadBefore {
    /// The conversation.
    pub conversation: ConversationId,
    /// Exclusive upper bound (`None`: from the head).
    pub before: Option<Seq>,
    /// The most entries to return.
    pub limit: usize,
}

/// Entries of one conversation, ascending by seq, with the conversation's head.
#[derive(Debug, Clone, Default)]
pub struct MessagePage {
    /// The entries found (a range may have holes: seqs allocated but not yet stored).
    pub messages: Vec<Arc<Message>>,
    /// The highest stored seq of the conversation when the page was read.
    pub head: Seq,
}

impl Operation for ReadRange {
    type Response = MessagePage;
    const NAME: &'static str = "read_range";
}

impl Operation for ReadBefore {
    type Response = MessagePage;
    const NAME: &'static str = "read_before";
}

/// The highest stored seq of a conversation (`Seq::ZERO` when empty or unknown).
#[derive(Debug, Clone)]
pub struct GetHead {
    /// The conversation.
    pub conversation: ConversationId,
}

impl Operation for GetHead {
    type Response = Seq;
    const NAME: &'static str = "get_head";
}

/// Creates a conversation with its members, or returns the existing one with that id
/// (idempotent: `created` tells which).
#[derive(Debug, Clone)]
pub struct CreateConversation {
    /// The conversation's facts.
    pub conversation: Conversation,
    /// Its first members.
    pub members: Vec<Member>,
}

/// The answer to [`CreateConversation`].
#[derive(Debug, Clone)]
pub struct Created {
    /// The conversation as stored.
    pub conversation: Conversation,
    /// False when it existed already.
    pub created: bool,
}

impl Operation for CreateConversation {
    type Response = Created;
    const NAME: &'static str = "create_conversation";
}

/// A conversation's facts and its current members.
#[derive(Debug, Clone)]
pub struct GetConversation {
    /// The conversation.
    pub conversation: ConversationId,
}

/// The answer to [`GetConversation`].
#[derive(Debug, Clone)]
pub struct ConversationInfo {
    /// Its facts.
    pub conversation: Conversation,
    /// Its members now.
    pub members: Vec<Member>,
    /// Its head.
    pub head: Seq,
}

impl ConversationInfo {
    /// The role of `user`, if a member.
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.members
            .iter()
            .find(|member| &member.user == user)
            .map(|member| member.role)
    }
}

impl Operation for GetConversation {
    type Response = Option<ConversationInfo>;
    const NAME: &'static str = "get_conversation";
}

/// Every conversation `user` is a member of, with head, watermarks and unread count.
#[derive(Debug, Clone)]
pub struct UserConversations {
    /// The user.
    pub user: UserId,
}

impl Operation for UserConversations {
    type Response = Vec<ConversationSummary>;
    const NAME: &'static str = "user_conversations";
}

/// Raises a user's receipt watermark (never lowers it). `Read` raises `delivered` too.
///
/// # Errors
/// `InvalidRequest` when `seq` is past the conversation's head.
#[derive(Debug, Clone)]
pub struct UpdateReceipt {
    /// The conversation.
    pub conversation: ConversationId,
    /// Whose receipt.
    pub user: UserId,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Up to which seq.
    pub seq: Seq,
}

/// The answer to [`UpdateReceipt`].
#[derive(Debug, Clone)]
pub struct ReceiptUpdated {
    /// The watermarks after the update.
    pub receipts: Receipts,
    /// Whether either watermark moved.
    pub changed: bool,
}

impl Operation for UpdateReceipt {
    type Response = ReceiptUpdated;
    const NAME: &'static str = "update_receipt";
}

/// Every member's receipt watermarks in a conversation.
#[derive(Debug, Clone)]
pub struct GetReceipts {
    /// The conversation.
    pub conversation: ConversationId,
}

impl Operation for GetReceipts {
    type Response = Vec<Receipts>;
    const NAME: &'static str = "get_receipts";
}

/// Records that `user` was online at `at`; the stored value only ever grows. Returns it.
#[derive(Debug, Clone)]
pub struct SetLastSeen {
    /// Who.
    pub user: UserId,
    /// When.
    pub at: Timestamp,
}

impl Operation for SetLastSeen {
    type Response = Timestamp;
    const NAME: &'static str = "set_last_seen";
}

/// The last-seen times of `users` (`None` for a user never seen), in the order asked.
#[derive(Debug, Clone)]
pub struct GetLastSeen {
    /// Whose.
    pub users: Vec<UserId>,
}

impl Operation for GetLastSeen {
    type Response = Vec<(UserId, Option<Timestamp>)>;
    const NAME: &'static str = "get_last_seen";
}

/// Moves the media entry at `media_seq` out of `pending` and appends `update` (a
/// [`crate::Body::MediaStatus`] entry, seq already allocated) in the same atomic write.
///
/// - Conditional on the media entry: only a `pending` entry moves. When it is `ready` or
///   `failed` already, nothing is written and the answer has `applied: false` with the entry
///   as stored (a second completion, or a completion after expiry, is refused this way).
/// - Conditional on `update.seq` like [`AppendMessage`]: a taken seq is a `Conflict` error and
///   nothing is written (fence the sequencer and try again with a new seq).
/// - Repair: when the entry already holds exactly the status and url of `update` but the log
///   has no entry with `update`'s key (a backend without multi-row transactions was
///   interrupted between its two writes), the update entry is appended and `applied` is true.
///
/// # Errors
/// `NotFound` when `media_seq` holds no entry; `InvalidRequest` when it is not a media entry
/// or `update` is not a status entry for it; `Conflict` when `update.seq` is taken.
///
/// # Cancellation safety
/// As [`AppendMessage`]: the write may still land; retrying the same request is safe.
#[derive(Debug, Clone)]
pub struct SetMediaStatus {
    /// The status entry to append; its body is a [`crate::Body::MediaStatus`] naming the
    /// media entry (`media_seq`) and the new status.
    pub update: Arc<Message>,
}

/// The answer to [`SetMediaStatus`].
#[derive(Debug, Clone)]
pub struct MediaStatusSet {
    /// The media entry as stored after the call.
    pub media: Arc<Message>,
    /// Whether the status moved and `update` was appended.
    pub applied: bool,
}

impl Operation for SetMediaStatus {
    type Response = MediaStatusSet;
    const NAME: &'static str = "set_media_status";
}

/// Appends `update` (an entry that changes another in place: a [`crate::Body::Edit`] or a
/// [`crate::Body::Delete`], seq already allocated) and replaces the entry at its target seq
/// with `amended`, in one atomic write — if that entry still equals `expected`.
///
/// The caller (the engine) decides what may change and computes `amended` from the entry it
/// read (`expected`); the store makes the decision stick: a concurrent change of the target
/// (a second edit, a delete) makes the comparison fail and nothing is written.
///
/// - Idempotent like [`AppendMessage`]: when the conversation already holds an entry from the
///   same sender with `update`'s `client_msg_id`, nothing else is written, `update.seq` is
///   stored as void, and the answer is [`Amended::Duplicate`] with the original.
/// - Conditional on `update.seq` like [`AppendMessage`]: a taken seq is a `Conflict` error
///   (fence the sequencer, try again with a new seq). Nothing is written, except on a backend
///   without multi-row transactions, which may have moved the target already: the retry
///   finds it amended and repairs (below).
/// - Conditional on the target: when it no longer equals `expected`, nothing is written and
///   the answer is [`Amended::Changed`] with what it holds now (decide again on that).
/// - Repair: when the target already equals `amended` but `update`'s key is not stored (a
///   backend without multi-row transactions was interrupted between its two writes, or the
///   append found its seq taken after the target moved), `update` is appended.
///
/// # Errors
/// `InvalidRequest` when `update` does not amend the seq of `expected` and `amended`, or they
/// are of another conversation; `Conflict` when `update.seq` is taken.
///
/// # Cancellation safety
/// As [`AppendMessage`]: the write may still land; retrying the same request is safe.
#[derive(Debug, Clone)]
pub struct AmendMessage {
    /// The entry to append (its body names the target).
    pub update: Arc<Message>,
    /// The target as the caller read it.
    pub expected: Arc<Message>,
    /// The target as it must be stored.
    pub amended: Arc<Message>,
}

impl AmendMessage {
    /// Checks that the three entries agree: one conversation, and `update` amends the seq of
    /// `expected` and `amended`. Backends call it before writing anything.
    ///
    /// # Errors
    /// `InvalidRequest` when they do not.
    pub fn check(&self) -> Result<(), crate::Error> {
        let target = self.update.body.amends();
        let agrees = target == Some(self.expected.seq)
            && self.amended.seq == self.expected.seq
            && self.update.conversation == self.expected.conversation
            && self.amended.conversation == self.expected.conversation
            && self.update.seq != self.expected.seq;
        if agrees {
            Ok(())
        } else {
            Err(crate::Error::new(
                crate::ErrorKind::InvalidRequest,
                format!(
                    "amend_message: update {} of {} does not amend seq {} of {}",
                    self.update.seq,
                    self.update.conversation,
                    self.expected.seq,
                    self.expected.conversation
                ),
            ))
        }
    }
}

/// The answer to [`AmendMessage`].
#[derive(Debug, Clone)]
pub enum Amended {
    /// `update` was appended and the target now holds `amended` (also after a repair).
    Applied {
        /// The appended entry.
        update: Arc<Message>,
        /// The target as stored now.
        target: Arc<Message>,
    },
    /// `update` was a retry: its original is stored, and the new seq was voided.
    Duplicate {
        /// The entry stored before with `update`'s key.
        original: Arc<Message>,
    },
    /// The target no longer equals `expected`: nothing was written.
    Changed {
        /// What the target seq holds now (`None`: nothing).
        current: Option<Arc<Message>>,
    },
}

impl Operation for AmendMessage {
    type Response = Amended;
    const NAME: &'static str = "amend_message";
}

/// Every store operation, as one bound: what the socket layer needs from a store.
pub trait StoreService:
    Handles<AppendMessage>
    + Handles<VoidSeq>
    + Handles<VoidHoles>
    + Handles<FindMessage>
    + Handles<ReadRange>
    + Handles<ReadBefore>
    + Handles<GetHead>
    + Handles<CreateConversation>
    + Handles<GetConversation>
    + Handles<UserConversations>
    + Handles<UpdateReceipt>
    + Handles<GetReceipts>
    + Handles<SetLastSeen>
    + Handles<GetLastSeen>
    + Handles<SetMediaStatus>
    + Handles<AmendMessage>
{
}

impl<S> StoreService for S where
    S: Handles<AppendMessage>
        + Handles<VoidSeq>
        + Handles<VoidHoles>
        + Handles<FindMessage>
        + Handles<ReadRange>
        + Handles<ReadBefore>
        + Handles<GetHead>
        + Handles<CreateConversation>
        + Handles<GetConversation>
        + Handles<UserConversations>
        + Handles<UpdateReceipt>
        + Handles<GetReceipts>
        + Handles<SetLastSeen>
        + Handles<GetLastSeen>
        + Handles<SetMediaStatus>
        + Handles<AmendMessage>
{
}
