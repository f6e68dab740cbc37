//! The presence registry the reference server chooses at start, as one type: in memory or on
//! Redis. (The sequencer, store and fanout come as their libraries' dyn forms:
//! `DynSequencer`, `DynStore`, `DynFanout`.)

use std::pin::Pin;
use std::task::{Context, Poll};

use messenger_core::Error;
use messenger_core::presence::{
    ListNodes, LookupPresence, RegisterDevice, SubscribePresence, UnregisterDevice,
};
use messenger_core::service::Operation;
use messenger_socket::presence::MemoryPresence;
use tower::ServiceExt;

/// The presence registry: in memory (one node) or on Redis with node leases.
#[derive(Debug, Clone)]
pub(crate) enum AnyPresence {
    Memory(MemoryPresence),
    #[cfg(feature = "redis")]
    Redis(messenger_socket::presence::redis::RedisPresence),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// Implements `tower::Service<$request>` for [`AnyPresence`] by forwarding to the variant.
macro_rules! forward_presence {
    ($($request:ty),+ $(,)?) => {$(
        impl tower::Service<$request> for AnyPresence {
            type Response = <$request as Operation>::Response;
            type Error = Error;
            type Future = BoxFuture<Self::Response>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
                // Each variant is readied by `oneshot` inside the call.
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $request) -> Self::Future {
                match self.clone() {
                    Self::Memory(registry) => Box::pin(registry.oneshot(request)),
                    #[cfg(feature = "redis")]
                    Self::Redis(registry) => Box::pin(registry.oneshot(request)),
                }
            }
        }
    )+};
}

forward_presence!(
    RegisterDevice,
    UnregisterDevice,
    LookupPresence,
    SubscribePresence,
    ListNodes,
);
