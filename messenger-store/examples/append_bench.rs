//! Durable appends/s of the embedded store: group commit with many writers, against one
//! transaction per append with the same writers, and against a single writer.
//!
//! `cargo run --release -p messenger-store --example append_bench [-- SECONDS]`
//!
//! Each configuration writes to a fresh file in a temp dir for SECONDS (default 5) and prints
//! msgs/s, p50 and p99 latency of an acknowledged (durable) append, then the ratios.
//!
//! After the 64-writer group-commit run (and the 64-writer MySQL run), 16 readers sync for
//! SECONDS: `ReadRange` pages of 50 entries at spread-out cursors over the conversations just
//! written; pages/s and p50/p99 per page are printed.
//!
//! Built with `--features mysql` and with `MESSENGER_TEST_MYSQL_URL` set (see
//! `scripts/mariadb.sh`), it also runs 64 writers and 1 writer on that MySQL/MariaDB database
//! (fresh conversations each run) and prints their ratio to embedded group commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::store::{AppendMessage, ReadRange};
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
    printed: bool,
}

impl Figures {
    /// The same figures, marked as already printed.
    fn silenced(mut self) -> Self {
        self.printed = true;
        self
    }
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
    let appended = run_on(name, store.clone(), "bench", writers, seconds).await?;
    if group_commit && writers > 1 {
        let per_conversation = (appended.msgs_per_sec * seconds as f64) as u64 / writers as u64;
        print_figures(&appended);
        let synced = sync_on(
            "  sync: 16 readers, pages of 50",
            &store,
            "bench",
            writers,
            per_conversation,
            seconds,
        )
        .await?;
        print_figures(&synced);
        return Ok(appended.silenced());
    }
    Ok(appended)
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
    Ok(figures(name, latencies, started.elapsed()))
}

/// 16 readers page through the `conversations` conversations named `g:{prefix}-{i}` (each
/// holding about `per_conversation` entries) with `ReadRange` pages of 50, for `seconds`.
async fn sync_on<B: StoreBackend>(
    name: &str,
    store: &Store<B>,
    prefix: &str,
    conversations: usize,
    per_conversation: u64,
    seconds: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    const READERS: usize = 16;
    const PAGE: usize = 50;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..READERS {
        let store = store.clone();
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut turn = reader as u64;
            while Instant::now() < deadline {
                turn += READERS as u64;
                let conversation = ConversationId::new(format!(
                    "g:{prefix}-{}",
                    turn % conversations.max(1) as u64
                ))?;
                let after = (turn * 7919) % per_conversation.saturating_sub(PAGE as u64).max(1);
                let begun = Instant::now();
                call(
                    &store,
                    ReadRange {
                        conversation,
                        after: Seq(after),
                        until: None,
                        limit: PAGE,
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
    Ok(figures(name, latencies, started.elapsed()))
}

fn figures(name: &str, mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |quantile: f64| {
        let index =
            ((latencies.len() as f64 * quantile) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or_default()
    };
    Figures {
        name: name.to_owned(),
        msgs_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        printed: false,
    }
}

fn print_figures(result: &Figures) {
    if result.printed {
        return;
    }
    println!(
        "{:<40} {:>9.0} ops/s    p50 {:>8.2} ms   p99 {:>8.2} ms",
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

    use super::{Figures, print_figures, run_on, sync_on};

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
            if writers > 1 {
                let per_conversation =
                    (result.msgs_per_sec * seconds as f64) as u64 / writers as u64;
                let synced = sync_on(
                    "  sync: 16 readers, pages of 50",
                    &store,
                    &prefix,
                    writers,
                    per_conversation,
                    seconds,
                )
                .await?;
                print_figures(&synced);
            }
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
