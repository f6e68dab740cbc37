//! The node's hub: every live connection of this node, by user, and who watches whose
//! presence. The fanout hands events to it through [`LocalDelivery`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};

use messenger_core::fanout::LocalDelivery;
use messenger_core::protocol::ServerFrame;
use messenger_core::{DeviceId, Event, Message, PresenceUpdate, Timestamp, TypingUpdate, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::members::MemberCache;

/// What a connection's queue carries.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame to write as is.
    Frame(Utf8Bytes),
    /// A log entry: goes through the connection's per-conversation ordering.
    Entry(Arc<Message>, Utf8Bytes),
    /// A presence frame about `user`: a live change, or (`snapshot`) the state read when the
    /// connection subscribed, which the connection drops if it already wrote a live change
    /// about that user since (the snapshot would be older than what the client has).
    /// Boxed so that the queue's items stay as small as the common ones (a delivery copies one
    /// item per connection).
    Presence(Box<PresenceFrame>),
}

/// A presence frame about one user, for [`Outbound::Presence`].
#[derive(Debug)]
pub(crate) struct PresenceFrame {
    /// Whose presence.
    pub(crate) user: UserId,
    /// The frame.
    pub(crate) text: Utf8Bytes,
    /// Read at subscription time, not a live change.
    pub(crate) snapshot: bool,
}

/// A connection's outgoing queue.
///
/// Producers (the fanout, request tasks) push without waiting; the connection takes everything
/// queued in one go when it wakes up, so a burst of deliveries costs one wake-up and one lock
/// per batch, not one per frame. The connection hands the emptied batch back
/// ([`OutboundQueue::recycle`]) so that a steady flow allocates nothing, and frees it when it
/// has been idle for a while ([`OutboundQueue::release`]), so that an idle connection keeps
/// nothing here but this struct.
#[derive(Debug)]
pub(crate) struct OutboundQueue {
    state: Mutex<QueueState>,
    /// Items queued before the connection counts as a slow consumer.
    capacity: usize,
}

/// The largest batch buffer handed back for reuse, in items.
const RECYCLE_CAPACITY: usize = 16;

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    /// The connection's waker, while it waits for items.
    waker: Option<Waker>,
    /// A push found the queue full: the connection closes as a slow consumer.
    overflowed: bool,
    /// The connection is gone: pushes are refused.
    closed: bool,
}

/// What [`OutboundQueue::poll_take`] found.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Items, in push order.
    Items(VecDeque<Outbound>),
    /// The queue overflowed.
    Overflowed,
}

impl OutboundQueue {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`; `false` when the queue is full (marked overflowed) or closed.
    fn push(&self, item: Outbound) -> bool {
        let (accepted, waker) = {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            if state.items.len() >= self.capacity {
                state.overflowed = true;
                (false, state.waker.take())
            } else {
                state.items.push_back(item);
                (true, state.waker.take())
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        accepted
    }

    /// Takes everything queued, or registers `cx` to be woken by the next push.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Taken> {
        let mut state = self.lock();
        if state.overflowed {
            return Poll::Ready(Taken::Overflowed);
        }
        if !state.items.is_empty() {
            return Poll::Ready(Taken::Items(std::mem::take(&mut state.items)));
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes what is queued without waiting (`None` when empty or overflowed).
    pub(crate) fn try_take(&self) -> Option<VecDeque<Outbound>> {
        let mut state = self.lock();
        if state.overflowed || state.items.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut state.items))
    }

    /// Gives back a written batch's buffer for the next pushes, unless it grew past a few
    /// items (a burst) or the queue already has one.
    pub(crate) fn recycle(&self, mut batch: VecDeque<Outbound>) {
        if batch.capacity() > RECYCLE_CAPACITY {
            return;
        }
        batch.clear();
        let mut state = self.lock();
        if state.items.capacity() == 0 && !state.closed {
            state.items = batch;
        }
    }

    /// Frees the queue's buffer if nothing is queued (the connection is idle).
    pub(crate) fn release(&self) {
        let buffer = {
            let mut state = self.lock();
            if !state.items.is_empty() {
                return;
            }
            std::mem::take(&mut state.items)
        };
        drop(buffer);
    }

    /// Refuses every later push and drops what is queued.
    pub(crate) fn close(&self) {
        let items = {
            let mut state = self.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectionHandle {
    pub(crate) id: u64,
    pub(crate) device: DeviceId,
    /// What the connection still has to write; overflowing it closes the connection as a slow
    /// consumer.
    pub(crate) queue: Arc<OutboundQueue>,
}

impl ConnectionHandle {
    /// A handle with an empty queue of at most `capacity` items.
    pub(crate) fn new(id: u64, device: DeviceId, capacity: usize) -> Self {
        Self {
            id,
            device,
            queue: Arc::new(OutboundQueue::new(capacity)),
        }
    }

    /// Queues without waiting; a full queue marks the connection as a slow consumer.
    pub(crate) fn push(&self, item: Outbound) -> bool {
        self.queue.push(item)
    }
}

/// Every live connection of this node. Made by [`Node`](crate::engine::Node) only, so an
/// engine and its fanout share one.
#[derive(Debug, Default)]
pub struct Hub {
    connections: RwLock<HashMap<UserId, Vec<ConnectionHandle>>>,
    members: MemberCache,
    watchers: Mutex<HashMap<UserId, HashMap<u64, ConnectionHandle>>>,
    /// Whether an engine serves this hub ([`Hub::bind`]).
    bound: AtomicBool,
    /// Whether a delivery to an unbound hub was logged already.
    warned: AtomicBool,
}

impl Hub {
    /// An empty hub.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the hub as served by an engine.
    pub(crate) fn bind(&self) {
        self.bound.store(true, Ordering::Release);
    }

    /// Whether an engine serves this hub: a fanout delivering to a hub no engine serves
    /// reaches no connection.
    pub fn is_bound(&self) -> bool {
        self.bound.load(Ordering::Acquire)
    }

    /// The node's member cache: the hub drops an entry when a membership change of its
    /// conversation passes through it.
    pub(crate) fn members(&self) -> &MemberCache {
        &self.members
    }

    /// How many connections are live.
    pub fn connection_count(&self) -> usize {
        self.connections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    pub(crate) fn register(&self, user: &UserId, handle: ConnectionHandle) {
        self.connections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user.clone())
            .or_default()
            .push(handle);
    }

    /// The live connections of `user` (for tests that push to a connection's queue).
    #[cfg(test)]
    pub(crate) fn handles(&self, user: &UserId) -> Vec<ConnectionHandle> {
        self.connections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn unregister(&self, user: &UserId, id: u64) {
        let mut connections = self
            .connections
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = connections.get_mut(user) {
            handles.retain(|handle| handle.id != id);
            if handles.is_empty() {
                connections.remove(user);
            }
        }
    }

    pub(crate) fn watch(&self, handle: &ConnectionHandle, users: &[UserId]) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        for user in users {
            watchers
                .entry(user.clone())
                .or_default()
                .insert(handle.id, handle.clone());
        }
    }

    pub(crate) fn unwatch(&self, id: u64, users: &HashSet<UserId>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        for user in users {
            if let Some(by_connection) = watchers.get_mut(user) {
                by_connection.remove(&id);
                if by_connection.is_empty() {
                    watchers.remove(user);
                }
            }
        }
    }

    /// Tells the local watchers of `user` that they came online or went offline.
    pub(crate) fn notify_presence(
        &self,
        user: &UserId,
        online: bool,
        last_seen: Option<Timestamp>,
    ) {
        let targets: Vec<ConnectionHandle> = {
            let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
            match watchers.get(user) {
                Some(by_connection) => by_connection.values().cloned().collect(),
                None => return,
            }
        };
        let frame = Utf8Bytes::from(
            ServerFrame::Presence(PresenceUpdate {
                user: user.clone(),
                online,
                last_seen,
            })
            .to_json(),
        );
        for target in targets {
            target.push(Outbound::Presence(Box::new(PresenceFrame {
                user: user.clone(),
                text: frame.clone(),
                snapshot: false,
            })));
        }
    }
}

impl LocalDelivery for Hub {
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize {
        if !self.is_bound() && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a fanout delivers to a hub no engine serves: give the fanout the hub of the \
                 Node passed to Engine::new (node.hub())"
            );
        }
        if let Event::Message { message } = event {
            if message.body.is_membership_change() {
                self.members.invalidate(&message.conversation);
            }
        }
        let frame = ServerFrame::from(event);
        // Serialized once, shared by every connection.
        let text = Utf8Bytes::from(frame.to_json());
        let typist = match event {
            Event::Typing(TypingUpdate { user, device, .. }) => Some((user, device)),
            _ => None,
        };
        let connections = self
            .connections
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut delivered = 0;
        for user in recipients {
            for handle in connections.get(user).into_iter().flatten() {
                if typist.is_some_and(|(typing_user, device)| {
                    typing_user == user && *device == handle.device
                }) {
                    continue;
                }
                let item = match event {
                    Event::Message { message } => {
                        Outbound::Entry(Arc::clone(message), text.clone())
                    }
                    _ => Outbound::Frame(text.clone()),
                };
                if handle.push(item) {
                    delivered += 1;
                }
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn frame(text: &str) -> Outbound {
        Outbound::Frame(Utf8Bytes::from(text.to_owned()))
    }

    fn texts(taken: Poll<Taken>) -> Vec<String> {
        match taken {
            Poll::Ready(Taken::Items(items)) => items
                .into_iter()
                .map(|item| match item {
                    Outbound::Frame(text) => text.as_str().to_owned(),
                    Outbound::Entry(_, text) => text.as_str().to_owned(),
                    Outbound::Presence(frame) => frame.text.as_str().to_owned(),
                })
                .collect(),
            Poll::Ready(Taken::Overflowed) => vec!["overflowed".into()],
            Poll::Pending => vec![],
        }
    }

    #[test]
    fn a_take_gets_everything_queued_in_order_then_waits() {
        let handle = ConnectionHandle::new(1, DeviceId::new("d").unwrap(), 8);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(handle.queue.poll_take(&mut cx).is_pending());
        assert!(handle.push(frame("a")));
        assert!(handle.push(frame("b")));
        assert_eq!(texts(handle.queue.poll_take(&mut cx)), ["a", "b"]);
        assert!(handle.queue.poll_take(&mut cx).is_pending());
        assert!(handle.queue.try_take().is_none());
    }

    #[test]
    fn a_full_queue_refuses_and_reports_the_overflow() {
        let handle = ConnectionHandle::new(1, DeviceId::new("d").unwrap(), 2);
        assert!(handle.push(frame("a")));
        assert!(handle.push(frame("b")));
        assert!(!handle.push(frame("c")));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(texts(handle.queue.poll_take(&mut cx)), ["overflowed"]);
        assert!(handle.queue.try_take().is_none());
    }

    #[test]
    fn a_closed_queue_refuses_pushes() {
        let handle = ConnectionHandle::new(1, DeviceId::new("d").unwrap(), 8);
        assert!(handle.push(frame("a")));
        handle.queue.close();
        assert!(!handle.push(frame("b")));
        assert!(handle.queue.try_take().is_none());
    }
}
