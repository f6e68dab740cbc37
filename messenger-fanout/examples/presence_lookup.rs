//! Measures a batched presence look-up of a 1 000-user group on Redis or Redis Cluster.
//!
//! ```text
//! cargo run --release -p messenger-fanout --features redis --example presence_lookup -- URL...
//! ```
//!
//! One URL: a standalone server; several: Redis Cluster seed nodes (what `scripts/redis.sh`
//! and `scripts/redis.sh cluster` print, commas or spaces). Registers 1 000 users (half of them
//! online, with two devices each), then times, in the same run:
//!
//! - `LookupPresence` of the 1 000 users (the batched path),
//! - the same 1 000 `HKEYS` sent one after the other (a look-up per member), as the baseline,
//! - (standalone only) the same 1 000 `HKEYS` in one plain pipeline: the floor for a batch,
//! - one `PING` (a single round trip),
//!
//! and prints the median and p90 per call of each and the ratios. Keys are removed at the end.

use std::time::{Duration, Instant};

use messenger_core::presence::{LookupPresence, NodeId, RegisterDevice};
use messenger_core::{DeviceId, Timestamp, UserId, call};
use messenger_fanout::presence::Presence;
use messenger_fanout::presence::redis::{RedisPresence, RedisPresenceConfig};
use redis::AsyncCommands;

const USERS: usize = 1000;
const ROUNDS: usize = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls: Vec<String> = std::env::args()
        .skip(1)
        .flat_map(|arg| {
            arg.split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    if urls.is_empty() {
        return Err("usage: presence_lookup URL... (one: standalone; several: cluster)".into());
    }
    let prefix = format!("messenger-bench-{}", std::process::id());
    let node = NodeId::from(format!("bench-{}", std::process::id()));
    let presence = Presence::new(
        RedisPresence::connect(
            RedisPresenceConfig::new(urls.clone(), node.clone()).with_key_prefix(prefix.clone()),
        )
        .await?,
    );
    let users: Vec<UserId> = (0..USERS)
        .map(|i| UserId::new(format!("member-{i}")))
        .collect::<Result<_, _>>()?;
    let mut connection = 0;
    for user in users.iter().step_by(2) {
        for device in ["phone", "laptop"] {
            connection += 1;
            call(
                &presence,
                RegisterDevice {
                    user: user.clone(),
                    device: DeviceId::new(device)?,
                    node: node.clone(),
                    connection,
                    at: Timestamp::now(),
                },
            )
            .await?;
        }
    }

    let lookup = LookupPresence {
        users: users.clone(),
    };
    let online = call(&presence, lookup.clone()).await?;
    assert_eq!(online.len(), USERS, "two devices for every other user");

    // The baseline: one round trip per member, on a plain connection of the same kind.
    let keys: Vec<String> = users
        .iter()
        .map(|user| format!("{prefix}:{{u:{user}}}:devices"))
        .collect();
    let mut plain = Plain::open(&urls).await?;

    let mut batched = Vec::with_capacity(ROUNDS);
    let mut sequential = Vec::with_capacity(ROUNDS);
    let mut pipelined = Vec::with_capacity(ROUNDS);
    let mut ping = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let found = call(&presence, lookup.clone()).await?;
        batched.push(started.elapsed());
        assert_eq!(found.len(), USERS);

        let started = Instant::now();
        let mut devices = 0;
        for key in &keys {
            devices += plain.hkeys(key).await?;
        }
        sequential.push(started.elapsed());
        assert_eq!(devices, USERS);

        if let Some(devices) = plain.pipelined_hkeys(&keys).await? {
            // Timed inside: the plain pipeline exists on a standalone server only.
            pipelined.push(devices.1);
            assert_eq!(devices.0, USERS);
        }

        let started = Instant::now();
        plain.ping().await?;
        ping.push(started.elapsed());
    }
    presence.release().await?;

    let kind = if urls.len() == 1 {
        "standalone"
    } else {
        "cluster"
    };
    let (b50, b90) = percentiles(&mut batched);
    let (s50, s90) = percentiles(&mut sequential);
    let (p50, p90) = percentiles(&mut ping);
    println!(
        "redis {kind}, look-up of {USERS} users ({} online devices), {ROUNDS} rounds",
        USERS
    );
    println!("  LookupPresence (batched):     p50 {b50:>10.3?}  p90 {b90:>10.3?}");
    println!("  1 000 HKEYS one at a time:    p50 {s50:>10.3?}  p90 {s90:>10.3?}");
    if !pipelined.is_empty() {
        let (q50, q90) = percentiles(&mut pipelined);
        println!("  1 000 HKEYS, plain pipeline:  p50 {q50:>10.3?}  p90 {q90:>10.3?}");
        println!(
            "  batched / plain pipeline: {:.2}",
            b50.as_secs_f64() / q50.as_secs_f64()
        );
    }
    println!("  one PING (a round trip):      p50 {p50:>10.3?}  p90 {p90:>10.3?}");
    println!(
        "  batched / one-at-a-time: {:.3}   batched / one round trip: {:.1}",
        b50.as_secs_f64() / s50.as_secs_f64(),
        b50.as_secs_f64() / p50.as_secs_f64()
    );
    Ok(())
}

/// Median and p90.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| {
        // Indexes of a few dozen samples: no precision concern.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[index]
    };
    (at(0.5), at(0.9))
}

/// A plain connection for the baselines.
enum Plain {
    Standalone(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Plain {
    async fn open(urls: &[String]) -> Result<Self, redis::RedisError> {
        if let [url] = urls {
            let client = redis::Client::open(url.as_str())?;
            Ok(Self::Standalone(
                client.get_multiplexed_async_connection().await?,
            ))
        } else {
            let client = redis::cluster::ClusterClient::new(urls.to_vec())?;
            Ok(Self::Cluster(client.get_async_connection().await?))
        }
    }

    async fn hkeys(&mut self, key: &str) -> Result<usize, redis::RedisError> {
        let fields: Vec<String> = match self {
            Self::Standalone(connection) => connection.hkeys(key).await?,
            Self::Cluster(connection) => connection.hkeys(key).await?,
        };
        Ok(fields.len())
    }

    /// The devices found and the time taken, for a standalone server.
    async fn pipelined_hkeys(
        &mut self,
        keys: &[String],
    ) -> Result<Option<(usize, Duration)>, redis::RedisError> {
        let Self::Standalone(connection) = self else {
            return Ok(None);
        };
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hkeys(key);
        }
        let started = Instant::now();
        let replies: Vec<Vec<String>> = pipe.query_async(connection).await?;
        let elapsed = started.elapsed();
        Ok(Some((replies.iter().map(Vec::len).sum(), elapsed)))
    }

    async fn ping(&mut self) -> Result<(), redis::RedisError> {
        let _: String = match self {
            Self::Standalone(connection) => redis::cmd("PING").query_async(connection).await?,
            Self::Cluster(connection) => redis::cmd("PING").query_async(connection).await?,
        };
        Ok(())
    }
}
