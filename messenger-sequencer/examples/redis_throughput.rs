//! Allocations per second of the Redis sequencer, next to plain `INCR` on the same connection
//! (the baseline) and `INCR` in explicit pipelines of 100 (the ceiling a batching task could
//! reach), measured in the same run.
//!
//! ```text
//! scripts/redis.sh            # prints redis://127.0.0.1:16379/
//! cargo run --release -p messenger-sequencer --features redis --example redis_throughput -- \
//!     redis://127.0.0.1:16379/ [tasks] [allocations per task]
//! ```
//!
//! Pass a comma-separated node list instead to measure Redis Cluster.

use std::time::{Duration, Instant};

use messenger_core::sequencer::NextSeq;
use messenger_core::{ConversationId, call};
use messenger_sequencer::Sequencer;
use messenger_sequencer::memory::NoFloor;
use messenger_sequencer::redis::{RedisSequencer, RedisSequencerConfig};
use redis::aio::ConnectionLike;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Commands per explicit pipeline in the batched ceiling.
const BATCH: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:16379/".to_owned());
    let tasks: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
    let per_task: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5_000);
    if target.contains(',') {
        let nodes: Vec<&str> = target.split(',').collect();
        let connection = redis::cluster::ClusterClient::new(nodes)?
            .get_async_connection()
            .await?;
        measure("cluster", connection, tasks, per_task).await
    } else {
        let connection = redis::Client::open(target.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        measure("standalone", connection, tasks, per_task).await
    }
}

async fn measure<C>(
    label: &str,
    connection: C,
    tasks: usize,
    per_task: usize,
) -> Result<(), Failure>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let prefix = format!("messenger-bench-{}", std::process::id());
    let config = RedisSequencerConfig::default().with_key_prefix(prefix.clone());
    let sequencer = Sequencer::new(RedisSequencer::with_config(
        connection.clone(),
        NoFloor,
        config,
    ));
    let total = (tasks * per_task) as f64;
    println!("{label}: {tasks} tasks x {per_task} allocations, one shared connection");

    for (name, conversations) in [("one conversation", 1), ("1000 conversations", 1000)] {
        let conversations: Vec<ConversationId> = (0..conversations)
            .map(|n| ConversationId::new(format!("g:bench-{n}")))
            .collect::<Result<_, _>>()?;
        // Plain INCR on the same connection: the ceiling for one request per allocation.
        let baseline = run(tasks, per_task, &conversations, {
            let connection = connection.clone();
            let prefix = prefix.clone();
            move |conversation: ConversationId| {
                let mut connection = connection.clone();
                let key = format!("{prefix}:{{{conversation}}}:baseline");
                async move {
                    let _: i64 = redis::cmd("INCR")
                        .arg(key)
                        .query_async(&mut connection)
                        .await?;
                    Ok(())
                }
            }
        })
        .await?;
        let sequenced = run(tasks, per_task, &conversations, {
            let sequencer = sequencer.clone();
            move |conversation: ConversationId| {
                let sequencer = sequencer.clone();
                async move {
                    call(&sequencer, NextSeq { conversation }).await?;
                    Ok(())
                }
            }
        })
        .await?;
        // INCR in explicit pipelines of 100 per round trip: what a batching task could reach.
        let batched = run(tasks, per_task / BATCH, &conversations, {
            let connection = connection.clone();
            let prefix = prefix.clone();
            move |conversation: ConversationId| {
                let mut connection = connection.clone();
                let key = format!("{prefix}:{{{conversation}}}:batched");
                async move {
                    let mut pipe = redis::pipe();
                    for _ in 0..BATCH {
                        pipe.cmd("INCR").arg(&key);
                    }
                    let _: Vec<i64> = pipe.query_async(&mut connection).await?;
                    Ok(())
                }
            }
        })
        .await?;
        let baseline_rate = total / baseline.as_secs_f64();
        let sequenced_rate = total / sequenced.as_secs_f64();
        let batched_rate = (tasks * (per_task / BATCH) * BATCH) as f64 / batched.as_secs_f64();
        println!(
            "  {name}: sequencer {sequenced_rate:>9.0}/s, plain INCR {baseline_rate:>9.0}/s \
             (ratio {:.2}), INCR pipelined by {BATCH} {batched_rate:>9.0}/s (ratio {:.2})",
            sequenced_rate / baseline_rate,
            sequenced_rate / batched_rate,
        );
    }
    Ok(())
}

async fn run<Op, Fut>(
    tasks: usize,
    per_task: usize,
    conversations: &[ConversationId],
    operation: Op,
) -> Result<Duration, Failure>
where
    Op: Fn(ConversationId) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let operation = operation.clone();
            let conversations = conversations.to_vec();
            tokio::spawn(async move {
                for n in 0..per_task {
                    let conversation =
                        conversations[(task + n * tasks) % conversations.len()].clone();
                    operation(conversation).await?;
                }
                Ok::<(), Failure>(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok(start.elapsed())
}
