//! Requests of the presence registry: which devices of which users are online, on which node,
//! which nodes are alive, and a feed of users coming online and going offline.
//!
//! The registry is the one source of presence changes: the node that registers a user's first
//! device (or unregisters the last one) does not announce it itself; the registry publishes a
//! [`PresenceChange`] to every subscriber on every node ([`SubscribePresence`]).

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::service::{Handles, Operation};
use crate::{DeviceId, Timestamp, UserId};

/// The id of one socket node of a cluster.
pub type NodeId = std::sync::Arc<str>;

/// Records that a device is connected to a node. Answers whether the user just came online
/// (it had no other device connected).
#[derive(Debug, Clone)]
pub struct RegisterDevice {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The node holding the connection.
    pub node: NodeId,
    /// A number unique to this connection on its node, so a stale unregister of an older
    /// connection of the same device does not remove a newer one.
    pub connection: u64,
    /// When it connected (the user's last seen when this brings them online).
    pub at: Timestamp,
}

impl Operation for RegisterDevice {
    type Response = bool;
    const NAME: &'static str = "register_device";
}

/// Records that a connection closed. Answers whether the user went offline (no device left).
#[derive(Debug, Clone)]
pub struct UnregisterDevice {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The node.
    pub node: NodeId,
    /// The connection, as given to [`RegisterDevice`].
    pub connection: u64,
    /// When it disconnected (the user's last seen when this takes them offline).
    pub at: Timestamp,
}

impl Operation for UnregisterDevice {
    type Response = bool;
    const NAME: &'static str = "unregister_device";
}

/// The online devices of some users.
#[derive(Debug, Clone)]
pub struct LookupPresence {
    /// Whose.
    pub users: Vec<UserId>,
}

/// One online device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineDevice {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// Its node.
    pub node: NodeId,
}

impl Operation for LookupPresence {
    type Response = Vec<OnlineDevice>;
    const NAME: &'static str = "lookup_presence";
}

/// A user came online (their first device connected) or went offline (their last device
/// disconnected, or the node holding it lost its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    /// Who.
    pub user: UserId,
    /// Whether any of their devices is connected now.
    pub online: bool,
    /// When it changed: their last-seen time.
    pub at: Timestamp,
}

/// The receiving end of the presence feed: every change in the cluster, in the order the
/// registry published them.
///
/// Presence is best effort: a subscriber that falls more than the channel's capacity behind
/// gets [`broadcast::error::RecvError::Lagged`] and skips ahead (clients re-read presence with
/// a `presence` request when they need the truth).
pub type PresenceFeed = broadcast::Receiver<PresenceChange>;

/// Subscribes to the presence feed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribePresence;

impl Operation for SubscribePresence {
    type Response = PresenceFeed;
    const NAME: &'static str = "subscribe_presence";
}

/// The nodes that are alive: for a shared registry, those holding a lease; for a single-node
/// registry, the nodes its devices are registered on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListNodes;

impl Operation for ListNodes {
    type Response = Vec<NodeId>;
    const NAME: &'static str = "list_nodes";
}

/// The presence registry, as one bound.
pub trait PresenceService:
    Handles<RegisterDevice>
    + Handles<UnregisterDevice>
    + Handles<LookupPresence>
    + Handles<SubscribePresence>
    + Handles<ListNodes>
{
}

impl<S> PresenceService for S where
    S: Handles<RegisterDevice>
        + Handles<UnregisterDevice>
        + Handles<LookupPresence>
        + Handles<SubscribePresence>
        + Handles<ListNodes>
{
}
