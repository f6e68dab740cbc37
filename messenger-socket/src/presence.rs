//! The presence registry: which devices of which users are connected, and to which node.
//!
//! [`MemoryPresence`] is the single-node registry (always built). A shared backend (Redis,
//! with node leases) implements the same requests of [`messenger_core::presence`].

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use messenger_core::presence::{
    LookupPresence, NodeId, OnlineDevice, RegisterDevice, UnregisterDevice,
};
use messenger_core::{DeviceId, Error, UserId};

#[derive(Debug)]
struct Entry {
    device: DeviceId,
    node: NodeId,
    connection: u64,
}

/// An in-memory presence registry for one node.
#[derive(Debug, Clone, Default)]
pub struct MemoryPresence {
    users: Arc<Mutex<HashMap<UserId, Vec<Entry>>>>,
}

impl MemoryPresence {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn register(&self, request: RegisterDevice) -> bool {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = users.entry(request.user).or_default();
        let came_online = entries.is_empty();
        entries.push(Entry {
            device: request.device,
            node: request.node,
            connection: request.connection,
        });
        came_online
    }

    fn unregister(&self, request: UnregisterDevice) -> bool {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
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
    }

    fn lookup(&self, request: &LookupPresence) -> Vec<OnlineDevice> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
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
}

impl tower::Service<RegisterDevice> for MemoryPresence {
    type Response = bool;
    type Error = Error;
    type Future = Ready<Result<bool, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RegisterDevice) -> Self::Future {
        ready(Ok(self.register(request)))
    }
}

impl tower::Service<UnregisterDevice> for MemoryPresence {
    type Response = bool;
    type Error = Error;
    type Future = Ready<Result<bool, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: UnregisterDevice) -> Self::Future {
        ready(Ok(self.unregister(request)))
    }
}

impl tower::Service<LookupPresence> for MemoryPresence {
    type Response = Vec<OnlineDevice>;
    type Error = Error;
    type Future = Ready<Result<Vec<OnlineDevice>, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: LookupPresence) -> Self::Future {
        ready(Ok(self.lookup(&request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::call;

    fn reg(user: &str, device: &str, connection: u64) -> RegisterDevice {
        RegisterDevice {
            user: UserId::new(user).unwrap(),
            device: DeviceId::new(device).unwrap(),
            node: Arc::from("n1"),
            connection,
        }
    }

    fn unreg(request: &RegisterDevice) -> UnregisterDevice {
        UnregisterDevice {
            user: request.user.clone(),
            device: request.device.clone(),
            node: request.node.clone(),
            connection: request.connection,
        }
    }

    #[tokio::test]
    async fn online_while_any_device_is_connected() {
        let presence = MemoryPresence::new();
        let phone = reg("alice", "phone", 1);
        let laptop = reg("alice", "laptop", 2);
        assert!(call(&presence, phone.clone()).await.unwrap());
        assert!(!call(&presence, laptop.clone()).await.unwrap());
        let lookup = LookupPresence {
            users: vec![phone.user.clone(), UserId::new("bob").unwrap()],
        };
        assert_eq!(call(&presence, lookup.clone()).await.unwrap().len(), 2);
        assert!(!call(&presence, unreg(&phone)).await.unwrap());
        // A stale unregister of an older connection changes nothing.
        assert!(
            !call(&presence, unreg(&reg("alice", "laptop", 99)))
                .await
                .unwrap()
        );
        assert!(call(&presence, unreg(&laptop)).await.unwrap());
        assert!(call(&presence, lookup).await.unwrap().is_empty());
    }
}
