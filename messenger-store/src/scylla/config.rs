//! Configuration of the ScyllaDB store.

use std::fmt;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

/// How to connect a [`ScyllaStore`](super::ScyllaStore).
///
/// Build it from [`ScyllaConfig::new`] (or [`Default`]) and change the fields you need:
///
/// ```
/// use messenger_store::scylla::ScyllaConfig;
///
/// let mut config = ScyllaConfig::new(["10.0.0.1:9042", "10.0.0.2:9042"]);
/// config.keyspace = "chat".to_owned();
/// config.replication =
///     "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 3}".to_owned();
/// config.local_datacenter = Some("dc1".to_owned());
/// config.credentials = Some(("messenger".to_owned(), "secret".to_owned()));
/// // The password never shows in logs.
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ScyllaConfig {
    /// Contact points, as `host:port`; the driver discovers the rest of the cluster from them.
    ///
    /// Default: `["127.0.0.1:9042"]`.
    pub known_nodes: Vec<String>,
    /// The keyspace of the store's tables (letters, digits and `_`, at most 48).
    ///
    /// Default: `messenger`.
    pub keyspace: String,
    /// The replication map used when the store creates the keyspace (an existing keyspace is
    /// left as it is). Production clusters want `NetworkTopologyStrategy` with 3 replicas per
    /// datacenter, so `LOCAL_QUORUM` survives one replica down.
    ///
    /// Default: `{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}` (a single
    /// development node).
    pub replication: String,
    /// The datacenter whose nodes the driver prefers (token-aware within it), and where the
    /// `LOCAL_*` consistency levels count replicas. `None`: no preference.
    ///
    /// Default: `None`.
    pub local_datacenter: Option<String>,
    /// User name and password for the cluster's password authenticator.
    ///
    /// Default: `None` (no authentication).
    pub credentials: Option<(String, String)>,
    /// The consistency of every plain read and write, and of the commit of lightweight
    /// transactions. With a write and a read both at a quorum, a read sees every
    /// acknowledged write.
    ///
    /// Default: `LOCAL_QUORUM`.
    pub consistency: Consistency,
    /// The consistency of the Paxos phase of lightweight transactions (the conditional
    /// append, the idempotency key claim, conversation creation).
    ///
    /// Default: `LOCAL_SERIAL` (linearizable within the local datacenter; choose `SERIAL`
    /// when several datacenters append to the same conversations).
    pub serial_consistency: SerialConsistency,
    /// Rows fetched per page by range reads (the page size of the driver's paging).
    ///
    /// Default: 500.
    pub page_size: i32,
    /// How long [`ScyllaStore::connect`](super::ScyllaStore::connect) waits for the cluster
    /// (session, keyspace, schema, statements) before failing with `Unavailable`.
    ///
    /// Default: 30 seconds.
    pub connect_timeout: Duration,
    /// Whether connecting creates the keyspace and tables (`IF NOT EXISTS`) and records the
    /// schema version. With `false` the keyspace must already hold this build's version.
    ///
    /// Default: `true`.
    pub migrate: bool,
}

impl ScyllaConfig {
    /// The defaults, with `known_nodes` as contact points.
    pub fn new<I, S>(known_nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            known_nodes: known_nodes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            known_nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "messenger".to_owned(),
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}".to_owned(),
            local_datacenter: None,
            credentials: None,
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            page_size: 500,
            connect_timeout: Duration::from_secs(30),
            migrate: true,
        }
    }
}

impl fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = self
            .credentials
            .as_ref()
            .map(|(user, _)| format!("{user}:***"));
        f.debug_struct("ScyllaConfig")
            .field("known_nodes", &self.known_nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("local_datacenter", &self.local_datacenter)
            .field("credentials", &credentials)
            .field("consistency", &self.consistency)
            .field("serial_consistency", &self.serial_consistency)
            .field("page_size", &self.page_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("migrate", &self.migrate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let config = ScyllaConfig::default();
        assert_eq!(config.known_nodes, ["127.0.0.1:9042"]);
        assert_eq!(config.keyspace, "messenger");
        assert_eq!(config.consistency, Consistency::LocalQuorum);
        assert_eq!(config.serial_consistency, SerialConsistency::LocalSerial);
        assert_eq!(config.page_size, 500);
        assert!(config.migrate);
        assert_eq!(
            ScyllaConfig::new(["a:1", "b:2"]).known_nodes,
            ["a:1".to_owned(), "b:2".to_owned()]
        );
    }

    #[test]
    fn passwords_are_redacted() {
        let config = ScyllaConfig {
            credentials: Some(("user".to_owned(), "hunter2".to_owned())),
            ..ScyllaConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("user:***"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
