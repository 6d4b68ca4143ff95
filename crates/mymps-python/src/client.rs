//! `MympsClient`: the Python face of [`mymps::client::blocking::Client`],
//! over [`Remote`] (the calls it shares with `MympsCluster`).

use std::time::Duration;

use mymps::client::{Client, ClientOptions, blocking};
use mymps::transport::Endpoint;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{bad_argument, to_py};
use crate::generate::GenerateArgs;
use crate::remote::{Remote, load_request};
use crate::tensor::RemoteTensor;

/// A connection to a mymps server: run whitelisted torch ops on numpy
/// arrays, remotely.
///
/// Args:
///     host: the server's host name or IP address.
///     port: the server's port (5555 by default, as in the first mymps).
///     timeout: seconds to wait for each reply (connecting included), or
///         None for no limit. A request that takes longer raises
///         MympsTimeoutError; the client stays usable.
///     transport: "tcp", "quic" or "zmq" (ZeroMQ: the server must listen
///         on zmq://). `mymps.transports()` lists those in this build; an
///         unknown one raises UnsupportedError.
///     token: authentication token, for servers that require one.
///     tls_ca: quic: the server's certificate or its CA (a PEM file) to
///         verify the server with.
///     tls_fingerprint: quic: the SHA-256 fingerprint of the server's
///         certificate (hex, as `mymps serve` prints it) to pin. A quic
///         client needs tls_ca or tls_fingerprint (or both: then both must
///         match); with neither it raises MympsConnectionError.
///
/// Raises:
///     MympsConnectionError: the server cannot be reached.
///     MympsTimeoutError: connecting took longer than `timeout`.
///
/// Use it as a context manager to close it at the end:
///
///     with MympsClient("127.0.0.1", 5555) as c:
///         out = c.exec("matmul", {"0": a, "1": b})["output"]
///
/// Threads: a client may be shared by any number of threads. Each call
/// releases the GIL while it waits on the network, and calls from several
/// threads run concurrently over the one connection (replies are matched to
/// requests by id). `close()` from one thread makes calls waiting in others
/// raise MympsConnectionError. Ctrl-C interrupts a waiting call.
///
/// Processes: a client belongs to the process that made it; in a child made
/// by fork it raises MympsConnectionError. Make one client per process.
#[pyclass(module = "mymps", name = "MympsClient", frozen, subclass)]
pub struct MympsClient {
    remote: Remote<Client>,
    host: String,
    port: u16,
    timeout: Option<f64>,
    transport: String,
}

fn timeout_duration(timeout: Option<f64>) -> PyResult<Duration> {
    match timeout {
        None => Ok(Duration::MAX),
        Some(t) if t.is_finite() && t > 0.0 => {
            Duration::try_from_secs_f64(t).map_err(|e| bad_argument(format!("timeout {t}: {e}")))
        }
        Some(t) => Err(bad_argument(format!(
            "timeout must be a positive number of seconds or None, not {t}"
        ))),
    }
}

/// `s` quoted as Python's `repr` quotes a plain string.
fn py_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[pymethods]
impl MympsClient {
    #[new]
    #[pyo3(
        signature = (host = "127.0.0.1".to_owned(), port = 5555, timeout = Some(300.0), *, transport = "tcp".to_owned(), token = None, tls_ca = None, tls_fingerprint = None),
        text_signature = "(host='127.0.0.1', port=5555, timeout=300.0, *, transport='tcp', token=None, tls_ca=None, tls_fingerprint=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: i64,
        timeout: Option<f64>,
        transport: String,
        token: Option<String>,
        tls_ca: Option<std::path::PathBuf>,
        tls_fingerprint: Option<String>,
    ) -> PyResult<Self> {
        let port = u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad_argument(format!("port must be in 1..=65535, not {port}")))?;
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        if host_bare.is_empty() {
            return Err(bad_argument("host must not be empty"));
        }
        let transport = transport.to_ascii_lowercase();
        let mut options = ClientOptions {
            timeout: timeout_duration(timeout)?,
            token,
            agent: format!("mymps-python/{}", mymps::VERSION),
            ..ClientOptions::default()
        };
        options.transport.tls_ca = tls_ca;
        options.transport.tls_fingerprint = tls_fingerprint;
        let endpoint = Endpoint::new(&transport, host_bare, port);
        let inner = py
            .detach(|| blocking::Client::connect_endpoint(endpoint, options))
            .map_err(to_py)?;
        Ok(MympsClient {
            remote: Remote::new(inner, "MympsClient"),
            host,
            port,
            timeout,
            transport,
        })
    }

    /// Run one whitelisted torch op on the server's device.
    ///
    /// Args:
    ///     op: the op's name, e.g. "matmul", "softmax", "linalg_svd"
    ///         (list_ops() lists them; describe_op(op) shows a signature).
    ///     inputs: tensor arguments, a dict of numpy arrays. Keys "0", "1",
    ///         "2", ... are positional arguments in that order; any other
    ///         key is a keyword argument ("input", "weight", ...). A list or
    ///         tuple of arrays means positional arguments "0", "1", ...,
    ///         a lone numpy array the one positional argument "0".
    ///         Anything numpy.asarray accepts is converted; None leaves an
    ///         optional tensor out ({"bias": None}).
    ///     **kwargs: scalar arguments: None, bool, int, float, str, or lists
    ///         and tuples of them (dim=-1, keepdim=True, dims=[0, 2, 1],
    ///         equation="ij,jk->ik"); numpy scalars are accepted too.
    ///
    ///     keep: results to keep on the server instead of sending them
    ///         back: True (all), a result's name ("output", "0", ...) or a
    ///         list of names. Kept results come back as RemoteTensors. (No
    ///         op has a parameter called keep.)
    ///
    /// Inputs may be RemoteTensors (client.put(array), or results kept
    /// before) wherever an array goes: the server uses the data it holds,
    /// with no upload.
    ///
    /// Returns:
    ///     A dict of numpy arrays: {"output": array} for an op that returns
    ///     one tensor, {"0": a, "1": b, ...} for a tuple (svd gives U, S, Vh
    ///     as "0", "1", "2"). Arrays keep the dtype torch produced (argmax
    ///     gives int64, eq gives bool, fft gives complex64) and are
    ///     ordinary writable arrays that own their memory. Results named in
    ///     keep are RemoteTensors instead.
    ///
    /// Dtypes: bool, uint8, int8, int16, int32, int64, float16, bfloat16
    /// (numpy through ml_dtypes), float32, float64, complex64, complex128.
    /// Arrays are sent from their own memory without a copy, also when not
    /// contiguous (transposed, Fortran order, sliced with steps, broadcast);
    /// do not modify an input array from another thread while the call runs.
    ///
    /// Raises:
    ///     UnknownOpError: the op is not in the whitelist.
    ///     BadArgumentError: a missing, unexpected or mistyped argument.
    ///     InvalidTensorError: an unsupported dtype or malformed tensor.
    ///     OpError: libtorch failed (e.g. shapes that do not match).
    ///     PayloadTooLargeError: the inputs exceed the server's limits.
    ///     MympsTimeoutError: no reply within the client's timeout.
    ///     MympsConnectionError: the connection is closed or was lost.
    ///     UnknownTensorError: an input RemoteTensor was freed, or is
    ///         another client's.
    ///     LimitReachedError: keeping the results would exceed the
    ///         server's caps on resident tensors.
    ///
    /// Example:
    ///     >>> c.exec("matmul", {"0": a, "1": b})["output"].shape
    ///     (64, 32)
    ///     >>> c.exec("softmax", {"0": x}, dim=-1)["output"].sum(-1)
    ///     >>> w = c.put(weights)
    ///     >>> h = c.exec("matmul", {"0": x, "1": w}, keep=True)["output"]
    ///     >>> c.exec("relu", {"0": h})["output"]   # an array again
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

    /// The names of the ops the server runs (its whitelist), sorted.
    fn list_ops(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.remote.list_ops(py)
    }

    /// One op's description: {"name", "category", "doc", "signature",
    /// "params": [{"name", "kind", "required", "default"}], "outputs"}.
    /// Raises UnknownOpError for an op not in the whitelist.
    fn describe_op<'py>(&self, py: Python<'py>, op: &str) -> PyResult<Bound<'py, PyDict>> {
        self.remote.describe_op(py, op)
    }

    /// Server status: {"status": "ok", "version", "protocol", "backend",
    /// "device", "torch_version", "models_loaded", "ops", "uptime_s",
    /// "resident_tensors", "resident_bytes"} (the tensors kept on the
    /// server, every connection's and the shared ones).
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.remote.health(py)
    }

    /// Host, process and accelerator statistics of the server:
    /// {"cpu_percent", "cpu_count", "load_avg" (1, 5, 15 min),
    /// "memory_total_gb", "memory_used_gb", "memory_percent",
    /// "process_rss_mb", "process_cpu_percent", "device",
    /// "accelerator_memory_total_mb", "accelerator_memory_used_mb",
    /// "accelerator_memory_free_mb"}; the accelerator fields are None where
    /// the device does not report them (the CPU).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.remote.stats(py)
    }

    /// Load a model on the server, registered under `name` (which may
    /// contain "/"); a model of the same name is replaced.
    ///
    /// Args:
    ///     name: the model's name; also its path when model_path is None.
    ///     model_type: "huggingface", "torchscript", "checkpoint" or
    ///         "torch_export" (or a server plugin's own type).
    ///     model_path: where the model is on the server's filesystem: a
    ///         .pt file saved by torch.jit.save (torchscript), a state_dict
    ///         (.pt/.bin from torch.save, or .safetensors) for checkpoint, a
    ///         model directory (or a hub name in the server's Hugging Face
    ///         cache) for huggingface, a .pt2 file from torch.export.save
    ///         or AOTInductor for torch_export.
    ///     model_class: the architecture to build, for checkpoints
    ///         ("linear", "mlp", "cnn", a plugin's class, or
    ///         "package.Class" from the server's Python path).
    ///     dtype: "float32", "float16", "bfloat16" (None: the loader's
    ///         default); floating-point inputs are cast to it.
    ///     trust_remote_code: whether code shipped with a Hugging Face model
    ///         may run (the Python bridge only); refused unless the server
    ///         was started with --allow-remote-code.
    ///     config: the model class's options, a dict (or a JSON string).
    ///     engine: "native" (the server's Rust implementations) or "python"
    ///         (its Python bridge: transformers, user classes, torch.export);
    ///         None: native where it covers the model, else python. The
    ///         answer's metadata["engine"] says which one runs it.
    ///
    /// Returns:
    ///     {"status": "ok", "name", "model_type", "device", "loaded_at",
    ///     "metadata": {"architecture", "parameters", "dtype", "path", ...}}.
    ///
    /// Raises:
    ///     ModelError: the model cannot be loaded (the message says why:
    ///         unknown type or class, missing file, keys or shapes that do
    ///         not match the class).
    #[pyo3(
        signature = (name, model_type = "huggingface".to_owned(), model_path = None, model_class = None, dtype = None, trust_remote_code = false, config = None, engine = None),
        text_signature = "(self, /, name, model_type='huggingface', model_path=None, model_class=None, dtype=None, trust_remote_code=False, config=None, engine=None)"
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
        self.remote.load_model(py, request)
    }

    /// A forward pass of a loaded model.
    ///
    /// Args:
    ///     name: the model's name.
    ///     inputs: a dict of numpy arrays, as for exec: "0", "1", ... are
    ///         positional, other keys keyword ("input_ids",
    ///         "attention_mask", ...); a list or a lone array means
    ///         positional arguments.
    ///
    /// Returns:
    ///     A dict of numpy arrays: {"output": array} for a model returning
    ///     one tensor, {"0": a, "1": b, ...} for a tuple, the model's own
    ///     names for a dict ({"last_hidden_state": ..., ...}).
    ///
    /// Inputs may be RemoteTensors; keep (as for exec: True, a name or a
    /// list of names) keeps outputs on the server as RemoteTensors.
    ///
    /// Raises:
    ///     ModelNotFoundError: no model of that name is loaded.
    ///     ModelError: the forward pass failed.
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

    /// Generate text with a loaded causal language model (model_info says
    /// metadata["generate"] == "true").
    ///
    /// Args:
    ///     model: the model's name.
    ///     prompt: what to continue: a str (encoded by the model's
    ///         tokenizer, on the server), token ids (a list of ints or a
    ///         1-D integer numpy array), or a batch of them: a list of strs
    ///         and/or id lists, or a 2-D integer array. A batch is
    ///         left-padded together on the server and generated at once.
    ///     max_new_tokens: the most tokens to add to each sequence
    ///         (None: the model's generation_config.json, else 20).
    ///     do_sample: sample (True) or take the most likely token (greedy).
    ///     temperature, top_k, top_p: sampling only (an error otherwise).
    ///     repetition_penalty: transformers' (CTRL's); 1 is none.
    ///     seed: the sampling's seed: the same seed and request give the
    ///         same tokens (None: a fresh one, reported as "seed").
    ///     stop: a string, or a list of them, that ends a sequence once its
    ///         text contains it (its tokens are kept).
    ///     stop_ids: an id, or a list of them, that ends a sequence (kept),
    ///         besides the model's end-of-sequence ids.
    ///     ignore_eos: do not stop at the end-of-sequence ids.
    ///     add_special_tokens: whether text prompts get the tokenizer's
    ///         special tokens (a BOS, ...); None: True.
    ///     skip_special_tokens: whether special tokens are left out of the
    ///         texts; None: True.
    ///     stream: return a GenerateStream that yields the steps as the
    ///         server computes them (see help(mymps.GenerateStream)).
    ///
    /// The options mean what transformers' generate means by them; None
    /// takes the model's generation_config.json, else transformers'
    /// defaults.
    ///
    /// Returns:
    ///     For one prompt, a dict {"text": the new text (None for a model
    ///     without a tokenizer), "ids": the new ids (a stop id included),
    ///     "prompt_ids": the prompt's ids, "finish": "length", "stop_id",
    ///     "stop_string" or "cancelled", "steps", "forward_passes",
    ///     "cache_bytes", "seed" (None when greedy)}. For a batch,
    ///     {"sequences": [{"text", "ids", "prompt_ids", "finish"}, ...] (in
    ///     the prompts' order), "steps", "forward_passes", "cache_bytes",
    ///     "seed"}. With stream=True, a GenerateStream whose .summary is
    ///     that dict once it has ended.
    ///
    /// Raises:
    ///     BadArgumentError: a bad prompt or option (before anything is
    ///         sent), or one the server refuses (an id out of the
    ///         vocabulary, sampling options without do_sample).
    ///     ModelNotFoundError: no model of that name is loaded.
    ///     UnsupportedError: the model does not generate, or has no
    ///         tokenizer for a text prompt or stop strings.
    ///     LimitReachedError: over the server's caps (new tokens, batch,
    ///         the KV cache's memory).
    ///
    /// Example:
    ///     >>> c.generate("tiny-gpt2", "Once upon a time", 20)["text"]
    ///     >>> for step in c.generate("tiny-gpt2", "Once", 40, stream=True):
    ///     ...     print(step["text"], end="", flush=True)
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

    /// The token ids of `text` by the tokenizer of the model `model` (a
    /// list of ints), with its special tokens (a BOS, ...) when
    /// add_special_tokens, as `tokenizer(text)` does.
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

    /// Keep an array on the server (in device memory on an accelerator):
    /// upload it once, use it in many calls.
    ///
    /// Returns:
    ///     A RemoteTensor (.shape, .dtype, .device, .handle; .numpy()
    ///     fetches it). Pass it in exec/infer inputs or graphs; dropping it
    ///     frees it on the server (batched with others), or free it now
    ///     with client.free(t).
    ///
    /// Raises:
    ///     LimitReachedError: the server's caps on resident tensors (count
    ///         or bytes, per connection or in all) would be exceeded.
    ///
    /// Example:
    ///     >>> w = c.put(np.ones((1024, 1024), np.float32))
    ///     >>> w
    ///     RemoteTensor(handle=1, shape=(1024, 1024), dtype=float32, device='cpu')
    fn put(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Py<RemoteTensor>> {
        self.remote.put(py, array)
    }

    /// Keep several arrays on the server in one request: a dict of arrays
    /// gives a dict of RemoteTensors, a list gives a list.
    fn put_many<'py>(
        &self,
        py: Python<'py>,
        arrays: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.remote.put_many(py, arrays)
    }

    /// Fetch remote tensors' data: a RemoteTensor gives a numpy array; a
    /// list (or tuple) or dict of them gives a list or dict of arrays, in
    /// one request. Arrays among them are passed through, so that
    /// get(exec(..., keep=...)) gives every result as an array.
    ///
    /// Raises:
    ///     UnknownTensorError: a tensor was freed (or is another client's).
    fn get<'py>(
        &self,
        py: Python<'py>,
        tensors: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.remote.get(py, tensors)
    }

    /// Free remote tensors now: a RemoteTensor, or a list or dict of them,
    /// in one request. Returns how many the server freed (tensors freed
    /// before are skipped). Later uses of them raise UnknownTensorError.
    /// (Dropping a RemoteTensor frees it too, batched with others.)
    fn free(&self, py: Python<'_>, tensors: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.remote.free(py, tensors)
    }

    /// Give a RemoteTensor of this client a server-wide name, so that
    /// other clients can use it (client.remote(name)). The tensor then
    /// outlives this connection until someone frees it
    /// (client.free(client.remote(name))); dropping `t` no longer frees
    /// it. Returns `t`, which now refers by name too.
    ///
    /// Raises:
    ///     BadArgumentError: the name is taken (free that tensor first), or
    ///         empty or longer than 256 bytes.
    fn share<'py>(
        &self,
        py: Python<'py>,
        tensor: &Bound<'py, RemoteTensor>,
        name: String,
    ) -> PyResult<Bound<'py, RemoteTensor>> {
        self.remote.share(py, tensor, name)
    }

    /// The tensor shared under `name` (by any client of this server), as a
    /// RemoteTensor that refers to it by name. One small request asks the
    /// server what it is (no data travels): .shape, .dtype and .device are
    /// known; client.get(t) fetches the data.
    /// Dropping it does not free the shared tensor.
    ///
    /// Raises:
    ///     UnknownTensorError: nothing is shared under `name` (never
    ///         shared, or freed).
    fn remote(&self, py: Python<'_>, name: String) -> PyResult<Py<RemoteTensor>> {
        self.remote.remote(py, name)
    }

    /// A graph builder: ops that run in one request, their intermediate
    /// results staying on the server. See help(mymps.Graph).
    ///
    /// Example:
    ///     >>> g = c.graph()
    ///     >>> x = g.input("x")
    ///     >>> y = g.relu(g.matmul(x, w))     # w: an array or RemoteTensor
    ///     >>> g.output("y", y)
    ///     >>> g.run({"x": a})["y"]
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

    /// The loaded models: a list of {"name", "model_type", "device",
    /// "loaded_at", "metadata"}, sorted by name.
    fn list_models<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.remote.list_models(py)
    }

    /// One loaded model: {"name", "model_type", "device", "loaded_at",
    /// "metadata"}. Raises ModelNotFoundError if it is not loaded.
    fn model_info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        self.remote.model_info(py, name)
    }

    /// Unload a model: {"status": "ok", "name"}. Raises ModelNotFoundError
    /// if it is not loaded.
    fn unload_model<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        self.remote.unload_model(py, name)
    }

    /// Close the connection. Calls still waiting (in other threads) raise
    /// MympsConnectionError, and so does every later call. Closing twice is
    /// harmless.
    fn close(&self) {
        self.remote.close()
    }

    /// Whether the connection is closed (by close(), the server, or a failure).
    #[getter]
    fn closed(&self) -> bool {
        self.remote.forked() || self.remote.as_async().is_closed()
    }

    /// The server's host, as given.
    #[getter]
    fn host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Seconds to wait for each reply (None: no limit).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.timeout
    }

    /// The transport ("tcp", "quic" or "zmq").
    #[getter]
    fn transport(&self) -> &str {
        &self.transport
    }

    /// The device the server computes on ("cpu", "cuda:0", "mps"), from
    /// the handshake.
    #[getter]
    fn device(&self) -> &str {
        &self.remote.as_async().welcome().device
    }

    /// The server software and version, from the handshake ("mymps/0.1.0").
    #[getter]
    fn server_version(&self) -> &str {
        &self.remote.as_async().welcome().agent
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() {
            ", closed".to_owned()
        } else {
            format!(", device={}", py_str(self.device()))
        };
        format!(
            "MympsClient(host={}, port={}, transport={}{state})",
            py_str(&self.host),
            self.port,
            py_str(&self.transport)
        )
    }
}
