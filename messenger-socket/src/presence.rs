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

/// Behaviour every presence registry must show, for backend test suites.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    use std::sync::Arc;

    use messenger_core::presence::{
        LookupPresence, NodeId, PresenceService, RegisterDevice, UnregisterDevice,
    };
    use messenger_core::{DeviceId, UserId, call};

    fn unique(label: &str) -> UserId {
        use rand::Rng;
        let suffix: u64 = rand::rng().random();
        UserId::new(format!("{label}-{suffix:x}")).unwrap_or_else(|err| panic!("{err}"))
    }

    fn register(user: &UserId, device: &str, node: &NodeId, connection: u64) -> RegisterDevice {
        RegisterDevice {
            user: user.clone(),
            device: DeviceId::new(device).unwrap_or_else(|err| panic!("{err}")),
            node: node.clone(),
            connection,
        }
    }

    fn unregister(request: &RegisterDevice) -> UnregisterDevice {
        UnregisterDevice {
            user: request.user.clone(),
            device: request.device.clone(),
            node: request.node.clone(),
            connection: request.connection,
        }
    }

    /// Runs every check.
    ///
    /// # Panics
    /// When the registry breaks the contract.
    pub async fn run_all<S: PresenceService>(registry: &S) {
        online_while_any_device_is_connected(registry).await;
        a_stale_unregister_changes_nothing(registry).await;
        lookup_lists_devices_and_nodes(registry).await;
    }

    /// The first device brings a user online, the last one takes them offline.
    ///
    /// # Panics
    /// When the registry breaks the contract.
    pub async fn online_while_any_device_is_connected<S: PresenceService>(registry: &S) {
        let node: NodeId = Arc::from("node-a");
        let user = unique("presence");
        let phone = register(&user, "phone", &node, 1);
        let laptop = register(&user, "laptop", &node, 2);
        assert!(
            call(registry, phone.clone())
                .await
                .unwrap_or_else(|err| panic!("{err}"))
        );
        assert!(
            !call(registry, laptop.clone())
                .await
                .unwrap_or_else(|err| panic!("{err}"))
        );
        assert!(
            !call(registry, unregister(&phone))
                .await
                .unwrap_or_else(|err| panic!("{err}"))
        );
        assert!(
            call(registry, unregister(&laptop))
                .await
                .unwrap_or_else(|err| panic!("{err}"))
        );
        let online = call(registry, LookupPresence { users: vec![user] })
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(online.is_empty(), "{online:?}");
    }

    /// Unregistering an older connection of a device that reconnected keeps the newer one.
    ///
    /// # Panics
    /// When the registry breaks the contract.
    pub async fn a_stale_unregister_changes_nothing<S: PresenceService>(registry: &S) {
        let node: NodeId = Arc::from("node-a");
        let user = unique("stale");
        let old = register(&user, "phone", &node, 10);
        let new = register(&user, "phone", &node, 11);
        call(registry, old.clone())
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        call(registry, new.clone())
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(
            !call(registry, unregister(&old))
                .await
                .unwrap_or_else(|err| panic!("{err}"))
        );
        let online = call(
            registry,
            LookupPresence {
                users: vec![user.clone()],
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(online.len(), 1);
        assert!(
            call(registry, unregister(&new))
                .await
                .unwrap_or_else(|err| panic!("{err}"))
        );
    }

    /// Lookup answers every online device of the users asked about, with its node.
    ///
    /// # Panics
    /// When the registry breaks the contract.
    pub async fn lookup_lists_devices_and_nodes<S: PresenceService>(registry: &S) {
        let a: NodeId = Arc::from("node-a");
        let b: NodeId = Arc::from("node-b");
        let first = unique("first");
        let second = unique("second");
        let offline = unique("offline");
        let phone = register(&first, "phone", &a, 20);
        let tablet = register(&first, "tablet", &b, 21);
        let other = register(&second, "phone", &b, 22);
        for request in [&phone, &tablet, &other] {
            call(registry, request.clone())
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        }
        let mut online = call(
            registry,
            LookupPresence {
                users: vec![first.clone(), offline, second.clone()],
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        online.sort_by(|x, y| (&x.user, &x.device).cmp(&(&y.user, &y.device)));
        let found: Vec<(String, String, String)> = online
            .iter()
            .map(|d| (d.user.to_string(), d.device.to_string(), d.node.to_string()))
            .collect();
        let mut expected = vec![
            (first.to_string(), "phone".to_owned(), "node-a".to_owned()),
            (first.to_string(), "tablet".to_owned(), "node-b".to_owned()),
            (second.to_string(), "phone".to_owned(), "node-b".to_owned()),
        ];
        expected.sort();
        assert_eq!(found, expected);
        for request in [&phone, &tablet, &other] {
            call(registry, unregister(request))
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_presence_passes_the_conformance_suite() {
        conformance::run_all(&MemoryPresence::new()).await;
    }
}
