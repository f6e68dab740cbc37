//! The in-memory presence registry: one process, every node id it is told about (always
//! built).
//!
//! It has no configuration and no failure mode of its own, so this module holds only the
//! backend. Wrap it in [`Presence`](super::Presence) to get a tower service:
//! `Presence::new(MemoryPresence::new())`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, OnlineDevice, PresenceChange, PresenceFeed, RegisterDevice,
    SubscribePresence, UnregisterDevice,
};
use messenger_core::{DeviceId, Error, UserId};
use tokio::sync::broadcast;

use super::{FEED_CAPACITY, PresenceBackend};

#[derive(Debug)]
struct Entry {
    device: DeviceId,
    node: NodeId,
    connection: u64,
}

#[derive(Debug)]
struct State {
    users: Mutex<HashMap<UserId, Vec<Entry>>>,
    feed: broadcast::Sender<PresenceChange>,
}

/// An in-memory presence registry for one process. Clones share the registry.
#[derive(Debug, Clone)]
pub struct MemoryPresence {
    state: Arc<State>,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self {
            state: Arc::new(State {
                users: Mutex::new(HashMap::new()),
                feed: broadcast::channel(FEED_CAPACITY).0,
            }),
        }
    }
}

impl MemoryPresence {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn publish(&self, change: PresenceChange) {
        // No subscriber is not an error: nobody watches.
        let _ = self.state.feed.send(change);
    }

    fn register_device(&self, request: RegisterDevice) -> bool {
        let came_online = {
            let mut users = self
                .state
                .users
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entries = users.entry(request.user.clone()).or_default();
            let came_online = entries.is_empty();
            entries.push(Entry {
                device: request.device,
                node: request.node,
                connection: request.connection,
            });
            came_online
        };
        if came_online {
            self.publish(PresenceChange {
                user: request.user,
                online: true,
                at: request.at,
            });
        }
        came_online
    }

    fn unregister_device(&self, request: UnregisterDevice) -> bool {
        let went_offline = {
            let mut users = self
                .state
                .users
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(entries) = users.get_mut(&request.user) else {
                return false;
            };
            let before = entries.len();
            entries.retain(|entry| {
                !(entry.connection == request.connection
                    && entry.node == request.node
                    && entry.device == request.device)
            });
            let went_offline = before > 0 && entries.is_empty();
            if entries.is_empty() {
                users.remove(&request.user);
            }
            went_offline
        };
        if went_offline {
            self.publish(PresenceChange {
                user: request.user,
                online: false,
                at: request.at,
            });
        }
        went_offline
    }

    fn online(&self, request: &LookupPresence) -> Vec<OnlineDevice> {
        let users = self
            .state
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut online = Vec::new();
        for user in &request.users {
            for entry in users.get(user).into_iter().flatten() {
                online.push(OnlineDevice {
                    user: user.clone(),
                    device: entry.device.clone(),
                    node: entry.node.clone(),
                });
            }
        }
        online
    }

    fn nodes(&self) -> Vec<NodeId> {
        let users = self
            .state
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let nodes: BTreeSet<&NodeId> = users.values().flatten().map(|entry| &entry.node).collect();
        nodes.into_iter().cloned().collect()
    }
}

/// Every request is answered at once, without awaiting.
///
/// # Cancellation safety
/// Cancellation safe: a request happens entirely or not at all.
impl PresenceBackend for MemoryPresence {
    async fn register(&self, request: RegisterDevice) -> Result<bool, Error> {
        Ok(self.register_device(request))
    }

    async fn unregister(&self, request: UnregisterDevice) -> Result<bool, Error> {
        Ok(self.unregister_device(request))
    }

    async fn lookup(&self, request: LookupPresence) -> Result<Vec<OnlineDevice>, Error> {
        Ok(self.online(&request))
    }

    async fn subscribe(&self, _request: SubscribePresence) -> Result<PresenceFeed, Error> {
        Ok(self.state.feed.subscribe())
    }

    async fn list_nodes(&self, _request: ListNodes) -> Result<Vec<NodeId>, Error> {
        Ok(self.nodes())
    }
}

#[cfg(all(test, feature = "conformance"))]
mod tests {
    use super::*;
    use crate::presence::Presence;
    use crate::presence::conformance::{self, NodeHandle};

    #[tokio::test]
    async fn memory_presence_passes_the_conformance_suite() {
        let registry = Presence::new(MemoryPresence::new());
        let (a, b): (NodeId, NodeId) = (Arc::from("node-a"), Arc::from("node-b"));
        conformance::run_all(
            NodeHandle {
                id: &a,
                registry: &registry,
            },
            NodeHandle {
                id: &b,
                registry: &registry.clone(),
            },
        )
        .await;
    }
}
