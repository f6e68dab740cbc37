//! `loadgen`: the messenger SDK's load generator.
//!
//! One command per scenario of `docs/benchmarks.md`: `idle` (memory per idle connection),
//! `handshake` (connections/s, then every client reconnecting at once), `latency` (1:1
//! send→deliver at increasing rates) and `fanout` (rooms of many members). Each speaks one of
//! three protocols (`--target messenger|baseline|socketio`), so the same load runs against the
//! reference server, the `baseline` tokio-tungstenite server of this crate and the Socket.IO
//! peer (`peer/server.js`).
//!
//! The coordinator (this process) re-executes itself as worker processes (`--workers`), each
//! holding a share of the connections over source addresses 127.0.0.2, 127.0.0.3, ... (so
//! neither the open-file limit of a process nor the ephemeral ports of one source address
//! run out). Sending is open loop: every message has a scheduled send time, carried in its
//! payload with the sender and a per-sender sequence number; latency counts from the
//! scheduled time, so a server that falls behind cannot slow the schedule down (no
//! coordinated omission). Workers record HDR histograms and hand them back serialized (V2,
//! hex on stdout); the coordinator merges them, prints progress while it runs, a summary at
//! the end, and writes a JSON result (`--json`).
//!
//! ```text
//! loadgen latency --url ws://127.0.0.1:8080/ws --pairs 500 --rates 2000,4000,8000
//! loadgen fanout --target socketio --url 'ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket' \
//!     --groups 1 --members 10000 --rate 20 --secs 10
//! ```

mod adapter;
mod coordinator;
mod stats;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::var_os(worker::SPEC_ENV).is_some() {
        return match worker::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("loadgen worker: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = coordinator::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loadgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(coordinator::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}
