//! A worker process: holds its share of the connections, sends on schedule, counts what
//! arrives, and talks to the coordinator over stdin (commands) and stdout (one line per
//! event: `ready`, `progress`, `reconnected`, `result`).
//!
//! Each worker runs a single-threaded tokio runtime; parallelism comes from several worker
//! processes (which also keeps every process under the open-file limit).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::adapter::{Incoming, Payload, Receipts, Target, direct_id};
use crate::stats::{self, Stats};

/// The environment variable carrying a worker's [`WorkerSpec`] as JSON.
pub(crate) const SPEC_ENV: &str = "LOADGEN_WORKER_SPEC";

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    /// This worker's number.
    pub(crate) index: usize,
    /// The protocol.
    pub(crate) target: Target,
    /// Server URLs; connection `i` uses `urls[i % len]`.
    pub(crate) urls: Vec<String>,
    /// Bind loopback connections to this worker's own source address,
    /// 127.0.0.(first_source + index),
    /// with ports this worker picks itself (so connections never run out of ephemeral ports:
    /// each worker has its own 51,000 ports per server address).
    pub(crate) bind_source: bool,
    /// The last byte of worker 0's source address.
    pub(crate) first_source: u8,
    /// Prefix of user names (`{prefix}{i}`), unique per run.
    pub(crate) prefix: String,
    /// The global index of this worker's first connection.
    pub(crate) first: usize,
    /// How many connections this worker holds.
    pub(crate) count: usize,
    /// Connections opening at once in this worker.
    pub(crate) connect_concurrency: usize,
    /// Payload size in bytes.
    pub(crate) payload_bytes: usize,
    /// Set TCP_NODELAY on the connections (`--socket nodelay`); otherwise OS defaults.
    pub(crate) nodelay: bool,
    /// What receivers answer to each message.
    pub(crate) receipts: Receipts,
    /// The load pattern.
    pub(crate) pattern: Pattern,
    /// This worker's sending rate per step, messages/s (empty: no sending).
    pub(crate) rates: Vec<f64>,
    /// Length of each step, seconds.
    pub(crate) step_secs: f64,
    /// Pause after each step for the last deliveries, seconds.
    pub(crate) drain_secs: f64,
}

/// Who talks to whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Pattern {
    /// Connections only (idle density, handshakes).
    Idle,
    /// Connections 2k and 2k+1 form a pair: 2k sends to 2k+1.
    Pairs,
    /// Connection `i` is member `i % members` of room `rooms[i / members]`; members
    /// `0..senders` of each room send.
    Groups {
        /// Members per room (connections).
        members: usize,
        /// The room ids (messenger: group ids created by the coordinator).
        rooms: Vec<String>,
        /// Messenger sync cursor of each group (its head after setup).
        cursor: u64,
        /// Senders per room.
        senders: usize,
    },
}

/// A connection's place in the pattern.
#[derive(Debug, Clone)]
struct Role {
    /// Rooms to join (Socket.IO and baseline).
    joins: Vec<String>,
    /// Messenger: the user to `open_direct` with.
    direct_with: Option<String>,
    /// Where this connection sends, if it sends.
    sends_to: Option<String>,
    /// Messenger sync cursors (a JSON object).
    cursors: String,
}

/// Lifecycle commands from the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Run,
    Reconnect,
    Stop,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Context {
    spec: WorkerSpec,
    addrs: Vec<SocketAddr>,
    stats: Mutex<Stats>,
    /// Sessions that finished opening (or failed) in the current round.
    settled: AtomicU64,
    settled_notify: Notify,
    connect_limit: Semaphore,
    /// The next source port to try (10000..=60999, cycling).
    next_port: AtomicU64,
    phase: watch::Receiver<Phase>,
}

impl Context {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn user(&self, global: usize) -> String {
        format!("{}{global}", self.spec.prefix)
    }

    fn role(&self, global: usize) -> Role {
        let target = self.spec.target;
        match &self.spec.pattern {
            Pattern::Idle => Role {
                joins: Vec::new(),
                direct_with: None,
                sends_to: None,
                cursors: "{}".to_owned(),
            },
            Pattern::Pairs => {
                let pair = global / 2;
                let room = match target {
                    Target::Messenger => direct_id(&self.user(pair * 2), &self.user(pair * 2 + 1)),
                    Target::Baseline | Target::Socketio => format!("p{pair}"),
                };
                let sender = global % 2 == 0;
                Role {
                    joins: vec![room.clone()],
                    direct_with: sender.then(|| self.user(global + 1)),
                    sends_to: sender.then_some(room),
                    cursors: "{}".to_owned(),
                }
            }
            Pattern::Groups {
                members,
                rooms,
                cursor,
                senders,
            } => {
                let room = rooms
                    .get(global / members.max(&1))
                    .cloned()
                    .unwrap_or_default();
                let cursors = serde_json::json!({ room.as_str(): cursor }).to_string();
                Role {
                    joins: vec![room.clone()],
                    direct_with: None,
                    sends_to: (global % members.max(&1) < *senders).then_some(room),
                    cursors,
                }
            }
        }
    }
}

/// ns since the Unix epoch: the clock every process on the box shares.
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `host:port` of a `ws://host:port/path` URL.
pub(crate) fn authority(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Runs a worker from the spec in the environment; returns when the coordinator says `stop`
/// or the schedule is done.
pub(crate) fn main() -> Result<(), String> {
    let spec = std::env::var(SPEC_ENV).map_err(|_| format!("{SPEC_ENV} is not set"))?;
    let spec: WorkerSpec = serde_json::from_str(&spec).map_err(|err| err.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    runtime.block_on(run(spec))
}

async fn run(spec: WorkerSpec) -> Result<(), String> {
    let mut addrs = Vec::new();
    for url in &spec.urls {
        let authority = authority(url)?;
        let addr = tokio::net::lookup_host(authority)
            .await
            .map_err(|err| format!("{authority}: {err}"))?
            .next()
            .ok_or_else(|| format!("{authority}: no address"))?;
        addrs.push(addr);
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let context = Arc::new(Context {
        addrs,
        stats: Mutex::new(Stats::new(spec.rates.len())),
        settled: AtomicU64::new(0),
        settled_notify: Notify::new(),
        connect_limit: Semaphore::new(spec.connect_concurrency.max(1)),
        // Start somewhere else each run: the previous run's ports may sit in TIME_WAIT.
        next_port: AtomicU64::new(now_ns() / 1000),
        phase: phase_rx,
        spec,
    });

    let mut senders = Vec::new();
    for local in 0..context.spec.count {
        let global = context.spec.first + local;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(room) = context.role(global).sends_to {
            senders.push((global, room, tx));
        }
        tokio::spawn(connection(Arc::clone(&context), global, rx));
    }
    wait_settled(&context, context.spec.count as u64).await;
    emit("ready", &context.stats().progress());

    let progress = {
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = context.stats().progress();
                emit("progress", &line);
            }
        })
    };

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut schedule: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let line = match &mut schedule {
            Some(task) => tokio::select! {
                line = stdin.next_line() => line,
                _ = task => { schedule = None; Ok(Some("stop".to_owned())) }
            },
            None => stdin.next_line().await,
        };
        let line = line.map_err(|err| err.to_string())?;
        let line = line.unwrap_or_else(|| "stop".to_owned());
        let mut words = line.split_whitespace();
        match words.next() {
            Some("go") => {
                let start: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let senders = std::mem::take(&mut senders);
                let context = Arc::clone(&context);
                schedule = Some(tokio::task::spawn_blocking(move || {
                    send_on_schedule(context, senders, start);
                }));
            }
            Some("reconnect") => {
                context.settled.store(0, Ordering::SeqCst);
                // Only the sessions that opened reconnect: one that failed its first
                // connect (e.g. no free source port) has ended and would never settle.
                let sessions = context.stats().connected;
                let _ = phase_tx.send(Phase::Reconnect);
                wait_settled(&context, sessions).await;
                emit("reconnected", &context.stats().progress());
            }
            Some("stop") => break,
            _ => {}
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    progress.abort();
    let report = context.stats().report();
    emit("result", &report);
    // The runtime would wait for the blocking stdin reader on shutdown: leave now.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

fn emit<T: Serialize>(kind: &str, value: &T) {
    let json = serde_json::to_string(value).unwrap_or_default();
    println!("{kind} {json}");
}

/// Waits until `count` connections finished their handshake (or failed it).
async fn wait_settled(context: &Context, count: u64) {
    loop {
        let notified = context.settled_notify.notified();
        if context.settled.load(Ordering::SeqCst) >= count {
            return;
        }
        notified.await;
    }
}

fn settle(context: &Context) {
    context.settled.fetch_add(1, Ordering::SeqCst);
    context.settled_notify.notify_waiters();
}

/// Sends each step's messages at their scheduled times, round-robin over this worker's
/// senders. Open loop: a message's latency counts from its scheduled time, so a server (or a
/// write queue) that falls behind shows up in the figures instead of slowing the schedule.
///
/// It runs on a thread of its own, sleeping until each message is due: Tokio's timer counts
/// in whole milliseconds, so a schedule on it queued messages up to 1–2 ms after their time,
/// and that lateness was the load generator's own latency floor (p50 1.3 ms against a bare
/// relay). A thread's `sleep` wakes within tens of microseconds; messages that fall due
/// while it is late go out together.
fn send_on_schedule(
    context: Arc<Context>,
    senders: Vec<(usize, String, mpsc::UnboundedSender<String>)>,
    start_ns: u64,
) {
    let spec = &context.spec;
    let step_ns = ((spec.step_secs + spec.drain_secs) * 1e9) as u64;
    let mut seqs = vec![0u64; senders.len()];
    for (step, &rate) in spec.rates.iter().enumerate() {
        let step_start = start_ns + step as u64 * step_ns;
        sleep_until_ns(step_start);
        if senders.is_empty() || rate <= 0.0 {
            continue;
        }
        let total = (rate * spec.step_secs).round() as u64;
        let due_at = |n: u64| step_start + (n as f64 * 1e9 / rate) as u64;
        let mut next = 0u64;
        while next < total {
            sleep_until_ns(due_at(next));
            let now = now_ns();
            let first = next;
            while next < total && due_at(next) <= now {
                let j = (next % senders.len() as u64) as usize;
                let (global, room, tx) = &senders[j];
                seqs[j] += 1;
                let payload = Payload {
                    step,
                    sender: *global as u32,
                    seq: seqs[j],
                    scheduled_ns: due_at(next),
                };
                let text = payload.encode(spec.payload_bytes);
                let _ = tx.send(spec.target.send(room, &payload.key(), &text));
                next += 1;
            }
            if let Some(stats) = context.stats().steps.get_mut(step) {
                stats.sent += next - first;
            }
        }
    }
    sleep_until_ns(start_ns + spec.rates.len() as u64 * step_ns);
}

/// Sleeps this thread until `at_ns` (ns since the epoch).
fn sleep_until_ns(at_ns: u64) {
    let now = now_ns();
    if at_ns > now {
        std::thread::sleep(Duration::from_nanos(at_ns - now));
    }
}

/// One connection for the whole run: opens its session, reconnects when told, counts what
/// it receives and writes what the schedule queues (all queued frames, then one flush).
async fn connection(
    context: Arc<Context>,
    global: usize,
    mut outgoing: mpsc::UnboundedReceiver<String>,
) {
    let role = context.role(global);
    let mut phase = context.phase.clone();
    let mut ws = match open_session(&context, global, &role, 0).await {
        Some(ws) => ws,
        None => return,
    };
    let me = global as u32;
    let mut last_seq: HashMap<u32, u64> = HashMap::new();
    // Connections that never send have no sender side: stop polling the closed channel.
    let mut outgoing_open = true;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let replies = on_frame(&context, me, &mut last_seq, &text);
                    if !replies.is_empty() {
                        let mut written = Ok(());
                        for reply in replies {
                            written = ws.feed(Message::text(reply)).await;
                            if written.is_err() {
                                break;
                            }
                        }
                        if written.is_ok() {
                            written = ws.flush().await;
                        }
                        if written.is_err() {
                            context.stats().disconnects += 1;
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    if *phase.borrow() == Phase::Stop {
                        return;
                    }
                    context.stats().disconnects += 1;
                    // Wait for the coordinator's next command instead of spinning.
                    if phase.changed().await.is_err() || *phase.borrow() == Phase::Stop {
                        return;
                    }
                    if *phase.borrow() == Phase::Reconnect {
                        ws = match open_session(&context, global, &role, 1).await {
                            Some(ws) => ws,
                            None => return,
                        };
                    }
                }
            },
            frame = outgoing.recv(), if outgoing_open => {
                let Some(frame) = frame else {
                    outgoing_open = false;
                    continue;
                };
                let mut written = ws.feed(Message::text(frame)).await;
                while written.is_ok() {
                    match outgoing.try_recv() {
                        Ok(frame) => written = ws.feed(Message::text(frame)).await,
                        Err(_) => break,
                    }
                }
                if written.is_ok() {
                    written = ws.flush().await;
                }
                if written.is_err() {
                    context.stats().disconnects += 1;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *phase.borrow();
                match now {
                    Phase::Stop => {
                        let _ = ws.close(None).await;
                        return;
                    }
                    Phase::Reconnect => {
                        let _ = ws.close(None).await;
                        last_seq.clear();
                        ws = match open_session(&context, global, &role, 1).await {
                            Some(ws) => ws,
                            None => return,
                        };
                    }
                    Phase::Run => {}
                }
            }
        }
    }
}

/// Counts one incoming frame; returns the frames to answer with (receipts, pongs).
fn on_frame(
    context: &Context,
    me: u32,
    last_seq: &mut HashMap<u32, u64>,
    text: &str,
) -> Vec<String> {
    let target = context.spec.target;
    match target.classify(text) {
        Incoming::Payload(payload) => {
            let Some(payload) = Payload::decode(payload) else {
                return Vec::new();
            };
            if payload.sender == me {
                return Vec::new();
            }
            count_delivery(context, last_seq, payload);
            target.receipts(text, context.spec.receipts)
        }
        Incoming::Ack(key) => {
            if let Some(payload) = Payload::decode(key) {
                let now = now_ns();
                let mut stats = context.stats();
                if let Some(step) = stats.steps.get_mut(payload.step) {
                    step.acked += 1;
                    stats::record(
                        &mut step.ack,
                        now.saturating_sub(payload.scheduled_ns) / 1000,
                    );
                }
            }
            Vec::new()
        }
        Incoming::Receipt => {
            context.stats().receipts += 1;
            Vec::new()
        }
        Incoming::Reply(reply) => vec![reply.to_owned()],
        Incoming::Error => {
            let mut stats = context.stats();
            stats.errors += 1;
            if stats.errors <= 5 {
                eprintln!("worker {}: error frame: {text}", context.spec.index);
            }
            Vec::new()
        }
        Incoming::Ready | Incoming::Other => Vec::new(),
    }
}

/// Counts a payload from another connection: its send→deliver latency, duplicates, gaps.
fn count_delivery(context: &Context, last_seq: &mut HashMap<u32, u64>, payload: Payload) {
    let now = now_ns();
    let mut stats = context.stats();
    let last = last_seq.entry(payload.sender).or_insert(0);
    if payload.seq <= *last {
        stats.duplicates += 1;
        return;
    }
    if payload.seq != *last + 1 {
        stats.gaps += 1;
    }
    *last = payload.seq;
    let Some(step) = stats.steps.get_mut(payload.step) else {
        return;
    };
    step.delivered += 1;
    if step.first_delivery_ns == 0 {
        step.first_delivery_ns = now;
    }
    step.last_delivery_ns = step.last_delivery_ns.max(now);
    stats::record(
        &mut step.delivery,
        now.saturating_sub(payload.scheduled_ns) / 1000,
    );
}

/// Connects (bound to this connection's source address), upgrades, and runs the session
/// handshake; records its latency in round `round` (0 = first connect, 1 = reconnect).
async fn open_session(context: &Context, global: usize, role: &Role, round: usize) -> Option<Ws> {
    let result = {
        let _permit = context.connect_limit.acquire().await.ok()?;
        let started = now_ns();
        {
            let mut stats = context.stats();
            let first = &mut stats.rounds[round].0;
            if *first == 0 || started < *first {
                *first = started;
            }
        }
        let opened =
            tokio::time::timeout(Duration::from_secs(60), handshake(context, global, role))
                .await
                .unwrap_or_else(|_| Err("handshake timed out".to_owned()));
        opened.map(|ws| (ws, started))
    };
    let mut stats = context.stats();
    let outcome = match result {
        Ok((ws, started)) => {
            let now = now_ns();
            let histogram = if round == 0 {
                stats.connected += 1;
                &mut stats.handshake
            } else {
                stats.reconnected += 1;
                &mut stats.reconnect
            };
            stats::record(histogram, now.saturating_sub(started) / 1000);
            stats.rounds[round].1 = stats.rounds[round].1.max(now);
            Some(ws)
        }
        Err(err) => {
            stats.failed += 1;
            if stats.failed <= 5 {
                eprintln!("worker {}: connection {global}: {err}", context.spec.index);
            }
            None
        }
    };
    drop(stats);
    settle(context);
    outcome
}

async fn handshake(context: &Context, global: usize, role: &Role) -> Result<Ws, String> {
    let spec = &context.spec;
    let which = global % context.addrs.len().max(1);
    let addr = *context.addrs.get(which).ok_or("no server address")?;
    let url = spec.urls.get(which).ok_or("no server URL")?;
    let socket = bound_socket(context, addr)?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|err| format!("connect {addr}: {err}"))?;
    // `--socket nodelay`: TCP_NODELAY, as the messenger client library sets it. By default
    // the OS's options stay, as in most clients: with Nagle's algorithm a small frame written
    // while another is unacknowledged waits for the server's ACK (up to a delayed ACK, ~40 ms),
    // which the figures then show.
    if spec.nodelay {
        stream
            .set_nodelay(true)
            .map_err(|err| format!("TCP_NODELAY: {err}"))?;
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(64 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        url.as_str(),
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map_err(|err| format!("upgrade: {err}"))?;

    let user = context.user(global);
    // First the session (Socket.IO refuses events before its namespace connect is answered),
    // then the rooms.
    let (frames, waits) = spec.target.open(&user, &role.cursors);
    exchange(&mut ws, spec.target, frames, waits).await?;
    let mut frames = Vec::new();
    for room in &role.joins {
        frames.extend(spec.target.join(room));
    }
    frames.extend(
        role.direct_with
            .as_deref()
            .and_then(|u| spec.target.open_direct(u)),
    );
    let waits = frames.len();
    exchange(&mut ws, spec.target, frames, waits).await?;
    Ok(ws)
}

/// A socket for a connection to `addr`. To a loopback server it is bound to this worker's
/// source address and a port of its own choosing: the kernel's search for a free port on a
/// `bind(ip, 0)` scans every bound port (it cost 2 ms of CPU per connection at 5k
/// connections), while binding a given port is one hash lookup. Ports in use (by this run's
/// earlier connections in TIME_WAIT, or by anyone else) are skipped.
fn bound_socket(context: &Context, addr: SocketAddr) -> Result<TcpSocket, String> {
    const FIRST: u64 = 10_000;
    const PORTS: u64 = 51_000;
    if !context.spec.bind_source || !addr.ip().is_loopback() {
        return TcpSocket::new_v4().map_err(|err| format!("socket: {err}"));
    }
    let first = usize::from(context.spec.first_source.max(2));
    let last = u8::try_from(first + context.spec.index % (255 - first)).unwrap_or(2);
    let ip = Ipv4Addr::new(127, 0, 0, last);
    let mut last_error = None;
    for _ in 0..PORTS {
        let socket = TcpSocket::new_v4().map_err(|err| format!("socket: {err}"))?;
        let port = FIRST + context.next_port.fetch_add(1, Ordering::Relaxed) % PORTS;
        let source = SocketAddr::new(ip.into(), u16::try_from(port).unwrap_or(0));
        match socket.bind(source) {
            Ok(()) => return Ok(socket),
            Err(err) => last_error = Some(err),
        }
    }
    Err(format!("no free source port on {ip}: {last_error:?}"))
}

/// Writes `frames`, then reads until `waits` `Ready` answers came.
async fn exchange(
    ws: &mut Ws,
    target: Target,
    frames: Vec<String>,
    mut waits: usize,
) -> Result<(), String> {
    if frames.is_empty() && waits == 0 {
        return Ok(());
    }
    for frame in frames {
        ws.feed(Message::text(frame))
            .await
            .map_err(|err| format!("write: {err}"))?;
    }
    ws.flush().await.map_err(|err| format!("write: {err}"))?;
    while waits > 0 {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match target.classify(&text) {
                Incoming::Ready => waits -= 1,
                Incoming::Reply(reply) => {
                    ws.send(Message::text(reply))
                        .await
                        .map_err(|err| format!("write: {err}"))?;
                }
                Incoming::Error => return Err(format!("refused: {text}")),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("read: {err}")),
            None => return Err("connection ended during the handshake".to_owned()),
        }
    }
    Ok(())
}
