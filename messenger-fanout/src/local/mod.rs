//! The local fanout: one node, events handed straight to this process's connections.
//!
//! It has no configuration and no failure mode of its own, so this module holds only the
//! service.

use std::collections::HashSet;
use std::fmt;

use messenger_core::fanout::{Deliver, DeliveryReport, LocalDelivery};
use messenger_core::{Error, UserId};

use crate::FanoutBackend;

/// Delivers in-process through a [`LocalDelivery`] (the socket crate's hub).
///
/// Wrap it in [`Fanout`](crate::Fanout) to get a tower service:
/// `Fanout::new(LocalFanout::new(hub))`.
pub struct LocalFanout<D> {
    delivery: D,
}

impl<D: LocalDelivery> LocalFanout<D> {
    /// A fanout delivering through `delivery`.
    pub fn new(delivery: D) -> Self {
        Self { delivery }
    }

    /// The connections it delivers to.
    pub fn delivery(&self) -> &D {
        &self.delivery
    }

    /// Hands `event` to every local connection of `recipients` once; a recipient listed more
    /// than once is delivered to once. Reports the connections reached and no remote nodes.
    ///
    /// # Errors
    /// None: always `Ok`. A connection whose queue is full is the delivery's business (it
    /// closes it as a slow consumer).
    ///
    /// # Cancellation safety
    /// Cancellation safe: delivery does not await, so it happens entirely or not at all.
    pub async fn deliver_event(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        let local_connections = match deduplicated(&request.recipients) {
            Some(unique) => self.delivery.deliver_local(&unique, &request.event),
            None => self
                .delivery
                .deliver_local(&request.recipients, &request.event),
        };
        Ok(DeliveryReport {
            local_connections,
            remote_nodes: 0,
        })
    }
}

/// `recipients` without repeats, in first-seen order, or `None` when there are none.
fn deduplicated(recipients: &[UserId]) -> Option<Vec<UserId>> {
    let mut seen = HashSet::with_capacity(recipients.len());
    if recipients.iter().all(|user| seen.insert(user)) {
        return None;
    }
    let mut seen = HashSet::with_capacity(recipients.len());
    Some(
        recipients
            .iter()
            .filter(|user| seen.insert(*user))
            .cloned()
            .collect(),
    )
}

impl<D: LocalDelivery> FanoutBackend for LocalFanout<D> {
    /// See [`LocalFanout::deliver_event`].
    async fn deliver(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        self.deliver_event(request).await
    }
}

impl<D> fmt::Debug for LocalFanout<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFanout")
            .field("delivery", &std::any::type_name::<D>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplication_keeps_first_seen_order() {
        let users: Vec<UserId> = ["b", "a", "b", "c", "a"]
            .iter()
            .map(|name| UserId::new(name).unwrap())
            .collect();
        let unique = deduplicated(&users).unwrap();
        let names: Vec<&str> = unique.iter().map(UserId::as_str).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert!(deduplicated(&users[..2]).is_none());
        assert!(deduplicated(&[]).is_none());
    }
}
