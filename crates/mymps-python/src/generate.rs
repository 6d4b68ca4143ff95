//! Text generation from Python: `generate` (the whole result, or streamed
//! as a [`GenerateStream`] iterator), `encode` and `decode`, shared by
//! `MympsClient` and `MympsCluster` through [`Remote`].
//!
//! Python arguments become a [`GenerateRequest`] here (every bad one a
//! `BadArgumentError` before anything is sent), and the replies plain
//! dicts and lists:
//!
//! - one sequence: `{"text", "ids", "prompt_ids", "finish"}`;
//! - the whole result of one prompt: that sequence's fields and the
//!   shared ones, `{"steps", "forward_passes", "cache_bytes", "seed"}`; of
//!   a batch: `{"sequences": [sequence, ...]}` and the shared ones;
//! - a step of a stream: `{"index", "id", "text", "finish"}` for one
//!   prompt, a list of those (one per sequence) for a batch.
//!
//! A [`GenerateStream`] waits for each step with the GIL released (and
//! wakes for Ctrl-C, as every call does: [`crate::remote::Link::wait`]);
//! closing it, or dropping it before its end, cancels the generation on
//! the server.

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use mymps::client::Generation;
use mymps::model::{
    FinishReason, GenerateRequest, GenerateSummary, GeneratedSequence, Prompt, Step, StepToken,
};
use mymps::protocol::rpc;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};

use crate::convert;
use crate::errors::{bad_argument, to_py};
use crate::remote::{Handles, Remote};

/// What a [`GenerateStream`] needs of the caller that started it (its
/// `Link`, whatever the service): waiting on the runtime with the GIL
/// released, and dropping inside it.
pub trait StreamLink: Send + Sync {
    /// The generation's next step (`None` at its end), waited for with
    /// the GIL released. The outer error is Python's (Ctrl-C, a forked
    /// process); the inner one the stream's own, which ends it.
    fn next_step(
        &self,
        py: Python<'_>,
        generation: &mut Generation,
    ) -> PyResult<Option<mymps::Result<Step>>>;

    /// Asks the server to stop the generation after its current step.
    fn cancel(&self, py: Python<'_>, generation: &mut Generation) -> PyResult<()>;

    /// Drops a generation; one not yet ended is cancelled on the server
    /// first, at once (nothing at all in a forked child).
    fn discard(&self, generation: Generation);
}

/// The Python arguments of `generate`, as given (each converted and
/// checked by [`request_of`]).
pub struct GenerateArgs<'a, 'py> {
    /// `prompt`: a text, ids (a list or 1-D integer array), or a batch.
    pub prompt: &'a Bound<'py, PyAny>,
    /// `max_new_tokens`.
    pub max_new_tokens: Option<&'a Bound<'py, PyAny>>,
    /// `do_sample`.
    pub do_sample: Option<&'a Bound<'py, PyAny>>,
    /// `temperature`.
    pub temperature: Option<&'a Bound<'py, PyAny>>,
    /// `top_k`.
    pub top_k: Option<&'a Bound<'py, PyAny>>,
    /// `top_p`.
    pub top_p: Option<&'a Bound<'py, PyAny>>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<&'a Bound<'py, PyAny>>,
    /// `seed`.
    pub seed: Option<&'a Bound<'py, PyAny>>,
    /// `stop`: a stop string or a list of them.
    pub stop: Option<&'a Bound<'py, PyAny>>,
    /// `stop_ids`: an id or a list of them.
    pub stop_ids: Option<&'a Bound<'py, PyAny>>,
    /// `ignore_eos`.
    pub ignore_eos: Option<&'a Bound<'py, PyAny>>,
    /// `add_special_tokens`.
    pub add_special_tokens: Option<&'a Bound<'py, PyAny>>,
    /// `skip_special_tokens`.
    pub skip_special_tokens: Option<&'a Bound<'py, PyAny>>,
    /// `stream`.
    pub stream: Option<&'a Bound<'py, PyAny>>,
}

/// `v`, unless it is absent or None.
fn given<'a, 'py>(v: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    v.filter(|v| !v.is_none())
}

fn repr(v: &Bound<'_, PyAny>) -> String {
    v.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".into())
}

/// An integer that is not a bool (Python's or numpy's integers).
fn is_int(v: &Bound<'_, PyAny>) -> PyResult<bool> {
    if v.is_instance_of::<PyBool>() {
        return Ok(false);
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(true);
    }
    v.is_instance(&convert::numpy(v.py())?.getattr("integer")?)
}

fn opt_bool(name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<bool>> {
    let Some(v) = given(v) else { return Ok(None) };
    let is_bool = v.is_instance_of::<PyBool>()
        || v.is_instance(&convert::numpy(v.py())?.getattr("bool_")?)?;
    if !is_bool {
        return Err(bad_argument(format!(
            "{name} is True or False, not {}",
            repr(v)
        )));
    }
    Ok(Some(v.is_truthy()?))
}

fn opt_count(name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(v) = given(v) else { return Ok(None) };
    if is_int(v)? {
        if let Ok(n) = v.extract::<usize>() {
            return Ok(Some(n));
        }
    }
    Err(bad_argument(format!(
        "{name} is a non-negative integer, not {}",
        repr(v)
    )))
}

fn opt_float(name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    let Some(v) = given(v) else { return Ok(None) };
    if !v.is_instance_of::<PyBool>() {
        if let Ok(x) = v.extract::<f64>() {
            if x.is_finite() {
                return Ok(Some(x));
            }
        }
    }
    Err(bad_argument(format!(
        "{name} is a finite number, not {}",
        repr(v)
    )))
}

/// Token ids: a list or tuple of integers, or a 1-D integer array.
fn ids_of(what: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let py = v.py();
    if v.is_instance(convert::ndarray(py)?)? {
        let ndim: usize = v.getattr("ndim")?.extract()?;
        let kind: String = v.getattr("dtype")?.getattr("kind")?.extract()?;
        if ndim != 1 || (kind != "i" && kind != "u") {
            return Err(bad_argument(format!(
                "{what} is a 1-D array of integers, not an array of shape {} and dtype {}",
                repr(&v.getattr("shape")?),
                v.getattr("dtype")?.str()?
            )));
        }
        return v
            .call_method0("tolist")?
            .extract::<Vec<i64>>()
            .map_err(|_| bad_argument(format!("{what}: token ids are in the range of int64")));
    }
    if !(v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>()) {
        return Err(bad_argument(format!(
            "{what} is a list of integers or a 1-D integer array, not {}",
            repr(v)
        )));
    }
    let mut ids = Vec::new();
    for item in v.try_iter()? {
        let item = item?;
        let id = if is_int(&item)? {
            item.extract::<i64>().ok()
        } else {
            None
        };
        ids.push(id.ok_or_else(|| {
            bad_argument(format!(
                "{what}: a token id is an integer (in the range of int64), not {}",
                repr(&item)
            ))
        })?);
    }
    Ok(ids)
}

/// One prompt of a batch: a text, or ids.
fn one_prompt(v: &Bound<'_, PyAny>) -> PyResult<Prompt> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Prompt::Text(s.extract::<String>()?));
    }
    Ok(Prompt::Ids(ids_of("a prompt of the batch", v)?))
}

/// `prompt`: the prompts, and whether it was a batch.
pub fn prompts_of(prompt: &Bound<'_, PyAny>) -> PyResult<(Vec<Prompt>, bool)> {
    let py = prompt.py();
    if let Ok(s) = prompt.cast::<PyString>() {
        return Ok((vec![Prompt::Text(s.extract::<String>()?)], false));
    }
    if prompt.is_instance(convert::ndarray(py)?)? {
        let ndim: usize = prompt.getattr("ndim")?.extract()?;
        return match ndim {
            1 => Ok((vec![Prompt::Ids(ids_of("prompt", prompt)?)], false)),
            2 => {
                let mut rows = Vec::new();
                for row in prompt.try_iter()? {
                    rows.push(Prompt::Ids(ids_of("a row of the prompt", &row?)?));
                }
                if rows.is_empty() {
                    return Err(bad_argument("prompt: the batch is empty"));
                }
                Ok((rows, true))
            }
            _ => Err(bad_argument(format!(
                "prompt: an array of ids is 1-D (one prompt) or 2-D (a batch), not {ndim}-D"
            ))),
        };
    }
    if prompt.is_instance_of::<PyList>() || prompt.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = prompt.try_iter()?.collect::<PyResult<_>>()?;
        let Some(first) = items.first() else {
            return Err(bad_argument(
                "prompt is empty: give a text, token ids, or a list of them (a batch)",
            ));
        };
        if is_int(first)? {
            return Ok((vec![Prompt::Ids(ids_of("prompt", prompt)?)], false));
        }
        let prompts = items.iter().map(one_prompt).collect::<PyResult<_>>()?;
        return Ok((prompts, true));
    }
    Err(bad_argument(format!(
        "prompt is a str, a list of token ids, a 1-D integer array, or a batch of them \
         (a list, a 2-D array), not {}",
        repr(prompt)
    )))
}

fn stop_strings(v: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(v) = given(v) else {
        return Ok(Vec::new());
    };
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(vec![s.extract::<String>()?]);
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        if let Ok(all) = v.extract::<Vec<String>>() {
            return Ok(all);
        }
    }
    Err(bad_argument(format!(
        "stop is a string or a list of strings, not {}",
        repr(v)
    )))
}

fn stop_ids(v: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<i64>> {
    let Some(v) = given(v) else {
        return Ok(Vec::new());
    };
    if is_int(v)? {
        return v
            .extract::<i64>()
            .map(|id| vec![id])
            .map_err(|_| bad_argument(format!("stop_ids: {} is not an int64", repr(v))));
    }
    ids_of("stop_ids", v)
}

/// The request `args` ask for, whether `prompt` was a batch, and whether
/// to stream.
pub fn request_of(args: &GenerateArgs<'_, '_>) -> PyResult<(GenerateRequest, bool, bool)> {
    let (prompts, batch) = prompts_of(args.prompt)?;
    let seed = match given(args.seed) {
        None => None,
        Some(v) => Some(
            is_int(v)?
                .then(|| v.extract::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    bad_argument(format!("seed is an integer in [0, 2**64), not {}", repr(v)))
                })?,
        ),
    };
    let request = GenerateRequest {
        prompts,
        max_new_tokens: opt_count("max_new_tokens", args.max_new_tokens)?,
        do_sample: opt_bool("do_sample", args.do_sample)?,
        temperature: opt_float("temperature", args.temperature)?,
        top_k: opt_count("top_k", args.top_k)?,
        top_p: opt_float("top_p", args.top_p)?,
        repetition_penalty: opt_float("repetition_penalty", args.repetition_penalty)?,
        seed,
        stop_ids: stop_ids(args.stop_ids)?,
        stop_strings: stop_strings(args.stop)?,
        ignore_eos: opt_bool("ignore_eos", args.ignore_eos)?.unwrap_or(false),
        add_special_tokens: opt_bool("add_special_tokens", args.add_special_tokens)?,
        skip_special_tokens: opt_bool("skip_special_tokens", args.skip_special_tokens)?,
    };
    let stream = opt_bool("stream", args.stream)?.unwrap_or(false);
    Ok((request, batch, stream))
}

/// A finish reason's name, as on the wire.
pub fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::StopId => "stop_id",
        FinishReason::StopString => "stop_string",
        FinishReason::Cancelled => "cancelled",
    }
}

fn add_sequence(d: &Bound<'_, PyDict>, s: &GeneratedSequence) -> PyResult<()> {
    d.set_item("text", &s.text)?;
    d.set_item("ids", &s.ids)?;
    d.set_item("prompt_ids", &s.prompt_ids)?;
    d.set_item("finish", finish_name(s.finish))?;
    Ok(())
}

/// A summary as Python sees it: one sequence's fields and the shared ones,
/// or (`batch`) `{"sequences": [...]}` and the shared ones.
pub fn summary_dict<'py>(
    py: Python<'py>,
    s: &GenerateSummary,
    batch: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    if batch {
        let l = PyList::empty(py);
        for seq in &s.sequences {
            let sd = PyDict::new(py);
            add_sequence(&sd, seq)?;
            l.append(sd)?;
        }
        d.set_item("sequences", l)?;
    } else {
        let seq = s
            .sequences
            .first()
            .ok_or_else(|| crate::errors::internal("generate returned no sequence"))?;
        add_sequence(&d, seq)?;
    }
    d.set_item("steps", s.steps)?;
    d.set_item("forward_passes", s.forward_passes)?;
    d.set_item("cache_bytes", s.cache_bytes)?;
    d.set_item("seed", s.seed)?;
    Ok(d)
}

fn token_dict<'py>(py: Python<'py>, index: usize, t: &StepToken) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", index)?;
    d.set_item("id", t.id)?;
    d.set_item("text", &t.text)?;
    d.set_item("finish", t.finish.map(finish_name))?;
    Ok(d)
}

/// A step as a stream yields it: one dict, or (`batch`) a list of them.
pub fn step_item<'py>(py: Python<'py>, step: &Step, batch: bool) -> PyResult<Bound<'py, PyAny>> {
    if batch {
        let l = PyList::empty(py);
        for t in &step.tokens {
            l.append(token_dict(py, step.index, t)?)?;
        }
        return Ok(l.into_any());
    }
    let t = step
        .tokens
        .first()
        .ok_or_else(|| crate::errors::internal("a generate step without a token"))?;
    Ok(token_dict(py, step.index, t)?.into_any())
}

struct State {
    /// `None` once the stream has ended (or failed).
    generation: Option<Generation>,
    summary: Option<GenerateSummary>,
}

/// A streamed `generate` (`client.generate(..., stream=True)`): an
/// iterator of its steps, as the server computes them.
///
/// Each item is a dict `{"index", "id", "text", "finish"}` for one prompt
/// (the step's number, the new token's id, the text it completed, possibly
/// "", and why the sequence ended, at its last step, else None); for a
/// batch, a list of such dicts, one per prompt in order (a sequence that
/// has ended has id None and text ""). The texts add up to the summary's.
///
/// Once the iterator is exhausted, `.summary` is the whole result, as
/// `generate` without `stream` returns it. An error (on the server, or the
/// connection) is raised by the `next()` that meets it, and ends the
/// stream.
///
/// `close()` stops the generation on the server (after the step under
/// way) and reads the stream to its end: `.summary` then says "cancelled"
/// for the sequences it cut short. Leaving a `for` loop with `break`, or
/// dropping the stream, cancels it too. `with` closes it at the end.
///
/// Each `next()` waits with the GIL released; Ctrl-C interrupts the wait
/// (the stream stays usable). One thread at a time may read a stream.
#[pyclass(module = "mymps", name = "GenerateStream", frozen)]
pub struct GenerateStream {
    link: Arc<dyn StreamLink>,
    model: String,
    batch: bool,
    state: Mutex<State>,
}

impl GenerateStream {
    fn lock(&self) -> PyResult<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(bad_argument(
                "this GenerateStream is being read by another thread",
            )),
        }
    }

    /// Ends the stream: the summary if it came.
    fn end(&self, st: &mut State) {
        if let Some(g) = st.generation.take() {
            st.summary = g.summary().cloned();
            self.link.discard(g);
        }
    }
}

#[pymethods]
impl GenerateStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut st = self.lock()?;
        let Some(g) = st.generation.as_mut() else {
            return Ok(None);
        };
        match self.link.next_step(py, g)? {
            Some(Ok(step)) => Ok(Some(step_item(py, &step, self.batch)?)),
            Some(Err(e)) => {
                self.end(&mut st);
                Err(to_py(e))
            }
            None => {
                self.end(&mut st);
                Ok(None)
            }
        }
    }

    /// The whole result (as `generate` without `stream` returns it), once
    /// the stream has ended; None before, or when it failed.
    #[getter]
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let st = self.lock()?;
        st.summary
            .as_ref()
            .map(|s| summary_dict(py, s, self.batch))
            .transpose()
    }

    /// Whether the stream has ended (read to its end, failed or closed).
    #[getter]
    fn ended(&self) -> PyResult<bool> {
        Ok(self.lock()?.generation.is_none())
    }

    /// Ask the server to stop after the step under way, without waiting:
    /// the steps already computed still come, then the summary.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = self.lock()?;
        match st.generation.as_mut() {
            Some(g) => self.link.cancel(py, g),
            None => Ok(()),
        }
    }

    /// Stop the generation on the server and read the stream to its end:
    /// afterwards `.summary` is the result so far (its unfinished
    /// sequences "cancelled"), and iteration stops. Closing an ended
    /// stream does nothing; a failure of the stream is not raised here
    /// (`.summary` is then None).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = self.lock()?;
        let Some(g) = st.generation.as_mut() else {
            return Ok(());
        };
        self.link.cancel(py, g)?;
        // Bounded: the server stops after its current step, and a stream
        // has at most max_new_tokens steps.
        while let Some(Ok(_)) = self.link.next_step(py, g)? {}
        self.end(&mut st);
        Ok(())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match self.state.try_lock() {
            Ok(st) if st.generation.is_none() => "ended",
            Ok(_) => "running",
            Err(_) => "being read",
        };
        format!("GenerateStream(model={:?}, {state})", self.model)
    }
}

impl Drop for GenerateStream {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = st.generation.take() {
            self.link.discard(g);
        }
    }
}

impl<S: Handles> Remote<S> {
    /// `generate(model, prompt, ...)`: the whole result as a dict, or a
    /// [`GenerateStream`] when `stream`.
    pub fn generate<'py>(
        &self,
        py: Python<'py>,
        model: &str,
        args: GenerateArgs<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (request, batch, stream) = request_of(&args)?;
        if !stream {
            let summary = self.call(
                py,
                rpc::Generate {
                    name: model.to_owned(),
                    request,
                },
            )?;
            return Ok(summary_dict(py, &summary, batch)?.into_any());
        }
        let link = self.link();
        let generation = link.wait(py, link.as_async().generate_stream(model, request))?;
        let s = GenerateStream {
            link: link.clone(),
            model: model.to_owned(),
            batch,
            state: Mutex::new(State {
                generation: Some(generation),
                summary: None,
            }),
        };
        Ok(Bound::new(py, s)?.into_any())
    }

    /// `encode(model, text, add_special_tokens)`.
    pub fn encode(
        &self,
        py: Python<'_>,
        model: &str,
        text: &Bound<'_, PyAny>,
        add_special_tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<i64>> {
        let text = text
            .cast::<PyString>()
            .map_err(|_| bad_argument(format!("encode takes a str, not {}", repr(text))))?
            .extract::<String>()?;
        let add_special_tokens =
            opt_bool("add_special_tokens", add_special_tokens)?.unwrap_or(true);
        self.call(
            py,
            rpc::Encode {
                name: model.to_owned(),
                text,
                add_special_tokens,
            },
        )
    }

    /// `decode(model, ids, skip_special_tokens)`.
    pub fn decode(
        &self,
        py: Python<'_>,
        model: &str,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let ids = ids_of("ids", ids)?;
        let skip_special_tokens =
            opt_bool("skip_special_tokens", skip_special_tokens)?.unwrap_or(true);
        self.call(
            py,
            rpc::Decode {
                name: model.to_owned(),
                ids,
                skip_special_tokens,
            },
        )
    }
}
