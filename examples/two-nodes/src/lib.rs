//! Two chat engines ("nodes") in one process, joined by a fanout and a presence registry of
//! this example's own: what a user writes to plug the SDK into a transport of their own
//! (here in-process channels; in production a message bus, a mesh, gRPC...).
//!
//! - [`LinkedPresence`] implements [`PresenceBackend`]: four plain async methods (register,
//!   unregister, look up, subscribe) and a list of live nodes; the SDK's
//!   [`Presence`] wraps it into the tower services the engine calls.
//! - [`LinkedFanout`] implements [`FanoutBackend`]: one method, `deliver`, that hands an event
//!   to this node's connections and sends one envelope per other node holding a recipient.
//! - [`Link`] is the "transport": one channel per node, drained into that node's hub.
//!
//! Both nodes share one store and one sequencer (the embedded store and the memory
//! sequencer, shared in this process; across machines: MySQL or ScyllaDB and Redis).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use messenger_core::fanout::{Deliver, DeliveryReport, LocalDelivery};
use messenger_core::presence::{
    ListNodes, LookupPresence, NodeId, OnlineDevice, PresenceChange, PresenceFeed, RegisterDevice,
    SubscribePresence, UnregisterDevice,
};
use messenger_core::{DeviceId, Error, Event, UserId, call};
use messenger_fanout::presence::{Presence, PresenceBackend};
use messenger_fanout::{Fanout, FanoutBackend};
use messenger_sequencer::Sequencer;
use messenger_sequencer::memory::MemorySequencer;
use messenger_socket::auth::DevAuthenticator;
use messenger_socket::hub::Hub;
use messenger_socket::{Engine, EngineConfig, Node, Server, ServerConfig, Services};
use messenger_store::{EmbeddedStore, Store};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

type SharedStore = Store<EmbeddedStore>;
/// One node's engine: the shared store and sequencer, this example's fanout and presence.
pub type NodeEngine = Engine<
    Services<
        SharedStore,
        Sequencer<MemorySequencer<SharedStore>>,
        Fanout<LinkedFanout>,
        DevAuthenticator,
        Presence<LinkedPresence>,
    >,
>;

/// Who is connected where, for every node: user → (device, node, connection).
#[derive(Debug, Clone)]
pub struct LinkedPresence {
    state: Arc<PresenceState>,
}

/// A user's connected devices: (device, node, connection).
type Devices = HashMap<UserId, Vec<(DeviceId, NodeId, u64)>>;

/// What travels between nodes: the recipients and the event.
type Envelope = (Arc<[UserId]>, Event);

#[derive(Debug)]
struct PresenceState {
    devices: Mutex<Devices>,
    changes: broadcast::Sender<PresenceChange>,
}

impl Default for LinkedPresence {
    fn default() -> Self {
        Self {
            state: Arc::new(PresenceState {
                devices: Mutex::new(HashMap::new()),
                changes: broadcast::channel(1024).0,
            }),
        }
    }
}

impl LinkedPresence {
    fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.state
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl PresenceBackend for LinkedPresence {
    async fn register(&self, request: RegisterDevice) -> Result<bool, Error> {
        let came_online = {
            let mut devices = self.devices();
            let entry = devices.entry(request.user.clone()).or_default();
            let first = entry.is_empty();
            entry.push((request.device, request.node, request.connection));
            first
        };
        if came_online {
            let _ = self.state.changes.send(PresenceChange {
                user: request.user,
                online: true,
                at: request.at,
            });
        }
        Ok(came_online)
    }

    async fn unregister(&self, request: UnregisterDevice) -> Result<bool, Error> {
        let went_offline = {
            let mut devices = self.devices();
            let Some(entry) = devices.get_mut(&request.user) else {
                return Ok(false);
            };
            let before = entry.len();
            entry.retain(|(device, node, connection)| {
                !(device == &request.device
                    && node == &request.node
                    && *connection == request.connection)
            });
            let gone = entry.is_empty() && before > 0;
            if entry.is_empty() {
                devices.remove(&request.user);
            }
            gone
        };
        if went_offline {
            let _ = self.state.changes.send(PresenceChange {
                user: request.user,
                online: false,
                at: request.at,
            });
        }
        Ok(went_offline)
    }

    async fn lookup(&self, request: LookupPresence) -> Result<Vec<OnlineDevice>, Error> {
        let devices = self.devices();
        Ok(request
            .users
            .iter()
            .flat_map(|user| {
                devices
                    .get(user)
                    .into_iter()
                    .flatten()
                    .map(|(device, node, _)| OnlineDevice {
                        user: user.clone(),
                        device: device.clone(),
                        node: node.clone(),
                    })
            })
            .collect())
    }

    async fn subscribe(&self, _request: SubscribePresence) -> Result<PresenceFeed, Error> {
        Ok(self.state.changes.subscribe())
    }

    async fn list_nodes(&self, _request: ListNodes) -> Result<Vec<NodeId>, Error> {
        let nodes: BTreeSet<NodeId> = self
            .devices()
            .values()
            .flatten()
            .map(|(_, node, _)| node.clone())
            .collect();
        Ok(nodes.into_iter().collect())
    }
}

/// The transport between nodes: one channel per node, carrying (recipients, event).
#[derive(Debug, Default)]
pub struct Link {
    nodes: Mutex<HashMap<NodeId, mpsc::UnboundedSender<Envelope>>>,
}

impl Link {
    /// Attaches `node`'s hub: envelopes sent to `node` are handed to its connections.
    fn attach(&self, node: NodeId, hub: Arc<Hub>) {
        let (sender, mut envelopes) = mpsc::unbounded_channel::<Envelope>();
        tokio::spawn(async move {
            while let Some((recipients, event)) = envelopes.recv().await {
                hub.deliver_local(&recipients, &event);
            }
        });
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, sender);
    }

    fn send(&self, node: &NodeId, recipients: Arc<[UserId]>, event: Event) -> bool {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes
            .get(node)
            .is_some_and(|sender| sender.send((recipients, event)).is_ok())
    }
}

/// One node's fanout: its own connections directly, every other node holding a recipient
/// through the [`Link`], one envelope per node.
#[derive(Debug)]
pub struct LinkedFanout {
    node: NodeId,
    hub: Arc<Hub>,
    presence: Presence<LinkedPresence>,
    link: Arc<Link>,
}

impl FanoutBackend for LinkedFanout {
    async fn deliver(&self, request: Deliver) -> Result<DeliveryReport, Error> {
        let Deliver { recipients, event } = request;
        let local_connections = self.hub.deliver_local(&recipients, &event);
        let online = call(
            &self.presence,
            LookupPresence {
                users: recipients.to_vec(),
            },
        )
        .await?;
        let others: BTreeSet<NodeId> = online
            .into_iter()
            .map(|device| device.node)
            .filter(|node| node != &self.node)
            .collect();
        let mut remote_nodes = 0;
        for node in &others {
            if self.link.send(node, Arc::clone(&recipients), event.clone()) {
                remote_nodes += 1;
            }
        }
        Ok(DeliveryReport {
            local_connections,
            remote_nodes,
        })
    }
}

/// Two nodes on one store and sequencer, serving WebSockets on `listeners`.
///
/// # Errors
/// When the store cannot be opened.
pub fn start(
    data_dir: &Path,
    listeners: [TcpListener; 2],
) -> Result<[NodeEngine; 2], Box<dyn std::error::Error + Send + Sync>> {
    let store = Store::new(EmbeddedStore::open(data_dir.join("messages.db"))?);
    let sequencer = Sequencer::new(MemorySequencer::new(store.clone()));
    let presence = Presence::new(LinkedPresence::default());
    let link = Arc::new(Link::default());
    let mut engines = Vec::with_capacity(2);
    for (index, listener) in listeners.into_iter().enumerate() {
        let node = Node::new(format!("node-{}", index + 1));
        link.attach(Arc::clone(node.id()), node.hub());
        let fanout = Fanout::new(LinkedFanout {
            node: Arc::clone(node.id()),
            hub: node.hub(),
            presence: presence.clone(),
            link: Arc::clone(&link),
        });
        let engine = Engine::new(
            Services {
                store: store.clone(),
                sequencer: sequencer.clone(),
                fanout,
                auth: DevAuthenticator,
                presence: presence.clone(),
            },
            node,
            EngineConfig::default(),
        );
        let server = Server::new(engine.clone(), ServerConfig::default());
        tokio::spawn(server.run(listener, std::future::pending()));
        engines.push(engine);
    }
    let second = engines.pop().ok_or("two engines")?;
    let first = engines.pop().ok_or("two engines")?;
    Ok([first, second])
}
