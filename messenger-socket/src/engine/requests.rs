//! The engine's operations: one request type per operation, a typed response, and a
//! [`tower::Service`] implementation of [`Engine`] for each.
//!
//! Every request names its `actor`: the user (and device) it acts as. The engine checks what
//! that user may do (membership, roles) exactly as for a WebSocket client; authenticating the
//! actor is the caller's business (an [`Authenticator`](messenger_core::auth::Authenticate) on
//! the WebSocket, the integrator's own auth on an HTTP route, nothing for a trusted bot).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use messenger_core::auth::Identity;
use messenger_core::presence::LookupPresence;
use messenger_core::protocol::{ErrorCode, NewBody, UploadTicket, UserPresence};
use messenger_core::service::Operation;
use messenger_core::store::{
    ConversationInfo, GetLastSeen, GetReceipts, MessagePage, UpdateReceipt, UserConversations,
};
use messenger_core::{
    ClientMsgId, ConversationId, ConversationSummary, DomainEvent, Error, Event, Message,
    ReceiptKind, ReceiptUpdate, Receipts, Role, Seq, TypingUpdate, UserId, call,
};

use super::{Backends, Engine};

/// Sends a message as `actor`: checked (limits, membership), sequenced, stored durably, then
/// fanned out to every online device of every member (the sender's other devices included).
///
/// Idempotent on (`actor.user`, `client_msg_id`) per conversation: a retry answers the
/// original entry with `duplicate: true`.
///
/// # Errors
/// `too_large` / `invalid_request` for a body over the limits or empty, `not_found` for an
/// unknown conversation, `not_member`, and the backends' errors (`unavailable`, `timeout`...).
///
/// # Cancellation safety
/// Dropping the future after the seq was allocated may leave the entry stored without an
/// answer, or a hole that readers resolve as void; retrying with the same `client_msg_id` is
/// always safe.
#[derive(Debug, Clone)]
pub struct SendMessage {
    /// Who sends.
    pub actor: Identity,
    /// Where.
    pub conversation: ConversationId,
    /// The sender's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// What.
    pub body: NewBody,
    /// The caller may have sent this before (a retry after a timeout, an HTTP client's
    /// replayed request): the key is looked up before a seq is spent, so a message stored
    /// already is answered without leaving a void. `false` for a first attempt.
    pub resend: bool,
}

/// The answer to [`SendMessage`]: the stored entry.
#[derive(Debug, Clone)]
pub struct MessageSent {
    /// The entry as stored (the original one on a retry).
    pub message: Arc<Message>,
    /// Whether this was a retry of an entry stored before.
    pub duplicate: bool,
    /// For a media message still pending: where and with which ticket to upload its bytes.
    pub upload: Option<UploadTicket>,
}

impl Operation for SendMessage {
    type Response = MessageSent;
    const NAME: &'static str = "send_message";
}

/// Opens (creating it if needed) the one direct conversation between `actor` and `other`.
///
/// # Errors
/// `invalid_id` when `other` is `actor` themselves; the backends' errors.
#[derive(Debug, Clone)]
pub struct OpenDirect {
    /// Who opens it.
    pub actor: Identity,
    /// The other member.
    pub other: UserId,
}

impl Operation for OpenDirect {
    type Response = ConversationInfo;
    const NAME: &'static str = "open_direct";
}

/// Creates a group owned by `actor` with `members` (duplicates and the owner are ignored),
/// sequencing a `group_created` entry as its seq 1.
///
/// # Errors
/// `invalid_request` for an empty title, `too_large` for a title over
/// [`MAX_TITLE_BYTES`](messenger_core::MAX_TITLE_BYTES) or too many members.
#[derive(Debug, Clone)]
pub struct CreateGroup {
    /// The owner.
    pub actor: Identity,
    /// Its title.
    pub title: String,
    /// The first members besides the owner.
    pub members: Vec<UserId>,
}

impl Operation for CreateGroup {
    type Response = ConversationInfo;
    const NAME: &'static str = "create_group";
}

/// Adds users to a group with `role` (an admin adds members, the owner adds members and
/// admins). Answers the seq of the `members_added` entry.
///
/// # Errors
/// `invalid_request` for `role: owner`, no users, or a user already a member; `forbidden`;
/// `too_large` past the group size limit; `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct AddMembers {
    /// Who adds.
    pub actor: Identity,
    /// The group.
    pub conversation: ConversationId,
    /// Whom.
    pub users: Vec<UserId>,
    /// With which role.
    pub role: Role,
}

impl Operation for AddMembers {
    type Response = Seq;
    const NAME: &'static str = "add_members";
}

/// Removes a member (the owner removes anyone, an admin removes members). Answers the seq of
/// the `member_removed` entry.
///
/// # Errors
/// `invalid_request` for oneself or a non-member; `forbidden`; `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct RemoveMember {
    /// Who removes.
    pub actor: Identity,
    /// The group.
    pub conversation: ConversationId,
    /// Whom.
    pub user: UserId,
}

impl Operation for RemoveMember {
    type Response = Seq;
    const NAME: &'static str = "remove_member";
}

/// Changes a member's role (the owner only; `owner` transfers ownership). Answers the seq of
/// the `role_changed` entry.
///
/// # Errors
/// `forbidden` unless the actor owns the group; `invalid_request` for oneself, a non-member,
/// or the role the member has already (nothing is written).
#[derive(Debug, Clone)]
pub struct SetRole {
    /// The owner.
    pub actor: Identity,
    /// The group.
    pub conversation: ConversationId,
    /// Whose role.
    pub user: UserId,
    /// The new role.
    pub role: Role,
}

impl Operation for SetRole {
    type Response = Seq;
    const NAME: &'static str = "set_role";
}

/// Leaves a group. Answers the seq of the `member_left` entry.
///
/// # Errors
/// `forbidden` for an owner while other members remain; `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct LeaveGroup {
    /// Who leaves.
    pub actor: Identity,
    /// The group.
    pub conversation: ConversationId,
}

impl Operation for LeaveGroup {
    type Response = Seq;
    const NAME: &'static str = "leave_group";
}

/// Raises `actor`'s delivered or read watermark (never lowers it; `read` raises `delivered`
/// too) and, when it moved, fans the new watermarks out to every member. Answers the
/// watermarks now.
///
/// # Errors
/// `invalid_request` for a seq past the head; `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct MarkReceipt {
    /// Whose receipt.
    pub actor: Identity,
    /// The conversation.
    pub conversation: ConversationId,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Up to which seq.
    pub seq: Seq,
}

impl Operation for MarkReceipt {
    type Response = Receipts;
    const NAME: &'static str = "mark_receipt";
}

/// Tells the members' online devices that `actor` is typing (or stopped). Not stored.
///
/// # Errors
/// `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct SetTyping {
    /// Who types.
    pub actor: Identity,
    /// Where.
    pub conversation: ConversationId,
    /// Typing now (`false`: stopped).
    pub active: bool,
}

impl Operation for SetTyping {
    type Response = ();
    const NAME: &'static str = "set_typing";
}

/// Whether `users` are online and when each was last seen, in the order asked.
///
/// # Errors
/// `too_large` for more than `limits.max_users_per_request` users.
#[derive(Debug, Clone)]
pub struct GetPresence {
    /// Whose.
    pub users: Vec<UserId>,
}

impl Operation for GetPresence {
    type Response = Vec<UserPresence>;
    const NAME: &'static str = "get_presence";
}

/// A page of a conversation's log: after `after` (ascending, oldest first), or else the latest
/// entries before `before` (or the head). At most `limit` entries (default and cap:
/// `limits.max_history_limit`). A page never skips a seq: it has every seq of its range (a
/// hole whose writer is gone comes back as a `void` entry) or ends before a hole that may
/// still be filled (ask again later).
///
/// # Errors
/// `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct ReadHistory {
    /// Who reads.
    pub actor: Identity,
    /// The conversation.
    pub conversation: ConversationId,
    /// Entries after this seq.
    pub after: Option<Seq>,
    /// Without `after`: entries before this seq.
    pub before: Option<Seq>,
    /// The most entries.
    pub limit: Option<usize>,
}

impl Operation for ReadHistory {
    type Response = MessagePage;
    const NAME: &'static str = "read_history";
}

/// Every conversation `user` is a member of, with head, watermarks and unread count.
#[derive(Debug, Clone)]
pub struct ListConversations {
    /// Whose.
    pub user: UserId,
}

impl Operation for ListConversations {
    type Response = Vec<ConversationSummary>;
    const NAME: &'static str = "list_conversations";
}

/// A conversation's facts, members and head, for a member.
///
/// # Errors
/// `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct GetMembers {
    /// Who asks.
    pub actor: Identity,
    /// The conversation.
    pub conversation: ConversationId,
}

impl Operation for GetMembers {
    type Response = ConversationInfo;
    const NAME: &'static str = "get_members";
}

/// Every member's receipt watermarks in a conversation, for a member.
///
/// # Errors
/// `not_member`, `not_found`.
#[derive(Debug, Clone)]
pub struct ReadReceipts {
    /// Who asks.
    pub actor: Identity,
    /// The conversation.
    pub conversation: ConversationId,
}

impl Operation for ReadReceipts {
    type Response = Vec<Receipts>;
    const NAME: &'static str = "read_receipts";
}

impl<B: Backends> Engine<B> {
    pub(crate) async fn mark_receipt(&self, request: MarkReceipt) -> Result<Receipts, Error> {
        let MarkReceipt {
            actor,
            conversation,
            kind,
            seq,
        } = request;
        let (info, _) = self.membership(&conversation, &actor.user).await?;
        let updated = call(
            self.services().store(),
            UpdateReceipt {
                conversation: conversation.clone(),
                user: actor.user.clone(),
                kind,
                seq,
            },
        )
        .await?;
        if updated.changed {
            let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
            self.publish(DomainEvent::ReceiptUpdated {
                conversation: conversation.clone(),
                user: actor.user.clone(),
                kind,
                receipts: updated.receipts.clone(),
            });
            self.deliver(
                recipients,
                Event::Receipt(ReceiptUpdate {
                    conversation,
                    receipts: updated.receipts.clone(),
                }),
            )
            .await;
        }
        Ok(updated.receipts)
    }

    pub(crate) async fn set_typing(&self, request: SetTyping) -> Result<(), Error> {
        let SetTyping {
            actor,
            conversation,
            active,
        } = request;
        let (info, _) = self.membership(&conversation, &actor.user).await?;
        let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
        self.deliver(
            recipients,
            Event::Typing(TypingUpdate {
                conversation,
                user: actor.user,
                device: actor.device,
                active,
            }),
        )
        .await;
        Ok(())
    }

    pub(crate) async fn presence_of(
        &self,
        request: GetPresence,
    ) -> Result<Vec<UserPresence>, Error> {
        let GetPresence { users } = request;
        let max = self.config().limits.max_users_per_request;
        if users.len() > max {
            return Err(Error::refused(
                ErrorCode::TooLarge,
                format!("at most {max} users per request"),
            ));
        }
        let online = call(
            self.services().presence(),
            LookupPresence {
                users: users.clone(),
            },
        )
        .await?;
        // Times recorded here and not yet written are written first: the answer is durable.
        self.inner
            .last_seen
            .flush_users(self.services().store(), &users)
            .await;
        let seen = call(self.services().store(), GetLastSeen { users }).await?;
        Ok(seen
            .into_iter()
            .map(|(user, last_seen)| UserPresence {
                online: online.iter().any(|device| device.user == user),
                user,
                last_seen,
            })
            .collect())
    }

    pub(crate) async fn read_history(&self, request: ReadHistory) -> Result<MessagePage, Error> {
        let ReadHistory {
            actor,
            conversation,
            after,
            before,
            limit,
        } = request;
        let max = self.config().limits.max_history_limit;
        let limit = limit.unwrap_or(max).clamp(1, max);
        self.membership(&conversation, &actor.user).await?;
        let store = self.services().store();
        let void_after = self.config().void_after;
        // Never skips a seq: dead holes come back as voids (resolved together, one write), and
        // a page stops before a hole that may still be filled.
        match after {
            Some(after) => {
                super::holes::history_after(store, conversation, after, limit, void_after).await
            }
            None => {
                super::holes::history_before(store, conversation, before, limit, void_after).await
            }
        }
    }

    pub(crate) async fn list_conversations(
        &self,
        request: ListConversations,
    ) -> Result<Vec<ConversationSummary>, Error> {
        call(
            self.services().store(),
            UserConversations { user: request.user },
        )
        .await
    }

    pub(crate) async fn get_members(&self, request: GetMembers) -> Result<ConversationInfo, Error> {
        self.membership(&request.conversation, &request.actor.user)
            .await?;
        self.fresh_conversation(&request.conversation).await
    }

    pub(crate) async fn read_receipts(
        &self,
        request: ReadReceipts,
    ) -> Result<Vec<Receipts>, Error> {
        self.membership(&request.conversation, &request.actor.user)
            .await?;
        call(
            self.services().store(),
            GetReceipts {
                conversation: request.conversation,
            },
        )
        .await
    }
}

/// The future every engine service returns.
type EngineFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// Implements `tower::Service<$request>` for [`Engine`] by calling an async method of it.
///
/// `poll_ready` is always ready: the engine holds no capacity of its own (its backends'
/// limits apply inside the call), so `ConcurrencyLimit`, `LoadShed`, `Timeout`, `Retry` and
/// `Buffer` wrap it as they wrap any service.
macro_rules! engine_service {
    ($($request:ty => $method:ident),+ $(,)?) => {$(
        impl<B: Backends> tower::Service<$request> for Engine<B> {
            type Response = <$request as Operation>::Response;
            type Error = Error;
            type Future = EngineFuture<Self::Response>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $request) -> Self::Future {
                let engine = self.clone();
                Box::pin(async move { engine.$method(request).await })
            }
        }
    )+};
}

engine_service!(
    SendMessage => send,
    OpenDirect => open_direct,
    CreateGroup => create_group,
    AddMembers => add_members,
    RemoveMember => remove_member,
    SetRole => set_role,
    LeaveGroup => leave,
    MarkReceipt => mark_receipt,
    SetTyping => set_typing,
    GetPresence => presence_of,
    ReadHistory => read_history,
    ListConversations => list_conversations,
    GetMembers => get_members,
    ReadReceipts => read_receipts,
);
