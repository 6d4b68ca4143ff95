//! `MympsCluster`: the Python face of [`mymps::cluster::blocking::Cluster`],
//! over [`Remote`] (the calls it shares with `MympsClient`).

use std::path::PathBuf;
use std::time::Duration;

use mymps::cluster::{Cluster, ClusterConfig, HostConfig, Placement, blocking};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors::{bad_argument, to_py};
use crate::generate::GenerateArgs;
use crate::remote::{Remote, fields, load_request, loaded_dict, model_dict};
use crate::tensor::RemoteTensor;

/// A client of several mymps servers, used like one MympsClient.
///
/// Args:
///     addrs: the servers: addresses ("tcp://10.0.0.1:5555",
///         "quic://gpu-b:5556"; "host:port" means TCP) or (host, port)
///         pairs. Give addrs or config, not both.
///     config: a cluster TOML file (hosts with per-host token, ca,
///         fingerprint; timeouts; see docs/deployment.md).
///     timeout: seconds a request may take, failovers and waiting for a
///         host to come back included (default: the file's, else 300).
///     token: authentication token for hosts that have none of their own.
///     ca: CA or server certificate (PEM) for TLS hosts without their own.
///     fingerprint: pinned certificate fingerprint for hosts without their
///         own.
///     health_interval: seconds between health checks of each host
///         (default: the file's, else 2).
///
/// Raises:
///     MympsConnectionError: no host can be reached.
///     BadArgumentError: a bad address or configuration.
///
/// exec() goes to the least busy host that is up; infer() to the least
/// busy host that has the model (load_model(..., hosts=[...]) chooses
/// where). Hosts are health-checked in the background: a host that fails
/// is marked down and its requests are tried again on other hosts, so each
/// call returns exactly one answer; only the request's own errors (bad
/// arguments, unknown op) are raised at once. A host that comes back is
/// used again, with its models loaded again.
///
/// Threads: share one cluster between any number of threads; calls release
/// the GIL and run concurrently.
#[pyclass(module = "mymps", name = "MympsCluster", frozen)]
pub struct MympsCluster {
    remote: Remote<Cluster>,
}

fn seconds(what: &str, t: f64) -> PyResult<Duration> {
    if t.is_finite() && t > 0.0 {
        Duration::try_from_secs_f64(t).map_err(|e| bad_argument(format!("{what} {t}: {e}")))
    } else {
        Err(bad_argument(format!(
            "{what} must be a positive number of seconds, not {t}"
        )))
    }
}

/// An address: a string, or a (host, port) pair.
fn addr_of(item: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = item.extract::<String>() {
        return Ok(s);
    }
    if let Ok((host, port)) = item.extract::<(String, u16)>() {
        let ep = mymps::transport::Endpoint::new("tcp", &host, port);
        return Ok(ep.to_string());
    }
    Err(bad_argument(format!(
        "a host is an address string or a (host, port) pair, not {}",
        item.repr()?
    )))
}

#[pymethods]
impl MympsCluster {
    #[new]
    #[pyo3(
        signature = (addrs = None, *, config = None, timeout = None, token = None, tls_ca = None, tls_fingerprint = None, health_interval = None),
        text_signature = "(addrs=None, *, config=None, timeout=None, token=None, tls_ca=None, tls_fingerprint=None, health_interval=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addrs: Option<&Bound<'_, PyAny>>,
        config: Option<PathBuf>,
        timeout: Option<f64>,
        token: Option<String>,
        tls_ca: Option<PathBuf>,
        tls_fingerprint: Option<String>,
        health_interval: Option<f64>,
    ) -> PyResult<Self> {
        let mut cfg = match (addrs.filter(|a| !a.is_none()), config) {
            (Some(a), None) => {
                if a.extract::<String>().is_ok() {
                    return Err(bad_argument("addrs is a list of addresses, not one string"));
                }
                let mut hosts = Vec::new();
                for item in a.try_iter()? {
                    hosts.push(HostConfig::new(addr_of(&item?)?));
                }
                let c = ClusterConfig {
                    hosts,
                    ..ClusterConfig::default()
                };
                c.validate().map_err(to_py)?;
                c
            }
            (None, Some(path)) => ClusterConfig::from_toml_file(path).map_err(to_py)?,
            (Some(_), Some(_)) => return Err(bad_argument("give addrs or config, not both")),
            (None, None) => {
                return Err(bad_argument(
                    "name the hosts: MympsCluster([\"tcp://a:5555\", ...]) or config=\"cluster.toml\"",
                ));
            }
        };
        if let Some(t) = timeout {
            cfg.timeout = seconds("timeout", t)?;
        }
        if let Some(t) = health_interval {
            cfg.health_interval = seconds("health_interval", t)?;
        }
        cfg.token = cfg.token.or(token);
        cfg.ca = cfg.ca.or(tls_ca);
        cfg.fingerprint = cfg.fingerprint.or(tls_fingerprint);
        let inner = py
            .detach(|| blocking::Cluster::connect(cfg))
            .map_err(to_py)?;
        Ok(MympsCluster {
            remote: Remote::new(inner.into_blocking(), "MympsCluster"),
        })
    }

    /// Run one whitelisted torch op on the least busy host that is up.
    /// Arguments, results and errors as MympsClient.exec; a host that fails
    /// meanwhile is replaced by another (MympsConnectionError only when no
    /// host can serve within the timeout).
    #[pyo3(signature = (op, inputs = None, **kwargs))]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        op: &str,
        inputs: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.remote.exec(py, op, inputs, kwargs)
    }

    /// A forward pass of a loaded model on the least busy host that has it.
    /// Arguments and results as MympsClient.infer. Raises
    /// ModelNotFoundError when no host has the model.
    #[pyo3(signature = (name, inputs = None, *, keep = None))]
    fn infer<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        inputs: Option<&Bound<'py, PyAny>>,
        keep: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.remote.infer(py, name, inputs, keep)
    }

    /// Generate text on the least busy host that has the model. Arguments,
    /// results (a dict, or a GenerateStream with stream=True) and errors
    /// as MympsClient.generate.
    #[pyo3(
        signature = (model, prompt, max_new_tokens = None, *, do_sample = None, temperature = None, top_k = None, top_p = None, repetition_penalty = None, seed = None, stop = None, stop_ids = None, ignore_eos = None, add_special_tokens = None, skip_special_tokens = None, stream = None),
        text_signature = "(self, /, model, prompt, max_new_tokens=None, *, do_sample=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None, seed=None, stop=None, stop_ids=None, ignore_eos=False, add_special_tokens=None, skip_special_tokens=None, stream=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        prompt: &Bound<'py, PyAny>,
        max_new_tokens: Option<&Bound<'py, PyAny>>,
        do_sample: Option<&Bound<'py, PyAny>>,
        temperature: Option<&Bound<'py, PyAny>>,
        top_k: Option<&Bound<'py, PyAny>>,
        top_p: Option<&Bound<'py, PyAny>>,
        repetition_penalty: Option<&Bound<'py, PyAny>>,
        seed: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        stop_ids: Option<&Bound<'py, PyAny>>,
        ignore_eos: Option<&Bound<'py, PyAny>>,
        add_special_tokens: Option<&Bound<'py, PyAny>>,
        skip_special_tokens: Option<&Bound<'py, PyAny>>,
        stream: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = GenerateArgs {
            prompt,
            max_new_tokens,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            stop,
            stop_ids,
            ignore_eos,
            add_special_tokens,
            skip_special_tokens,
            stream,
        };
        self.remote.generate(py, model, args)
    }

    /// The token ids of `text` (a list of ints) by the tokenizer of the
    /// model `model`, on a host that has it, with its special tokens (a
    /// BOS, ...) when add_special_tokens, as `tokenizer(text)` does.
    ///
    /// Raises:
    ///     ModelNotFoundError: no model of that name is loaded.
    ///     UnsupportedError: the model has no tokenizer.
    #[pyo3(signature = (model, text, add_special_tokens = None), text_signature = "(self, /, model, text, add_special_tokens=True)")]
    fn encode(
        &self,
        py: Python<'_>,
        model: &str,
        text: &Bound<'_, PyAny>,
        add_special_tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<i64>> {
        self.remote.encode(py, model, text, add_special_tokens)
    }

    /// Token ids (a list of ints or a 1-D integer array) as text, by the
    /// tokenizer of the model `model`, without its special tokens when
    /// skip_special_tokens.
    ///
    /// Raises:
    ///     BadArgumentError: an id outside the vocabulary.
    ///     ModelNotFoundError: no model of that name is loaded.
    ///     UnsupportedError: the model has no tokenizer.
    #[pyo3(signature = (model, ids, skip_special_tokens = None), text_signature = "(self, /, model, ids, skip_special_tokens=True)")]
    fn decode(
        &self,
        py: Python<'_>,
        model: &str,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        self.remote.decode(py, model, ids, skip_special_tokens)
    }

    /// Keep an array on the least busy host (as MympsClient.put): the
    /// RemoteTensor's .host says which. A call that uses it runs on that
    /// host (with no failover: the data is only there); tensors of two
    /// hosts in one call raise BadArgumentError. If the host's connection
    /// is lost, the tensor is gone with it, and using it raises
    /// UnknownTensorError naming the host.
    fn put(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Py<RemoteTensor>> {
        self.remote.put(py, array)
    }

    /// Several arrays kept on one host in one request (as
    /// MympsClient.put_many).
    fn put_many<'py>(
        &self,
        py: Python<'py>,
        arrays: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.remote.put_many(py, arrays)
    }

    /// Remote tensors' data (as MympsClient.get); tensors on several hosts
    /// are fetched from each.
    fn get<'py>(
        &self,
        py: Python<'py>,
        tensors: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.remote.get(py, tensors)
    }

    /// Free remote tensors now (as MympsClient.free), on whichever hosts
    /// hold them.
    fn free(&self, py: Python<'_>, tensors: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.remote.free(py, tensors)
    }

    /// Share a tensor under a name on the host that holds it (as
    /// MympsClient.share); the cluster remembers that host for the name.
    fn share<'py>(
        &self,
        py: Python<'py>,
        tensor: &Bound<'py, RemoteTensor>,
        name: String,
    ) -> PyResult<Bound<'py, RemoteTensor>> {
        self.remote.share(py, tensor, name)
    }

    /// The tensor shared under `name`, by name (as MympsClient.remote:
    /// described by its host, .shape, .dtype, .device and .host known). A
    /// name this cluster did not share itself is looked up host by host, in
    /// the configuration's order.
    fn remote(&self, py: Python<'_>, name: String) -> PyResult<Py<RemoteTensor>> {
        self.remote.remote(py, name)
    }

    /// A graph builder (as MympsClient.graph); a graph runs on the host of
    /// its RemoteTensors, else on the least busy one.
    fn graph<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("mymps.graph")?.getattr("Graph")?.call1((slf,))
    }

    /// The graph builder's registration (mymps.Graph.register).
    fn _register_graph(
        &self,
        py: Python<'_>,
        steps: &Bound<'_, PyAny>,
        outputs: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        self.remote.register_graph(py, steps, outputs)
    }

    /// The graph builder's run (mymps.Graph.run).
    #[pyo3(signature = (graph, inputs = None, keep = None))]
    fn _run_graph<'py>(
        &self,
        py: Python<'py>,
        graph: &Bound<'py, PyAny>,
        inputs: Option<&Bound<'py, PyAny>>,
        keep: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.remote.run_graph(py, graph, inputs, keep)
    }

    /// Server status of the least busy host that is up (as
    /// MympsClient.health).
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.remote.health(py)
    }

    /// Load a model on the hosts named in `hosts` (names or addresses), or
    /// on every host when None. Arguments as MympsClient.load_model. Hosts
    /// of the placement that are down, or restart later, get the model when
    /// they come up.
    ///
    /// Returns:
    ///     {host: {"status": "ok", "name", "model_type", "device",
    ///     "loaded_at", "metadata"}} for each host that loaded it.
    ///
    /// Raises:
    ///     ModelError: a host could not load it (the message lists each
    ///         host's outcome).
    ///     BadArgumentError: a host that is not in the cluster.
    #[pyo3(
        signature = (name, model_type = "huggingface".to_owned(), model_path = None, model_class = None, dtype = None, trust_remote_code = false, config = None, engine = None, *, hosts = None),
        text_signature = "(self, /, name, model_type='huggingface', model_path=None, model_class=None, dtype=None, trust_remote_code=False, config=None, engine=None, *, hosts=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn load_model<'py>(
        &self,
        py: Python<'py>,
        name: String,
        model_type: String,
        model_path: Option<String>,
        model_class: Option<String>,
        dtype: Option<String>,
        trust_remote_code: bool,
        config: Option<&Bound<'py, PyAny>>,
        engine: Option<String>,
        hosts: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let request = load_request(
            name,
            model_type,
            model_path,
            model_class,
            dtype,
            trust_remote_code,
            config,
            engine,
        )?;
        let placement = match hosts {
            None => Placement::All,
            Some(h) => Placement::Hosts(h),
        };
        let cluster = self.remote.as_async();
        let loaded = self
            .remote
            .wait(py, cluster.load_model(request, placement))?;
        let out = PyDict::new(py);
        for (host, info) in &loaded {
            out.set_item(host, loaded_dict(py, info)?)?;
        }
        Ok(out)
    }

    /// Unload a model from every host: {"status": "ok", "name", "hosts":
    /// [hosts it was unloaded from]}. Raises ModelNotFoundError if no host
    /// had it.
    fn unload_model<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let hosts = self
            .remote
            .wait(py, self.remote.as_async().unload_model(name))?;
        let d = PyDict::new(py);
        d.set_item("status", "ok")?;
        d.set_item("name", name)?;
        d.set_item("hosts", hosts)?;
        Ok(d)
    }

    /// The models of each host that is up: {host: [{"name", "model_type",
    /// "device", "loaded_at", "metadata"}, ...]}.
    fn list_models<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let lists = self.remote.wait(py, self.remote.as_async().list_models())?;
        let out = PyDict::new(py);
        for h in &lists {
            let l = PyList::empty(py);
            for m in &h.models {
                l.append(model_dict(py, m)?)?;
            }
            out.set_item(&h.host, l)?;
        }
        Ok(out)
    }

    /// The op whitelist, sorted (from a host that is up).
    fn list_ops(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.remote.list_ops(py)
    }

    /// Each host's state, in the configuration's order: a list of
    /// {"name", "addr", "state" ("up", "down" or "connecting"),
    /// "state_for_s", "in_flight", "latency_ms", "device",
    /// "server_version", "models", "served", "failovers", "connections",
    /// "error"}.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for h in self.remote.as_async().status() {
            let d = fields!(py, h; name, addr);
            d.set_item("state", h.state.to_string())?;
            fields!(in d, h; state_for_s, in_flight, latency_ms, device, server_version, models,
                    served, failovers, connections, error);
            l.append(d)?;
        }
        Ok(l)
    }

    /// Close every connection and stop the health checks; later calls
    /// raise MympsConnectionError. Closing twice is harmless.
    fn close(&self) {
        self.remote.close()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let hosts: Vec<String> = self
            .remote
            .as_async()
            .status()
            .iter()
            .map(|h| format!("'{}' ({})", h.name, h.state))
            .collect();
        format!("MympsCluster([{}])", hosts.join(", "))
    }
}
