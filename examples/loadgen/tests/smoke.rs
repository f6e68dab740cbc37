//! Smoke run of the benchmark suite: every scenario for about a second at tiny scale, against
//! a messenger server (in this process, on loopback, embedded store), the `baseline` binary
//! and — when installed — the Socket.IO peer. It checks correctness only (every message
//! delivered exactly once, the JSON result parses, histograms are not empty); timings are
//! never asserted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use messenger_fanout::Fanout;
use messenger_fanout::local::LocalFanout;
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_sequencer::Sequencer;
use messenger_sequencer::memory::MemorySequencer;
use messenger_socket::Node;
use messenger_socket::auth::{AnyAuthenticator, DevAuthenticator};
use messenger_socket::{Engine, EngineConfig, Server, ServerConfig, Services};
use messenger_store::{EmbeddedConfig, EmbeddedStore, Store};
use serde_json::Value;

/// A messenger node on 127.0.0.1:0 in this process, on its own runtime thread.
fn start_messenger(data: &Path) -> String {
    let path = data.join("messages.db");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let embedded = EmbeddedStore::open_with(EmbeddedConfig::new(path)).expect("store");
            let store = Store::new(embedded);
            let this_node = Node::single();
            let services = Services {
                store: store.clone(),
                sequencer: Sequencer::new(MemorySequencer::new(store)),
                fanout: Fanout::new(LocalFanout::new(this_node.hub())),
                auth: AnyAuthenticator::Dev(DevAuthenticator),
                presence: Presence::new(MemoryPresence::new()),
            };
            let node = Engine::new(services, this_node, EngineConfig::default());
            let server = Server::new(node, ServerConfig::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("listen");
            let address = listener.local_addr().expect("address");
            tx.send(format!("ws://{address}/ws")).expect("send url");
            server
                .run(listener, std::future::pending())
                .await
                .expect("serve");
        });
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("server started")
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`, waits for its `listening on HOST:PORT` line.
fn start_listening(mut command: Command) -> (Process, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read stdout");
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Process(child), address)
}

/// Runs `loadgen ARGS --json FILE` and returns the parsed result.
fn loadgen(dir: &Path, name: &str, args: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .stderr(Stdio::inherit())
        .output()
        .expect("run loadgen");
    let summary = String::from_utf8_lossy(&output.stdout);
    println!("{summary}");
    assert!(output.status.success(), "loadgen {args:?} failed");
    assert!(summary.contains("=="), "no human summary: {summary}");
    let text = std::fs::read_to_string(&json).expect("result file");
    serde_json::from_str(&text).expect("the JSON result parses")
}

fn count(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

/// Every connection opened, nothing failed, duplicated or skipped.
fn assert_clean(result: &Value, connections: u64) {
    assert_eq!(count(result, "connected"), connections, "{result}");
    for key in [
        "failed",
        "disconnects",
        "error_frames",
        "duplicates",
        "gaps",
    ] {
        assert_eq!(count(result, key), 0, "{key} in {result}");
    }
}

/// Each step sent what it scheduled and every recipient got every message exactly once.
fn assert_delivered(result: &Value, rates: &[u64], step_secs: u64, acked: bool) {
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), rates.len());
    let recipients = count(result, "recipients_per_message");
    for (step, rate) in steps.iter().zip(rates) {
        let sent = count(step, "sent");
        assert_eq!(sent, rate * step_secs, "{step}");
        assert_eq!(count(step, "delivered"), sent * recipients, "{step}");
        assert_eq!(count(step, "lost"), 0, "{step}");
        assert_eq!(
            count(&step["delivery"], "count"),
            sent * recipients,
            "{step}"
        );
        if acked {
            assert_eq!(count(step, "acked"), sent, "{step}");
            assert_eq!(count(&step["ack"], "count"), sent, "{step}");
        }
    }
}

/// The scenarios at tiny scale against one server.
fn run_all(dir: &Path, target: &str, url: &str, acked: bool) {
    let common = ["--target", target, "--url", url, "--workers", "2"];
    let args = |extra: &[&'static str]| -> Vec<&str> {
        let mut all: Vec<&str> = extra.to_vec();
        all.extend_from_slice(&common);
        all
    };

    let idle = loadgen(
        dir,
        &format!("{target}-idle"),
        &args(&["idle", "--connections", "20", "--hold-secs", "0.5"]),
    );
    assert_clean(&idle, 20);
    assert!(idle["memory"].is_object(), "{idle}");

    let storm = loadgen(
        dir,
        &format!("{target}-handshake"),
        &args(&["handshake", "--connections", "20"]),
    );
    assert_clean(&storm, 20);
    assert_eq!(count(&storm["connect"]["latency"], "count"), 20);
    assert_eq!(count(&storm["reconnect"], "sessions"), 20);
    assert_eq!(count(&storm["reconnect"]["latency"], "count"), 20);

    let latency = loadgen(
        dir,
        &format!("{target}-latency"),
        &args(&[
            "latency",
            "--pairs",
            "6",
            "--rates",
            "30,60",
            "--step-secs",
            "1",
            "--drain-secs",
            "1",
        ]),
    );
    assert_clean(&latency, 12);
    assert_delivered(&latency, &[30, 60], 1, acked);
    assert_eq!(latency["socket"], "default", "{latency}");
    assert_eq!(count(&latency, "receipt_frames"), 0, "{latency}");

    // The other client behaviours: TCP_NODELAY, and receivers answering every message with
    // `delivered` and `read` as an app with the conversation open does (messenger only).
    let apps = loadgen(
        dir,
        &format!("{target}-latency-apps"),
        &args(&[
            "latency",
            "--pairs",
            "3",
            "--rates",
            "40",
            "--step-secs",
            "1",
            "--drain-secs",
            "1",
            "--socket",
            "nodelay",
            "--receipts",
            "read",
        ]),
    );
    assert_clean(&apps, 6);
    assert_delivered(&apps, &[40], 1, acked);
    assert_eq!(apps["socket"], "nodelay", "{apps}");
    if target == "messenger" {
        // Each receipt moves a watermark; both members' devices are told, sender included.
        assert!(count(&apps, "receipt_frames") >= 40, "{apps}");
    } else {
        assert_eq!(count(&apps, "receipt_frames"), 0, "{apps}");
    }

    let fanout = loadgen(
        dir,
        &format!("{target}-fanout"),
        &args(&[
            "fanout",
            "--groups",
            "2",
            "--members",
            "9",
            "--senders",
            "2",
            "--rates",
            "20",
            "--step-secs",
            "1",
            "--drain-secs",
            "1",
        ]),
    );
    assert_clean(&fanout, 18);
    assert_eq!(count(&fanout, "recipients_per_message"), 8);
    assert_delivered(&fanout, &[20], 1, acked);
}

#[test]
fn smoke_messenger() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = start_messenger(dir.path());
    run_all(dir.path(), "messenger", &url, true);
}

#[test]
fn smoke_baseline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_baseline"));
    command.args(["--listen", "127.0.0.1:0", "--threads", "1"]);
    let (_server, address) = start_listening(command);
    run_all(dir.path(), "baseline", &format!("ws://{address}"), false);
}

#[test]
fn smoke_socketio() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let modules = root.join(".services/socketio/node_modules");
    let node = Command::new("node").arg("--version").output();
    if !modules.join("socket.io").is_dir() || node.is_err() {
        println!(
            "SKIPPED: the Socket.IO peer is not installed (run scripts/socketio.sh install; needs node and npm)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("node");
    command
        .arg(root.join("examples/loadgen/peer/server.js"))
        .env("NODE_PATH", &modules)
        .env("PORT", "0");
    let (_server, address) = start_listening(command);
    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    run_all(dir.path(), "socketio", &url, false);
}
