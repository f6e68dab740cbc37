//! Durable appends/s of the embedded store: group commit with many writers, against one
//! transaction per append with the same writers, and against a single writer.
//!
//! `cargo run --release -p messenger-store --example append_bench [-- SECONDS]`
//!
//! Each configuration writes to a fresh file in a temp dir for SECONDS (default 5) and prints
//! msgs/s, p50 and p99 latency of an acknowledged (durable) append, then the ratios.
//!
//! Built with `--features mysql` and with `MESSENGER_TEST_MYSQL_URL` set (see
//! `scripts/mariadb.sh`), it also runs 64 writers and 1 writer on that MySQL/MariaDB database
//! (fresh conversations each run) and prints their ratio to embedded group commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::store::AppendMessage;
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::embedded::{EmbeddedConfig, EmbeddedStore};
use messenger_store::{Store, StoreBackend};

#[derive(Debug)]
struct Figures {
    name: String,
    msgs_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(
    name: &str,
    writers: usize,
    group_commit: bool,
    seconds: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = EmbeddedConfig::new(dir.path().join("bench.db"));
    config.group_commit = group_commit;
    let store = Store::new(EmbeddedStore::open_with(config)?);
    run_on(name, store, "bench", writers, seconds).await
}

async fn run_on<B: StoreBackend>(
    name: &str,
    store: Store<B>,
    prefix: &str,
    writers: usize,
    seconds: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = store.clone();
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            // One conversation per writer, 200-byte texts: the FINDINGS.md workload shape.
            let conversation = ConversationId::new(format!("g:{prefix}-{writer}"))?;
            let sender = UserId::new(format!("user{writer}"))?;
            let device = DeviceId::new("device")?;
            let mut latencies = Vec::new();
            let mut seq = 0;
            while Instant::now() < deadline {
                seq += 1;
                let message = Message {
                    conversation: conversation.clone(),
                    seq: Seq(seq),
                    sender: sender.clone(),
                    sender_device: device.clone(),
                    client_msg_id: ClientMsgId::new(format!("m{seq}"))?,
                    sent_at: Timestamp::now(),
                    body: Body::Text {
                        text: "x".repeat(200),
                    },
                };
                let begun = Instant::now();
                call(
                    &store,
                    AppendMessage {
                        message: Arc::new(message),
                    },
                )
                .await?;
                latencies.push(begun.elapsed());
            }
            Ok::<_, messenger_core::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |quantile: f64| {
        let index =
            ((latencies.len() as f64 * quantile) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or_default()
    };
    Ok(Figures {
        name: name.to_owned(),
        msgs_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

fn print_figures(result: &Figures) {
    println!(
        "{:<40} {:>9.0} msgs/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
        result.name,
        result.msgs_per_sec,
        result.p50.as_secs_f64() * 1e3,
        result.p99.as_secs_f64() * 1e3
    );
}

#[cfg(feature = "mysql")]
mod mysql {
    use messenger_store::Store;
    use messenger_store::mysql::{MysqlConfig, MysqlStore};

    use super::{Figures, print_figures, run_on};

    /// The same appends on MySQL/MariaDB, when `MESSENGER_TEST_MYSQL_URL` names a database.
    pub(super) async fn run_all(
        seconds: u64,
        embedded: &[Figures],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let Ok(url) = std::env::var("MESSENGER_TEST_MYSQL_URL") else {
            println!("(MySQL/MariaDB skipped: set MESSENGER_TEST_MYSQL_URL)");
            return Ok(());
        };
        let mut config = MysqlConfig::new(url);
        config.max_connections = 64;
        let store = Store::new(MysqlStore::connect_with(config).await?);
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let mut figures = Vec::new();
        for (name, writers) in [("mysql, 64 writers", 64), ("mysql, 1 writer", 1)] {
            let prefix = format!("bench-{run_id}-{writers}");
            let result = run_on(name, store.clone(), &prefix, writers, seconds).await?;
            print_figures(&result);
            figures.push(result);
        }
        if let ([mysql_many, _], [group, ..]) = (&figures[..], embedded) {
            println!(
                "mysql 64 writers / embedded group commit 64 writers: {:.2}x",
                mysql_many.msgs_per_sec / group.msgs_per_sec
            );
        }
        store.backend().disconnect().await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = std::env::args()
        .nth(1)
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(5);
    let configurations = [
        ("group commit, 64 writers", 64, true),
        ("one transaction per append, 64 writers", 64, false),
        ("1 writer", 1, true),
    ];
    let mut figures = Vec::new();
    for (name, writers, group_commit) in configurations {
        let result = run(name, writers, group_commit, seconds).await?;
        print_figures(&result);
        figures.push(result);
    }
    #[cfg(feature = "mysql")]
    mysql::run_all(seconds, &figures).await?;
    if let [group, single_transactions, single_writer] = &figures[..] {
        println!(
            "group commit / one transaction per append: {:.1}x",
            group.msgs_per_sec / single_transactions.msgs_per_sec
        );
        println!(
            "group commit / 1 writer: {:.1}x",
            group.msgs_per_sec / single_writer.msgs_per_sec
        );
    }
    Ok(())
}
