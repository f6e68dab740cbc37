//! The dyn form of a store backend, for a backend chosen at run time (as OpenDAL's
//! `AccessDyn` or object_store's `DynObjectStore`): [`DynStoreBackend`] is object safe, every
//! [`StoreBackend`] implements it, and `Arc<dyn DynStoreBackend>` is a [`StoreBackend`] again,
//! so [`DynStore`] is an ordinary [`Store`] whose engine is compiled once.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use messenger_core::service::BoxFuture;
use messenger_core::store::{
    AmendMessage, Amended, AppendMessage, Appended, ConversationInfo, CreateConversation, Created,
    FindMessage, GetConversation, GetHead, GetLastSeen, GetReceipts, MediaStatusSet, MessagePage,
    ReadBefore, ReadRange, ReceiptUpdated, SetLastSeen, SetMediaStatus, UpdateReceipt,
    UserConversations, VoidHoles, VoidSeq,
};
use messenger_core::{ConversationSummary, Error, Message, Receipts, Seq, Timestamp, UserId};

use crate::{Store, StoreBackend};

/// [`Store`] over a backend chosen at run time: see [`Store::new_dyn`].
pub type DynStore = Store<Arc<dyn DynStoreBackend>>;

/// The object-safe form of [`StoreBackend`]: the same operations, each returning a boxed
/// future.
///
/// Implemented for every [`StoreBackend`]; backend authors implement [`StoreBackend`] and
/// never this trait. The semantics, errors and cancellation safety of each method are those of
/// the [`StoreBackend`] method of the same name.
pub trait DynStoreBackend: Send + Sync + 'static {
    /// [`StoreBackend::append`], boxed.
    fn append_dyn(&self, request: AppendMessage) -> BoxFuture<'_, Appended>;

    /// [`StoreBackend::void_seq`], boxed.
    fn void_seq_dyn(&self, request: VoidSeq) -> BoxFuture<'_, Arc<Message>>;
    /// [`StoreBackend::void_holes`], boxed.
    fn void_holes_dyn(&self, request: VoidHoles) -> BoxFuture<'_, MessagePage>;

    /// [`StoreBackend::find_message`], boxed.
    fn find_message_dyn(&self, request: FindMessage) -> BoxFuture<'_, Option<Arc<Message>>>;

    /// [`StoreBackend::read_range`], boxed.
    fn read_range_dyn(&self, request: ReadRange) -> BoxFuture<'_, MessagePage>;

    /// [`StoreBackend::read_before`], boxed.
    fn read_before_dyn(&self, request: ReadBefore) -> BoxFuture<'_, MessagePage>;

    /// [`StoreBackend::head`], boxed.
    fn head_dyn(&self, request: GetHead) -> BoxFuture<'_, Seq>;

    /// [`StoreBackend::create_conversation`], boxed.
    fn create_conversation_dyn(&self, request: CreateConversation) -> BoxFuture<'_, Created>;

    /// [`StoreBackend::conversation`], boxed.
    fn conversation_dyn(&self, request: GetConversation)
    -> BoxFuture<'_, Option<ConversationInfo>>;

    /// [`StoreBackend::user_conversations`], boxed.
    fn user_conversations_dyn(
        &self,
        request: UserConversations,
    ) -> BoxFuture<'_, Vec<ConversationSummary>>;

    /// [`StoreBackend::update_receipt`], boxed.
    fn update_receipt_dyn(&self, request: UpdateReceipt) -> BoxFuture<'_, ReceiptUpdated>;

    /// [`StoreBackend::receipts`], boxed.
    fn receipts_dyn(&self, request: GetReceipts) -> BoxFuture<'_, Vec<Receipts>>;

    /// [`StoreBackend::set_last_seen`], boxed.
    fn set_last_seen_dyn(&self, request: SetLastSeen) -> BoxFuture<'_, Timestamp>;

    /// [`StoreBackend::last_seen`], boxed.
    fn last_seen_dyn(
        &self,
        request: GetLastSeen,
    ) -> BoxFuture<'_, Vec<(UserId, Option<Timestamp>)>>;

    /// [`StoreBackend::set_media_status`], boxed.
    fn set_media_status_dyn(&self, request: SetMediaStatus) -> BoxFuture<'_, MediaStatusSet>;

    /// [`StoreBackend::amend`], boxed.
    fn amend_dyn(&self, request: AmendMessage) -> BoxFuture<'_, Amended>;

    /// The name of the backend's type, for `Debug` output.
    fn backend_type(&self) -> &'static str;
}

impl<B: StoreBackend> DynStoreBackend for B {
    fn append_dyn(&self, request: AppendMessage) -> BoxFuture<'_, Appended> {
        Box::pin(self.append(request))
    }

    fn void_seq_dyn(&self, request: VoidSeq) -> BoxFuture<'_, Arc<Message>> {
        Box::pin(self.void_seq(request))
    }

    fn void_holes_dyn(&self, request: VoidHoles) -> BoxFuture<'_, MessagePage> {
        Box::pin(self.void_holes(request))
    }

    fn find_message_dyn(&self, request: FindMessage) -> BoxFuture<'_, Option<Arc<Message>>> {
        Box::pin(self.find_message(request))
    }

    fn read_range_dyn(&self, request: ReadRange) -> BoxFuture<'_, MessagePage> {
        Box::pin(self.read_range(request))
    }

    fn read_before_dyn(&self, request: ReadBefore) -> BoxFuture<'_, MessagePage> {
        Box::pin(self.read_before(request))
    }

    fn head_dyn(&self, request: GetHead) -> BoxFuture<'_, Seq> {
        Box::pin(self.head(request))
    }

    fn create_conversation_dyn(&self, request: CreateConversation) -> BoxFuture<'_, Created> {
        Box::pin(self.create_conversation(request))
    }

    fn conversation_dyn(
        &self,
        request: GetConversation,
    ) -> BoxFuture<'_, Option<ConversationInfo>> {
        Box::pin(self.conversation(request))
    }

    fn user_conversations_dyn(
        &self,
        request: UserConversations,
    ) -> BoxFuture<'_, Vec<ConversationSummary>> {
        Box::pin(self.user_conversations(request))
    }

    fn update_receipt_dyn(&self, request: UpdateReceipt) -> BoxFuture<'_, ReceiptUpdated> {
        Box::pin(self.update_receipt(request))
    }

    fn receipts_dyn(&self, request: GetReceipts) -> BoxFuture<'_, Vec<Receipts>> {
        Box::pin(self.receipts(request))
    }

    fn set_last_seen_dyn(&self, request: SetLastSeen) -> BoxFuture<'_, Timestamp> {
        Box::pin(self.set_last_seen(request))
    }

    fn last_seen_dyn(
        &self,
        request: GetLastSeen,
    ) -> BoxFuture<'_, Vec<(UserId, Option<Timestamp>)>> {
        Box::pin(self.last_seen(request))
    }

    fn set_media_status_dyn(&self, request: SetMediaStatus) -> BoxFuture<'_, MediaStatusSet> {
        Box::pin(self.set_media_status(request))
    }

    fn amend_dyn(&self, request: AmendMessage) -> BoxFuture<'_, Amended> {
        Box::pin(self.amend(request))
    }

    fn backend_type(&self) -> &'static str {
        std::any::type_name::<B>()
    }
}

impl fmt::Debug for dyn DynStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DynStoreBackend")
            .field(&self.backend_type())
            .finish()
    }
}

/// One boxed future per call, on top of the one [`Store`] boxes already.
impl StoreBackend for Arc<dyn DynStoreBackend> {
    fn append(
        &self,
        request: AppendMessage,
    ) -> impl Future<Output = Result<Appended, Error>> + Send {
        self.as_ref().append_dyn(request)
    }

    fn void_seq(
        &self,
        request: VoidSeq,
    ) -> impl Future<Output = Result<Arc<Message>, Error>> + Send {
        self.as_ref().void_seq_dyn(request)
    }

    fn void_holes(
        &self,
        request: VoidHoles,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send {
        self.as_ref().void_holes_dyn(request)
    }

    fn find_message(
        &self,
        request: FindMessage,
    ) -> impl Future<Output = Result<Option<Arc<Message>>, Error>> + Send {
        self.as_ref().find_message_dyn(request)
    }

    fn read_range(
        &self,
        request: ReadRange,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send {
        self.as_ref().read_range_dyn(request)
    }

    fn read_before(
        &self,
        request: ReadBefore,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send {
        self.as_ref().read_before_dyn(request)
    }

    fn head(&self, request: GetHead) -> impl Future<Output = Result<Seq, Error>> + Send {
        self.as_ref().head_dyn(request)
    }

    fn create_conversation(
        &self,
        request: CreateConversation,
    ) -> impl Future<Output = Result<Created, Error>> + Send {
        self.as_ref().create_conversation_dyn(request)
    }

    fn conversation(
        &self,
        request: GetConversation,
    ) -> impl Future<Output = Result<Option<ConversationInfo>, Error>> + Send {
        self.as_ref().conversation_dyn(request)
    }

    fn user_conversations(
        &self,
        request: UserConversations,
    ) -> impl Future<Output = Result<Vec<ConversationSummary>, Error>> + Send {
        self.as_ref().user_conversations_dyn(request)
    }

    fn update_receipt(
        &self,
        request: UpdateReceipt,
    ) -> impl Future<Output = Result<ReceiptUpdated, Error>> + Send {
        self.as_ref().update_receipt_dyn(request)
    }

    fn receipts(
        &self,
        request: GetReceipts,
    ) -> impl Future<Output = Result<Vec<Receipts>, Error>> + Send {
        self.as_ref().receipts_dyn(request)
    }

    fn set_last_seen(
        &self,
        request: SetLastSeen,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        self.as_ref().set_last_seen_dyn(request)
    }

    fn last_seen(
        &self,
        request: GetLastSeen,
    ) -> impl Future<Output = Result<Vec<(UserId, Option<Timestamp>)>, Error>> + Send {
        self.as_ref().last_seen_dyn(request)
    }

    fn set_media_status(
        &self,
        request: SetMediaStatus,
    ) -> impl Future<Output = Result<MediaStatusSet, Error>> + Send {
        self.as_ref().set_media_status_dyn(request)
    }

    fn amend(&self, request: AmendMessage) -> impl Future<Output = Result<Amended, Error>> + Send {
        self.as_ref().amend_dyn(request)
    }
}

impl Store<Arc<dyn DynStoreBackend>> {
    /// Wraps `backend` behind [`DynStoreBackend`], so stores of different backend types have
    /// one type, [`DynStore`].
    ///
    /// ```
    /// use messenger_store::embedded::EmbeddedStore;
    /// use messenger_store::{DynStore, Store};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let store: DynStore = Store::new_dyn(EmbeddedStore::open(dir.path().join("messages.db"))?);
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new_dyn(backend: impl StoreBackend) -> Self {
        Self::new(Arc::new(backend))
    }
}
