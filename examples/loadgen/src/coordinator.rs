//! The coordinator: parses the command line, sets up rooms, spawns the workers, relays
//! commands, merges their histograms and writes the result.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::adapter::{Receipts, SocketMode, Target};
use crate::stats::{self, Progress, WorkerReport};
use crate::worker::{Pattern, SPEC_ENV, WorkerSpec, now_ns};

/// The messenger SDK's load generator.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Scenario 1: open idle connections, hold them, report server memory per connection.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them after all are open (memory is read at the end).
        #[arg(long, default_value_t = 3.0)]
        hold_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Scenario 2: connections/s opened and authenticated, then all reconnecting at once.
    Handshake {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Scenario 3: 1:1 pairs, send→deliver latency at increasing total rates.
    Latency {
        /// Sender/recipient pairs.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Total messages/s of each step, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        rates: Vec<f64>,
        /// Seconds per step.
        #[arg(long, default_value_t = 5.0)]
        step_secs: f64,
        /// Seconds after each step for the last deliveries.
        #[arg(long, default_value_t = 2.0)]
        drain_secs: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Scenario 4: rooms (groups) of many members; some members send.
    Fanout {
        /// Rooms.
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Connected members per room.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Sending members per room.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Total messages/s over all senders (each message goes to members - 1 others).
        #[arg(long, value_delimiter = ',', default_value = "10")]
        rates: Vec<f64>,
        /// Seconds per step.
        #[arg(long, default_value_t = 5.0)]
        step_secs: f64,
        /// Seconds after each step for the last deliveries.
        #[arg(long, default_value_t = 3.0)]
        drain_secs: f64,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every scenario takes.
#[derive(Debug, Args)]
struct Common {
    /// The protocol of the server under test.
    #[arg(long, value_enum, default_value_t = Target::Messenger)]
    target: Target,
    /// Server URL(s); connections are spread over them (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', required = true)]
    url: Vec<String>,
    /// Worker processes (0: one per 15,000 connections, at least 1).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Do not bind connections to per-worker source addresses (127.0.0.2, .3, ...); let the
    /// kernel pick (at most ~28,000 connections per server address then).
    #[arg(long)]
    no_bind: bool,
    /// The last byte of the first worker's source address (worker n binds 127.0.0.(N + n)).
    /// Runs back to back on other bases do not wait for each other's ports in TIME_WAIT.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=250))]
    first_source: u8,
    /// Connections opening at once per worker.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Socket options of the load's connections: `default` keeps the operating system's
    /// (Nagle on, as most clients leave it), `nodelay` sets TCP_NODELAY (as the messenger
    /// client library does).
    #[arg(long, value_enum, default_value_t = SocketMode::Default)]
    socket: SocketMode,
    /// What receivers answer to each message (messenger only): `delivered` (a receipt per
    /// message, as apps send when it reaches the phone), `read` (also a read receipt, as with
    /// the conversation open on screen), or `none`.
    #[arg(long, value_enum, default_value_t = Receipts::None)]
    receipts: Receipts,
    /// Server process ids: their memory is read before and after (`idle`), their CPU time at
    /// every step boundary (`latency`, `fanout`: deliveries per second of server CPU).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A label stored in the result (e.g. `reference-server, durable`).
    #[arg(long, default_value = "")]
    label: String,
}

/// Runs the scenario the command line names.
pub(crate) async fn run(cli: Cli) -> Result<(), String> {
    let command: Vec<String> = std::env::args().collect();
    let prefix = format!("l{}-", now_ns() / 1_000_000 % 100_000_000);
    let (name, common, connections, pattern, rates, step_secs, drain_secs, hold) =
        match cli.scenario {
            Scenario::Idle {
                connections,
                hold_secs,
                common,
            } => (
                "idle",
                common,
                connections,
                Pattern::Idle,
                vec![],
                0.0,
                0.0,
                hold_secs,
            ),
            Scenario::Handshake {
                connections,
                common,
            } => (
                "handshake",
                common,
                connections,
                Pattern::Idle,
                vec![],
                0.0,
                0.0,
                0.0,
            ),
            Scenario::Latency {
                pairs,
                rates,
                step_secs,
                drain_secs,
                common,
            } => (
                "latency",
                common,
                pairs * 2,
                Pattern::Pairs,
                rates,
                step_secs,
                drain_secs,
                0.0,
            ),
            Scenario::Fanout {
                groups,
                members,
                senders,
                rates,
                step_secs,
                drain_secs,
                common,
            } => {
                let members = members.max(2);
                let senders = senders.clamp(1, members);
                let (rooms, cursor) = match common.target {
                    Target::Messenger => {
                        create_groups(&common.url[0], &prefix, groups, members).await?
                    }
                    Target::Baseline | Target::Socketio => {
                        ((0..groups).map(|g| format!("g{g}")).collect(), 0)
                    }
                };
                let pattern = Pattern::Groups {
                    members,
                    rooms,
                    cursor,
                    senders,
                };
                (
                    "fanout",
                    common,
                    groups * members,
                    pattern,
                    rates,
                    step_secs,
                    drain_secs,
                    0.0,
                )
            }
        };

    // Split the connections over workers (pairs and rooms are never split: sender and
    // recipients may live in different workers, which is fine, but pairs stay together so a
    // worker's share of the rate is exact).
    let workers = if common.workers == 0 {
        connections.div_ceil(15_000).max(1)
    } else {
        common.workers
    };
    let senders_total = senders_in(&pattern, 0, connections);
    let mut specs = Vec::new();
    let per = connections.div_ceil(workers);
    let per = per + per % 2;
    let mut first = 0;
    for index in 0..workers {
        let count = per.min(connections - first);
        let share = if senders_total == 0 {
            0.0
        } else {
            senders_in(&pattern, first, count) as f64 / senders_total as f64
        };
        specs.push(WorkerSpec {
            index,
            target: common.target,
            urls: common.url.clone(),
            bind_source: !common.no_bind,
            first_source: common.first_source,
            prefix: prefix.clone(),
            first,
            count,
            connect_concurrency: common.connect_concurrency,
            payload_bytes: common.payload_bytes,
            nodelay: common.socket == SocketMode::Nodelay,
            receipts: common.receipts,
            pattern: pattern.clone(),
            rates: rates.iter().map(|rate| rate * share).collect(),
            step_secs,
            drain_secs,
        });
        first += count;
        if first >= connections {
            break;
        }
    }
    eprintln!(
        "loadgen {name}: {connections} connections, {} workers (source addresses 127.0.0.{}..={}), target {:?}",
        specs.len(),
        common.first_source,
        usize::from(common.first_source) + specs.len() - 1,
        common.target
    );

    let memory_before = memory(&common.server_pid);
    let mut cpu_sampler: Option<tokio::task::JoinHandle<Vec<(f64, f64)>>> = None;
    let started = now_ns();
    let mut pool = Pool::spawn(&specs)?;
    let ready = pool.wait_all("ready").await?;
    let connected: u64 = ready.iter().map(|p| p.connected).sum();
    eprintln!("all workers ready: {connected} sessions open");

    let mut result = json!({
        "scenario": name,
        "target": common.target,
        "label": common.label,
        "socket": common.socket,
        "receipts": common.receipts,
        "command": command.join(" "),
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "connections": connections,
        "workers": specs.len(),
        "started_unix_ms": started / 1_000_000,
    });
    match name {
        "idle" => {
            tokio::time::sleep(Duration::from_secs_f64(hold.max(0.5))).await;
            let memory_after = memory(&common.server_pid);
            let workers_rss = pool.worker_rss();
            result["memory"] = memory_report(&memory_before, &memory_after, workers_rss, connected);
            pool.command_all("stop").await;
        }
        "handshake" => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pool.command_all("reconnect").await;
            pool.wait_all("reconnected").await?;
            pool.command_all("stop").await;
        }
        _ => {
            let start = now_ns() + 1_000_000_000;
            pool.command_all(&format!("go {start}")).await;
            result["start_unix_ns"] = json!(start);
            let step_ns = ((step_secs + drain_secs) * 1e9) as u64;
            let servers = common.server_pid.clone();
            let workers: Vec<u32> = pool.children.iter().filter_map(Child::id).collect();
            let steps = rates.len() as u64;
            cpu_sampler = Some(tokio::spawn(async move {
                let mut samples = Vec::new();
                for k in 0..=steps {
                    let at = start + k * step_ns;
                    let now = now_ns();
                    if at > now {
                        tokio::time::sleep(Duration::from_nanos(at - now)).await;
                    }
                    samples.push((cpu_secs(&servers), cpu_secs(&workers)));
                }
                samples
            }));
        }
    }
    let reports = pool.results().await?;
    let merged = merge(&reports, &rates)?;
    finish_result(
        &mut result,
        &merged,
        &pattern,
        &rates,
        step_secs,
        drain_secs,
    );
    if name == "latency" || name == "fanout" {
        let start = result["start_unix_ns"].as_u64().unwrap_or(0);
        add_step_rates(&mut result, &merged, start, step_secs, drain_secs);
    }
    if let Some(sampler) = cpu_sampler {
        let samples = sampler.await.unwrap_or_default();
        for (k, pair) in samples.windows(2).enumerate() {
            let server = pair[1].0 - pair[0].0;
            let loadgen = pair[1].1 - pair[0].1;
            if let Some(step) = result["steps"].get_mut(k) {
                let delivered = step["delivered"].as_f64().unwrap_or(0.0);
                step["server_cpu_secs"] = json!(server);
                step["loadgen_cpu_secs"] = json!(loadgen);
                if server > 0.0 && !common.server_pid.is_empty() {
                    step["deliveries_per_server_cpu_sec"] = json!(delivered / server);
                }
            }
        }
    }
    print_summary(&result);
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&result).map_err(|err| err.to_string())?;
        std::fs::write(path, text).map_err(|err| format!("{}: {err}", path.display()))?;
        eprintln!("result written to {}", path.display());
    }
    Ok(())
}

/// How many of connections `first..first + count` send.
fn senders_in(pattern: &Pattern, first: usize, count: usize) -> usize {
    (first..first + count)
        .filter(|&i| match pattern {
            Pattern::Idle => false,
            Pattern::Pairs => i % 2 == 0,
            Pattern::Groups {
                members, senders, ..
            } => i % members.max(&1) < *senders,
        })
        .count()
}

/// Creates `groups` messenger groups of `members` users (plus an owner who stays offline);
/// returns their ids and the head every group has after setup.
async fn create_groups(
    url: &str,
    prefix: &str,
    groups: usize,
    members: usize,
) -> Result<(Vec<String>, u64), String> {
    // TCP_NODELAY (the `true`), like every socket of the project: no Nagle delay per frame.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|err| format!("setup connection to {url}: {err}"))?;
    let hello = json!({"type": "hello", "v": 1, "token": format!("{prefix}owner:setup")});
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(|err| err.to_string())?;
    let mut request = 0u64;
    const BATCH: usize = 1000;
    let mut ids = Vec::new();
    let mut head = 1;
    for group in 0..groups {
        let users: Vec<String> = (0..members)
            .map(|m| format!("{prefix}{}", group * members + m))
            .collect();
        let mut chunks = users.chunks(BATCH);
        let founding = chunks.next().unwrap_or(&[]);
        let created = ask(
            &mut ws,
            &mut request,
            json!({"type": "create_group", "title": format!("load {group}"), "members": founding}),
        )
        .await?;
        let id = created["conversation"]["id"]
            .as_str()
            .ok_or_else(|| format!("create_group answered {created}"))?
            .to_owned();
        head = 1;
        for chunk in chunks {
            let changed = ask(
                &mut ws,
                &mut request,
                json!({"type": "add_members", "conversation": id, "users": chunk}),
            )
            .await?;
            head = changed["seq"].as_u64().unwrap_or(head + 1);
        }
        ids.push(id);
    }
    let _ = ws.close(None).await;
    eprintln!("created {groups} groups of {members} members (head {head})");
    Ok((ids, head))
}

type SetupSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one request frame (with a fresh request id) and waits for its answer.
async fn ask(ws: &mut SetupSocket, request: &mut u64, mut frame: Value) -> Result<Value, String> {
    *request += 1;
    let id = format!("setup{request}");
    frame["id"] = json!(id);
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|err| err.to_string())?;
    loop {
        let reply = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("setup connection closed".to_owned()),
        };
        let reply: Value = serde_json::from_str(&reply).map_err(|err| err.to_string())?;
        if reply["id"] == json!(id) {
            if reply["type"] == "error" {
                return Err(format!("setup refused: {reply}"));
            }
            return Ok(reply);
        }
    }
}

/// The worker processes and their output lines.
struct Pool {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(usize, String)>,
    progress: Vec<Progress>,
}

impl Pool {
    fn spawn(specs: &[WorkerSpec]) -> Result<Pool, String> {
        let exe = std::env::current_exe().map_err(|err| err.to_string())?;
        let (tx, lines) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for spec in specs {
            let json = serde_json::to_string(spec).map_err(|err| err.to_string())?;
            let mut child = Command::new(&exe)
                .env(SPEC_ENV, json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|err| format!("spawn worker: {err}"))?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            stdins.push(child.stdin.take().ok_or("worker stdin")?);
            let tx = tx.clone();
            let index = spec.index;
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((index, line)).is_err() {
                        break;
                    }
                }
                let _ = tx.send((index, "exit".to_owned()));
            });
            children.push(child);
        }
        Ok(Pool {
            progress: vec![Progress::default(); children.len()],
            children,
            stdins,
            lines,
        })
    }

    async fn command_all(&mut self, command: &str) {
        for stdin in &mut self.stdins {
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    /// Waits for one `kind` line from every worker, printing merged progress meanwhile.
    async fn wait_all(&mut self, kind: &str) -> Result<Vec<Progress>, String> {
        let mut got: Vec<Option<Progress>> = vec![None; self.children.len()];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while got.iter().any(Option::is_none) {
            tokio::select! {
                line = self.lines.recv() => {
                    let Some((index, line)) = line else { return Err("workers gone".into()) };
                    let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    if word == "exit" {
                        return Err(format!("worker {index} exited while waiting for `{kind}`"));
                    }
                    let progress: Option<Progress> = serde_json::from_str(rest).ok();
                    if let Some(progress) = &progress {
                        self.progress[index] = progress.clone();
                    }
                    if word == kind {
                        got[index] = Some(progress.unwrap_or_default());
                    }
                }
                _ = tick.tick() => self.print_progress(kind),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    fn print_progress(&self, waiting_for: &str) {
        let mut total = Progress::default();
        for p in &self.progress {
            total.connected += p.connected;
            total.failed += p.failed;
            total.sent += p.sent;
            total.delivered += p.delivered;
            total.acked += p.acked;
            total.errors += p.errors;
            total.disconnects += p.disconnects;
        }
        eprintln!(
            "progress ({waiting_for}): connected {} failed {} sent {} delivered {} acked {} errors {} disconnects {}",
            total.connected,
            total.failed,
            total.sent,
            total.delivered,
            total.acked,
            total.errors,
            total.disconnects
        );
    }

    /// Resident memory of the workers, bytes.
    fn worker_rss(&self) -> u64 {
        self.children
            .iter()
            .filter_map(Child::id)
            .filter_map(|pid| status_kb(pid, "VmRSS:"))
            .sum::<u64>()
            * 1024
    }

    /// Every worker's `result` line.
    async fn results(&mut self) -> Result<Vec<WorkerReport>, String> {
        let mut got: Vec<Option<WorkerReport>> = vec![None; self.children.len()];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while got.iter().any(Option::is_none) {
            tokio::select! {
                line = self.lines.recv() => {
                    let Some((index, line)) = line else { return Err("workers gone".into()) };
                    let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    match word {
                        "result" => {
                            let report = serde_json::from_str(rest)
                                .map_err(|err| format!("worker {index} result: {err}"))?;
                            got[index] = Some(report);
                        }
                        "progress" => {
                            if let Ok(progress) = serde_json::from_str(rest) {
                                self.progress[index] = progress;
                            }
                        }
                        "exit" if got[index].is_none() => {
                            return Err(format!("worker {index} exited without a result"));
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => self.print_progress("result"),
            }
        }
        for child in &mut self.children {
            let _ = child.wait().await;
        }
        Ok(got.into_iter().flatten().collect())
    }
}

/// A `kB` field of /proc/PID/status.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of `pids` (summed; /proc/PID/stat, 100 ticks per second).
fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some((user + system) as f64 / 100.0)
        })
        .sum()
}

/// A `kB` field of /proc/meminfo.
fn meminfo_kb(field: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Memory readings, bytes: the servers' VmRSS and RssAnon (summed), the box's used memory
/// (MemTotal - MemAvailable; other processes on a shared box move it too) and the kernel's
/// TCP buffer memory (/proc/net/sockstat `TCP: ... mem` pages).
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    server_rss: u64,
    server_anon: u64,
    box_used: u64,
    tcp_buffers: u64,
}

/// The kernel's TCP buffer memory, bytes.
fn tcp_buffer_bytes() -> u64 {
    let stat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = stat
        .lines()
        .find(|line| line.starts_with("TCP:"))
        .and_then(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mem")?;
            words.get(at + 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    pages * 4096
}

fn memory(pids: &[u32]) -> Memory {
    let sum = |field: &str| -> u64 {
        pids.iter()
            .filter_map(|&pid| status_kb(pid, field))
            .sum::<u64>()
            * 1024
    };
    let used = meminfo_kb("MemTotal:")
        .zip(meminfo_kb("MemAvailable:"))
        .map_or(0, |(total, available)| {
            total.saturating_sub(available) * 1024
        });
    Memory {
        server_rss: sum("VmRSS:"),
        server_anon: sum("RssAnon:"),
        box_used: used,
        tcp_buffers: tcp_buffer_bytes(),
    }
}

fn memory_report(before: &Memory, after: &Memory, workers_rss: u64, connected: u64) -> Value {
    let per = |delta: u64| {
        if connected == 0 {
            0.0
        } else {
            delta as f64 / connected as f64
        }
    };
    let anon = after.server_anon.saturating_sub(before.server_anon);
    let rss = after.server_rss.saturating_sub(before.server_rss);
    let used = after.box_used.saturating_sub(before.box_used);
    // Box memory not explained by the load generator's processes: the servers' user space
    // plus the kernel's memory for both ends of every loopback connection.
    let server_and_kernel = used.saturating_sub(workers_rss);
    json!({
        "server_rss_before": before.server_rss,
        "server_rss_after": after.server_rss,
        "server_anon_before": before.server_anon,
        "server_anon_after": after.server_anon,
        "server_user_bytes_per_connection": per(anon),
        "server_rss_bytes_per_connection": per(rss),
        "box_used_delta": used,
        "loadgen_rss": workers_rss,
        "server_and_kernel_bytes_per_connection": per(server_and_kernel),
        "kernel_bytes_per_connection_both_ends": per(server_and_kernel.saturating_sub(anon)),
        "kernel_tcp_buffer_bytes_per_connection_both_ends":
            per(after.tcp_buffers.saturating_sub(before.tcp_buffers)),
    })
}

/// Worker reports merged: per-step counters and histograms, and the totals.
struct Merged {
    steps: Vec<MergedStep>,
    connected: u64,
    failed: u64,
    disconnects: u64,
    errors: u64,
    duplicates: u64,
    gaps: u64,
    receipts: u64,
    handshake: Histogram<u64>,
    reconnect: Histogram<u64>,
    rounds: [(u64, u64); 2],
    reconnected: u64,
}

struct MergedStep {
    sent: u64,
    delivered: u64,
    acked: u64,
    last_delivery_ns: u64,
    delivery: Histogram<u64>,
    ack: Histogram<u64>,
}

fn merge(reports: &[WorkerReport], rates: &[f64]) -> Result<Merged, String> {
    let mut steps: Vec<MergedStep> = (0..rates.len().max(1))
        .map(|_| MergedStep {
            sent: 0,
            delivered: 0,
            acked: 0,
            last_delivery_ns: 0,
            delivery: stats::histogram(),
            ack: stats::histogram(),
        })
        .collect();
    let mut merged = Merged {
        steps: Vec::new(),
        connected: 0,
        failed: 0,
        disconnects: 0,
        errors: 0,
        duplicates: 0,
        gaps: 0,
        receipts: 0,
        handshake: stats::histogram(),
        reconnect: stats::histogram(),
        rounds: [(u64::MAX, 0), (u64::MAX, 0)],
        reconnected: 0,
    };
    let add = |into: &mut Histogram<u64>, hex: &str| -> Result<(), String> {
        into.add(stats::decode(hex)?)
            .map_err(|err| format!("merge histograms: {err:?}"))
    };
    for report in reports {
        for (step, part) in steps.iter_mut().zip(&report.steps) {
            step.sent += part.sent;
            step.delivered += part.delivered;
            step.acked += part.acked;
            step.last_delivery_ns = step.last_delivery_ns.max(part.last_delivery_ns);
            add(&mut step.delivery, &part.delivery)?;
            add(&mut step.ack, &part.ack)?;
        }
        merged.connected += report.connected;
        merged.failed += report.failed;
        merged.disconnects += report.disconnects;
        merged.errors += report.errors;
        merged.duplicates += report.duplicates;
        merged.gaps += report.gaps;
        merged.receipts += report.receipts;
        merged.reconnected += report.reconnected;
        add(&mut merged.handshake, &report.handshake)?;
        add(&mut merged.reconnect, &report.reconnect)?;
        for (round, (first, last)) in merged.rounds.iter_mut().zip(report.rounds) {
            if first != 0 {
                round.0 = round.0.min(first);
            }
            round.1 = round.1.max(last);
        }
    }
    merged.steps = steps;
    Ok(merged)
}

/// p50/p99/p99.9/max of a µs histogram, in ms.
fn percentiles(histogram: &Histogram<u64>) -> Value {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": histogram.len(),
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": histogram.max() as f64 / 1000.0,
    })
}

fn finish_result(
    result: &mut Value,
    merged: &Merged,
    pattern: &Pattern,
    rates: &[f64],
    step_secs: f64,
    drain_secs: f64,
) {
    let recipients = match pattern {
        Pattern::Idle => 0,
        Pattern::Pairs => 1,
        Pattern::Groups { members, .. } => members - 1,
    };
    result["connected"] = json!(merged.connected);
    result["failed"] = json!(merged.failed);
    result["disconnects"] = json!(merged.disconnects);
    result["error_frames"] = json!(merged.errors);
    result["duplicates"] = json!(merged.duplicates);
    result["gaps"] = json!(merged.gaps);
    result["receipt_frames"] = json!(merged.receipts);
    let round = |n: usize, count: u64, histogram: &Histogram<u64>| {
        let (first, last) = merged.rounds[n];
        let secs = if last > first && first != u64::MAX {
            (last - first) as f64 / 1e9
        } else {
            0.0
        };
        json!({
            "sessions": count,
            "wall_secs": secs,
            "sessions_per_sec": if secs > 0.0 { count as f64 / secs } else { 0.0 },
            "latency": percentiles(histogram),
        })
    };
    result["connect"] = round(0, merged.connected, &merged.handshake);
    if merged.reconnected > 0 {
        result["reconnect"] = round(1, merged.reconnected, &merged.reconnect);
    }
    if !rates.is_empty() {
        result["step_secs"] = json!(step_secs);
        result["drain_secs"] = json!(drain_secs);
        result["recipients_per_message"] = json!(recipients);
        result["steps"] = merged
            .steps
            .iter()
            .zip(rates)
            .map(|(step, rate)| {
                let expected = step.sent * recipients as u64;
                json!({
                    "offered_messages_per_sec": rate,
                    "sent": step.sent,
                    "acked": step.acked,
                    "expected_deliveries": expected,
                    "delivered": step.delivered,
                    "lost": expected.saturating_sub(step.delivered),
                    "delivery": percentiles(&step.delivery),
                    "ack": percentiles(&step.ack),
                })
            })
            .collect();
    }
}

fn add_step_rates(
    result: &mut Value,
    merged: &Merged,
    start: u64,
    step_secs: f64,
    drain_secs: f64,
) {
    let step_ns = ((step_secs + drain_secs) * 1e9) as u64;
    for (k, step) in merged.steps.iter().enumerate() {
        let step_start = start + k as u64 * step_ns;
        let wall = step.last_delivery_ns.saturating_sub(step_start) as f64 / 1e9;
        let wall = wall.max(step_secs);
        if let Some(entry) = result["steps"].get_mut(k) {
            entry["deliveries_per_sec"] = json!(step.delivered as f64 / wall);
            entry["delivery_wall_secs"] = json!(wall);
        }
    }
}

fn print_summary(result: &Value) {
    println!(
        "== {} against {} {} ==",
        result["scenario"].as_str().unwrap_or(""),
        result["target"].as_str().unwrap_or(""),
        result["label"].as_str().unwrap_or("")
    );
    println!(
        "connections {} (failed {}, disconnects {}, error frames {}, duplicates {}, gaps {})",
        result["connected"],
        result["failed"],
        result["disconnects"],
        result["error_frames"],
        result["duplicates"],
        result["gaps"]
    );
    print_sessions("connect", &result["connect"]);
    if let Some(reconnect) = result.get("reconnect") {
        print_sessions("reconnect (all at once)", reconnect);
    }
    if let Some(memory) = result.get("memory") {
        println!(
            "memory per connection: server user space (RssAnon) {:.0} B, server RSS {:.0} B, server + kernel (both socket ends) {:.0} B",
            memory["server_user_bytes_per_connection"]
                .as_f64()
                .unwrap_or(0.0),
            memory["server_rss_bytes_per_connection"]
                .as_f64()
                .unwrap_or(0.0),
            memory["server_and_kernel_bytes_per_connection"]
                .as_f64()
                .unwrap_or(0.0)
        );
    }
    if let Some(steps) = result["steps"].as_array() {
        println!(
            "| offered msg/s | sent | delivered | lost | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | ack p50 ms | ack p99 ms | server CPU s | deliveries per server CPU s | loadgen CPU s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for step in steps {
            let d = &step["delivery"];
            let a = &step["ack"];
            println!(
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} |",
                step["offered_messages_per_sec"],
                step["sent"],
                step["delivered"],
                step["lost"],
                step["deliveries_per_sec"].as_f64().unwrap_or(0.0),
                d["p50_ms"],
                d["p99_ms"],
                d["p999_ms"],
                d["max_ms"],
                a["p50_ms"],
                a["p99_ms"],
                step["server_cpu_secs"].as_f64().unwrap_or(0.0),
                step["deliveries_per_server_cpu_sec"]
                    .as_f64()
                    .unwrap_or(0.0),
                step["loadgen_cpu_secs"].as_f64().unwrap_or(0.0)
            );
        }
    }
}

/// One line for a batch of sessions (connect or reconnect) of the summary.
fn print_sessions(label: &str, sessions: &Value) {
    println!(
        "{label}: {} sessions in {:.2} s = {:.0}/s; handshake p50 {} ms p99 {} ms",
        sessions["sessions"],
        sessions["wall_secs"].as_f64().unwrap_or(0.0),
        sessions["sessions_per_sec"].as_f64().unwrap_or(0.0),
        sessions["latency"]["p50_ms"],
        sessions["latency"]["p99_ms"]
    );
}
