//! # mymps
//!
//! A remote tensor coprocessor: a server owns a GPU (CUDA, MPS) or the CPU
//! and runs whitelisted torch ops (and loaded models) on tensors that
//! clients send it, over a fast binary protocol.
//!
//! This is the facade crate: it re-exports [`mymps_core`] and, by cargo
//! feature, the transports and the libtorch backend.
//!
//! ## Features
//! - `tcp` (default): the TCP transport, `tcp://host:port`.
//! - `tcp+tls` (default): TLS 1.3 over TCP, `tcp+tls://host:port`: the TCP
//!   transport's frames, verified like QUIC (a CA file, a server
//!   certificate, or a pinned fingerprint; see `mymps::tls`); registered by
//!   [`tcp`] (`tcp::TLS_TRANSPORT`).
//! - `quic` (default): the QUIC transport, `quic://host:port`: TLS 1.3
//!   (verified with a CA file or a pinned fingerprint), one stream per
//!   request; see [`quic`].
//! - `zmq` (default): the ZeroMQ transport, `zmq://host:port` (a ROUTER
//!   socket on the server, DEALER on the client; any ZeroMQ binding can
//!   speak it, see `docs/protocol.md`). libzmq is compiled from the
//!   source the `zmq` crate ships (a C++ compiler is needed, no system
//!   package).
//! - `http` (default): the HTTP listener, `http://host:port`: the first
//!   mymps's REST API (JSON + msgpack), a live dashboard at `/` and
//!   Prometheus metrics at `/metrics` (see `docs/http.md`). Server side
//!   only: mymps clients connect with `tcp://`, `tcp+tls://`, `quic://` or
//!   `zmq://`.
//! - `server` (default): the libtorch backend ([`backend_tch`]) and the op
//!   whitelist ([`ops`]); needs libtorch at build time. A client-only build
//!   (`default-features = false, features = ["tcp"]`, plus `"tcp+tls"`,
//!   `"quic"` or `"zmq"` for those) needs no libtorch.
//! - `cluster` (default): [`cluster`], one client over several servers
//!   (least-busy routing, health checks, failover); no libtorch.
//!
//! ## Client
//! ```no_run
//! use mymps::{Tensor, client::{Call, Caller, blocking::Client}};
//! let c = Client::connect("tcp://127.0.0.1:5555")?;
//! let a = Tensor::from_vec(vec![1.0f32; 64 * 128], &[64, 128])?;
//! let b = Tensor::from_vec(vec![1.0f32; 128 * 32], &[128, 32])?;
//! let out = c.call(Call::new("matmul").arg(a).arg(b))?;
//! assert_eq!(out.output()?.shape(), &[64, 32]);
//! # Ok::<(), mymps::Error>(())
//! ```
//!
//! ## Server
//! ```no_run
//! # #[cfg(feature = "server")]
//! # async fn demo() -> mymps::Result<()> {
//! use std::sync::Arc;
//! use mymps::server::{Server, ServerConfig};
//! let backend = Arc::new(mymps::backend_tch::TchBackend::new("auto")?);
//! let server = Server::bind(ServerConfig::default(), backend).await?;
//! server.serve(async { tokio::signal::ctrl_c().await.ok(); }).await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub use mymps_core::*;

pub mod npy;

/// The TCP transport (feature `tcp`). Naming the crate here links it, which
/// registers `tcp://` for every program that uses this facade (and, with
/// the feature `tcp+tls`, `tcp+tls://`).
#[cfg(feature = "tcp")]
pub use mymps_transport_tcp as tcp;

/// TLS as the TLS transports (`quic://`, `tcp+tls://`) do it (feature
/// `quic` or `tcp+tls`): certificate fingerprints, the generated
/// certificate's default file, how a client verifies a server.
#[cfg(any(feature = "quic", feature = "tcp+tls"))]
pub use mymps_tls as tls;

/// The cluster client (feature `cluster`): one client over several
/// servers, whatever their transports.
#[cfg(feature = "cluster")]
pub use mymps_cluster as cluster;
/// The HTTP listener (feature `http`). Naming the crate here links it,
/// which registers `http://`.
#[cfg(feature = "http")]
pub use mymps_transport_http as http;
/// The QUIC transport (feature `quic`). Naming the crate here links it,
/// which registers `quic://`.
#[cfg(feature = "quic")]
pub use mymps_transport_quic as quic;
/// The ZeroMQ transport (feature `zmq`). Naming the crate here links it,
/// which registers `zmq://`.
#[cfg(feature = "zmq")]
pub use mymps_transport_zmq as zmq;

/// The libtorch backend (feature `server`).
#[cfg(feature = "server")]
pub use mymps_backend_tch as backend_tch;

/// The op whitelist (feature `server`).
#[cfg(feature = "server")]
pub use mymps_ops as ops_tch;
