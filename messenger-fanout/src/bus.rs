//! The in-process domain event bus: every state change, for whoever in this process wants it
//! (analytics, audit, other services embedded in the server).
//!
//! It is a [`tokio::sync::broadcast`] channel: publishing never blocks and never fails, and
//! every subscriber sees every event published after it subscribed, in order, **unless it
//! lags**: a subscriber more than [`capacity`](EventBus::capacity) events behind loses the
//! oldest ones and its next `recv` returns [`RecvError::Lagged`] with how many it missed.
//! Nothing is stored, and events published while nobody listens are dropped. Consumers that
//! need every event durably will read a Kafka topic of domain events (a later backend).
//!
//! ```
//! use messenger_core::{DeviceId, DomainEvent, Timestamp, UserId};
//! use messenger_fanout::bus::EventBus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = EventBus::default();
//! let mut events = bus.subscribe();
//! let connected = DomainEvent::DeviceConnected {
//!     user: UserId::new("alice")?,
//!     device: DeviceId::new("phone")?,
//!     at: Timestamp(1),
//! };
//! bus.publish(connected.clone());
//! assert_eq!(events.recv().await?, connected);
//! # Ok(())
//! # }
//! ```
//!
//! [`RecvError::Lagged`]: tokio::sync::broadcast::error::RecvError::Lagged

use messenger_core::DomainEvent;
use tokio::sync::broadcast;

/// The in-process domain event bus. Cheap to clone: clones publish to the same subscribers.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<DomainEvent>,
    capacity: usize,
}

impl EventBus {
    /// The capacity of [`EventBus::default`]: how many events a subscriber may fall behind
    /// before it loses the oldest.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// The largest capacity accepted; larger values are lowered to it.
    pub const MAX_CAPACITY: usize = 1 << 20;

    /// A bus whose subscribers may fall `capacity` events behind before they lose the oldest.
    /// `capacity` is clamped to `1..=MAX_CAPACITY`. Memory is taken for all slots up front
    /// (one pointer-sized slot plus the event each), so keep it modest.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Self::MAX_CAPACITY);
        let (sender, _) = broadcast::channel(capacity);
        Self { sender, capacity }
    }

    /// Publishes `event` to every current subscriber. Never blocks; with no subscriber the
    /// event is dropped and that is not an error.
    pub fn publish(&self, event: DomainEvent) {
        // `send` fails only when nobody listens, which is fine.
        let _ = self.sender.send(event);
    }

    /// A receiver of every event published from now on (see the module docs on lagging).
    pub fn subscribe(&self) -> broadcast::Receiver<DomainEvent> {
        self.sender.subscribe()
    }

    /// How many subscribers are listening now.
    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }

    /// How many events a subscriber may fall behind without loss, at least (the channel
    /// rounds it up to a power of two, so a little more may be kept).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Default for EventBus {
    /// A bus of [`EventBus::DEFAULT_CAPACITY`].
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{DeviceId, Timestamp, UserId};
    use tokio::sync::broadcast::error::RecvError;

    use super::*;

    fn connected(at: u64) -> DomainEvent {
        DomainEvent::DeviceConnected {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            at: Timestamp(at),
        }
    }

    #[tokio::test]
    async fn publishing_without_subscribers_is_fine() {
        let bus = EventBus::new(0);
        assert_eq!(bus.capacity(), 1);
        assert_eq!(bus.subscriber_count(), 0);
        bus.publish(connected(1));
        let mut events = bus.clone().subscribe();
        assert_eq!(bus.subscriber_count(), 1);
        bus.publish(connected(2));
        assert_eq!(events.recv().await.unwrap(), connected(2));
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event_in_order() {
        let bus = EventBus::default();
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        for at in 0..10 {
            bus.publish(connected(at));
        }
        for at in 0..10 {
            assert_eq!(first.recv().await.unwrap(), connected(at));
            assert_eq!(second.recv().await.unwrap(), connected(at));
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_loses_the_oldest_events() {
        let bus = EventBus::new(4);
        let mut events = bus.subscribe();
        for at in 0..10 {
            bus.publish(connected(at));
        }
        assert_eq!(events.recv().await, Err(RecvError::Lagged(6)));
        for at in 6..10 {
            assert_eq!(events.recv().await.unwrap(), connected(at));
        }
    }
}
