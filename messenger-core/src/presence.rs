//! Requests of the presence registry: which devices of which users are online, on which node.

use crate::service::{Handles, Operation};
use crate::{DeviceId, UserId};

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

/// The presence registry, as one bound.
pub trait PresenceService:
    Handles<RegisterDevice> + Handles<UnregisterDevice> + Handles<LookupPresence>
{
}

impl<S> PresenceService for S where
    S: Handles<RegisterDevice> + Handles<UnregisterDevice> + Handles<LookupPresence>
{
}
