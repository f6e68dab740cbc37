//! Per-conversation sequence numbers for the messenger SDK: strictly increasing, never reused.
//!
//! A [`Sequencer`] is a [`tower::Service`] for [`NextSeq`] and [`FenceSeq`] over any
//! [`SequencerBackend`], so it satisfies [`messenger_core::sequencer::SequencerService`] and
//! can be wrapped in ordinary tower layers.
//!
//! ```
//! use messenger_core::sequencer::{FenceSeq, NextSeq};
//! use messenger_core::{call, ConversationId, Seq};
//! use messenger_sequencer::memory::{MemorySequencer, NoFloor};
//! use messenger_sequencer::Sequencer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), messenger_core::Error> {
//! let sequencer = Sequencer::new(MemorySequencer::new(NoFloor));
//! let chat = ConversationId::new("g:lunch")?;
//!
//! let first = call(&sequencer, NextSeq { conversation: chat.clone() }).await?;
//! let second = call(&sequencer, NextSeq { conversation: chat.clone() }).await?;
//! assert_eq!((first, second), (Seq(1), Seq(2)));
//!
//! // The store saw seq 10 already taken: fence past it.
//! call(&sequencer, FenceSeq { conversation: chat.clone(), at_least: Seq(10) }).await?;
//! assert_eq!(call(&sequencer, NextSeq { conversation: chat }).await?, Seq(11));
//! # Ok(())
//! # }
//! ```
//!
//! # Backends
//!
//! | module | feature | what |
//! |---|---|---|
//! | [`memory`] | always built | counters in this process, floor recovered from the store through [`SeqFloor`](messenger_core::sequencer::SeqFloor) |
//! | `redis` | `redis` | Redis / Redis Cluster `INCR` shared by every process, floor and fences as for memory |
//!
//! A backend chosen at run time: [`connect`] builds the one a URL names (`memory:`,
//! `redis://...`, several `redis://` URLs for Redis Cluster) as a [`DynSequencer`], and
//! [`Sequencer::new_dyn`] erases the type of any backend (see [`DynSequencerBackend`]).
//!
//! The `conformance` feature exposes the suite every backend runs (`conformance` module).

use std::future::Future;
use std::sync::Arc;

use messenger_core::sequencer::{FenceSeq, NextSeq};
use messenger_core::{Error, Seq};

#[cfg(feature = "conformance")]
pub mod conformance;
mod dynamic;
mod from_url;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use dynamic::{DynSequencer, DynSequencerBackend};
pub use from_url::connect;

/// What a sequencer backend implements: plain async methods, one per operation.
///
/// Wrap a backend in [`Sequencer`] to get a [`tower::Service`].
pub trait SequencerBackend: Send + Sync + 'static {
    /// Allocates the next seq of `request.conversation`: strictly greater than every seq this
    /// backend handed out for it before, than its floor, and than every fence.
    ///
    /// # Errors
    /// Backend specific; a failure is never a silently reused number.
    ///
    /// # Cancellation safety
    /// Not cancellation safe: dropping the future may burn a number (a hole readers resolve
    /// as void).
    fn next(&self, request: NextSeq) -> impl Future<Output = Result<Seq, Error>> + Send;

    /// Moves the counter of `request.conversation` so the next allocation is above
    /// `request.at_least`. Never moves it backward.
    ///
    /// # Errors
    /// Backend specific.
    ///
    /// # Cancellation safety
    /// Dropping the future leaves the fence either applied or not; retrying it is harmless.
    fn fence(&self, request: FenceSeq) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The sequencer as a [`tower::Service`] for [`NextSeq`] and [`FenceSeq`], over any
/// [`SequencerBackend`].
///
/// Cheap to clone: clones share the backend.
#[derive(Debug)]
pub struct Sequencer<B> {
    backend: Arc<B>,
}

impl<B: SequencerBackend> Sequencer<B> {
    /// Wraps `backend`.
    pub fn new(backend: B) -> Self {
        Self::from_arc(Arc::new(backend))
    }

    /// Wraps a backend that is already shared.
    pub fn from_arc(backend: Arc<B>) -> Self {
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B> Clone for Sequencer<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
        }
    }
}

messenger_core::forward_service!(Sequencer<B: SequencerBackend>, NextSeq => next);
messenger_core::forward_service!(Sequencer<B: SequencerBackend>, FenceSeq => fence);
