//! The conformance suite every fanout backend runs (feature `conformance`).
//!
//! The checks build a fresh fanout around a [`RecordingDelivery`] (this node's connections,
//! recorded) through a `make` function, deliver, and panic with a message when the backend
//! breaks the contract, as a test would. They assume every recipient is connected to the
//! node whose delivery is given.
//!
//! ```
//! use messenger_fanout::local::LocalFanout;
//! use messenger_fanout::{conformance, Fanout};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! conformance::run(|delivery| Fanout::new(LocalFanout::new(delivery))).await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use messenger_core::fanout::{Deliver, DeliveryReport, FanoutService, LocalDelivery};
use messenger_core::{ConversationId, DeviceId, Event, TypingUpdate, UserId, call};

/// Runs every check, each on a fresh fanout that `make` builds around a fresh
/// [`RecordingDelivery`].
pub async fn run<S, M>(mut make: M)
where
    S: FanoutService,
    M: FnMut(RecordingDelivery) -> S,
{
    every_connection_gets_the_event_once(&mut make).await;
    duplicate_recipients_are_delivered_once(&mut make).await;
    empty_recipients_deliver_nothing(&mut make).await;
    offline_recipients_count_nothing(&mut make).await;
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap_or_else(|err| panic!("{name} is not a valid user id: {err}"))
}

/// A small event to deliver, distinct per `label`.
pub fn sample_event(label: &str) -> Event {
    let alice = user("alice");
    let id = format!("g:conformance-{label}");
    Event::Typing(TypingUpdate {
        conversation: ConversationId::new(&id)
            .unwrap_or_else(|err| panic!("{id} is not a valid id: {err}")),
        user: alice,
        device: DeviceId::new("phone").unwrap_or_else(|err| panic!("bad device id: {err}")),
        active: true,
    })
}

async fn deliver<S: FanoutService>(
    fanout: &S,
    recipients: &[UserId],
    event: &Event,
) -> DeliveryReport {
    call(
        fanout,
        Deliver {
            recipients: Arc::from(recipients),
            event: event.clone(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("deliver to {recipients:?} failed: {err}"))
}

/// Alice has two connections, bob one, carol none, dave one but is not a recipient: each of
/// alice's and bob's connections gets the event exactly once, dave's none, and the report
/// counts three local connections and no remote node.
pub async fn every_connection_gets_the_event_once<S, M>(make: &mut M)
where
    S: FanoutService,
    M: FnMut(RecordingDelivery) -> S,
{
    let delivery = RecordingDelivery::new();
    delivery.connect(&user("alice"), 2);
    delivery.connect(&user("bob"), 1);
    delivery.connect(&user("dave"), 1);
    let fanout = make(delivery.clone());
    let event = sample_event("once");

    let report = deliver(
        &fanout,
        &[user("alice"), user("bob"), user("carol")],
        &event,
    )
    .await;
    assert_eq!(
        report,
        DeliveryReport {
            local_connections: 3,
            remote_nodes: 0
        }
    );
    for connection in 0..2 {
        assert_eq!(
            delivery.received(&user("alice"), connection),
            std::slice::from_ref(&event)
        );
    }
    assert_eq!(
        delivery.received(&user("bob"), 0),
        std::slice::from_ref(&event)
    );
    assert!(
        delivery.received(&user("dave"), 0).is_empty(),
        "dave was not a recipient"
    );

    let second = sample_event("once-again");
    deliver(&fanout, &[user("bob")], &second).await;
    assert_eq!(
        delivery.received(&user("bob"), 0),
        [event, second],
        "in call order"
    );
}

/// A recipient listed twice still gets the event once per connection.
pub async fn duplicate_recipients_are_delivered_once<S, M>(make: &mut M)
where
    S: FanoutService,
    M: FnMut(RecordingDelivery) -> S,
{
    let delivery = RecordingDelivery::new();
    delivery.connect(&user("alice"), 2);
    delivery.connect(&user("bob"), 1);
    let fanout = make(delivery.clone());
    let event = sample_event("duplicates");

    let report = deliver(
        &fanout,
        &[user("alice"), user("bob"), user("alice")],
        &event,
    )
    .await;
    assert_eq!(report.local_connections, 3);
    assert_eq!(
        delivery.received(&user("alice"), 0),
        std::slice::from_ref(&event)
    );
    assert_eq!(
        delivery.received(&user("alice"), 1),
        std::slice::from_ref(&event)
    );
    assert_eq!(delivery.received(&user("bob"), 0), [event]);
}

/// No recipients: an empty report, nothing delivered.
pub async fn empty_recipients_deliver_nothing<S, M>(make: &mut M)
where
    S: FanoutService,
    M: FnMut(RecordingDelivery) -> S,
{
    let delivery = RecordingDelivery::new();
    delivery.connect(&user("alice"), 1);
    let fanout = make(delivery.clone());

    let report = deliver(&fanout, &[], &sample_event("empty")).await;
    assert_eq!(report, DeliveryReport::default());
    assert_eq!(delivery.total(), 0);
}

/// Recipients with no connection: an empty report, nothing delivered.
pub async fn offline_recipients_count_nothing<S, M>(make: &mut M)
where
    S: FanoutService,
    M: FnMut(RecordingDelivery) -> S,
{
    let delivery = RecordingDelivery::new();
    let fanout = make(delivery.clone());

    let report = deliver(
        &fanout,
        &[user("carol"), user("erin")],
        &sample_event("offline"),
    )
    .await;
    assert_eq!(report, DeliveryReport::default());
    assert_eq!(delivery.total(), 0);
}

/// A [`LocalDelivery`] for tests: a number of connections per user, and every event each
/// connection received, in order.
///
/// Clones share state, so a test keeps one clone and gives the other to the fanout.
#[derive(Clone, Default)]
pub struct RecordingDelivery {
    connections: Arc<Mutex<BTreeMap<UserId, Vec<Vec<Event>>>>>,
}

impl RecordingDelivery {
    /// No connections.
    pub fn new() -> Self {
        Self::default()
    }

    fn connections(&self) -> MutexGuard<'_, BTreeMap<UserId, Vec<Vec<Event>>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `user` `count` more connections.
    pub fn connect(&self, user: &UserId, count: usize) {
        self.connections()
            .entry(user.clone())
            .or_default()
            .extend(std::iter::repeat_with(Vec::new).take(count));
    }

    /// The events connection `index` of `user` received, in order (empty for an unknown one).
    pub fn received(&self, user: &UserId, index: usize) -> Vec<Event> {
        self.connections()
            .get(user)
            .and_then(|connections| connections.get(index))
            .cloned()
            .unwrap_or_default()
    }

    /// How many events all connections received together.
    pub fn total(&self) -> usize {
        self.connections().values().flatten().map(Vec::len).sum()
    }
}

impl LocalDelivery for RecordingDelivery {
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize {
        let mut connections = self.connections();
        let mut delivered = 0;
        for recipient in recipients {
            if let Some(queues) = connections.get_mut(recipient) {
                for queue in queues.iter_mut() {
                    queue.push(event.clone());
                    delivered += 1;
                }
            }
        }
        delivered
    }
}

impl fmt::Debug for RecordingDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connections = self.connections();
        let mut map = f.debug_map();
        for (user, queues) in connections.iter() {
            map.entry(user, &queues.iter().map(Vec::len).collect::<Vec<_>>());
        }
        map.finish()
    }
}
