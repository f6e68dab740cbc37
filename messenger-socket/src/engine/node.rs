//! [`Node`]: this process's place in a cluster — its id and the hub of its connections — made
//! once and given to one engine.

use std::fmt;
use std::sync::Arc;

use messenger_core::presence::NodeId;

use crate::hub::Hub;

/// This process's place in a cluster: its id, unique among the nodes, and the [`Hub`] of its
/// connections, the one the fanout delivers to.
///
/// Made once and moved into [`Engine::new`](super::Engine::new); before that, the backends
/// that need it read it from here: the fanout's local delivery is [`Node::hub`], the presence
/// registry and the Kafka fanout take [`Node::id`]. There is no other way to make a hub, so
/// the engine and its fanout cannot end up with two (a fanout given the hub of a node no
/// engine serves logs a warning on its first delivery), and the id is written once.
///
/// ```
/// use messenger_fanout::{Fanout, local::LocalFanout};
/// use messenger_socket::engine::Node;
///
/// let node = Node::new("node-7");
/// let fanout = Fanout::new(LocalFanout::new(node.hub()));
/// assert_eq!(&**node.id(), "node-7");
/// # drop(fanout);
/// ```
pub struct Node {
    id: NodeId,
    hub: Arc<Hub>,
}

impl Node {
    /// A node named `id`: unique in the cluster, stable across restarts only if devices may
    /// be taken for still online across one (a restarted node with a new id is a new node;
    /// its old entries expire with its lease).
    pub fn new(id: impl Into<NodeId>) -> Self {
        Self {
            id: id.into(),
            hub: Hub::new(),
        }
    }

    /// A node on its own: `node-1`.
    pub fn single() -> Self {
        Self::new("node-1")
    }

    /// A node named `node-XXXXXXXX` (eight random hex digits), for a cluster whose nodes are
    /// not named by their operator: a restarted process joins as a new node.
    pub fn random() -> Self {
        Self::new(format!("node-{:08x}", random_u32()))
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The hub of the node's connections: what its fanout delivers to
    /// (`LocalFanout::new(node.hub())`, `KafkaFanout::start(config, node.hub(), presence)`).
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.hub)
    }

    pub(crate) fn into_parts(self) -> (NodeId, Arc<Hub>) {
        (self.id, self.hub)
    }
}

impl Default for Node {
    /// [`Node::single`].
    fn default() -> Self {
        Self::single()
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A random number without a dependency: the standard library's hasher is seeded randomly per
/// process (and per `RandomState`).
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let hash = RandomState::new().hash_one(std::process::id());
    u32::try_from(hash & u64::from(u32::MAX)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(&**Node::single().id(), "node-1");
        assert_eq!(&**Node::new(String::from("a")).id(), "a");
        let random = Node::random();
        assert!(
            random.id().starts_with("node-") && random.id().len() == 13,
            "{random:?}"
        );
    }

    #[test]
    fn a_hub_no_engine_serves_is_unbound() {
        let node = Node::single();
        assert!(!node.hub().is_bound());
    }
}
