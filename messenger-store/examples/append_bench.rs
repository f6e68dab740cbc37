//! Durable appends/s of the embedded store: group commit with many writers, against one
//! transaction per append with the same writers, and against a single writer.
//!
//! `cargo run --release -p messenger-store --example append_bench [-- SECONDS]`
//!
//! Each configuration writes to a fresh file in a temp dir for SECONDS (default 5) and prints
//! msgs/s, p50 and p99 latency of an acknowledged (durable) append, then the ratios. The
//! group-commit runs also print how many writes a transaction carried on average. A last
//! embedded run uses `Durability::Relaxed` (no fsync per commit).
//!
//! After the 64-writer group-commit run (and the 64-writer MySQL run), 16 readers sync for
//! SECONDS: `ReadRange` pages of 50 entries at spread-out cursors over the conversations just
//! written; pages/s and p50/p99 per page are printed.
//!
//! Then, in the same run, the engine's own ceiling (benchmark scenario 6): raw `rusqlite` on a
//! fresh file with the store's settings (WAL, `synchronous=FULL`) and the same table shape
//! (`messages` without rowid, keyed by conversation and seq, with the unique
//! `client_msg_id` index, and the `heads` table), inserting as many rows as the 64-writer group
//! commit run appended, in one transaction, with one prepared statement, one fsync at the
//! end. Printed twice: the bare `INSERT`, and the same three statements an append runs (the
//! idempotency look-up, the `INSERT`, the head upsert). The ratio of group commit to them is
//! what our committer, channels and async callers cost.
//!
//! Built with `--features mysql` and given `--mysql URL` (or with `MESSENGER_TEST_MYSQL_URL`
//! set; see `scripts/mariadb.sh`), it also runs on that MySQL/MariaDB database (fresh
//! conversations each run): 64 writers with group commit (`append_batch` 64), 64 writers with
//! one transaction per append (`append_batch` 1, the store before group commit), and 1 writer,
//! and prints the ratios:
//!
//! `cargo run --release -p messenger-store --features mysql --example append_bench -- 5 --mysql mysql://messenger:messenger@127.0.0.1:13306/messenger_test`

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::store::{AppendMessage, ReadRange};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::embedded::{Durability, EmbeddedConfig, EmbeddedStore};
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
    durability: Durability,
    seconds: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = EmbeddedConfig::new(dir.path().join("bench.db"));
    config.group_commit = group_commit;
    config.durability = durability;
    let store = Store::new(EmbeddedStore::open_with(config)?);
    let appended = run_on(name, store.clone(), "bench", writers, seconds).await?;
    let stats = store.backend().commit_stats();
    let batch = || {
        println!(
            "  {} transactions, {:.1} writes per transaction",
            stats.transactions,
            stats.writes as f64 / stats.transactions.max(1) as f64
        );
    };
    if group_commit && writers > 1 && durability == Durability::Full {
        let per_conversation = (appended.msgs_per_sec * seconds as f64) as u64 / writers as u64;
        print_figures(&appended);
        batch();
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
    if group_commit && writers > 1 {
        print_figures(&appended);
        batch();
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
                    body: Body::text("x".repeat(200)),
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

    /// The same appends on MySQL/MariaDB at `url` (or `MESSENGER_TEST_MYSQL_URL`).
    pub(super) async fn run_all(
        seconds: u64,
        url: Option<String>,
        embedded: &[Figures],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let Some(url) = url.or_else(|| std::env::var("MESSENGER_TEST_MYSQL_URL").ok()) else {
            println!("(MySQL/MariaDB skipped: pass --mysql URL or set MESSENGER_TEST_MYSQL_URL)");
            return Ok(());
        };
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let mut figures = Vec::new();
        for (name, writers, append_batch) in [
            ("mysql, group commit, 64 writers", 64, 64),
            ("mysql, one transaction per append, 64", 64, 1),
            ("mysql, 1 writer", 1, 64),
            ("mysql, 1 writer, one transaction each", 1, 1),
        ] {
            let mut config = MysqlConfig::new(url.clone());
            config.max_connections = 64;
            config.append_batch = append_batch;
            let store = Store::new(MysqlStore::connect_with(config).await?);
            let prefix = format!("bench-{run_id}-{writers}-{append_batch}");
            let result = run_on(name, store.clone(), &prefix, writers, seconds).await?;
            print_figures(&result);
            if writers > 1 && append_batch > 1 {
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
            store.backend().disconnect().await?;
        }
        if let ([grouped, alone, single, _], [group, ..]) = (&figures[..], embedded) {
            println!(
                "mysql group commit / one transaction per append (64 writers): {:.2}x",
                grouped.msgs_per_sec / alone.msgs_per_sec
            );
            println!(
                "mysql group commit / 1 writer: {:.2}x",
                grouped.msgs_per_sec / single.msgs_per_sec
            );
            println!(
                "mysql group commit / embedded group commit (64 writers): {:.2}x",
                grouped.msgs_per_sec / group.msgs_per_sec
            );
        }
        Ok(())
    }
}

/// The store's table shape (schema migration 1 of `messages` and `heads`), for the ceiling.
const CEILING_SCHEMA: &str = "
    CREATE TABLE messages (
        conversation  TEXT    NOT NULL,
        seq           INTEGER NOT NULL,
        sender        TEXT    NOT NULL,
        sender_device TEXT    NOT NULL,
        client_msg_id TEXT    NOT NULL,
        sent_at       INTEGER NOT NULL,
        body          TEXT    NOT NULL,
        PRIMARY KEY (conversation, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_by_client_msg_id
        ON messages (conversation, sender, client_msg_id);
    CREATE TABLE heads (
        conversation TEXT    NOT NULL PRIMARY KEY,
        head         INTEGER NOT NULL
    ) WITHOUT ROWID;
";

/// The engine's batched-insert ceiling: `rows` rows over 64 conversations in transactions of
/// `per_transaction` rows with prepared statements, WAL and `synchronous=FULL`, timed from the
/// first `BEGIN` to the end of the last durable `COMMIT`; p50/p99 are per transaction. With
/// `as_append`, each row also runs the look-up and head upsert an append runs.
fn ceiling(
    name: &str,
    rows: u64,
    per_transaction: u64,
    as_append: bool,
) -> Result<Figures, Box<dyn std::error::Error>> {
    const CONVERSATIONS: u64 = 64;
    let dir = tempfile::tempdir()?;
    let mut conn = rusqlite::Connection::open(dir.path().join("ceiling.db"))?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not WAL").into());
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(CEILING_SCHEMA)?;
    let body = serde_json::to_string(&Body::text("x".repeat(200)))?;
    let senders: Vec<String> = (0..CONVERSATIONS).map(|n| format!("user{n}")).collect();
    let conversations: Vec<String> = (0..CONVERSATIONS)
        .map(|n| format!("g:ceiling-{n}"))
        .collect();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut row = 0;
    while row < rows {
        let begun = Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO messages \
             (conversation, seq, sender, sender_device, client_msg_id, sent_at, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (conversation, seq) DO NOTHING",
            )?;
            let mut look_up = tx.prepare(
                "SELECT seq FROM messages \
             WHERE conversation = ?1 AND sender = ?2 AND client_msg_id = ?3",
            )?;
            let mut raise_head = tx.prepare(
                "INSERT INTO heads (conversation, head) VALUES (?1, ?2) \
             ON CONFLICT (conversation) DO UPDATE SET head = max(head, excluded.head)",
            )?;
            let end = (row + per_transaction).min(rows);
            for row in row..end {
                let index = (row % CONVERSATIONS) as usize;
                let seq = (row / CONVERSATIONS + 1) as i64;
                let client_msg_id = format!("m{seq}");
                if as_append {
                    let mut found = look_up.query(rusqlite::params![
                        conversations[index],
                        senders[index],
                        client_msg_id
                    ])?;
                    if found.next()?.is_some() {
                        return Err("a fresh database already holds the message".into());
                    }
                }
                insert.execute(rusqlite::params![
                    conversations[index],
                    seq,
                    senders[index],
                    "device",
                    client_msg_id,
                    Timestamp::now().as_millis() as i64,
                    body,
                ])?;
                if as_append {
                    raise_head.execute(rusqlite::params![conversations[index], seq])?;
                }
            }
        }
        tx.commit()?;
        latencies.push(begun.elapsed());
        row = (row + per_transaction).min(rows);
    }
    let mut figures = figures(name, latencies, started.elapsed());
    figures.msgs_per_sec = rows as f64 / started.elapsed().as_secs_f64();
    Ok(figures)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 5;
    let mut mysql_url: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--mysql" {
            mysql_url = Some(args.next().ok_or("--mysql needs a URL")?);
        } else {
            seconds = arg.parse()?;
        }
    }
    #[cfg(not(feature = "mysql"))]
    if mysql_url.is_some() {
        return Err("--mysql needs the example built with --features mysql".into());
    }
    let configurations = [
        ("group commit, 64 writers", 64, true),
        ("one transaction per append, 64 writers", 64, false),
        ("1 writer", 1, true),
    ];
    let mut figures = Vec::new();
    for (name, writers, group_commit) in configurations {
        let result = run(name, writers, group_commit, Durability::Full, seconds).await?;
        print_figures(&result);
        figures.push(result);
    }
    let relaxed = run(
        "group commit, 64 writers, relaxed",
        64,
        true,
        Durability::Relaxed,
        seconds,
    )
    .await?;
    print_figures(&relaxed);
    #[cfg(feature = "mysql")]
    mysql::run_all(seconds, mysql_url, &figures).await?;
    if let [group, single_transactions, single_writer] = &figures[..] {
        println!(
            "group commit / one transaction per append: {:.1}x",
            group.msgs_per_sec / single_transactions.msgs_per_sec
        );
        println!(
            "group commit / 1 writer: {:.1}x",
            group.msgs_per_sec / single_writer.msgs_per_sec
        );
        // Scenario 6: the engine's own batched-insert ceiling, as many rows as group commit
        // appended; the latency columns are per transaction, commit included.
        let rows = ((group.msgs_per_sec * seconds as f64) as u64).max(10_000);
        println!("engine ceiling: raw rusqlite, {rows} rows, WAL, synchronous=FULL");
        let bare = ceiling("  INSERT only, one transaction", rows, rows, false)?;
        print_figures(&bare);
        let as_append = ceiling(
            "  an append's statements, one transaction",
            rows,
            rows,
            true,
        )?;
        print_figures(&as_append);
        // 64 writers keep at most 64 appends pending: no committer can put more in one fsync.
        let per_64 = ceiling(
            "  an append's statements, 64 per transaction",
            rows,
            64,
            true,
        )?;
        print_figures(&per_64);
        println!(
            "group commit / engine ceiling (INSERT only, one transaction): {:.3}",
            group.msgs_per_sec / bare.msgs_per_sec
        );
        println!(
            "group commit / engine ceiling (an append's statements, one transaction): {:.3}",
            group.msgs_per_sec / as_append.msgs_per_sec
        );
        println!(
            "group commit / engine at the same batch size (64 per transaction): {:.2}",
            group.msgs_per_sec / per_64.msgs_per_sec
        );
    }
    Ok(())
}
