//! The HTTP side of a node: the WebSocket endpoint, health and readiness, connection limits
//! and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use hyper_util::rt::TokioIo;
use messenger_core::protocol::MAX_FRAME_BYTES;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::connection::serve_connection;
use crate::engine::{Backends, Engine};
use crate::io::{CODEC_READ_BUFFER, CoalescedReads};

/// How the HTTP side behaves. Every field has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Most WebSocket connections at once; more are refused with HTTP 503. Default: 16,000
    /// (each connection is one file descriptor; keep this under the process's limit).
    pub max_connections: usize,
    /// How long shutdown waits for connections to close after telling them to reconnect.
    /// Default: 10 s.
    pub drain_timeout: Duration,
    /// Most bytes read from a connection's socket per read, in bytes. Default: 4 KiB.
    ///
    /// Reads go through a scratch buffer shared by the thread; a connection keeps only the
    /// bytes of a frame it has not finished (and the WebSocket codec's own small buffer), so
    /// this size costs no memory per idle connection. Larger reads mean fewer syscalls for
    /// large frames.
    pub read_buffer_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 16_000,
            drain_timeout: Duration::from_secs(10),
            read_buffer_size: 4 * 1024,
        }
    }
}

/// A listener on `address` with `SO_REUSEADDR` and a backlog of 4096, plus `SO_REUSEPORT`
/// when `reuse_port` is set, so several server processes share one port and the kernel
/// spreads new connections over them.
///
/// # Errors
/// When the address cannot be bound, or `reuse_port` on a system that is not Unix.
pub fn bind(address: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        #[cfg(not(unix))]
        return Err(std::io::Error::other("SO_REUSEPORT needs a Unix system"));
    }
    socket.bind(address)?;
    socket.listen(4096)
}

/// Completes on Ctrl-C or, on Unix, `SIGTERM`: the `shutdown` of [`Server::run`] for a
/// process that drains when its supervisor stops it.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

struct AppState<B> {
    node: Engine<B>,
    permits: Arc<Semaphore>,
    websocket: WebSocketConfig,
    /// [`ServerConfig::read_buffer_size`].
    read_size: usize,
}

/// A node's HTTP server: `GET /ws` (WebSocket), `GET /healthz`, `GET /readyz`.
pub struct Server<B> {
    state: Arc<AppState<B>>,
    config: ServerConfig,
    routes: Router,
    /// Tests: told `TCP_NODELAY` of every accepted socket, read back from the socket.
    #[cfg(test)]
    accepted: Option<tokio::sync::mpsc::UnboundedSender<std::io::Result<bool>>>,
}

impl<B> std::fmt::Debug for Server<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: Backends> Server<B> {
    /// A server for `node`.
    pub fn new(node: Engine<B>, config: ServerConfig) -> Self {
        let websocket = WebSocketConfig::default()
            .read_buffer_size(CODEC_READ_BUFFER)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        Self {
            state: Arc::new(AppState {
                node,
                permits: Arc::new(Semaphore::new(config.max_connections)),
                websocket,
                read_size: config.read_buffer_size.max(CODEC_READ_BUFFER),
            }),
            config,
            routes: Router::new(),
            #[cfg(test)]
            accepted: None,
        }
    }

    /// Also serves `routes` (for example [`crate::media::router`]).
    #[must_use]
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// The routes, to serve as is or merge into a larger axum app.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(upgrade::<B>))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready::<B>))
            .with_state(Arc::clone(&self.state))
            .merge(self.routes.clone())
    }

    /// How many WebSocket connections are open.
    pub fn open_connections(&self) -> usize {
        self.config.max_connections - self.state.permits.available_permits()
    }

    /// Serves on `listener` until `shutdown` completes, then drains: readiness turns 503,
    /// every connection is told to reconnect elsewhere (`reconnect` frame, close 1012), and
    /// the call returns once they are closed or the drain timeout passed.
    ///
    /// The listener stays open during the drain, so that a load balancer sees `/readyz`
    /// answer 503 (not a refused connection) and a client's new WebSocket upgrade gets a clear
    /// HTTP 503; it closes when the drain ends.
    ///
    /// # Errors
    /// An I/O error of the listener.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let app = self.router();
        #[cfg(test)]
        let accepted = self.accepted.clone();
        let listener = listener.tap_io(move |stream: &mut TcpStream| {
            no_delay(stream);
            #[cfg(test)]
            if let Some(accepted) = &accepted {
                let _ = accepted.send(stream.nodelay());
            }
        });
        let mut served = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = drained_rx.await;
                })
                .await
        });
        tokio::select! {
            () = shutdown => {}
            // The listener failed before any shutdown.
            result = &mut served => return result.map_err(std::io::Error::other)?,
        }
        self.state.node.begin_shutdown();
        let started = Instant::now();
        while self.open_connections() > 0 && started.elapsed() < self.config.drain_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            remaining = self.open_connections(),
            "drained websocket connections"
        );
        // Now stop accepting, and give open HTTP requests a moment to finish.
        let _ = drained_tx.send(());
        match tokio::time::timeout(Duration::from_secs(2), &mut served).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                served.abort();
                Ok(())
            }
        }
    }
}

/// Sets `TCP_NODELAY` on an accepted socket (WebSocket, HTTP and media alike).
///
/// Without it, Nagle's algorithm holds a small write back while an earlier one is not yet
/// acknowledged, and the peer's delayed ACK answers only after ~40 ms: under moderate load
/// every small frame (a `message`, a `sent` ack) can wait that long. Writes are coalesced by
/// the connection itself (one flush per batch), so Nagle buys nothing here.
fn no_delay(stream: &TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on an accepted socket");
    }
}

async fn ready<B: Backends>(State(state): State<Arc<AppState<B>>>) -> Response {
    if state.node.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

fn refuse(status: StatusCode, reason: &'static str) -> Response {
    (status, reason).into_response()
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|value| {
                    value
                        .split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(token))
                })
                .unwrap_or(false)
        })
    };
    has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|version| version == "13")
}

async fn upgrade<B: Backends>(
    State(state): State<Arc<AppState<B>>>,
    mut request: Request,
) -> Response {
    if state.node.is_shutting_down() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: connect to another node",
        );
    }
    if !is_websocket_upgrade(request.headers()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)",
        );
    }
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let Ok(permit) = Arc::clone(&state.permits).try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached: retry later",
        );
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return refuse(StatusCode::BAD_REQUEST, "connection cannot be upgraded");
    };
    let node = state.node.clone();
    let config = state.websocket;
    let read_size = state.read_size;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    CoalescedReads::new(TokioIo::new(upgraded), read_size),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve_connection(node, ws).await;
            }
            Err(err) => tracing::debug!(error = %err, "websocket upgrade failed"),
        }
        drop(permit);
    });
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use messenger_fanout::{Fanout, local::LocalFanout};
    use messenger_sequencer::{Sequencer, memory::MemorySequencer};
    use messenger_store::{EmbeddedStore, Store};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;
    use crate::auth::DevAuthenticator;
    use crate::engine::Node;
    use crate::{Engine, EngineConfig, Services};
    use messenger_fanout::presence::{Presence, memory::MemoryPresence};

    fn node(dir: &std::path::Path) -> Engine<impl Backends> {
        let store = Store::new(EmbeddedStore::open(dir.join("m.db")).unwrap());
        let node = Node::single();
        let services = Services {
            sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
            fanout: Fanout::new(LocalFanout::new(node.hub())),
            store,
            auth: DevAuthenticator,
            presence: Presence::new(MemoryPresence::new()),
        };
        Engine::new(services, node, EngineConfig::default())
    }

    /// Every socket the server accepts, HTTP or WebSocket, has `TCP_NODELAY` set (read back
    /// from the accepted socket with `getsockopt`).
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::new(node(dir.path()), ServerConfig::default());
        let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
        server.accepted = Some(accepted_tx);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(listener, async move {
            let _ = stopped.await;
        }));

        // An HTTP request...
        let mut http = tokio::net::TcpStream::connect(address).await.unwrap();
        http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        http.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(accepted.recv().await.unwrap().unwrap(), "HTTP socket");

        // ... and a WebSocket.
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
            .await
            .unwrap();
        assert!(accepted.recv().await.unwrap().unwrap(), "WebSocket socket");
        drop(ws);

        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }
}
