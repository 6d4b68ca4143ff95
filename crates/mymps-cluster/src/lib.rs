//! # mymps-cluster
//!
//! One client over several mymps servers: [`Cluster`] sends each op to the
//! least busy host that is up, each forward pass to a host that has the
//! model, checks the hosts' health, and tries a request again on another
//! host when its host fails, so that every request is answered exactly once
//! unless no host can serve it.
//!
//! It speaks to each host through [`mymps_core::client::Client`], over
//! whatever transport the host's address names (`tcp://`, `quic://`, ...):
//! the program must link those transports (the `mymps` facade does, by
//! feature).
//!
//! ```no_run
//! # async fn demo() -> mymps_core::Result<()> {
//! use mymps_cluster::{Cluster, ClusterConfig, Placement};
//! use mymps_core::{Tensor, client::{Call, Caller}};
//! let config = ClusterConfig::from_addrs(&["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"])?;
//! // or ClusterConfig::from_toml_file("cluster.toml")?
//! let cluster = Cluster::connect(config).await?;
//! let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3])?;
//! let out = cluster.call(Call::new("softmax").arg(x).kwarg("dim", -1)).await?;
//! for host in cluster.status() {
//!     println!("{} {} in flight: {}", host.name, host.state, host.in_flight);
//! }
//! # Ok(()) }
//! ```
//!
//! A [`Cluster`] is a [`Service`](mymps_core::client::Service): every call
//! of [`Caller`](mymps_core::client::Caller) works on it as on one server's
//! client, routed by the request's kind (see [`Cluster`]).
//! [`blocking::Cluster`] is the same for programs without an async runtime.
#![warn(missing_docs)]

mod cluster;
pub mod config;

pub use cluster::{Cluster, HostModels, HostState, HostStats, HostStatus, Placement};
pub use config::{ClusterConfig, HostConfig};

/// A cluster client for programs without an async runtime: the same calls,
/// blocking.
///
/// It owns a small runtime (two worker threads, which also run the health
/// checks). It is `Send + Sync`: share it between threads; their calls run
/// concurrently.
pub mod blocking {
    use std::time::Duration;

    use mymps_core::client::{Blocking, Caller};
    use mymps_core::model::{LoadRequest, ModelInfo};
    use mymps_core::protocol::rpc::Rpc;
    use mymps_core::{Error, Result};

    use crate::{ClusterConfig, HostModels, HostStats, HostStatus, Placement};

    /// A blocking cluster client: every call of [`Caller`] (blocking), and
    /// the cluster's own. See the [module docs](self).
    #[derive(Debug)]
    pub struct Cluster {
        inner: Blocking<super::Cluster>,
    }

    fn runtime() -> Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mymps-cluster")
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the cluster runtime: {e}")))
    }

    impl Caller for Cluster {
        type Out<T: 'static> = T;

        fn call<R: Rpc>(&self, rpc: R) -> Result<R::Reply> {
            self.inner.call(rpc)
        }
    }

    impl Cluster {
        /// See [`super::Cluster::connect`].
        pub fn connect(config: ClusterConfig) -> Result<Cluster> {
            let inner = Blocking::start(runtime()?, super::Cluster::connect(config))?;
            Ok(Cluster { inner })
        }

        /// See [`super::Cluster::open`].
        pub fn open(config: ClusterConfig) -> Result<Cluster> {
            let inner = Blocking::start(runtime()?, super::Cluster::open(config))?;
            Ok(Cluster { inner })
        }

        /// The async cluster client underneath.
        pub fn as_async(&self) -> &super::Cluster {
            self.inner.as_async()
        }

        /// The generic blocking caller this is.
        pub fn into_blocking(self) -> Blocking<super::Cluster> {
            self.inner
        }

        /// Runs a future on this client's runtime (for the async API).
        pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
            self.inner.block_on(f)
        }

        /// See [`super::Cluster::load_model`].
        pub fn load_model(
            &self,
            request: LoadRequest,
            placement: Placement,
        ) -> Result<Vec<(String, ModelInfo)>> {
            self.block_on(self.as_async().load_model(request, placement))
        }

        /// See [`super::Cluster::unload_model`].
        pub fn unload_model(&self, name: &str) -> Result<Vec<String>> {
            self.block_on(self.as_async().unload_model(name))
        }

        /// See [`super::Cluster::list_models`].
        pub fn list_models(&self) -> Result<Vec<HostModels>> {
            self.block_on(self.as_async().list_models())
        }

        /// See [`super::Cluster::stats`].
        pub fn stats(&self) -> Vec<HostStats> {
            self.block_on(self.as_async().stats())
        }

        /// See [`super::Cluster::status`].
        pub fn status(&self) -> Vec<HostStatus> {
            self.as_async().status()
        }

        /// See [`super::Cluster::wait_for`].
        pub fn wait_for(
            &self,
            timeout: Duration,
            ready: impl Fn(&[HostStatus]) -> bool,
        ) -> Result<Vec<HostStatus>> {
            self.block_on(self.as_async().wait_for(timeout, ready))
        }

        /// See [`super::Cluster::close`].
        pub fn close(&self) {
            self.inner.close()
        }
    }
}
