//! A server embedded in an application: libtorch on the best device, TCP on
//! an ephemeral port, an async client in the same process, a clean shutdown.
//!
//! ```text
//! cargo run -p mymps --example embedded_server
//! ```

use std::sync::Arc;

use mymps::Tensor;
use mymps::backend_tch::TchBackend;
use mymps::client::{Call, Caller, Client};
use mymps::server::{Server, ServerConfig};
use mymps::transport::Endpoint;

#[tokio::main]
async fn main() -> mymps::Result<()> {
    let device = std::env::var("MYMPS_DEVICE").unwrap_or_else(|_| "auto".into());
    let backend = Arc::new(TchBackend::new(&device)?);
    let config = ServerConfig {
        listen: vec![Endpoint::new("tcp", "127.0.0.1", 0)],
        ..ServerConfig::default()
    };
    let server = Server::bind(config, backend).await?.spawn();
    let addr = server.endpoints()[0].to_string();
    println!("serving on {addr}");

    let client = Client::connect(&addr).await?;
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, -4.0], &[2, 2])?;
    let out = client.call(Call::new("relu").arg(x)).await?;
    println!(
        "relu on {} -> {:?}",
        out.device,
        out.output()?.to_vec::<f32>()?
    );
    let stats = client.stats().await?;
    println!(
        "server host: {} CPUs, {:.1} GB RAM",
        stats.cpu_count, stats.memory_total_gb
    );

    client.close();
    server.shutdown().await;
    println!("stopped");
    Ok(())
}
