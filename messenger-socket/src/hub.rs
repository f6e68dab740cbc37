//! The node's hub: every live connection of this node, by user, and who watches whose
//! presence. The fanout hands events to it through [`LocalDelivery`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use messenger_core::fanout::LocalDelivery;
use messenger_core::protocol::ServerFrame;
use messenger_core::{DeviceId, Event, Message, Timestamp, UserId};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::members::MemberCache;

/// What a connection's queue carries.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame to write as is.
    Frame(Utf8Bytes),
    /// A log entry: goes through the connection's per-conversation ordering.
    Entry(Arc<Message>, Utf8Bytes),
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectionHandle {
    pub(crate) id: u64,
    pub(crate) device: DeviceId,
    pub(crate) queue: mpsc::Sender<Outbound>,
    /// Notified when the queue overflowed: the connection closes as a slow consumer.
    pub(crate) overflow: Arc<Notify>,
}

impl ConnectionHandle {
    /// Queues without waiting; a full queue marks the connection as a slow consumer.
    pub(crate) fn push(&self, item: Outbound) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Every live connection of this node.
#[derive(Debug, Default)]
pub struct Hub {
    connections: RwLock<HashMap<UserId, Vec<ConnectionHandle>>>,
    members: MemberCache,
    watchers: Mutex<HashMap<UserId, HashMap<u64, ConnectionHandle>>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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
            ServerFrame::Presence {
                user: user.clone(),
                online,
                last_seen,
            }
            .to_json(),
        );
        for target in targets {
            target.push(Outbound::Frame(frame.clone()));
        }
    }
}

/// The frame an event becomes on the wire.
pub(crate) fn event_frame(event: &Event) -> Option<ServerFrame> {
    Some(match event {
        Event::Message { message } => ServerFrame::Message {
            message: Arc::clone(message),
        },
        Event::Receipt {
            conversation,
            receipts,
        } => ServerFrame::Receipt {
            conversation: conversation.clone(),
            receipts: receipts.clone(),
        },
        Event::Typing {
            conversation,
            user,
            device,
            active,
        } => ServerFrame::Typing {
            conversation: conversation.clone(),
            user: user.clone(),
            device: device.clone(),
            active: *active,
        },
        Event::Presence {
            user,
            online,
            last_seen,
        } => ServerFrame::Presence {
            user: user.clone(),
            online: *online,
            last_seen: *last_seen,
        },
        _ => return None,
    })
}

impl LocalDelivery for Hub {
    fn deliver_local(&self, recipients: &[UserId], event: &Event) -> usize {
        if let Event::Message { message } = event {
            if message.body.is_membership_change() {
                self.members.invalidate(&message.conversation);
            }
        }
        let Some(frame) = event_frame(event) else {
            return 0;
        };
        // Serialized once, shared by every connection.
        let text = Utf8Bytes::from(frame.to_json());
        let typist = match event {
            Event::Typing { user, device, .. } => Some((user, device)),
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
