//! `cargo run -p two-nodes`: two nodes in one process, on `127.0.0.1:8091` and
//! `127.0.0.1:8092` (dev auth: the token is `user:device`), data in `data-two-nodes`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let data_dir = std::path::PathBuf::from("data-two-nodes");
    std::fs::create_dir_all(&data_dir)?;
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:8091").await?,
        tokio::net::TcpListener::bind("127.0.0.1:8092").await?,
    ];
    for listener in &listeners {
        println!("listening on {}", listener.local_addr()?);
    }
    let _nodes = two_nodes::start(&data_dir, listeners)?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
