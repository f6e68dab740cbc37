//! Several reference servers forming one cluster: a shared MariaDB store, Redis (sequencer and
//! presence) and a Kafka-compatible broker (fanout and events). `.ci/run` starts all three
//! through `scripts/` and exports the variables read here.

use std::path::Path;

use super::Server;

/// Where the cluster's shared services are.
#[derive(Debug, Clone)]
pub struct ClusterEnv {
    pub mysql: String,
    pub redis: String,
    pub kafka: String,
}

/// The services, or `None` after printing which variable is missing.
pub fn cluster_env(what: &str) -> Option<ClusterEnv> {
    let get = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    match (
        get("MESSENGER_TEST_MYSQL_URL"),
        get("MESSENGER_TEST_REDIS_URL"),
        get("MESSENGER_TEST_KAFKA_BROKERS"),
    ) {
        (Some(mysql), Some(redis), Some(kafka)) => Some(ClusterEnv {
            mysql,
            redis: redis.trim().to_owned(),
            kafka: kafka.trim().to_owned(),
        }),
        _ => {
            println!(
                "SKIPPED: {what}: set MESSENGER_TEST_MYSQL_URL, MESSENGER_TEST_REDIS_URL and \
                 MESSENGER_TEST_KAFKA_BROKERS (scripts/mariadb.sh, scripts/redis.sh and \
                 scripts/kafka.sh print them; .ci/run does it)"
            );
            None
        }
    }
}

/// The lease of test nodes: short, so a killed node is noticed quickly.
pub const LEASE_MS: &str = "2000";

/// Starts node `id` of the cluster.
pub fn node(env: &ClusterEnv, data_dir: &Path, id: &str) -> Server {
    Server::start(
        data_dir,
        &[
            "--store",
            &env.mysql,
            "--redis",
            &env.redis,
            "--kafka",
            &env.kafka,
            "--node-id",
            id,
            "--lease-ms",
            LEASE_MS,
        ],
    )
}

/// `count` nodes with ids unique to this process (Redis and the broker outlive the test).
pub fn nodes(env: &ClusterEnv, dir: &Path, label: &str, count: usize) -> Vec<Server> {
    (0..count)
        .map(|index| {
            let id = format!("{label}-{}-{index}", std::process::id());
            let data = dir.join(&id);
            std::fs::create_dir_all(&data).expect("data dir");
            node(env, &data, &id)
        })
        .collect()
}

/// A user name unique to this process: the database outlives the test.
pub fn unique(name: &str) -> String {
    format!("{name}{}", std::process::id())
}
