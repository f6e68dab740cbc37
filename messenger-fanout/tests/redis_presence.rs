//! The Redis presence registry: the conformance suite with two nodes on one server, node
//! leases lapsing, graceful release.
//!
//! Runs on a standalone server when `MESSENGER_TEST_REDIS_URL` names one, and on Redis Cluster
//! when `MESSENGER_TEST_REDIS_CLUSTER` lists its nodes (comma-separated URLs);
//! `scripts/redis.sh` and `scripts/redis.sh cluster` start them and print these values.
//! Otherwise prints one `SKIPPED:` line per missing server and passes.
//!
//! Every registry gets a key prefix of its own test, so tests share a server without seeing
//! each other's keys; nothing is flushed.
#![cfg(feature = "redis")]

use std::io::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, PresenceChange, PresenceFeed, RegisterDevice,
    SubscribePresence, UnregisterDevice,
};
use messenger_core::{DeviceId, ErrorKind, Timestamp, UserId, call};
use messenger_fanout::presence::conformance::{self, NodeHandle};
use messenger_fanout::presence::redis::{RedisPresence, RedisPresenceConfig};
use messenger_fanout::presence::{Presence, connect};
use tokio::sync::broadcast::error::RecvError;

/// A registry as the tests call it.
type Registry = Presence<RedisPresence>;

const STANDALONE_VARIABLE: &str = "MESSENGER_TEST_REDIS_URL";
const CLUSTER_VARIABLE: &str = "MESSENGER_TEST_REDIS_CLUSTER";

/// The URLs in `variable`, or `None` after printing the skip line (once per variable).
fn configured(variable: &str, notice: &'static Once, what: &str) -> Option<Vec<String>> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Some(
            value
                .split([',', ' '])
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        _ => {
            notice.call_once(|| {
                // Straight to the process's stderr: the harness hides a passing test's output.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the Redis {what} presence tests: {variable} is not set \
                     (scripts/redis.sh{} prints it)",
                    if what == "cluster" { " cluster" } else { "" }
                );
            });
            None
        }
    }
}

fn standalone() -> Option<Vec<String>> {
    static NOTICE: Once = Once::new();
    configured(STANDALONE_VARIABLE, &NOTICE, "standalone")
}

fn cluster() -> Option<Vec<String>> {
    static NOTICE: Once = Once::new();
    configured(CLUSTER_VARIABLE, &NOTICE, "cluster")
}

fn random() -> u64 {
    use rand::Rng;
    rand::rng().random()
}

/// A key prefix no other test (or test run) uses.
fn prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "messenger-test-{}-{}-{test}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn random_node() -> NodeId {
    NodeId::from(format!("node-{:x}", random()))
}

/// A registry with a random node id, a 1 s lease and quick sweeps.
async fn node(urls: &[String], prefix: &str) -> Registry {
    let config = RedisPresenceConfig::new(urls.to_vec(), random_node())
        .with_key_prefix(prefix)
        .with_lease(Duration::from_secs(1))
        .with_sweep_interval(Duration::from_millis(300));
    Presence::new(
        RedisPresence::connect(config)
            .await
            .unwrap_or_else(|err| panic!("connect to {urls:?}: {err}")),
    )
}

fn user(label: &str) -> UserId {
    UserId::new(format!("{label}-{:x}", random())).unwrap_or_else(|err| panic!("{err}"))
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap_or_else(|err| panic!("{err}"))
}

async fn register(registry: &Registry, user: &UserId, name: &str, connection: u64) -> bool {
    call(
        registry,
        RegisterDevice {
            user: user.clone(),
            device: device(name),
            node: registry.backend().node().clone(),
            connection,
            at: Timestamp::now(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("register: {err}"))
}

async fn online_nodes(registry: &Registry, user: &UserId) -> Vec<String> {
    let online = call(
        registry,
        LookupPresence {
            users: vec![user.clone()],
        },
    )
    .await
    .unwrap_or_else(|err| panic!("lookup: {err}"));
    online
        .iter()
        .map(|device| device.node.to_string())
        .collect()
}

/// Polls `check` every 50 ms until it holds; panics after 15 s (liveness, not timing).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 15 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next change of `user` on `feed` (15 s at most).
async fn next_change(feed: &mut PresenceFeed, user: &UserId) -> PresenceChange {
    let wait = async {
        loop {
            match feed.recv().await {
                Ok(change) if &change.user == user => return change,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the presence feed closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or_else(|_| panic!("no change of {user} within 15 s"))
}

async fn conformance_suite(urls: Vec<String>) {
    let prefix = prefix("conformance");
    let a = node(&urls, &prefix).await;
    let b = node(&urls, &prefix).await;
    conformance::run_all(
        NodeHandle {
            id: a.backend().node(),
            registry: &a,
        },
        NodeHandle {
            id: b.backend().node(),
            registry: &b,
        },
    )
    .await;
    a.release().await.unwrap_or_else(|err| panic!("{err}"));
    b.release().await.unwrap_or_else(|err| panic!("{err}"));
}

/// The same suite on registries built from the URLs ([`connect`]), as `DynPresence`s; their
/// release, through the trait object, takes their users offline and refuses further work.
async fn the_dyn_form_from_urls_passes_the_suite(urls: Vec<String>) {
    // `connect` sets no key prefix: the default one, which other runs of this test may share;
    // users are random and node ids new, so they do not meet.
    let (a_id, b_id) = (random_node(), random_node());
    let a = connect(&urls, a_id.clone(), Duration::from_secs(1))
        .await
        .unwrap_or_else(|err| panic!("connect to {urls:?}: {err}"));
    let b = connect(&urls, b_id.clone(), Duration::from_secs(1))
        .await
        .unwrap_or_else(|err| panic!("connect to {urls:?}: {err}"));
    conformance::run_all(
        NodeHandle {
            id: &a_id,
            registry: &a,
        },
        NodeHandle {
            id: &b_id,
            registry: &b,
        },
    )
    .await;
    let user = user("released");
    let registered = call(
        &b,
        RegisterDevice {
            user: user.clone(),
            device: device("phone"),
            node: b_id.clone(),
            connection: 1,
            at: Timestamp::now(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("register: {err}"));
    assert!(registered);
    b.release().await.unwrap_or_else(|err| panic!("{err}"));
    let online = call(&a, LookupPresence { users: vec![user] })
        .await
        .unwrap_or_else(|err| panic!("lookup: {err}"));
    assert!(online.is_empty(), "released with the node: {online:?}");
    let refused = call(&b, SubscribePresence)
        .await
        .err()
        .unwrap_or_else(|| panic!("a released registry accepted a subscription"));
    assert_eq!(refused.kind(), ErrorKind::Unavailable, "{refused}");
    a.release().await.unwrap_or_else(|err| panic!("{err}"));
}

/// A node dropped without release (a crash): once its lease lapses, the other node's
/// look-ups stop listing its devices and list nodes without it, before any sweep; after a
/// sweep, feeds carry the offline change.
async fn a_lapsed_lease_takes_the_nodes_users_offline(urls: Vec<String>) {
    let prefix = prefix("lapse");
    // This node sweeps once, at start, then not for a minute: what it sees after the crash
    // comes from the lease alone.
    let survivor = Presence::new(
        RedisPresence::connect(
            RedisPresenceConfig::new(urls.clone(), random_node())
                .with_key_prefix(&prefix)
                .with_lease(Duration::from_secs(1))
                .with_sweep_interval(Duration::from_secs(60)),
        )
        .await
        .unwrap_or_else(|err| panic!("{err}")),
    );
    let doomed = node(&urls, &prefix).await;
    let doomed_id = doomed.backend().node().to_string();
    let mut feed = call(&survivor, SubscribePresence)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let lonely = user("lonely");
    let shared = user("shared");
    assert!(register(&doomed, &lonely, "phone", 1).await);
    assert!(register(&doomed, &shared, "phone", 2).await);
    assert!(!register(&survivor, &shared, "laptop", 3).await);
    assert_eq!(online_nodes(&survivor, &lonely).await, [doomed_id.as_str()]);
    assert!(next_change(&mut feed, &lonely).await.online);

    drop(doomed);

    let (watching, watched) = (&survivor, &lonely);
    eventually(
        "the lapsed node's devices are no longer listed",
        || async move { online_nodes(watching, watched).await.is_empty() },
    )
    .await;
    let index = format!("{prefix}:{{n:{doomed_id}}}:devices");
    assert_eq!(
        raw_count(&urls, "SCARD", &index).await,
        2,
        "not swept yet: the look-up skipped the entries because the lease lapsed"
    );
    assert_eq!(
        online_nodes(&survivor, &shared).await,
        [survivor.backend().node().to_string()],
        "the shared user keeps the survivor's device only"
    );
    // A registration of the lonely user now brings them online, although the dead
    // node's entry is still there.
    assert!(register(&survivor, &lonely, "watch", 4).await);
    assert!(next_change(&mut feed, &lonely).await.online);
    let nodes = call(&survivor, ListNodes)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        !nodes.iter().any(|node| **node == *doomed_id),
        "{doomed_id} still listed: {nodes:?}"
    );
    assert!(nodes.contains(survivor.backend().node()), "{nodes:?}");
    let _ = call(
        &survivor,
        UnregisterDevice {
            user: lonely.clone(),
            device: device("watch"),
            node: survivor.backend().node().clone(),
            connection: 4,
            at: Timestamp::now(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    assert!(!next_change(&mut feed, &lonely).await.online);

    // A node with quick sweeps removes the dead node's entries: the users left with no
    // live device are announced offline, the others are not.
    let sweeper = node(&urls, &prefix).await;
    let (counting, key) = (&urls, &index);
    eventually("the dead node's index is swept", || async move {
        raw_count(counting, "EXISTS", key).await == 0
    })
    .await;
    let change = next_change(&mut feed, &lonely).await;
    assert!(!change.online, "{change:?}");
    let key = format!("{prefix}:{{u:{lonely}}}:devices");
    assert_eq!(raw_count(&urls, "EXISTS", &key).await, 0);
    assert_eq!(
        raw_count(&urls, "HLEN", &format!("{prefix}:{{u:{shared}}}:devices")).await,
        1,
        "only the survivor's entry of the shared user is left"
    );
    // The shared user had a live device all along: no change of theirs was announced.
    let user_again = user("after");
    assert!(register(&survivor, &user_again, "phone", 5).await);
    loop {
        let change = feed.recv().await.unwrap_or_else(|err| panic!("{err}"));
        assert!(
            change.user != shared,
            "unexpected change of the shared user: {change:?}"
        );
        if change.user == user_again {
            break;
        }
    }
    sweeper
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    survivor
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
}

/// `command key` (an integer reply) on a plain connection.
async fn raw_count(urls: &[String], command: &str, key: &str) -> i64 {
    let mut cmd = redis::cmd(command);
    cmd.arg(key);
    let answer = if let [url] = urls {
        let mut connection = redis::Client::open(url.as_str())
            .unwrap_or_else(|err| panic!("{err}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        cmd.query_async(&mut connection).await
    } else {
        let mut connection = redis::cluster::ClusterClient::new(urls.to_vec())
            .unwrap_or_else(|err| panic!("{err}"))
            .get_async_connection()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        cmd.query_async(&mut connection).await
    };
    answer.unwrap_or_else(|err| panic!("{command} {key}: {err}"))
}

/// Release announces the node's users offline at once and takes its devices off look-ups;
/// the released registry refuses further work.
async fn release_takes_users_offline_at_once(urls: Vec<String>) {
    let prefix = prefix("release");
    let staying = node(&urls, &prefix).await;
    let leaving = node(&urls, &prefix).await;
    let mut feed = call(&staying, SubscribePresence)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let gone = user("gone");
    let kept = user("kept");
    assert!(register(&leaving, &gone, "phone", 1).await);
    assert!(!register(&leaving, &gone, "laptop", 2).await);
    assert!(register(&leaving, &kept, "phone", 3).await);
    assert!(!register(&staying, &kept, "laptop", 4).await);
    assert!(next_change(&mut feed, &gone).await.online);

    leaving
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(!leaving.backend().holds_lease());

    // No waiting: the entries are gone when release returns.
    assert!(online_nodes(&staying, &gone).await.is_empty());
    assert_eq!(
        online_nodes(&staying, &kept).await,
        [staying.backend().node().to_string()]
    );
    let nodes = call(&staying, ListNodes)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(!nodes.contains(leaving.backend().node()), "{nodes:?}");
    let change = next_change(&mut feed, &gone).await;
    assert!(!change.online, "{change:?}");
    let refused = call(
        &leaving,
        RegisterDevice {
            user: gone.clone(),
            device: device("phone"),
            node: leaving.backend().node().clone(),
            connection: 5,
            at: Timestamp::now(),
        },
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("a released registry accepted a registration"));
    assert_eq!(refused.kind(), ErrorKind::Unavailable, "{refused}");
    leaving
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    staying
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
}

/// A registry registers devices of its own node only; a second live process cannot take the
/// same node id.
async fn misuse_is_refused(urls: Vec<String>) {
    let prefix = prefix("misuse");
    let registry = node(&urls, &prefix).await;
    let err = call(
        &registry,
        UnregisterDevice {
            user: user("x"),
            device: device("phone"),
            node: NodeId::from("someone-else"),
            connection: 1,
            at: Timestamp::now(),
        },
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("a foreign node's unregistration was accepted"));
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");

    let twin = RedisPresence::connect(
        RedisPresenceConfig::new(urls.clone(), registry.backend().node().clone())
            .with_key_prefix(&prefix)
            .with_lease(Duration::from_secs(1)),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("two live registries with one node id"));
    assert_eq!(twin.kind(), ErrorKind::Conflict, "{twin}");
    registry
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
}

/// A process restarted with the node id of one that crashed takes the lease over once it
/// lapsed and removes what the crashed one left.
async fn a_restarted_node_removes_what_it_left(urls: Vec<String>) {
    let prefix = prefix("restart");
    let watcher = node(&urls, &prefix).await;
    let crashed = node(&urls, &prefix).await;
    let id = crashed.backend().node().clone();
    let left = user("left");
    assert!(register(&crashed, &left, "phone", 1).await);
    drop(crashed);
    let restarted = Presence::new(
        RedisPresence::connect(
            RedisPresenceConfig::new(urls.clone(), id.clone())
                .with_key_prefix(&prefix)
                .with_lease(Duration::from_secs(1)),
        )
        .await
        .unwrap_or_else(|err| panic!("restart with the same node id: {err}")),
    );
    assert!(online_nodes(&watcher, &left).await.is_empty());
    // The same connection number is a new device now, and brings the user online.
    assert!(register(&restarted, &left, "phone", 1).await);
    assert_eq!(online_nodes(&watcher, &left).await, [id.to_string()]);
    restarted
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    watcher
        .release()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
}

macro_rules! on_both {
    ($($check:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(urls) = super::standalone() else { return };
                    super::$check(urls).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(urls) = super::cluster() else { return };
                    super::$check(urls).await;
                }
            )*
        }
    };
}

on_both!(
    conformance_suite,
    the_dyn_form_from_urls_passes_the_suite,
    a_lapsed_lease_takes_the_nodes_users_offline,
    release_takes_users_offline_at_once,
    misuse_is_refused,
    a_restarted_node_removes_what_it_left,
);
