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
use hyper_util::rt::TokioIo;
use messenger_core::protocol::MAX_FRAME_BYTES;
use tokio::net::TcpListener;
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
    /// # Errors
    /// An I/O error of the listener.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let node = self.state.node.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            node.begin_shutdown();
            let _ = stop_tx.send(());
        };
        let app = self.router();
        let served = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        signal.await;
        let started = Instant::now();
        while self.open_connections() > 0 && started.elapsed() < self.config.drain_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            remaining = self.open_connections(),
            "drained websocket connections"
        );
        match tokio::time::timeout(Duration::from_secs(2), served).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => Ok(()),
        }
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
