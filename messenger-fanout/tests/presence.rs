//! The presence registry without a server: the memory backend through the generic and the dyn
//! form, and registries from URLs.

use std::time::Duration;

use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, OnlineDevice, PresenceFeed, RegisterDevice,
    SubscribePresence, UnregisterDevice,
};
use messenger_core::{DeviceId, Error, ErrorKind, Timestamp, UserId, call};
use messenger_fanout::presence::conformance::{self, NodeHandle};
use messenger_fanout::presence::memory::MemoryPresence;
use messenger_fanout::presence::{DynPresence, Presence, PresenceBackend, connect};

const LEASE: Duration = Duration::from_secs(5);

async fn run_suite(registry: &DynPresence) {
    let (a, b) = (NodeId::from("node-a"), NodeId::from("node-b"));
    conformance::run_all(
        NodeHandle { id: &a, registry },
        NodeHandle {
            id: &b,
            registry: &registry.clone(),
        },
    )
    .await;
}

#[tokio::test]
async fn the_dyn_memory_registry_passes_the_conformance_suite() {
    run_suite(&Presence::new_dyn(MemoryPresence::new())).await;
}

#[tokio::test]
async fn a_memory_registry_from_its_url_passes_the_conformance_suite() {
    for url in ["memory:", "memory", " MEMORY: "] {
        let registry = connect([url], NodeId::from("node-a"), LEASE)
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        run_suite(&registry).await;
        registry.release().await.unwrap();
    }
}

#[tokio::test]
async fn into_dyn_shares_the_registry() {
    let registry = Presence::new(MemoryPresence::new());
    let shared = registry.clone().into_dyn();
    let alice = UserId::new("alice").unwrap();
    let came_online = call(
        &registry,
        RegisterDevice {
            user: alice.clone(),
            device: DeviceId::new("phone").unwrap(),
            node: NodeId::from("node-a"),
            connection: 1,
            at: Timestamp::now(),
        },
    )
    .await
    .unwrap();
    assert!(came_online);
    let online = call(&shared, LookupPresence { users: vec![alice] })
        .await
        .unwrap();
    assert_eq!(online.len(), 1, "{online:?}");
    assert_eq!(&*online[0].node, "node-a");
}

#[tokio::test]
async fn urls_that_name_no_registry_are_refused() {
    let cases: [&[&str]; 5] = [
        &[],
        &["  "],
        &["mysql://user:secret@host/db"],
        &["memory:", "memory:"],
        &["memory:", "redis://127.0.0.1:1/"],
    ];
    for urls in cases {
        let err = connect(urls.iter().copied(), NodeId::from("node-a"), LEASE)
            .await
            .err()
            .unwrap_or_else(|| panic!("{urls:?} gave a registry"));
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{urls:?}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn redis_urls_need_the_redis_feature() {
    let err = connect(["redis://127.0.0.1:6379/"], NodeId::from("node-a"), LEASE)
        .await
        .err()
        .unwrap_or_else(|| panic!("a Redis registry without the `redis` feature"));
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert!(err.to_string().contains("`redis` feature"), "{err}");
}

/// A backend of an integrator's own: only the five methods, `release` left to its default.
#[derive(Debug, Default)]
struct Wrapped(MemoryPresence);

impl PresenceBackend for Wrapped {
    async fn register(&self, request: RegisterDevice) -> Result<bool, Error> {
        self.0.register(request).await
    }

    async fn unregister(&self, request: UnregisterDevice) -> Result<bool, Error> {
        self.0.unregister(request).await
    }

    async fn lookup(&self, request: LookupPresence) -> Result<Vec<OnlineDevice>, Error> {
        self.0.lookup(request).await
    }

    async fn subscribe(&self, request: SubscribePresence) -> Result<PresenceFeed, Error> {
        self.0.subscribe(request).await
    }

    async fn list_nodes(&self, request: ListNodes) -> Result<Vec<NodeId>, Error> {
        self.0.list_nodes(request).await
    }
}

#[tokio::test]
async fn a_backend_of_ones_own_becomes_a_dyn_registry() {
    let registry = Presence::new_dyn(Wrapped::default());
    run_suite(&registry).await;
    registry.release().await.unwrap();
}
