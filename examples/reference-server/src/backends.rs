//! The backends the reference server chooses between at start, as one type per capability:
//! an enum per capability keeps one instantiation of the node whatever the flags say (a
//! generic per combination would compile the whole connection handler a dozen times).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use messenger_core::fanout::{Deliver, DeliveryReport};
use messenger_core::presence::{
    ListNodes, LookupPresence, RegisterDevice, SubscribePresence, UnregisterDevice,
};
use messenger_core::sequencer::{FenceSeq, NextSeq, SeqFloor};
use messenger_core::service::Operation;
use messenger_core::{Error, Seq};
use messenger_fanout::FanoutBackend;
use messenger_fanout::local::LocalFanout;
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_sequencer::SequencerBackend;
use messenger_sequencer::memory::MemorySequencer;
use messenger_socket::hub::Hub;
use tower::ServiceExt;

/// The sequencer: in memory (one node) or on Redis (a cluster of nodes).
#[derive(Debug)]
pub(crate) enum AnySequencer<F> {
    Memory(MemorySequencer<F>),
    #[cfg(feature = "redis")]
    Redis(messenger_sequencer::redis::RedisSequencer<F>),
    #[cfg(feature = "redis")]
    RedisCluster(
        messenger_sequencer::redis::RedisSequencer<F, redis::cluster_async::ClusterConnection>,
    ),
}

impl<F: SeqFloor> SequencerBackend for AnySequencer<F> {
    async fn next(&self, request: NextSeq) -> Result<Seq, Error> {
        match self {
            Self::Memory(sequencer) => sequencer.next(request).await,
            #[cfg(feature = "redis")]
            Self::Redis(sequencer) => sequencer.next(request).await,
            #[cfg(feature = "redis")]
            Self::RedisCluster(sequencer) => sequencer.next(request).await,
        }
    }

    async fn fence(&self, request: FenceSeq) -> Result<(), Error> {
        match self {
            Self::Memory(sequencer) => sequencer.fence(request).await,
            #[cfg(feature = "redis")]
            Self::Redis(sequencer) => sequencer.fence(request).await,
            #[cfg(feature = "redis")]
            Self::RedisCluster(sequencer) => sequencer.fence(request).await,
        }
    }
}

/// The presence registry: in memory (one node) or on Redis with node leases.
#[derive(Debug, Clone)]
pub(crate) enum AnyPresence {
    Memory(Presence<MemoryPresence>),
    #[cfg(feature = "redis")]
    Redis(Presence<messenger_fanout::presence::redis::RedisPresence>),
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

/// The fanout: in-process (one node) or over Kafka (a topic per node).
#[derive(Debug)]
pub(crate) enum AnyFanout {
    Local(LocalFanout<Arc<Hub>>),
    #[cfg(feature = "kafka")]
    Kafka(messenger_fanout::kafka::KafkaFanout<Arc<Hub>, AnyPresence>),
}

impl FanoutBackend for AnyFanout {
    async fn deliver(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        match self {
            Self::Local(fanout) => fanout.deliver(request).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(fanout) => fanout.deliver(request).await,
        }
    }
}
