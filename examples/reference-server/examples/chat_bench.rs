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
//!
//! **Cross-node comparison.** With `--mysql URL --redis URL --kafka BROKERS` (a binary built
//! with `--features kafka`) the same workloads run, in the same run, on three setups: one
//! node on the embedded store; one node on MariaDB + Redis; two nodes on MariaDB + Redis +
//! Kafka with every sender on the first node and every recipient on the second (group members
//! alternate between the nodes, so half of each message's deliveries cross nodes):
//!
//! ```text
//! cargo build --release -p reference-server --features kafka
//! cargo run --release -p reference-server --example chat_bench -- \
//!     --mysql "$(scripts/mariadb.sh)" --redis "$(scripts/redis.sh)" --kafka "$(scripts/kafka.sh)"
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    /// Cross-node comparison: the shared MySQL/MariaDB store.
    #[arg(long, requires_all = ["redis", "kafka"])]
    mysql: Option<String>,
    /// Cross-node comparison: Redis.
    #[arg(long, requires_all = ["mysql", "kafka"])]
    redis: Option<String>,
    /// Cross-node comparison: the Kafka bootstrap servers.
    #[arg(long, requires_all = ["mysql", "redis"])]
    kafka: Option<String>,
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
    /// SIGTERM, so the server drains and logs its member-cache hit rate; SIGKILL after 15 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..150 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &PathBuf, extra: &[String]) -> (Server, String) {
    let data = tempfile::tempdir().expect("temp data dir");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(extra)
        // Warnings, and the server's own lines (the member cache's hit rate at shutdown).
        .env("RUST_LOG", "warn,reference_server=info")
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
async fn connect(url: String, user: String, samples: mpsc::UnboundedSender<Duration>) -> Client {
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
                    if let Body::Text { text, .. } = &message.body {
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

/// Sends `count` texts with at most `in_flight` unacknowledged; returns the ack latencies and
/// when the last ack came.
async fn send_all(
    client: Client,
    conversation: ConversationId,
    count: usize,
    in_flight: usize,
) -> (Vec<Duration>, Instant) {
    let acks = futures_util::stream::iter(0..count)
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
        .await;
    (acks, Instant::now())
}

/// What one phase measured.
struct Phase {
    delivered: Vec<Duration>,
    wall: Duration,
    acks: Vec<Duration>,
    ack_wall: Duration,
}

/// Starts every sender at once, then waits for `expected` deliveries (or the timeout) and for
/// every ack.
async fn run_phase(
    jobs: Vec<(Client, ConversationId)>,
    args: (usize, usize),
    samples: &mut mpsc::UnboundedReceiver<Duration>,
    expected: usize,
) -> Phase {
    let (count, in_flight) = args;
    let started = Instant::now();
    let sending: Vec<_> = jobs
        .into_iter()
        .map(|(client, chat)| tokio::spawn(send_all(client, chat, count, in_flight)))
        .collect();
    let mut delivered = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while delivered.len() < expected {
        match tokio::time::timeout_at(deadline, samples.recv()).await {
            Ok(Some(sample)) => delivered.push(sample),
            _ => {
                eprintln!("timed out: {} of {expected} deliveries", delivered.len());
                break;
            }
        }
    }
    let wall = started.elapsed();
    let (mut acks, mut last_ack) = (Vec::new(), started);
    for task in join_all(sending).await {
        let (latencies, done) = task.expect("sender task");
        acks.extend(latencies);
        last_ack = last_ack.max(done);
    }
    let ack_wall = last_ack - started;
    Phase {
        delivered,
        wall,
        acks,
        ack_wall,
    }
}

/// (p50, p99) in milliseconds.
fn percentiles(samples: &[Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut samples = samples.to_vec();
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

/// Both phases against `urls` (senders on the first, recipients on the last; group members
/// alternate).
async fn measure(args: &Args, urls: &[String]) -> (Phase, Phase) {
    // Unique names, so a reused server's (or database's) old conversations do not interfere.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = |kind: &str, i: usize| format!("b{run}-{kind}{i}");
    let (first, last) = (&urls[0], &urls[urls.len() - 1]);

    // Phase 1: 1:1 pairs.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let connect_all =
        |kind: &'static str, n: usize, url: &String, tx: &mpsc::UnboundedSender<Duration>| {
            join_all((0..n).map(|i| connect(url.clone(), name(kind, i), tx.clone())))
        };
    let senders = connect_all("s", args.pairs, first, &tx).await;
    let recipients = connect_all("r", args.pairs, last, &tx).await;
    let chats = join_all(senders.iter().enumerate().map(|(i, sender)| async move {
        let peer = UserId::new(name("r", i)).expect("user id");
        let info = sender.open_direct(&peer).await.expect("open_direct");
        (sender.clone(), info.conversation.id)
    }))
    .await;
    let per_sender = (args.messages, args.in_flight);
    let direct = run_phase(chats, per_sender, &mut rx, args.pairs * args.messages).await;
    for client in senders.iter().chain(&recipients) {
        client.close().await;
    }

    // Phase 2: one group; the first `k` members send.
    let size = args.group_size.max(2);
    let k = args.group_senders.min(size);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let members = join_all((0..size).map(|i| {
        let url = urls[i % urls.len()].clone();
        connect(url, name("g", i), tx.clone())
    }))
    .await;
    let others: Vec<UserId> = (1..size)
        .map(|i| UserId::new(name("g", i)).expect("user id"))
        .collect();
    let info = members[0].create_group("bench", &others).await;
    let group = info.expect("create_group").conversation.id;
    let jobs = members[..k].iter().map(|c| (c.clone(), group.clone()));
    let per_sender = (args.group_messages, args.in_flight);
    let expected = k * args.group_messages * (size - 1);
    let grouped = run_phase(jobs.collect(), per_sender, &mut rx, expected).await;
    for client in &members {
        client.close().await;
    }
    (direct, grouped)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = *BASE;
    let bin = args.server_bin.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        dir.join(format!("reference-server{}", std::env::consts::EXE_SUFFIX))
    });
    // Each setup: a name and the flags of each of its nodes.
    let mut setups: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    match &args.url {
        Some(url) => setups.push((format!("running server {url}"), Vec::new())),
        None => setups.push(("1 node, embedded store".into(), vec![Vec::new()])),
    }
    if let (Some(mysql), Some(redis), Some(kafka)) = (&args.mysql, &args.redis, &args.kafka) {
        let shared = |id: &str, kafka_too: bool| {
            let mut flags = vec!["--store", mysql, "--redis", redis, "--node-id", id];
            if kafka_too {
                flags.extend(["--kafka", kafka]);
            }
            flags.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        setups.push((
            "1 node, MariaDB + Redis".into(),
            vec![shared("bench-solo", false)],
        ));
        setups.push((
            "2 nodes, MariaDB + Redis + Kafka, cross-node".into(),
            vec![shared("bench-a", true), shared("bench-b", true)],
        ));
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let command: Vec<String> = std::env::args().collect();
    println!("command: {}", command.join(" "));
    println!("cores: {cores}");
    for (setup, nodes) in setups {
        let (servers, urls): (Vec<Option<Server>>, Vec<String>) = if nodes.is_empty() {
            (vec![None], args.url.clone().into_iter().collect())
        } else {
            nodes
                .iter()
                .map(|flags| {
                    let (server, url) = start_server(&bin, flags);
                    (Some(server), url)
                })
                .unzip()
        };
        let (direct, grouped) = measure(&args, &urls).await;
        drop(servers);
        report(&args, &setup, &direct, &grouped);
    }
    let disconnects = DISCONNECTS.load(Ordering::Relaxed);
    println!("client disconnects during the run: {disconnects}");
}

fn report(args: &Args, setup: &str, direct: &Phase, grouped: &Phase) {
    let size = args.group_size.max(2);
    let k = args.group_senders.min(size);
    println!();
    println!("### {setup}");
    println!("| workload | count | wall s | rate /s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    let direct_rate = rate(direct.delivered.len(), direct.wall);
    let group_rate = rate(grouped.delivered.len(), grouped.wall);
    let group_lat = percentiles(&grouped.delivered);
    let what = format!("1:1 send→delivered ({} pairs)", args.pairs);
    row(
        &what,
        direct.delivered.len(),
        direct.wall,
        percentiles(&direct.delivered),
    );
    row(
        "1:1 send→ack (stored)",
        direct.acks.len(),
        direct.ack_wall,
        percentiles(&direct.acks),
    );
    let what = format!("group messages ({k} senders of {size})");
    row(&what, grouped.acks.len(), grouped.wall, group_lat);
    let (deliveries, wall) = (grouped.delivered.len(), grouped.wall);
    row(
        "group deliveries, send→delivered",
        deliveries,
        wall,
        group_lat,
    );
    println!(
        "group fanout: {group_rate:.0} deliveries/s = {:.2}x the 1:1 message rate ({direct_rate:.0}/s)",
        group_rate / direct_rate
    );
}

fn row(what: &str, count: usize, wall: Duration, (p50, p99): (f64, f64)) {
    let (secs, per_s) = (wall.as_secs_f64(), rate(count, wall));
    println!("| {what} | {count} | {secs:.2} | {per_s:.0} | {p50:.2} | {p99:.2} |");
}
