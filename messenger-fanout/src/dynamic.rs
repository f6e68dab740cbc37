//! The dyn form of a fanout backend, for a backend chosen at run time (as OpenDAL's
//! `AccessDyn`): [`DynFanoutBackend`] is object safe, every [`FanoutBackend`] implements it,
//! and `Arc<dyn DynFanoutBackend>` is a [`FanoutBackend`] again, so [`DynFanout`] is an
//! ordinary [`Fanout`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use messenger_core::Error;
use messenger_core::fanout::{Deliver, DeliveryReport};
use messenger_core::service::BoxFuture;

use crate::{Fanout, FanoutBackend};

/// [`Fanout`] over a backend chosen at run time: see [`Fanout::new_dyn`].
pub type DynFanout = Fanout<Arc<dyn DynFanoutBackend>>;

/// The object-safe form of [`FanoutBackend`]: the same operation, returning a boxed future.
///
/// Implemented for every [`FanoutBackend`]; backend authors implement [`FanoutBackend`] and
/// never this trait. Semantics, errors and cancellation safety are those of
/// [`FanoutBackend::deliver`].
pub trait DynFanoutBackend: Send + Sync + 'static {
    /// [`FanoutBackend::deliver`], boxed.
    fn deliver_dyn(&self, request: Deliver) -> BoxFuture<'_, DeliveryReport>;

    /// [`FanoutBackend::shutdown`], boxed.
    fn shutdown_dyn(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// The name of the backend's type, for `Debug` output.
    fn backend_type(&self) -> &'static str;
}

impl<B: FanoutBackend> DynFanoutBackend for B {
    fn deliver_dyn(&self, request: Deliver) -> BoxFuture<'_, DeliveryReport> {
        Box::pin(self.deliver(request))
    }

    fn shutdown_dyn(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.shutdown())
    }

    fn backend_type(&self) -> &'static str {
        std::any::type_name::<B>()
    }
}

impl fmt::Debug for dyn DynFanoutBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DynFanoutBackend")
            .field(&self.backend_type())
            .finish()
    }
}

/// One boxed future per call, on top of the one [`Fanout`] boxes already.
impl FanoutBackend for Arc<dyn DynFanoutBackend> {
    fn deliver(
        &self,
        request: Deliver,
    ) -> impl Future<Output = Result<DeliveryReport, Error>> + Send {
        self.as_ref().deliver_dyn(request)
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.as_ref().shutdown_dyn()
    }
}

impl Fanout<Arc<dyn DynFanoutBackend>> {
    /// Wraps `backend` behind [`DynFanoutBackend`], so fanouts of different backend types
    /// have one type, [`DynFanout`]; [`Fanout::shutdown`] still reaches the backend's
    /// [`FanoutBackend::shutdown`]. To keep a handle on the backend (for its counters, say),
    /// share it instead: `Fanout::new(Arc::clone(&backend) as Arc<dyn DynFanoutBackend>)`.
    ///
    /// ```
    /// use messenger_core::UserId;
    /// use messenger_core::Event;
    /// use messenger_core::fanout::LocalDelivery;
    /// use messenger_fanout::local::LocalFanout;
    /// use messenger_fanout::{DynFanout, Fanout};
    ///
    /// #[derive(Debug)]
    /// struct NoConnections;
    ///
    /// impl LocalDelivery for NoConnections {
    ///     fn deliver_local(&self, _recipients: &[UserId], _event: &Event) -> usize {
    ///         0
    ///     }
    /// }
    ///
    /// let fanout: DynFanout = Fanout::new_dyn(LocalFanout::new(NoConnections));
    /// # drop(fanout);
    /// ```
    pub fn new_dyn(backend: impl FanoutBackend) -> Self {
        Self::new(Arc::new(backend))
    }
}
