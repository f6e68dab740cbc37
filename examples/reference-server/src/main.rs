//! The messenger SDK's reference server: one binary, embedded defaults.
//!
//! `cargo run --release -p reference-server` serves `ws://127.0.0.1:8080/ws` with its data in
//! `./data`. Wiring only: every behaviour lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use messenger_fanout::bus::EventBus;
use messenger_fanout::{Fanout, local::LocalFanout};
use messenger_sequencer::{Sequencer, memory::MemorySequencer};
use messenger_socket::auth::{AnyAuthenticator, DevAuthenticator, JwtAuthenticator};
use messenger_socket::hub::Hub;
use messenger_socket::presence::MemoryPresence;
use messenger_socket::{Node, NodeConfig, Server, ServerConfig, Services};
use messenger_store::mysql::MysqlStore;
use messenger_store::{EmbeddedConfig, EmbeddedStore, Store, StoreBackend};
use tower::ServiceBuilder;
use tracing_subscriber::EnvFilter;

/// The messenger reference server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MESSENGER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Directory for the embedded store (created if missing).
    #[arg(long, env = "MESSENGER_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,

    /// The message store: `embedded` (a SQLite file in --data-dir) or a shared database:
    /// `mysql://USER:PASSWORD@HOST:PORT/DATABASE` (MySQL 8 or MariaDB) or
    /// `scylla://HOST:PORT[,HOST:PORT...][/KEYSPACE]` (ScyllaDB or Cassandra; needs the
    /// `scylla` feature). The schema is created or migrated at start.
    #[arg(
        long,
        env = "MESSENGER_STORE",
        default_value = "embedded",
        hide_env_values = true
    )]
    store: String,

    /// How clients authenticate: `dev` trusts tokens of the form `user:device`; `jwt` checks
    /// HS256-signed tokens (claims `sub`, `device`, `exp`).
    #[arg(long, env = "MESSENGER_AUTH", value_enum, default_value_t = AuthMode::Dev)]
    auth: AuthMode,

    /// The HS256 secret for `--auth jwt`.
    #[arg(long, env = "MESSENGER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,

    /// Required `iss` claim for `--auth jwt`.
    #[arg(long, env = "MESSENGER_JWT_ISSUER")]
    jwt_issuer: Option<String>,

    /// Required `aud` claim for `--auth jwt`.
    #[arg(long, env = "MESSENGER_JWT_AUDIENCE")]
    jwt_audience: Option<String>,

    /// Most WebSocket connections at once (each is a file descriptor).
    #[arg(long, env = "MESSENGER_MAX_CONNECTIONS", default_value_t = 16_000)]
    max_connections: usize,

    /// This node's id.
    #[arg(long, env = "MESSENGER_NODE_ID", default_value = "node-1")]
    node_id: String,

    /// Timeout for each store operation, in milliseconds.
    #[arg(long, env = "MESSENGER_STORE_TIMEOUT_MS", default_value_t = 10_000)]
    store_timeout_ms: u64,

    /// How long shutdown waits for clients to leave, in milliseconds.
    #[arg(long, env = "MESSENGER_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    drain_timeout_ms: u64,

    /// How long a new connection may take to send `hello`, in milliseconds.
    #[arg(long, env = "MESSENGER_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    hello_timeout_ms: u64,

    /// Frames queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "MESSENGER_OUTBOUND_QUEUE", default_value_t = 4096)]
    outbound_queue: usize,

    /// A connection is dropped when writing to it stalls this long, in milliseconds.
    #[arg(long, env = "MESSENGER_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    write_timeout_ms: u64,

    /// Most members per group (announced in `welcome.limits`).
    #[arg(long, env = "MESSENGER_MAX_GROUP_MEMBERS", default_value_t = messenger_core::MAX_GROUP_MEMBERS)]
    max_group_members: usize,

    /// Frames per second read from one connection (bursts of five times as many).
    #[arg(long, env = "MESSENGER_FRAMES_PER_SECOND", default_value_t = 200)]
    frames_per_second: u32,

    /// Read buffer per WebSocket connection, in bytes (allocated for the connection's whole
    /// life; frames larger than it are still read, in several chunks).
    #[arg(long, env = "MESSENGER_READ_BUFFER_BYTES", default_value_t = 4096)]
    read_buffer_bytes: usize,

    /// Set SO_REUSEPORT on the listener, so several server processes can share one port (the
    /// kernel spreads new connections over them).
    #[arg(long, env = "MESSENGER_REUSE_PORT")]
    reuse_port: bool,

    /// Log format.
    #[arg(long, env = "MESSENGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthMode {
    Dev,
    Jwt,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let auth = match args.auth {
        AuthMode::Dev => {
            tracing::warn!("dev auth: tokens `user:device` are trusted as is");
            AnyAuthenticator::Dev(DevAuthenticator)
        }
        AuthMode::Jwt => {
            let secret = args
                .jwt_secret
                .as_deref()
                .ok_or("--auth jwt needs --jwt-secret (or MESSENGER_JWT_SECRET)")?;
            let mut jwt = JwtAuthenticator::hs256(secret.as_bytes());
            if let Some(issuer) = &args.jwt_issuer {
                jwt = jwt.with_issuer(issuer);
            }
            if let Some(audience) = &args.jwt_audience {
                jwt = jwt.with_audience(audience);
            }
            AnyAuthenticator::Jwt(jwt)
        }
    };

    if args.store == "embedded" {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|err| format!("cannot create {}: {err}", args.data_dir.display()))?;
        let path = args.data_dir.join("messages.db");
        let embedded = tokio::task::spawn_blocking(move || {
            EmbeddedStore::open_with(EmbeddedConfig::new(path))
        })
        .await??;
        tracing::info!(data_dir = %args.data_dir.display(), "embedded store");
        serve(Store::new(embedded), auth, args).await
    } else if args.store.starts_with("mysql://") {
        let mysql = MysqlStore::connect(args.store.clone())
            .await
            .map_err(|err| format!("cannot use the MySQL store: {err}"))?;
        tracing::info!("mysql store");
        serve(Store::new(mysql), auth, args).await
    } else if let Some(rest) = args.store.strip_prefix("scylla://") {
        let rest = rest.to_owned();
        scylla(&rest, auth, args).await
    } else {
        Err("--store must be `embedded`, a mysql:// URL or a scylla:// URL".into())
    }
}

/// `--store scylla://HOST:PORT[,HOST:PORT...][/KEYSPACE]`.
#[cfg(feature = "scylla")]
async fn scylla(
    nodes_and_keyspace: &str,
    auth: AnyAuthenticator,
    args: Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let (nodes, keyspace) = nodes_and_keyspace
        .split_once('/')
        .unwrap_or((nodes_and_keyspace, ""));
    let mut config = messenger_store::scylla::ScyllaConfig::new(nodes.split(','));
    if !keyspace.is_empty() {
        config.keyspace = keyspace.to_owned();
    }
    let scylla = messenger_store::scylla::ScyllaStore::connect(config)
        .await
        .map_err(|err| format!("cannot use the ScyllaDB store: {err}"))?;
    tracing::info!("scylla store");
    serve(Store::new(scylla), auth, args).await
}

#[cfg(not(feature = "scylla"))]
async fn scylla(
    _nodes_and_keyspace: &str,
    _auth: AnyAuthenticator,
    _args: Args,
) -> Result<(), Box<dyn std::error::Error>> {
    Err("this build has no ScyllaDB support: build with `cargo build --release -p reference-server --features scylla`".into())
}

/// Composes a node over `store` and serves it until a shutdown signal.
async fn serve<B: StoreBackend>(
    store: Store<B>,
    auth: AnyAuthenticator,
    args: Args,
) -> Result<(), Box<dyn std::error::Error>> {
    // The sequencer starts empty and learns each conversation's floor from the store, so
    // seqs continue after a restart (and, with a shared store, after another node's writes:
    // a conflict fences it forward).
    let sequencer = Sequencer::new(MemorySequencer::new(store.clone()));
    let hub = Hub::new();
    let fanout = Fanout::new(LocalFanout::new(Arc::clone(&hub)));
    let store = ServiceBuilder::new()
        .timeout(Duration::from_millis(args.store_timeout_ms))
        .service(store);

    let mut config = NodeConfig::default();
    config.node_id = Arc::from(args.node_id.as_str());
    config.hello_timeout = Duration::from_millis(args.hello_timeout_ms);
    config.outbound_queue = args.outbound_queue;
    config.write_timeout = Duration::from_millis(args.write_timeout_ms);
    config.limits.max_group_members = args.max_group_members;
    config.limits.frames_per_second = args.frames_per_second;
    let bus = EventBus::new(4096);
    let services = Services {
        store,
        sequencer,
        fanout,
        auth,
        presence: MemoryPresence::new(),
    };
    let node =
        Node::new(services, hub, config).with_event_sink(Arc::new(move |event| bus.publish(event)));

    let mut server_config = ServerConfig::default();
    server_config.max_connections = args.max_connections;
    server_config.drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    server_config.read_buffer_size = args.read_buffer_bytes;
    let server = Server::new(node, server_config);

    let listener = listen(args.listen, args.reuse_port)
        .map_err(|err| format!("cannot listen on {}: {err}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    // Tests and scripts read this line to find the port.
    println!("listening on {address}");
    server.run(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds the listener, with SO_REUSEPORT when asked (Unix only).
fn listen(address: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
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
        return Err(std::io::Error::other("--reuse-port needs a Unix system"));
    }
    socket.bind(address)?;
    socket.listen(4096)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
