//! `cargo run -p compose-axum [-- ADDR [DATA_DIR]]`: the composed app on `ADDR` (default
//! `127.0.0.1:8090`), data in `DATA_DIR` (default `data-compose`).

use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let data_dir = PathBuf::from(args.next().unwrap_or_else(|| "data-compose".into()));
    std::fs::create_dir_all(&data_dir)?;
    let listener = tokio::net::TcpListener::bind(&address).await?;
    // Tests and scripts read this line to find the port.
    println!("listening on {}", listener.local_addr()?);
    compose_axum::serve(&data_dir, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
