//! The dyn form of a sequencer backend, for a backend chosen at run time (as OpenDAL's
//! `AccessDyn`): [`DynSequencerBackend`] is object safe, every [`SequencerBackend`] implements
//! it, and `Arc<dyn DynSequencerBackend>` is a [`SequencerBackend`] again, so [`DynSequencer`]
//! is an ordinary [`Sequencer`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use messenger_core::sequencer::{FenceSeq, NextSeq};
use messenger_core::service::BoxFuture;
use messenger_core::{Error, Seq};

use crate::{Sequencer, SequencerBackend};

/// [`Sequencer`] over a backend chosen at run time: see [`Sequencer::new_dyn`] and
/// [`connect`](crate::connect).
pub type DynSequencer = Sequencer<Arc<dyn DynSequencerBackend>>;

/// The object-safe form of [`SequencerBackend`]: the same operations, each returning a boxed
/// future.
///
/// Implemented for every [`SequencerBackend`]; backend authors implement
/// [`SequencerBackend`] and never this trait. Semantics, errors and cancellation safety are
/// those of the [`SequencerBackend`] method of the same name.
pub trait DynSequencerBackend: Send + Sync + 'static {
    /// [`SequencerBackend::next`], boxed.
    fn next_dyn(&self, request: NextSeq) -> BoxFuture<'_, Seq>;

    /// [`SequencerBackend::fence`], boxed.
    fn fence_dyn(&self, request: FenceSeq) -> BoxFuture<'_, ()>;

    /// The name of the backend's type, for `Debug` output.
    fn backend_type(&self) -> &'static str;
}

impl<B: SequencerBackend> DynSequencerBackend for B {
    fn next_dyn(&self, request: NextSeq) -> BoxFuture<'_, Seq> {
        Box::pin(self.next(request))
    }

    fn fence_dyn(&self, request: FenceSeq) -> BoxFuture<'_, ()> {
        Box::pin(self.fence(request))
    }

    fn backend_type(&self) -> &'static str {
        std::any::type_name::<B>()
    }
}

impl fmt::Debug for dyn DynSequencerBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DynSequencerBackend")
            .field(&self.backend_type())
            .finish()
    }
}

/// One boxed future per call, on top of the one [`Sequencer`] boxes already.
impl SequencerBackend for Arc<dyn DynSequencerBackend> {
    fn next(&self, request: NextSeq) -> impl Future<Output = Result<Seq, Error>> + Send {
        self.as_ref().next_dyn(request)
    }

    fn fence(&self, request: FenceSeq) -> impl Future<Output = Result<(), Error>> + Send {
        self.as_ref().fence_dyn(request)
    }
}

impl Sequencer<Arc<dyn DynSequencerBackend>> {
    /// Wraps `backend` behind [`DynSequencerBackend`], so sequencers of different backend
    /// types have one type, [`DynSequencer`].
    ///
    /// ```
    /// use messenger_sequencer::memory::{MemorySequencer, NoFloor};
    /// use messenger_sequencer::{DynSequencer, Sequencer};
    ///
    /// let sequencer: DynSequencer = Sequencer::new_dyn(MemorySequencer::new(NoFloor));
    /// # drop(sequencer);
    /// ```
    pub fn new_dyn(backend: impl SequencerBackend) -> Self {
        Self::new(Arc::new(backend))
    }
}
