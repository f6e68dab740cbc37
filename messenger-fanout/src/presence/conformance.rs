//! Behaviour every presence registry must show, for backend test suites.
//!
//! Every check takes two handles on one registry as two nodes of a cluster see it (for a
//! shared backend: two registries with their own node id and lease over the same server; for
//! [`MemoryPresence`](super::memory::MemoryPresence): two clones). Users are random, so
//! suites can share a server.
//!
//! ```
//! use messenger_core::presence::NodeId;
//! use messenger_fanout::presence::conformance::{self, NodeHandle};
//! use messenger_fanout::presence::{Presence, memory::MemoryPresence};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = Presence::new(MemoryPresence::new());
//! let (a, b) = (NodeId::from("node-a"), NodeId::from("node-b"));
//! conformance::run_all(
//!     NodeHandle { id: &a, registry: &registry },
//!     NodeHandle { id: &b, registry: &registry.clone() },
//! )
//! .await;
//! # }
//! ```

use std::time::Duration;

use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, PresenceChange, PresenceFeed, PresenceService,
    RegisterDevice, SubscribePresence, UnregisterDevice,
};
use messenger_core::{DeviceId, Timestamp, UserId, call};
use tokio::sync::broadcast::error::RecvError;

/// One node's view of the registry under test.
#[derive(Debug)]
pub struct NodeHandle<'a, S> {
    /// The node's id, as the registry knows it.
    pub id: &'a NodeId,
    /// The registry, as this node uses it.
    pub registry: &'a S,
}

impl<S> Clone for NodeHandle<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for NodeHandle<'_, S> {}

fn unique(label: &str) -> UserId {
    use rand::Rng;
    let suffix: u64 = rand::rng().random();
    UserId::new(format!("{label}-{suffix:x}")).unwrap_or_else(|err| panic!("{err}"))
}

fn register<S>(
    user: &UserId,
    device: &str,
    node: NodeHandle<'_, S>,
    connection: u64,
) -> RegisterDevice {
    RegisterDevice {
        user: user.clone(),
        device: DeviceId::new(device).unwrap_or_else(|err| panic!("{err}")),
        node: node.id.clone(),
        connection,
        at: Timestamp::now(),
    }
}

fn unregister(request: &RegisterDevice) -> UnregisterDevice {
    UnregisterDevice {
        user: request.user.clone(),
        device: request.device.clone(),
        node: request.node.clone(),
        connection: request.connection,
        at: Timestamp::now(),
    }
}

async fn ok<S, R>(registry: &S, request: R) -> R::Response
where
    R: messenger_core::service::Operation,
    S: messenger_core::service::Handles<R>,
{
    call(registry, request)
        .await
        .unwrap_or_else(|err| panic!("{} failed: {err}", R::NAME))
}

/// Runs every check.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn run_all<S: PresenceService>(a: NodeHandle<'_, S>, b: NodeHandle<'_, S>) {
    online_while_any_device_is_connected(a, b).await;
    a_stale_unregister_changes_nothing(a).await;
    lookup_lists_devices_and_nodes(a, b).await;
    changes_reach_every_subscriber(a, b).await;
    live_nodes_are_listed(a, b).await;
    a_large_group_is_looked_up_at_once(a, b).await;
}

/// The first device brings a user online, the last one takes them offline, whichever node
/// holds them.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn online_while_any_device_is_connected<S: PresenceService>(
    a: NodeHandle<'_, S>,
    b: NodeHandle<'_, S>,
) {
    let user = unique("presence");
    let phone = register(&user, "phone", a, 1);
    let laptop = register(&user, "laptop", b, 2);
    assert!(ok(a.registry, phone.clone()).await, "first device: online");
    assert!(
        !ok(b.registry, laptop.clone()).await,
        "second device: already online"
    );
    assert!(
        !ok(a.registry, unregister(&phone)).await,
        "a device is left"
    );
    assert!(
        ok(b.registry, unregister(&laptop)).await,
        "last device: offline"
    );
    let online = ok(a.registry, LookupPresence { users: vec![user] }).await;
    assert!(online.is_empty(), "{online:?}");
}

/// Unregistering an older connection of a device that reconnected keeps the newer one.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn a_stale_unregister_changes_nothing<S: PresenceService>(a: NodeHandle<'_, S>) {
    let user = unique("stale");
    let old = register(&user, "phone", a, 10);
    let new = register(&user, "phone", a, 11);
    ok(a.registry, old.clone()).await;
    ok(a.registry, new.clone()).await;
    assert!(!ok(a.registry, unregister(&old)).await);
    let online = ok(
        a.registry,
        LookupPresence {
            users: vec![user.clone()],
        },
    )
    .await;
    assert_eq!(online.len(), 1, "{online:?}");
    assert!(ok(a.registry, unregister(&new)).await);
}

/// Lookup answers every online device of the users asked about, with its node, from any
/// node.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn lookup_lists_devices_and_nodes<S: PresenceService>(
    a: NodeHandle<'_, S>,
    b: NodeHandle<'_, S>,
) {
    let first = unique("first");
    let second = unique("second");
    let offline = unique("offline");
    let phone = register(&first, "phone", a, 20);
    let tablet = register(&first, "tablet", b, 21);
    let other = register(&second, "phone", b, 22);
    ok(a.registry, phone.clone()).await;
    ok(b.registry, tablet.clone()).await;
    ok(b.registry, other.clone()).await;
    for asking in [a, b] {
        let mut online = ok(
            asking.registry,
            LookupPresence {
                users: vec![first.clone(), offline.clone(), second.clone()],
            },
        )
        .await;
        online.sort_by(|x, y| (&x.user, &x.device).cmp(&(&y.user, &y.device)));
        let found: Vec<(String, String, String)> = online
            .iter()
            .map(|d| (d.user.to_string(), d.device.to_string(), d.node.to_string()))
            .collect();
        let mut expected = vec![
            (first.to_string(), "phone".to_owned(), a.id.to_string()),
            (first.to_string(), "tablet".to_owned(), b.id.to_string()),
            (second.to_string(), "phone".to_owned(), b.id.to_string()),
        ];
        expected.sort();
        assert_eq!(found, expected, "asked on {}", asking.id);
    }
    ok(a.registry, unregister(&phone)).await;
    ok(b.registry, unregister(&tablet)).await;
    ok(b.registry, unregister(&other)).await;
}

/// The changes of `user` a feed carries, until one going offline (at most 10 s).
async fn changes_of(feed: &mut PresenceFeed, user: &UserId) -> Vec<bool> {
    let mut seen = Vec::new();
    let collect = async {
        loop {
            match feed.recv().await {
                Ok(PresenceChange {
                    user: who, online, ..
                }) if &who == user => {
                    seen.push(online);
                    if !online {
                        return;
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the presence feed closed"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .is_err()
    {
        panic!("no offline change for {user} within 10 s; saw {seen:?}");
    }
    seen
}

/// A user coming online and going offline reaches the subscribers of every node, once
/// each: a second device is not a change.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn changes_reach_every_subscriber<S: PresenceService>(
    a: NodeHandle<'_, S>,
    b: NodeHandle<'_, S>,
) {
    let mut feed_a = ok(a.registry, SubscribePresence).await;
    let mut feed_b = ok(b.registry, SubscribePresence).await;
    let user = unique("feed");
    let phone = register(&user, "phone", a, 30);
    let laptop = register(&user, "laptop", b, 31);
    ok(a.registry, phone.clone()).await;
    ok(b.registry, laptop.clone()).await;
    ok(b.registry, unregister(&laptop)).await;
    ok(a.registry, unregister(&phone)).await;
    assert_eq!(
        changes_of(&mut feed_a, &user).await,
        [true, false],
        "node {}",
        a.id
    );
    assert_eq!(
        changes_of(&mut feed_b, &user).await,
        [true, false],
        "node {}",
        b.id
    );
}

/// Both nodes are listed as alive while they have devices registered.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn live_nodes_are_listed<S: PresenceService>(a: NodeHandle<'_, S>, b: NodeHandle<'_, S>) {
    let user = unique("nodes");
    let phone = register(&user, "phone", a, 40);
    let laptop = register(&user, "laptop", b, 41);
    ok(a.registry, phone.clone()).await;
    ok(b.registry, laptop.clone()).await;
    for asking in [a, b] {
        let nodes = ok(asking.registry, ListNodes).await;
        for node in [a.id, b.id] {
            assert!(
                nodes.contains(node),
                "{node} missing from {nodes:?} (asked on {})",
                asking.id
            );
        }
    }
    ok(a.registry, unregister(&phone)).await;
    ok(b.registry, unregister(&laptop)).await;
}

/// One look-up of a large group (members online on either node, offline, asked twice)
/// answers exactly the online devices, with their nodes.
///
/// # Panics
/// When the registry breaks the contract.
pub async fn a_large_group_is_looked_up_at_once<S: PresenceService>(
    a: NodeHandle<'_, S>,
    b: NodeHandle<'_, S>,
) {
    const MEMBERS: usize = 300;
    let members: Vec<UserId> = (0..MEMBERS).map(|_| unique("group")).collect();
    let mut registered = Vec::new();
    let mut expected = Vec::new();
    for (i, member) in members.iter().enumerate() {
        // Every third member is offline; the others are on node a or b.
        let node = match i % 3 {
            0 => continue,
            1 => a,
            _ => b,
        };
        let connection = 1000 + u64::try_from(i).unwrap_or(u64::MAX);
        let request = register(member, "phone", node, connection);
        ok(node.registry, request.clone()).await;
        expected.push((member.to_string(), node.id.to_string()));
        registered.push((node, request));
    }
    let mut asked = members.clone();
    asked.extend(members.iter().take(10).cloned());
    let online = ok(a.registry, LookupPresence { users: asked }).await;
    let mut found: Vec<(String, String)> = online
        .iter()
        .map(|d| (d.user.to_string(), d.node.to_string()))
        .collect();
    found.sort();
    found.dedup();
    expected.sort();
    assert_eq!(found.len(), expected.len(), "online members");
    assert_eq!(found, expected);
    for (node, request) in &registered {
        ok(node.registry, unregister(request)).await;
    }
}
