//! Requests of the fanout: deliver an event to every online device of a set of users, on
//! whatever node holds them.

use std::sync::Arc;

use crate::UserId;
use crate::event::Event;
use crate::service::{Handles, Operation};

/// Delivers `event` to every online device of `recipients`.
#[derive(Debug, Clone)]
pub struct Deliver {
    /// Who should receive it.
    pub recipients: Arc<[UserId]>,
    /// What.
    pub event: Event,
}

/// The answer to [`Deliver`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Connections the event was handed to on this node.
    pub local_connections: usize,
    /// Other nodes the event was sent to.
    pub remote_nodes: usize,
}

impl Operation for Deliver {
    type Response = DeliveryReport;
    const NAME: &'static str = "deliver";
}

/// The fanout, as one bound.
pub trait FanoutService: Handles<Deliver> {}

impl<S> FanoutService for S where S: Handles<Deliver> {}

/// The connections of this node, as the fanout sees them: hand an event to every local
/// connection of some users. The socket crate's hub implements it.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Queues `event` on every local connection of `recipients`; returns how many.
    /// Never blocks: a connection whose queue is full is closed as a slow consumer.
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize;
}

impl<T: LocalDelivery + ?Sized> LocalDelivery for Arc<T> {
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize {
        (**self).deliver_local(recipients, event)
    }
}
