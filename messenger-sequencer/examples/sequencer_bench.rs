//! Benchmark scenario 5: sequencer allocations per second, in memory and on Redis, next to
//! `redis-benchmark`'s pipelined `INCR` on the same server, all in one run.
//!
//! ```text
//! scripts/redis.sh                # prints redis://127.0.0.1:16379/
//! scripts/redis.sh cluster        # optional: prints the cluster's node URLs
//! cargo run --release -p messenger-sequencer --features redis --example sequencer_bench -- \
//!     redis://127.0.0.1:16379/ [redis://127.0.0.1:17000/,...]
//! ```
//!
//! Without arguments it reads `MESSENGER_TEST_REDIS_URL` and `MESSENGER_TEST_REDIS_CLUSTER`
//! (what `scripts/redis.sh` prints and `.ci/run` exports); with neither it measures memory
//! only. `BENCH_TASKS` (default 512) tasks allocate `BENCH_OPS` (default 400 000) seqs in
//! total, round robin over `BENCH_CONVERSATIONS` (default 1 000) conversations, through the
//! `tower` service a server uses. A small `BENCH_CONVERSATIONS` (say 10) is the hot-group
//! variant: many allocations of one conversation then share a batch, and one `INCRBY n`.
//! `BENCH_MAX_BATCH` and `BENCH_PIPELINES_IN_FLIGHT` override the batching configuration.
//!
//! Per server it prints, each measured in this run:
//! - `redis-benchmark -t incr -P 16 -c 50`: the target's baseline (plain `INCR`, 16 per
//!   round trip, 50 connections). Run before and after the sequencer; the ratio uses their
//!   mean.
//! - `redis-benchmark -P 16 -c 50 -r 1000 INCR <counter key>` on the very counters the
//!   sequencer uses (1 000 keys instead of one).
//! - The Redis sequencer, batched (the default configuration) and unbatched (`max_batch` 1:
//!   one `INCR` per allocation, pipelined only by the multiplexed connection).
//!
//! Figures are not assertions: they vary from run to run on shared machines.

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use messenger_core::sequencer::NextSeq;
use messenger_core::{ConversationId, Error, Seq, call};
use messenger_sequencer::memory::{MemorySequencer, NoFloor};
use messenger_sequencer::redis::{RedisSequencer, RedisSequencerConfig};
use messenger_sequencer::{Sequencer, SequencerBackend};
use redis::aio::ConnectionLike;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Conversations the allocations spread over (and `redis-benchmark -r` draws from), unless
/// `BENCH_CONVERSATIONS` says otherwise.
const CONVERSATIONS: usize = 1_000;
/// The `redis-benchmark` settings of the target: 50 connections, 16 commands per round trip.
const CLIENTS: &str = "50";
const PIPELINE: &str = "16";

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let standalone = args
        .next()
        .or_else(|| std::env::var("MESSENGER_TEST_REDIS_URL").ok())
        .filter(|url| !url.trim().is_empty());
    let cluster = args
        .next()
        .or_else(|| std::env::var("MESSENGER_TEST_REDIS_CLUSTER").ok())
        .filter(|nodes| !nodes.trim().is_empty());
    let tasks = env_number("BENCH_TASKS", 512)?;
    let ops = env_number("BENCH_OPS", 400_000)?;
    let conversation_count = env_number("BENCH_CONVERSATIONS", CONVERSATIONS)?;
    let per_task = ops.div_ceil(tasks);
    let total = tasks * per_task;

    println!("machine: {}", machine());
    println!(
        "workload: {tasks} tasks x {per_task} allocations = {total}, round robin over \
         {conversation_count} conversations"
    );
    // The conversation ids match `redis-benchmark -r`'s `__rand_int__` (12 digits), so it can
    // drive the very same counters.
    let conversations: Vec<ConversationId> = (0..conversation_count)
        .map(|n| ConversationId::new(format!("g:bench-{n:012}")))
        .collect::<Result<_, _>>()?;

    let memory = Sequencer::new(MemorySequencer::new(NoFloor));
    let memory_rate = allocate(&memory, &conversations, tasks, per_task).await?;
    println!("\n| sequencer | allocations/s |\n|---|---:|");
    println!("| memory | {memory_rate:.0} |");

    if let Some(url) = standalone {
        let url = url.trim().to_owned();
        let client = redis::Client::open(url.as_str())?;
        let port = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(_, port) => *port,
            other => return Err(format!("{other:?}: only TCP servers are measured").into()),
        };
        let connection = redis::aio::ConnectionManager::new(client).await?;
        println!("\nstandalone Redis at {url} (port {port})");
        measure_redis(
            connection,
            &["-p", &port.to_string()],
            &conversations,
            tasks,
            per_task,
        )
        .await?;
    } else {
        println!("\nno standalone Redis given (argument 1 or MESSENGER_TEST_REDIS_URL): skipped");
    }

    if let Some(nodes) = cluster {
        let nodes: Vec<String> = nodes
            .split(',')
            .map(|node| node.trim().to_owned())
            .collect();
        let first = redis::Client::open(nodes[0].as_str())?;
        let port = match first.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(_, port) => *port,
            other => return Err(format!("{other:?}: only TCP servers are measured").into()),
        };
        let connection = redis::cluster::ClusterClient::new(nodes.clone())?
            .get_async_connection()
            .await?;
        println!("\nRedis Cluster at {} ({} nodes)", nodes[0], nodes.len());
        measure_redis(
            connection,
            &["--cluster", "-p", &port.to_string()],
            &conversations,
            tasks,
            per_task,
        )
        .await?;
    } else {
        println!("\nno Redis Cluster given (argument 2 or MESSENGER_TEST_REDIS_CLUSTER): skipped");
    }
    Ok(())
}

/// The sequencer batched and unbatched on `connection`, between two `redis-benchmark` runs of
/// pipelined `INCR`, and `redis-benchmark` and the `redis` crate driving `INCR` on the same
/// counters.
async fn measure_redis<C>(
    connection: C,
    target: &[&str],
    conversations: &[ConversationId],
    tasks: usize,
    per_task: usize,
) -> Result<(), Failure>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let total = tasks * per_task;
    let benchmark_requests = (total * 4).max(1_000_000).to_string();
    let prefix = format!("messenger-bench-{}", std::process::id());
    let mut config = RedisSequencerConfig::default().with_key_prefix(prefix.clone());
    if let Ok(max_batch) = std::env::var("BENCH_MAX_BATCH") {
        config = config.with_max_batch(max_batch.trim().parse()?);
    }
    if let Ok(in_flight) = std::env::var("BENCH_PIPELINES_IN_FLIGHT") {
        config = config.with_pipelines_in_flight(in_flight.trim().parse()?);
    }

    let incr_before = redis_benchmark(
        target,
        &["-t", "incr", "-n", &benchmark_requests, "-P", PIPELINE],
    )?;

    let batched = Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        NoFloor,
        config.clone(),
    ));
    let batched_rate = allocate(&batched, conversations, tasks, per_task).await?;
    let stats = batched.backend().batch_stats();

    let unbatched = Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        NoFloor,
        config.clone().with_max_batch(1),
    ));
    let unbatched_rate = allocate(&unbatched, conversations, tasks, per_task).await?;

    // INCR on the sequencer's own counters, driven by redis-benchmark (standalone only:
    // its cluster mode picks keys itself).
    let key = format!("{prefix}:{{g:bench-__rand_int__}}:seq");
    let same_counters = if target.contains(&"--cluster") {
        None
    } else {
        Some(redis_benchmark(
            target,
            &[
                "-n",
                &benchmark_requests,
                "-P",
                PIPELINE,
                "-r",
                &conversations.len().to_string(),
                "INCR",
                &key,
            ],
        )?)
    };

    // The client library's own ceiling: INCR on the same counters in explicit pipelines of
    // 256 from 2 tasks, no per-allocation task, channel or state.
    let library = pipelined_incr(&connection, &prefix, conversations, total).await?;

    let incr_after = redis_benchmark(
        target,
        &["-t", "incr", "-n", &benchmark_requests, "-P", PIPELINE],
    )?;
    let incr = (incr_before + incr_after) / 2.0;
    let mean_batch = stats.requests as f64 / stats.pipelines.max(1) as f64;

    println!("| what | ops/s | sequencer batched / this |\n|---|---:|---:|");
    println!(
        "| redis-benchmark INCR -P {PIPELINE} -c {CLIENTS} (before / after: {incr_before:.0} / \
         {incr_after:.0}) | {incr:.0} | {:.2} |",
        batched_rate / incr
    );
    if let Some(same_counters) = same_counters {
        println!(
            "| redis-benchmark INCR -P {PIPELINE} -c {CLIENTS} -r {} on the sequencer's \
             counters | {same_counters:.0} | {:.2} |",
            conversations.len(),
            batched_rate / same_counters
        );
    }
    println!(
        "| redis-rs alone: INCR in explicit pipelines of 256, 2 tasks | {library:.0} | {:.2} |",
        batched_rate / library
    );
    println!(
        "| Redis sequencer, batched (max_batch {}, {} pipelines in flight) | \
         {batched_rate:.0} | 1.00 |",
        config.max_batch, config.pipelines_in_flight
    );
    println!(
        "| Redis sequencer, unbatched (max_batch 1) | {unbatched_rate:.0} | {:.2} |",
        batched_rate / unbatched_rate
    );
    println!(
        "batches: {} pipelines carried {} allocations (mean {mean_batch:.1} per pipeline) in {} \
         commands ({} allocations shared an INCRBY), {} sent again alone",
        stats.pipelines,
        stats.requests,
        stats.requests - stats.coalesced,
        stats.coalesced,
        stats.sent_again
    );
    println!(
        "target (batched >= 0.90 x pipelined INCR): {:.2} -> {}",
        batched_rate / incr,
        if batched_rate >= 0.9 * incr {
            "reached"
        } else {
            "not reached"
        }
    );
    Ok(())
}

/// `INCR`s per second sent by the `redis` crate itself: 2 tasks, each sending explicit
/// pipelines of 256 `INCR`s over the sequencer's counters, `total` in all.
async fn pipelined_incr<C>(
    connection: &C,
    prefix: &str,
    conversations: &[ConversationId],
    total: usize,
) -> Result<f64, Failure>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    const TASKS: usize = 2;
    const BATCH: usize = 256;
    let keys: Vec<String> = conversations
        .iter()
        .map(|conversation| format!("{prefix}:{{{conversation}}}:seq"))
        .collect();
    let rounds = total.div_ceil(TASKS * BATCH);
    let start = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let mut connection = connection.clone();
            let keys = keys.clone();
            let cluster = (&connection as &dyn std::any::Any)
                .downcast_ref::<redis::cluster_async::ClusterConnection>()
                .is_some();
            tokio::spawn(async move {
                for round in 0..rounds {
                    let mut pipeline = redis::pipe();
                    for n in 0..BATCH {
                        // On a cluster a pipeline must stay on one slot: one key per pipeline.
                        let index = if cluster {
                            (task + round * TASKS) % keys.len()
                        } else {
                            (task * BATCH + n + round * TASKS * BATCH) % keys.len()
                        };
                        pipeline.cmd("INCR").arg(&keys[index]);
                    }
                    let _: Vec<i64> = pipeline.query_async(&mut connection).await?;
                }
                Ok::<(), Failure>(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok((rounds * TASKS * BATCH) as f64 / seconds(start.elapsed()))
}

/// Allocations per second: `tasks` tasks each allocate `per_task` seqs, round robin over
/// `conversations`, after one warm-up allocation per conversation (the first use reads the
/// floor). Checks that every task's seqs of a conversation increase.
async fn allocate<B: SequencerBackend>(
    sequencer: &Sequencer<B>,
    conversations: &[ConversationId],
    tasks: usize,
    per_task: usize,
) -> Result<f64, Failure> {
    for conversation in conversations {
        next(sequencer, conversation.clone()).await?;
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let sequencer = sequencer.clone();
            let conversations = conversations.to_vec();
            tokio::spawn(async move {
                let mut last = vec![Seq::ZERO; conversations.len()];
                for n in 0..per_task {
                    let index = (task + n * tasks) % conversations.len();
                    let seq = next(&sequencer, conversations[index].clone()).await?;
                    if seq <= last[index] {
                        return Err(format!("{seq} after {}", last[index]).into());
                    }
                    last[index] = seq;
                }
                Ok::<(), Failure>(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok((tasks * per_task) as f64 / seconds(start.elapsed()))
}

fn next<B: SequencerBackend>(
    sequencer: &Sequencer<B>,
    conversation: ConversationId,
) -> impl Future<Output = Result<Seq, Error>> + Send + 'static {
    let sequencer = sequencer.clone();
    async move { call(&sequencer, NextSeq { conversation }).await }
}

fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64().max(1e-9)
}

/// Runs `redis-benchmark -q -c 50 <target> <arguments>` and answers its requests per second.
fn redis_benchmark(target: &[&str], arguments: &[&str]) -> Result<f64, Failure> {
    let output = Command::new("redis-benchmark")
        .args(["-q", "-c", CLIENTS])
        .args(target)
        .args(arguments)
        .output()
        .map_err(|err| {
            format!("cannot run redis-benchmark ({err}); it comes with Debian's redis-tools")
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "redis-benchmark {arguments:?} failed: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    // `-q` prints `<test>: <rate> requests per second, p50=...` after progress lines ending in
    // carriage returns.
    text.split(['\r', '\n'])
        .rev()
        .find_map(|line| {
            let (_, rest) = line.rsplit_once(": ")?;
            let rate = rest.strip_suffix(" requests per second").or_else(|| {
                rest.split_once(" requests per second,")
                    .map(|(rate, _)| rate)
            })?;
            rate.trim().parse::<f64>().ok()
        })
        .ok_or_else(|| format!("no rate in redis-benchmark's output: {text:?}").into())
}

/// The number in the environment variable `name`, or `default`.
fn env_number(name: &str, default: usize) -> Result<usize, Failure> {
    match std::env::var(name) {
        Ok(value) => Ok(value
            .trim()
            .parse::<usize>()
            .map_err(|err| format!("{name}={value}: {err}"))?
            .max(1)),
        Err(_) => Ok(default),
    }
}

/// CPU model and count, from `/proc/cpuinfo` when there is one.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs, {model}")
}
