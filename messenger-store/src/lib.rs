//! The message store of the messenger SDK: each conversation's log, sync ranges, receipts,
//! conversations and members, and last seen.
//!
//! [`Store`] is a [`tower::Service`] for every request of [`messenger_core::store`], so it
//! satisfies [`StoreService`](messenger_core::store::StoreService) and takes any tower layer.
//! It runs on a [`StoreBackend`]; the embedded one needs no server:
//!
//! ```
//! use std::sync::Arc;
//!
//! use messenger_core::store::{AppendMessage, ReadRange};
//! use messenger_core::{Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId, call};
//! use messenger_store::Store;
//! use messenger_store::embedded::EmbeddedStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db"))?);
//!
//! let alice = UserId::new("alice")?;
//! let chat = ConversationId::direct(&alice, &UserId::new("bob")?)?;
//! let message = Message {
//!     conversation: chat.clone(),
//!     seq: Seq(1),
//!     sender: alice,
//!     sender_device: DeviceId::new("phone")?,
//!     client_msg_id: ClientMsgId::new("m-1")?,
//!     sent_at: Timestamp::now(),
//!     body: Body::text("hi"),
//! };
//! // Answered once the message is durable on disk.
//! let appended = call(&store, AppendMessage { message: Arc::new(message) }).await?;
//! assert!(!appended.duplicate);
//!
//! let page = call(&store, ReadRange { conversation: chat, after: Seq::ZERO, until: None, limit: 50 }).await?;
//! assert_eq!(page.head, Seq(1));
//! assert_eq!(page.messages.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Backends
//!
//! | module | feature | what |
//! |---|---|---|
//! | [`embedded`] | always built | one SQLite file (WAL, `synchronous=FULL`) with group commit |
//! | `mysql` | `mysql` | MySQL / MariaDB, shared by several nodes (`mysql::MysqlStore`) |
//! | `scylla` | `scylla` | ScyllaDB / Cassandra, scale-out (`scylla::ScyllaStore`) |
//!
//! A backend chosen at run time: [`connect`] opens the one a URL names (`embedded:PATH`,
//! `mysql://...`, `scylla://...`) as a [`DynStore`], and [`Store::new_dyn`] erases the type
//! of any backend (see [`DynStoreBackend`]).
//!
//! With the `conformance` feature, `conformance` holds the behaviour tests every backend
//! passes.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use messenger_core::sequencer::SeqFloor;
use messenger_core::store::{
    AmendMessage, Amended, AppendMessage, Appended, ConversationInfo, CreateConversation, Created,
    FindMessage, GetConversation, GetHead, GetLastSeen, GetReceipts, MediaStatusSet, MessagePage,
    ReadBefore, ReadRange, ReceiptUpdated, SetLastSeen, SetMediaStatus, UpdateReceipt,
    UserConversations, VoidHoles, VoidSeq,
};
use messenger_core::{
    ConversationId, ConversationSummary, Error, Message, Receipts, Seq, Timestamp, UserId,
};

mod amend;
#[cfg(feature = "conformance")]
pub mod conformance;
mod dynamic;
pub mod embedded;
mod from_url;
mod media;
#[cfg(feature = "mysql")]
pub mod mysql;
mod rule;
#[cfg(feature = "scylla")]
pub mod scylla;
mod unread;

pub use dynamic::{DynStore, DynStoreBackend};
pub use embedded::{Durability, EmbeddedConfig, EmbeddedStore};
pub use from_url::connect;

/// What a store backend implements: one plain async method per request of
/// [`messenger_core::store`], with the semantics documented on each request type.
///
/// Backend authors implement this trait and never write `poll_ready`; [`Store`] turns it into
/// tower services.
///
/// # Cancellation safety
/// Dropping a write's future does not cancel it: the write may still land (retrying is safe,
/// every write is idempotent or monotonic). Reads have no effect to cancel.
pub trait StoreBackend: Send + Sync + 'static {
    /// Appends one entry at its seq, conditionally and idempotently ([`AppendMessage`]).
    ///
    /// # Errors
    /// `Conflict` when the seq holds another entry; `InvalidRequest` for seq 0 or an
    /// out-of-range number; `Unavailable` when the storage cannot be written.
    fn append(
        &self,
        request: AppendMessage,
    ) -> impl Future<Output = Result<Appended, Error>> + Send;

    /// Stores a void at a seq unless taken, and returns what the seq holds ([`VoidSeq`]).
    ///
    /// # Errors
    /// `InvalidRequest` for seq 0; `Unavailable` when the storage cannot be written.
    fn void_seq(
        &self,
        request: VoidSeq,
    ) -> impl Future<Output = Result<Arc<Message>, Error>> + Send;

    /// Stores a void at every free seq of a range, in one write, and returns the range as
    /// stored ([`VoidHoles`]).
    ///
    /// # Errors
    /// `InvalidRequest` when the range spans more than [`VoidHoles::MAX_SPAN`] seqs;
    /// `Unavailable` when the storage cannot be written.
    fn void_holes(
        &self,
        request: VoidHoles,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send;

    /// Looks an entry up by its idempotency key ([`FindMessage`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn find_message(
        &self,
        request: FindMessage,
    ) -> impl Future<Output = Result<Option<Arc<Message>>, Error>> + Send;

    /// Reads entries after a seq, ascending ([`ReadRange`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn read_range(
        &self,
        request: ReadRange,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send;

    /// Reads the latest entries before a seq, returned ascending ([`ReadBefore`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn read_before(
        &self,
        request: ReadBefore,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send;

    /// The highest stored seq of a conversation ([`GetHead`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn head(&self, request: GetHead) -> impl Future<Output = Result<Seq, Error>> + Send;

    /// Creates a conversation with its members, idempotently ([`CreateConversation`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be written.
    fn create_conversation(
        &self,
        request: CreateConversation,
    ) -> impl Future<Output = Result<Created, Error>> + Send;

    /// A conversation's facts, members and head ([`GetConversation`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn conversation(
        &self,
        request: GetConversation,
    ) -> impl Future<Output = Result<Option<ConversationInfo>, Error>> + Send;

    /// Every conversation of a user, with head, watermarks and unread ([`UserConversations`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn user_conversations(
        &self,
        request: UserConversations,
    ) -> impl Future<Output = Result<Vec<ConversationSummary>, Error>> + Send;

    /// Raises a receipt watermark ([`UpdateReceipt`]).
    ///
    /// # Errors
    /// `InvalidRequest` when the seq is past the conversation's head; `Unavailable` when the
    /// storage cannot be written.
    fn update_receipt(
        &self,
        request: UpdateReceipt,
    ) -> impl Future<Output = Result<ReceiptUpdated, Error>> + Send;

    /// Every current member's watermarks ([`GetReceipts`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn receipts(
        &self,
        request: GetReceipts,
    ) -> impl Future<Output = Result<Vec<Receipts>, Error>> + Send;

    /// Raises a user's last-seen time and returns the stored one ([`SetLastSeen`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be written.
    fn set_last_seen(
        &self,
        request: SetLastSeen,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send;

    /// Last-seen times in the order asked ([`GetLastSeen`]).
    ///
    /// # Errors
    /// `Unavailable` when the storage cannot be read.
    fn last_seen(
        &self,
        request: GetLastSeen,
    ) -> impl Future<Output = Result<Vec<(UserId, Option<Timestamp>)>, Error>> + Send;

    /// Moves a pending media entry to `ready` or `failed` and appends the status entry, in
    /// one conditional write ([`SetMediaStatus`]).
    ///
    /// # Errors
    /// `NotFound` when the media seq holds nothing; `InvalidRequest` when it is not a media
    /// entry; `Conflict` when the update's seq is taken; `Unavailable` when the storage cannot
    /// be written.
    fn set_media_status(
        &self,
        request: SetMediaStatus,
    ) -> impl Future<Output = Result<MediaStatusSet, Error>> + Send;

    /// Appends an edit or delete entry and replaces its target, in one write conditional on
    /// the target as read ([`AmendMessage`]).
    ///
    /// # Errors
    /// `InvalidRequest` when the request's entries disagree; `Conflict` when the update's seq
    /// is taken; `Unavailable` when the storage cannot be written.
    fn amend(&self, request: AmendMessage) -> impl Future<Output = Result<Amended, Error>> + Send;
}

/// The store as tower services: [`tower::Service`] for every request of
/// [`messenger_core::store`], on a [`StoreBackend`].
///
/// Cheap to clone (the backend is shared); always ready.
pub struct Store<B> {
    backend: Arc<B>,
}

impl<B: StoreBackend> Store<B> {
    /// Wraps `backend`.
    pub fn new(backend: B) -> Self {
        Self::from_shared(Arc::new(backend))
    }

    /// Wraps a backend already shared with other owners.
    pub fn from_shared(backend: Arc<B>) -> Self {
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B> Clone for Store<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

messenger_core::forward_service!(Store<B: StoreBackend>, AppendMessage => append);
messenger_core::forward_service!(Store<B: StoreBackend>, VoidSeq => void_seq);
messenger_core::forward_service!(Store<B: StoreBackend>, VoidHoles => void_holes);
messenger_core::forward_service!(Store<B: StoreBackend>, FindMessage => find_message);
messenger_core::forward_service!(Store<B: StoreBackend>, ReadRange => read_range);
messenger_core::forward_service!(Store<B: StoreBackend>, ReadBefore => read_before);
messenger_core::forward_service!(Store<B: StoreBackend>, GetHead => head);
messenger_core::forward_service!(Store<B: StoreBackend>, CreateConversation => create_conversation);
messenger_core::forward_service!(Store<B: StoreBackend>, GetConversation => conversation);
messenger_core::forward_service!(Store<B: StoreBackend>, UserConversations => user_conversations);
messenger_core::forward_service!(Store<B: StoreBackend>, UpdateReceipt => update_receipt);
messenger_core::forward_service!(Store<B: StoreBackend>, GetReceipts => receipts);
messenger_core::forward_service!(Store<B: StoreBackend>, SetLastSeen => set_last_seen);
messenger_core::forward_service!(Store<B: StoreBackend>, GetLastSeen => last_seen);
messenger_core::forward_service!(Store<B: StoreBackend>, SetMediaStatus => set_media_status);
messenger_core::forward_service!(Store<B: StoreBackend>, AmendMessage => amend);

/// The sequencer's floor is the store's head: numbers never repeat after a restart.
impl<B: StoreBackend> SeqFloor for Store<B> {
    async fn floor(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        self.backend
            .head(GetHead {
                conversation: conversation.clone(),
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_store_service<S: messenger_core::store::StoreService>() {}

    #[test]
    fn store_is_a_store_service() {
        assert_store_service::<Store<EmbeddedStore>>();
        assert_store_service::<DynStore>();
        #[cfg(feature = "mysql")]
        assert_store_service::<Store<mysql::MysqlStore>>();
        #[cfg(feature = "scylla")]
        assert_store_service::<Store<scylla::ScyllaStore>>();
    }
}

/// The guides under `docs/`, as rustdoc pages: their Rust code blocks are compiled and run by
/// `cargo test --doc`, so they cannot drift from the API.
// Markdown written for people, not for clippy's doc style.
#[allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
pub mod docs {
    #[doc = include_str!("../../docs/store.md")]
    pub mod store {}
}
