//! A custom server that links the example extension in: its op and model
//! class come through `inventory`, next to the built-in ones.
//!
//! ```text
//! cargo run -p mymps-example-plugin --bin custom-server -- tcp://127.0.0.1:5555 [MODEL_ROOT]
//! ```

use std::sync::Arc;

use mymps::backend_tch::TchBackend;
use mymps::server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> mymps::Result<()> {
    mymps_example_plugin::link();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "tcp://127.0.0.1:5555".into());
    let config = ServerConfig {
        listen: vec![listen.parse()?],
        model_root: args.next().map(Into::into),
        ..ServerConfig::default()
    };
    let device = std::env::var("MYMPS_DEVICE").unwrap_or_else(|_| "auto".into());
    let server = Server::bind(config, Arc::new(TchBackend::new(&device)?)).await?;
    for loader in mymps_models::loaders() {
        server.models().add_loader(loader)?;
    }
    for ep in server.local_endpoints() {
        println!("mymps: listening on {ep}");
    }
    server
        .serve(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await;
    Ok(())
}
