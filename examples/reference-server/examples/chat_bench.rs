//! End-to-end chat benchmark: real `reference-server` process, real WebSocket clients on
//! loopback, default server flags (embedded SQLite store, durable group commit).
//!
//! It measures two workloads and prints a table (no assertions: it is a program that prints
//! numbers):
//!
//! 1. **1:1** — `--pairs` sender/recipient pairs, each in a direct conversation; every sender
//!    sends `--messages` texts with at most `--in-flight` unacknowledged at a time. Reported:
//!    messages delivered to recipients per second of wall time, send→delivered latency (from
//!    calling `send_text` to the recipient's `Events` yielding the message) and send→ack
//!    latency (the `Sent` future resolving, i.e. durably stored), p50/p99.
//! 2. **Group** — one group of `--group-size` connected members; `--group-senders` of them
//!    each send `--group-messages` texts (same in-flight bound). Reported: messages/s sent,
//!    deliveries/s (messages × recipients) and send→delivered latency p50/p99 over every
//!    recipient.
//!
//! Each text carries its send time (ns since a process-wide base `Instant`), so a recipient
//! computes the latency without any shared map. Every client has a task draining its events,
//! as the server closes slow consumers. The server paces each connection at 200 frames/s
//! (burst 1000), so throughput comes from many connections.
//!
//! Run (the server binary must be built first, in the same profile):
//!
//! ```text
//! cargo build --release -p reference-server
//! cargo run --release -p reference-server --example chat_bench -- [--pairs 20] [--messages 200]
//! ```
//!
//! By default it starts `reference-server` from the directory above the example binary
//! (`target/release/reference-server`) with a fresh temporary data dir; `--server-bin PATH`
//! chooses another binary and `--url ws://HOST:PORT/ws` uses a running server instead.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use futures_util::future::join_all;
use messenger_core::{Body, ConversationId, UserId};
use messenger_socket::client::{Client, ClientConfig, ClientEvent};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "End-to-end 1:1 and group chat benchmark against reference-server")]
struct Args {
    /// 1:1 phase: number of sender/recipient pairs.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// 1:1 phase: messages per sender.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Unacknowledged sends allowed per sender.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Group phase: members (all connected).
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Group phase: how many members send.
    #[arg(long, default_value_t = 5)]
    group_senders: usize,
    /// Group phase: messages per sender.
    #[arg(long, default_value_t = 100)]
    group_messages: usize,
    /// The reference-server binary (default: next to this example's directory).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Use an already-running server (`ws://HOST:PORT/ws`) instead of starting one.
    #[arg(long)]
    url: Option<String>,
}

/// Process-wide clock; texts carry `BASE.elapsed()` in ns at send time.
static BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
/// Disconnects seen by any client (a slow-consumer close would show here).
static DISCONNECTS: AtomicUsize = AtomicUsize::new(0);
/// How long a phase may wait for its deliveries.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

fn now_ns() -> u64 {
    u64::try_from(BASE.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A server process with its temporary data dir; killed on drop.
struct Server {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: PathBuf) -> (Server, String) {
    let data = tempfile::tempdir().expect("temp data dir");
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("start {} ({err}); build it first", bin.display()));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let address = loop {
        let line = lines.next().expect("server exited early").expect("stdout");
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Server { child, _data: data }, format!("ws://{address}/ws"))
}

/// Connects `user`, waits for `Synced`, then spawns a task that drains its events forever and
/// reports the send→delivered latency of every text from another user to `samples`.
async fn connect(url: &str, user: &str, samples: mpsc::UnboundedSender<Duration>) -> Client {
    let config = ClientConfig::new(url, format!("{user}:bench"));
    let (client, mut events) = Client::connect(config).await.expect("connect");
    events
        .wait_for(Duration::from_secs(30), |e| {
            matches!(e, ClientEvent::Synced(_))
        })
        .await
        .expect("synced");
    let me = client.user().clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                ClientEvent::Message(message) if message.sender != me => {
                    if let Body::Text { text } = &message.body {
                        if let Ok(sent_ns) = text.parse::<u64>() {
                            let _ = samples.send(Duration::from_nanos(now_ns() - sent_ns));
                        }
                    }
                }
                ClientEvent::Disconnected { reason, .. } => {
                    DISCONNECTS.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{me}: disconnected: {reason}");
                }
                _ => {}
            }
        }
    });
    client
}

/// Sends `count` texts with at most `in_flight` unacknowledged; returns the ack latencies.
async fn send_all(
    client: Client,
    conversation: ConversationId,
    count: usize,
    in_flight: usize,
) -> Vec<Duration> {
    futures_util::stream::iter(0..count)
        .map(|_| {
            let started = Instant::now();
            let sent = client.send_text(&conversation, now_ns().to_string());
            async move {
                sent.await.expect("send");
                started.elapsed()
            }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await
}

/// Receives up to `expected` samples (fewer if the phase times out).
async fn collect(
    samples: &mut mpsc::UnboundedReceiver<Duration>,
    expected: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while out.len() < expected {
        match tokio::time::timeout_at(deadline, samples.recv()).await {
            Ok(Some(sample)) => out.push(sample),
            _ => {
                eprintln!("timed out: {} of {expected} deliveries", out.len());
                break;
            }
        }
    }
    out
}

/// (p50, p99) in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[index].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.99))
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = *BASE;
    let (_server, url) = match &args.url {
        Some(url) => (None, url.clone()),
        None => {
            let bin = args.server_bin.clone().unwrap_or_else(|| {
                let exe = std::env::current_exe().expect("current exe");
                let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
                dir.join(format!("reference-server{}", std::env::consts::EXE_SUFFIX))
            });
            let (server, url) = start_server(bin);
            (Some(server), url)
        }
    };
    // Unique names, so a reused server's old conversations do not interfere.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = |kind: &str, i: usize| format!("b{run}-{kind}{i}");

    // Phase 1: 1:1 pairs.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let senders = join_all((0..args.pairs).map(|i| connect(&url, &name("s", i), tx.clone()))).await;
    let recipients =
        join_all((0..args.pairs).map(|i| connect(&url, &name("r", i), tx.clone()))).await;
    let mut chats = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let peer = UserId::new(name("r", i)).expect("user id");
        chats.push(
            sender
                .open_direct(&peer)
                .await
                .expect("open_direct")
                .conversation
                .id,
        );
    }
    let started = Instant::now();
    let sending = senders.iter().zip(chats).map(|(client, chat)| {
        tokio::spawn(send_all(
            client.clone(),
            chat,
            args.messages,
            args.in_flight,
        ))
    });
    let sending: Vec<_> = sending.collect();
    let delivered = collect(&mut rx, args.pairs * args.messages).await;
    let direct_wall = started.elapsed();
    let mut acks = Vec::new();
    for task in join_all(sending).await {
        acks.extend(task.expect("sender task"));
    }
    let direct_count = delivered.len();
    let direct_rate = rate(direct_count, direct_wall);
    let direct_lat = percentiles(delivered);
    let ack_lat = percentiles(acks);
    for client in senders.iter().chain(&recipients) {
        client.close().await;
    }

    // Phase 2: one group.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let members =
        join_all((0..args.group_size).map(|i| connect(&url, &name("g", i), tx.clone()))).await;
    let others: Vec<UserId> = (1..args.group_size)
        .map(|i| UserId::new(name("g", i)).expect("user id"))
        .collect();
    let group = members[0]
        .create_group("bench", &others)
        .await
        .expect("group");
    let group = group.conversation.id;
    let k = args.group_senders.min(args.group_size);
    let started = Instant::now();
    let sending: Vec<_> = members[..k]
        .iter()
        .map(|client| {
            let job = send_all(
                client.clone(),
                group.clone(),
                args.group_messages,
                args.in_flight,
            );
            tokio::spawn(job)
        })
        .collect();
    let expected = k * args.group_messages * (args.group_size - 1);
    let delivered = collect(&mut rx, expected).await;
    let group_wall = started.elapsed();
    for task in join_all(sending).await {
        task.expect("sender task");
    }
    let group_deliveries = delivered.len();
    let group_msg_rate = rate(k * args.group_messages, group_wall);
    let group_rate = rate(group_deliveries, group_wall);
    let group_lat = percentiles(delivered);
    for client in &members {
        client.close().await;
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("cores: {cores}; server: {url}");
    println!("| workload | count | wall s | rate /s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    let row = |what: &str, count: usize, wall: Duration, per_s: f64, lat: (f64, f64)| {
        let wall = wall.as_secs_f64();
        println!(
            "| {what} | {count} | {wall:.2} | {per_s:.0} | {:.2} | {:.2} |",
            lat.0, lat.1
        );
    };
    let pairs = args.pairs;
    row(
        &format!("1:1 delivered ({pairs} pairs)"),
        direct_count,
        direct_wall,
        direct_rate,
        direct_lat,
    );
    row(
        "1:1 send→ack",
        pairs * args.messages,
        direct_wall,
        direct_rate,
        ack_lat,
    );
    let size = args.group_size;
    row(
        &format!("group messages ({k} of {size})"),
        k * args.group_messages,
        group_wall,
        group_msg_rate,
        group_lat,
    );
    row(
        "group deliveries",
        group_deliveries,
        group_wall,
        group_rate,
        group_lat,
    );
    println!(
        "group fanout: {group_rate:.0} deliveries/s = {:.2}x the 1:1 message rate",
        group_rate / direct_rate
    );
    println!(
        "disconnects during the run: {}",
        DISCONNECTS.load(Ordering::Relaxed)
    );
}
