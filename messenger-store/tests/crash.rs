//! Crash test: a child process appends with many concurrent writers and prints every
//! acknowledged message; the parent kills it with SIGKILL mid-stream, reopens the store and
//! checks that every acknowledged message is there, intact.
//!
//! The child is this test binary again, run with `STORE_CRASH_WRITER=<db path>` so that only
//! [`writer_role`] does anything. It runs once with [`Durability::Full`] and once with
//! [`Durability::Relaxed`] (`STORE_CRASH_DURABILITY=relaxed`): both promise that an
//! acknowledged write survives a crash of the process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use messenger_core::store::{AppendMessage, ReadRange};
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, Message, Seq, Timestamp, UserId, call,
};
use messenger_store::Store;
use messenger_store::embedded::{Durability, EmbeddedConfig, EmbeddedStore};

const WRITER_ENV: &str = "STORE_CRASH_WRITER";
const DURABILITY_ENV: &str = "STORE_CRASH_DURABILITY";
const WRITERS: usize = 64;
const CONVERSATIONS: usize = 8;
/// Acknowledgements the parent waits for before it kills the child.
const KILL_AFTER: usize = 3_000;

fn conversation(index: usize) -> ConversationId {
    ConversationId::new(format!("g:crash-{index}")).expect("a valid id")
}

fn text(writer: usize, n: u64) -> String {
    format!("writer {writer} message {n} {}", "x".repeat(120))
}

/// The child's role: appends forever and prints `conversation seq client_msg_id` per ack.
#[test]
fn writer_role() {
    let Ok(path) = std::env::var(WRITER_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut config = EmbeddedConfig::new(path);
    if std::env::var(DURABILITY_ENV).is_ok_and(|mode| mode == "relaxed") {
        config.durability = Durability::Relaxed;
    }
    runtime.block_on(async move {
        let store = Store::new(EmbeddedStore::open_with(config).expect("open the store"));
        let counters: Arc<Vec<AtomicU64>> =
            Arc::new((0..CONVERSATIONS).map(|_| AtomicU64::new(0)).collect());
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let store = store.clone();
            let counters = Arc::clone(&counters);
            tasks.spawn(async move {
                let sender = UserId::new(format!("w{writer}")).expect("id");
                for n in 0.. {
                    let index = (writer + n as usize) % CONVERSATIONS;
                    let seq = counters[index].fetch_add(1, Ordering::Relaxed) + 1;
                    let message = Message {
                        conversation: conversation(index),
                        seq: Seq(seq),
                        sender: sender.clone(),
                        sender_device: DeviceId::new("d").expect("id"),
                        client_msg_id: ClientMsgId::new(format!("w{writer}-{n}")).expect("id"),
                        sent_at: Timestamp::now(),
                        body: Body::text(text(writer, n)),
                    };
                    call(
                        &store,
                        AppendMessage {
                            message: Arc::new(message),
                        },
                    )
                    .await
                    .expect("append");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{index} {seq} {writer} {n}").expect("stdout");
                    out.flush().expect("stdout");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if std::env::var(WRITER_ENV).is_ok() {
        return;
    }
    crash_and_check("full");
}

#[test]
fn relaxed_acknowledged_appends_survive_sigkill() {
    if std::env::var(WRITER_ENV).is_ok() {
        return;
    }
    crash_and_check("relaxed");
}

/// Runs the writer child with `durability`, kills it after [`KILL_AFTER`] acks, and checks
/// every acknowledged append in the reopened file.
fn crash_and_check(durability: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["writer_role", "--exact", "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, &path)
        .env(DURABILITY_ENV, durability)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout);
    let mut acked = Vec::new();
    let mut line = String::new();
    let mut killed = false;
    loop {
        line.clear();
        let read = lines.read_line(&mut line).expect("read the child's output");
        if read == 0 {
            break;
        }
        // A line cut short by the kill was never a complete acknowledgement.
        if !line.ends_with('\n') {
            continue;
        }
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        if let [index, seq, writer, n] = fields[..] {
            acked.push((index as usize, seq, writer as usize, n));
        }
        if !killed && acked.len() >= KILL_AFTER {
            child.kill().expect("SIGKILL the writer");
            killed = true;
        }
    }
    let status = child.wait().expect("wait for the writer");
    assert!(
        killed,
        "the writer stopped by itself after {} acks: {status}",
        acked.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let store =
            Store::new(EmbeddedStore::open(&path).expect("the store reopens after SIGKILL"));
        let mut logs = Vec::new();
        for index in 0..CONVERSATIONS {
            let page = call(
                &store,
                ReadRange {
                    conversation: conversation(index),
                    after: Seq::ZERO,
                    until: None,
                    limit: usize::MAX,
                },
            )
            .await
            .expect("read back");
            logs.push(page);
        }
        for (index, seq, writer, n) in &acked {
            let page = &logs[*index];
            let message = page
                .messages
                .iter()
                .find(|message| message.seq == Seq(*seq))
                .unwrap_or_else(|| {
                    panic!("acknowledged seq {seq} of conversation {index} is lost")
                });
            assert_eq!(message.client_msg_id.as_str(), format!("w{writer}-{n}"));
            assert_eq!(message.sender.as_str(), format!("w{writer}"));
            assert_eq!(message.body, Body::text(text(*writer, *n)));
        }
        // The reopened store takes writes again.
        let head = logs[0].head;
        let next = Message::void(conversation(0), head.next(), Timestamp::now());
        call(
            &store,
            AppendMessage {
                message: Arc::new(next),
            },
        )
        .await
        .expect("append after reopen");
    });
    eprintln!(
        "{} acknowledged appends checked after SIGKILL ({durability})",
        acked.len()
    );
}
