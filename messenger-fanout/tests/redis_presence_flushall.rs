//! The Redis presence registry when Redis forgets: `FLUSHALL`, then a restart of the server
//! (no persistence). Live nodes re-assert their leases and entries by themselves, and the
//! feed comes back.
//!
//! Runs only when `MESSENGER_TEST_REDIS_URL` and `MESSENGER_TEST_REDIS_FLUSHALL=1` are set
//! (it wipes the whole server: use the private one `scripts/redis.sh` starts); the restart
//! part also needs `MESSENGER_TEST_REDIS_RESTART`, a shell command that restarts that server
//! (`scripts/redis.sh restart`). Otherwise prints a `SKIPPED:` line and passes. It lives in
//! its own test binary so no other test of this crate runs while it flushes.
#![cfg(feature = "redis")]

use std::io::Write as _;
use std::time::Duration;

use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, PresenceFeed, RegisterDevice, SubscribePresence,
};
use messenger_core::{DeviceId, Timestamp, UserId, call};
use messenger_fanout::presence::Presence;
use messenger_fanout::presence::redis::{RedisPresence, RedisPresenceConfig};
use tokio::sync::broadcast::error::RecvError;

/// A registry as the tests call it.
type Registry = Presence<RedisPresence>;

fn random() -> u64 {
    use rand::Rng;
    rand::rng().random()
}

fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

async fn node(url: &str, prefix: &str) -> Registry {
    let config = RedisPresenceConfig::new(
        vec![url.to_owned()],
        NodeId::from(format!("node-{:x}", random())),
    )
    .with_key_prefix(prefix)
    .with_lease(Duration::from_secs(1));
    Presence::new(
        RedisPresence::connect(config)
            .await
            .unwrap_or_else(|err| panic!("connect to {url}: {err}")),
    )
}

fn user(label: &str) -> UserId {
    UserId::new(format!("{label}-{:x}", random())).unwrap_or_else(|err| panic!("{err}"))
}

async fn register(registry: &Registry, user: &UserId, connection: u64) -> bool {
    call(
        registry,
        RegisterDevice {
            user: user.clone(),
            device: DeviceId::new("phone").unwrap_or_else(|err| panic!("{err}")),
            node: registry.backend().node().clone(),
            connection,
            at: Timestamp::now(),
        },
    )
    .await
    .unwrap_or_else(|err| panic!("register: {err}"))
}

/// Whether `asking` lists `user` online on `on`, and lists both nodes alive. Errors (Redis
/// restarting) count as "not yet".
async fn visible(asking: &Registry, user: &UserId, on: &Registry) -> bool {
    let Ok(online) = call(
        asking,
        LookupPresence {
            users: vec![user.clone()],
        },
    )
    .await
    else {
        return false;
    };
    let Ok(nodes) = call(asking, ListNodes).await else {
        return false;
    };
    online.len() == 1
        && &online[0].node == on.backend().node()
        && nodes.contains(on.backend().node())
        && nodes.contains(asking.backend().node())
}

/// Polls until `asking` sees `user` on `on` again; panics after 20 s.
async fn until_visible(asking: &Registry, user: &UserId, on: &Registry, after: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !visible(asking, user, on).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {after}: {user} on {} not visible again within 20 s",
            on.backend().node()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `limit`) for `user` coming online on `feed`.
async fn online_change(feed: &mut PresenceFeed, user: &UserId, limit: Duration) -> bool {
    let wait = async {
        loop {
            match feed.recv().await {
                Ok(change) if &change.user == user && change.online => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the presence feed closed"),
            }
        }
    };
    tokio::time::timeout(limit, wait).await.is_ok()
}

/// Registers fresh users on `on` until `feed` carries one coming online (the subscription
/// is back); panics after 20 s.
async fn until_feed_works(feed: &mut PresenceFeed, on: &Registry, after: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut connection = 100;
    loop {
        connection += 1;
        let probe = user("probe");
        let registered = call(
            on,
            RegisterDevice {
                user: probe.clone(),
                device: DeviceId::new("phone").unwrap_or_else(|err| panic!("{err}")),
                node: on.backend().node().clone(),
                connection,
                at: Timestamp::now(),
            },
        )
        .await
        .is_ok();
        if registered && online_change(feed, &probe, Duration::from_millis(500)).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {after}: the feed carried no change within 20 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_nodes_reassert_their_leases_and_entries() {
    let Ok(url) = std::env::var("MESSENGER_TEST_REDIS_URL") else {
        skipped("the Redis presence FLUSHALL test: MESSENGER_TEST_REDIS_URL is not set");
        return;
    };
    if std::env::var("MESSENGER_TEST_REDIS_FLUSHALL").as_deref() != Ok("1") {
        skipped("the Redis presence FLUSHALL test: MESSENGER_TEST_REDIS_FLUSHALL is not 1");
        return;
    }
    let url = url.trim().to_owned();
    let prefix = format!("messenger-test-{}-flushall", std::process::id());
    let a = node(&url, &prefix).await;
    let b = node(&url, &prefix).await;
    let mut feed_b = call(&b, SubscribePresence)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let on_a = user("on-a");
    let on_b = user("on-b");
    assert!(register(&a, &on_a, 1).await);
    assert!(register(&b, &on_b, 2).await);
    assert!(online_change(&mut feed_b, &on_a, Duration::from_secs(15)).await);

    let mut raw = redis::Client::open(url.as_str())
        .unwrap_or_else(|err| panic!("{err}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .unwrap_or_else(|err| panic!("FLUSHALL: {err}"));
    assert!(!visible(&b, &on_a, &a).await, "FLUSHALL wiped the entries");

    until_visible(&b, &on_a, &a, "FLUSHALL").await;
    until_visible(&a, &on_b, &b, "FLUSHALL").await;
    // The re-registration announced the user online again.
    assert!(online_change(&mut feed_b, &on_a, Duration::from_secs(15)).await);
    assert!(a.backend().holds_lease() && b.backend().holds_lease());

    match std::env::var("MESSENGER_TEST_REDIS_RESTART") {
        Ok(restart) if !restart.trim().is_empty() => {
            let command = restart.clone();
            let status = tokio::task::spawn_blocking(move || {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .stdout(std::process::Stdio::null())
                    .status()
            })
            .await
            .unwrap_or_else(|err| panic!("{err}"))
            .unwrap_or_else(|err| panic!("{restart}: {err}"));
            assert!(status.success(), "{restart}: {status}");
            until_visible(&b, &on_a, &a, "a restart").await;
            until_visible(&a, &on_b, &b, "a restart").await;
            until_feed_works(&mut feed_b, &a, "a restart").await;
        }
        _ => skipped("the Redis presence restart check: MESSENGER_TEST_REDIS_RESTART is not set"),
    }
    a.release().await.unwrap_or_else(|err| panic!("{err}"));
    b.release().await.unwrap_or_else(|err| panic!("{err}"));
}
