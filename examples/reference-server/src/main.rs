//! The messenger SDK's reference server: one binary, embedded defaults.
//!
//! `cargo run --release -p reference-server` serves `ws://127.0.0.1:8080/ws` with its data in
//! `./data`. Wiring only: every behaviour lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use messenger_socket::auth::{AnyAuthenticator, DevAuthenticator, JwtAuthenticator};
use messenger_socket::media::{self, MediaConfig};
use messenger_socket::{Engine, EngineConfig, Node, Server, ServerConfig, Services};
use messenger_socket::{bind, shutdown_signal};
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

    /// The message store, as `messenger_store::connect` takes it: `embedded` (the SQLite
    /// file `messages.db` in --data-dir), `embedded:PATH` (another file;
    /// `embedded:PATH?durability=relaxed` overrides --durability), or a shared database:
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

    /// What an acknowledged `send` survives with the embedded store: `full` (the default:
    /// an fsync per group commit; survives a crash of the machine or a power loss) or
    /// `relaxed` (no fsync per commit; survives a crash of this process, but a crash of the
    /// OS or a power loss may take back the last acknowledged messages). Ignored by the
    /// shared stores, and by an `embedded:PATH?durability=...` store URL.
    #[arg(long, env = "MESSENGER_DURABILITY", value_enum, default_value_t = DurabilityMode::Full)]
    durability: DurabilityMode,

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

    /// This node's id, unique in the cluster. Default: `node-1` on its own; a random
    /// `node-XXXXXXXX` with `--redis` (a restarted node then comes back as a new node).
    #[arg(long, env = "MESSENGER_NODE_ID")]
    node_id: Option<String>,

    /// Redis for the sequencer and the presence registry, so several nodes form one cluster:
    /// `redis://HOST:PORT/` for a standalone server, or several comma-separated URLs for
    /// Redis Cluster seed nodes. Without it, both live in this process.
    #[arg(long, env = "MESSENGER_REDIS", hide_env_values = true)]
    redis: Option<String>,

    /// Kafka bootstrap servers (`HOST:PORT[,HOST:PORT...]`) for the fanout between nodes (a
    /// topic per node) and the domain event stream. Needs `--redis` (the presence registry
    /// says which node holds whom) and the `kafka` build feature.
    #[arg(long, env = "MESSENGER_KAFKA")]
    kafka: Option<String>,

    /// The Kafka topic of domain events (with `--kafka`).
    #[arg(
        long,
        env = "MESSENGER_EVENTS_TOPIC",
        default_value = "messenger.events"
    )]
    events_topic: String,

    /// The presence lease of this node, in milliseconds (with `--redis`): other nodes treat
    /// it as gone this long after its last heartbeat.
    #[arg(long, env = "MESSENGER_LEASE_MS", default_value_t = 5_000)]
    lease_ms: u64,

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

    /// Directory for staged media uploads and pending-upload records (default:
    /// `<data-dir>/media`; local media objects go to its `objects/` subdirectory).
    #[arg(long, env = "MESSENGER_MEDIA_DIR")]
    media_dir: Option<PathBuf>,

    /// Where media objects are kept: `local` (under --media-dir), `file:///PATH` or, with the
    /// `s3` feature, `s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT&region=REGION`
    /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; any `object_store` S3
    /// option as a query key).
    #[arg(long, env = "MESSENGER_MEDIA_STORE", default_value = "local")]
    media_store: String,

    /// Largest media upload, in bytes.
    #[arg(long, env = "MESSENGER_MEDIA_MAX_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    media_max_bytes: u64,

    /// How long an upload ticket is valid, in milliseconds; a media message not uploaded by
    /// then becomes `failed`.
    #[arg(long, env = "MESSENGER_MEDIA_TICKET_TTL_MS", default_value_t = 15 * 60 * 1000)]
    media_ticket_ttl_ms: u64,

    /// How often expired uploads are looked for, in milliseconds.
    #[arg(long, env = "MESSENGER_MEDIA_SWEEP_MS", default_value_t = 1000)]
    media_sweep_ms: u64,

    /// The HS256 secret of upload tickets (default: random per process, so tickets do not
    /// survive a restart; set it to let uploads resume across restarts).
    #[arg(long, env = "MESSENGER_MEDIA_SECRET", hide_env_values = true)]
    media_secret: Option<String>,

    /// The base of the upload and download URLs given to clients (default:
    /// `http://<listen address>`).
    #[arg(long, env = "MESSENGER_PUBLIC_URL")]
    public_url: Option<String>,

    /// Most members per group (announced in `welcome.limits`).
    #[arg(long, env = "MESSENGER_MAX_GROUP_MEMBERS", default_value_t = messenger_core::MAX_GROUP_MEMBERS)]
    max_group_members: usize,

    /// How long senders may edit a text message, in seconds (`welcome.limits`).
    #[arg(long, env = "MESSENGER_EDIT_WINDOW_S", default_value_t = 48 * 3600)]
    edit_window_s: u64,

    /// How often one message may be edited.
    #[arg(long, env = "MESSENGER_MAX_EDITS", default_value_t = 10)]
    max_edits: u32,

    /// How long senders may delete a message for everyone, in seconds (group admins and
    /// owners: always).
    #[arg(long, env = "MESSENGER_DELETE_WINDOW_S", default_value_t = 48 * 3600)]
    delete_window_s: u64,

    /// Frames per second read from one connection (bursts of five times as many).
    #[arg(long, env = "MESSENGER_FRAMES_PER_SECOND", default_value_t = 200)]
    frames_per_second: u32,

    /// Most bytes read from a WebSocket connection's socket at once. Reads go through a
    /// scratch buffer shared per thread: an idle connection holds no read buffer of this size,
    /// and frames larger than it are read in several chunks.
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
enum DurabilityMode {
    Full,
    Relaxed,
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
    if args.kafka.is_some() && args.redis.is_none() {
        return Err("--kafka needs --redis: the presence registry tells nodes apart".into());
    }
    if args.redis.is_some() && args.kafka.is_none() {
        tracing::warn!("--redis without --kafka: events reach only this node's connections");
    }
    let auth = authenticator(&args)?;
    let url = store_url(&args);
    let store = messenger_store::connect(&url)
        .await
        .map_err(|err| format!("cannot use the store {}: {err}", scheme(&url)))?;
    let node = match (&args.node_id, &args.redis) {
        (Some(id), _) => Node::new(id.as_str()),
        (None, Some(_)) => Node::random(),
        (None, None) => Node::single(),
    };
    // The cluster: sequencer and presence in this process or on Redis (the sequencer learns
    // each conversation's floor from the store, so seqs continue after a restart), fanout and
    // domain events in this process or on Kafka.
    let redis = args.redis.as_deref().unwrap_or("memory:");
    let sequencer = messenger_sequencer::connect(redis, store.clone())
        .await
        .map_err(|err| format!("--redis: {err}"))?;
    let lease = Duration::from_millis(args.lease_ms);
    let presence = messenger_fanout::presence::connect(redis.split(','), node.id().clone(), lease)
        .await
        .map_err(|err| format!("cannot start the presence registry: {err}"))?;
    let kafka = args
        .kafka
        .as_ref()
        .map_or("local:".into(), |b| format!("kafka://{b}"));
    let fanout = messenger_fanout::connect(&kafka, node.id().clone(), node.hub(), presence.clone())
        .await
        .map_err(|err| format!("cannot start the fanout: {err}"))?;
    let events = messenger_fanout::event_stream(&kafka, &args.events_topic)
        .await
        .map_err(|err| format!("cannot start the event stream: {err}"))?;
    tracing::info!(store = scheme(&url), fanout = scheme(&kafka), node = %node.id(), "backends");

    let listener = bind(args.listen, args.reuse_port)
        .map_err(|err| format!("cannot listen on {}: {err}", args.listen))?;
    let address = listener.local_addr()?;
    let media_dir = args
        .media_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("media"));
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let mut media_config = MediaConfig::new(&media_dir, public_url);
    media_config.max_bytes = args.media_max_bytes;
    media_config.ticket_ttl = Duration::from_millis(args.media_ticket_ttl_ms);
    media_config.sweep_interval = Duration::from_millis(args.media_sweep_ms.max(1));
    media_config.secret = args
        .media_secret
        .as_ref()
        .map(|secret| secret.as_bytes().to_vec());
    let storage = match args.media_store.as_str() {
        "local" => media::local_storage(media_dir.join("objects")),
        url => media::storage_from_url(url),
    }
    .map_err(|err| {
        format!(
            "cannot use the media store {}: {err}",
            scheme(&args.media_store)
        )
    })?;

    let mut config = EngineConfig::default();
    config.hello_timeout = Duration::from_millis(args.hello_timeout_ms);
    config.outbound_queue = args.outbound_queue;
    config.write_timeout = Duration::from_millis(args.write_timeout_ms);
    config.limits.max_group_members = args.max_group_members;
    config.limits.frames_per_second = args.frames_per_second;
    config.limits.edit_window_ms = args.edit_window_s.saturating_mul(1000);
    config.limits.max_edits = args.max_edits;
    config.limits.delete_window_ms = args.delete_window_s.saturating_mul(1000);
    let services = Services {
        store: ServiceBuilder::new()
            .timeout(Duration::from_millis(args.store_timeout_ms))
            .service(store),
        sequencer,
        fanout: fanout.clone(),
        auth,
        presence: presence.clone(),
    };
    let mut engine = Engine::new(services, node, config);
    if let Some(events) = events {
        engine = engine.with_event_sink(events);
    }
    let engine = engine
        .with_media(media_config, storage)
        .map_err(|err| format!("cannot use {} for media: {err}", media_dir.display()))?;
    tokio::spawn(media::run_sweeper(engine.clone()));

    let mut server_config = ServerConfig::default();
    server_config.max_connections = args.max_connections;
    server_config.drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    server_config.read_buffer_size = args.read_buffer_bytes;
    let server = Server::new(engine.clone(), server_config).with_routes(media::router(&engine));
    tracing::info!(%address, "listening");
    // Tests and scripts read this line to find the port.
    println!("listening on {address}");
    server.run(listener, shutdown_signal()).await?;
    // Every connection is closed (and unregistered): leave the cluster.
    fanout.shutdown().await;
    if let Err(err) = presence.release().await {
        tracing::warn!(error = %err, "could not release the presence lease");
    }
    tracing::info!(member_cache = ?engine.member_cache_stats(), "stopped");
    Ok(())
}

/// `--auth`: dev tokens or HS256 JWTs.
fn authenticator(args: &Args) -> Result<AnyAuthenticator, Box<dyn std::error::Error>> {
    if let AuthMode::Dev = args.auth {
        tracing::warn!("dev auth: tokens `user:device` are trusted as is");
        return Ok(AnyAuthenticator::Dev(DevAuthenticator));
    }
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
    Ok(AnyAuthenticator::Jwt(jwt))
}

/// `--store` as a `messenger_store::connect` URL: `embedded` is the file `messages.db` in
/// `--data-dir`, and an embedded store without a `durability` option takes `--durability`.
fn store_url(args: &Args) -> String {
    let url = match args.store.as_str() {
        "embedded" => format!("embedded:{}", args.data_dir.join("messages.db").display()),
        other => other.to_owned(),
    };
    if !url.starts_with("embedded:") || url.contains("durability=") {
        return url;
    }
    let durability = match args.durability {
        DurabilityMode::Full => "full",
        DurabilityMode::Relaxed => "relaxed",
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}durability={durability}")
}

/// What a URL may show in logs: its scheme, never a password.
fn scheme(url: &str) -> &str {
    url.split_once(':').map_or(url, |(scheme, _)| scheme)
}
