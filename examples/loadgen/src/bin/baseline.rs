//! `baseline`: the smallest tokio-tungstenite echo/broadcast server — the floor of what a
//! WebSocket stack on tokio can do on this machine, measured in the same run as the messenger
//! server and reported as a ratio.
//!
//! Line protocol, one WebSocket text frame each:
//!
//! - `J room` joins `room`; answered by `j room`.
//! - `B room payload` sends `payload` to every other connection in `room`.
//! - `E payload` answers `payload` to the sender.
//!
//! Like the messenger server it serializes nothing per recipient (one shared `Utf8Bytes` per
//! broadcast), keeps a small read buffer per connection and coalesces queued frames into one
//! flush per connection. It stores nothing, checks nothing and has no auth: that is the point.
//!
//! ```text
//! baseline --listen 127.0.0.1:9001     # prints "listening on 127.0.0.1:9001"
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A minimal tokio-tungstenite echo/broadcast server.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Set SO_REUSEPORT (several processes on one port).
    #[arg(long)]
    reuse_port: bool,
    /// Read buffer per connection, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

type Outbox = mpsc::UnboundedSender<Utf8Bytes>;

#[derive(Default)]
struct Rooms {
    rooms: RwLock<HashMap<String, Vec<(u64, Outbox)>>>,
    next_id: AtomicU64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        builder.worker_threads(args.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("baseline: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baseline: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let socket = if args.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if args.reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(args.listen)?;
    let listener = socket.listen(4096)?;
    println!("listening on {}", listener.local_addr()?);
    let rooms = Arc::new(Rooms::default());
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .max_message_size(Some(64 << 10));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the others.
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // TCP_NODELAY, as the messenger server sets it: without it Nagle's algorithm meets
        // the client's delayed ACK and a small frame can wait ~40 ms, which would be the
        // baseline's latency floor instead of the machine's.
        let _ = stream.set_nodelay(true);
        let rooms = Arc::clone(&rooms);
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            {
                connection(ws, rooms).await;
            }
        });
    }
}

async fn connection(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    rooms: Arc<Rooms>,
) {
    let id = rooms.next_id.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let mut written = sink.feed(Message::Text(frame)).await;
            while written.is_ok() {
                match rx.try_recv() {
                    Ok(frame) => written = sink.feed(Message::Text(frame)).await,
                    Err(_) => break,
                }
            }
            if written.is_err() || sink.flush().await.is_err() {
                break;
            }
        }
    });
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if let Some(room) = text.strip_prefix("J ") {
            if let Ok(mut rooms) = rooms.rooms.write() {
                rooms
                    .entry(room.to_owned())
                    .or_default()
                    .push((id, tx.clone()));
            }
            joined.push(room.to_owned());
            let _ = tx.send(Utf8Bytes::from(format!("j {room}")));
        } else if let Some(rest) = text.strip_prefix("B ") {
            let (room, payload) = rest.split_once(' ').unwrap_or((rest, ""));
            let payload = Utf8Bytes::from(payload);
            if let Ok(rooms) = rooms.rooms.read() {
                for (member, outbox) in rooms.get(room).into_iter().flatten() {
                    if *member != id {
                        let _ = outbox.send(payload.clone());
                    }
                }
            }
        } else if let Some(payload) = text.strip_prefix("E ") {
            let _ = tx.send(Utf8Bytes::from(payload));
        }
    }
    if let Ok(mut rooms) = rooms.rooms.write() {
        for room in joined {
            if let Some(members) = rooms.get_mut(&room) {
                members.retain(|(member, _)| *member != id);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
