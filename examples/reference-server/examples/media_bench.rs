//! Media upload benchmark: one large upload to a real `reference-server` process over
//! loopback, measuring throughput and the server's peak memory.
//!
//! It sends a media message, then streams `--size` bytes (generated on the fly: the client
//! never holds them in memory) to the upload URL in one `PUT`, and reports:
//!
//! - upload throughput: bytes / time from the first byte sent to the `201` answer (which
//!   includes the server's type check, SHA-256 verification and the move into the object
//!   store);
//! - the server's peak resident memory (`VmHWM` from `/proc/PID/status`) before and after.
//!
//! Run (the server binary must be built first, in the same profile):
//!
//! ```text
//! cargo build --release -p reference-server
//! cargo run --release -p reference-server --example media_bench -- [--size-mib 1024]
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::ServerFrame;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "Upload throughput and server memory during one large media upload")]
struct Args {
    /// Size of the upload, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Declare a SHA-256 (the server then verifies it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sha256: bool,
    /// The server binary (default: `reference-server` next to this example's directory).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

const CHUNK: usize = 1024 * 1024;

/// Chunk `index` of the payload: a cheap pattern, the same on every call.
fn chunk(index: u64, buffer: &mut [u8]) {
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

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

fn peak_rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let size = args.size_mib * 1024 * 1024;
    let bin = args.server_bin.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        dir.join(format!("reference-server{}", std::env::consts::EXE_SUFFIX))
    });
    let data = tempfile::tempdir().expect("temp data dir");
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(["--media-max-bytes", &size.max(1).to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("start {} ({err}); build it first", bin.display()));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let address: std::net::SocketAddr = loop {
        let line = lines.next().expect("server exited early").expect("stdout");
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.parse().expect("address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    let _server = Server { child, _data: data };

    let digest = if args.sha256 {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; CHUNK];
        for index in 0..size.div_ceil(CHUNK as u64) {
            let len = (size - index * CHUNK as u64).min(CHUNK as u64) as usize;
            chunk(index, &mut buffer[..len]);
            hasher.update(&buffer[..len]);
        }
        Some(
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    } else {
        None
    };

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .expect("connect");
    let send = |value: serde_json::Value| Message::text(value.to_string());
    ws.send(send(
        serde_json::json!({"type": "hello", "v": 1, "token": "alice:bench"}),
    ))
    .await
    .expect("hello");
    ws.send(send(
        serde_json::json!({"type": "open_direct", "id": "o", "user": "bob"}),
    ))
    .await
    .expect("open");
    let mut media = serde_json::json!({"kind": "media", "name": "bench.bin", "mime": "application/octet-stream", "size": size});
    if let Some(digest) = &digest {
        media["sha256"] = serde_json::json!(digest);
    }
    let mut ticket = None;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<ServerFrame>(&text).expect("frame") {
            ServerFrame::Conversation { conversation, .. } => {
                ws.send(send(serde_json::json!({"type": "send", "conversation": conversation.id, "client_msg_id": "bench", "body": media})))
                    .await
                    .expect("send");
            }
            ServerFrame::Upload { upload, .. } => {
                ticket = Some(upload);
                break;
            }
            ServerFrame::Error { message, .. } => panic!("refused: {message}"),
            _ => {}
        }
    }
    let ticket = ticket.expect("an upload ticket");
    let (hwm_before, _) = peak_rss_kib(pid);

    let path = ticket
        .url
        .split_once("//")
        .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_owned()))
        .expect("upload path");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("http");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAuthorization: Bearer alice:bench\r\nUpload-Ticket: {}\r\nContent-Length: {size}\r\n\r\n",
        ticket.ticket
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut buffer = vec![0u8; CHUNK];
    for index in 0..size.div_ceil(CHUNK as u64) {
        let len = (size - index * CHUNK as u64).min(CHUNK as u64) as usize;
        chunk(index, &mut buffer[..len]);
        stream.write_all(&buffer[..len]).await.expect("body");
    }
    let body_sent = started.elapsed();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let (hwm_after, rss_after) = peak_rss_kib(pid);
    assert!(status.contains(" 201 "), "upload failed: {answer}");

    let mib = size as f64 / (1024.0 * 1024.0);
    println!("upload of {mib:.0} MiB, sha256 declared: {}", args.sha256);
    println!("  answer                     {status}");
    println!(
        "  body sent in               {:.2} s ({:.0} MiB/s)",
        body_sent.as_secs_f64(),
        mib / body_sent.as_secs_f64()
    );
    println!(
        "  first byte -> 201 ready    {:.2} s ({:.0} MiB/s end to end)",
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64()
    );
    println!(
        "  server VmHWM before        {:.1} MiB",
        hwm_before as f64 / 1024.0
    );
    println!(
        "  server VmHWM after         {:.1} MiB (VmRSS now {:.1} MiB)",
        hwm_after as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
}
