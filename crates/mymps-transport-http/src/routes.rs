//! The routes: the first mymps's REST API, the dashboard, `/history` and
//! `/metrics`,
//! text generation (`/generate`, streamed as server-sent events;
//! `/encode`, `/decode`), each translated to the core's requests over the
//! connection's [`VirtualConn`] and back.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use mymps_core::history::HistorySnapshot;
use mymps_core::metrics::{self, ErrorCount, MetricsSnapshot};
use mymps_core::model::{GenerateRequest, LoadRequest, ModelInfo, Prompt};
use mymps_core::protocol::rpc::{self, Outputs, Rpc};
use mymps_core::protocol::{
    ExecRequest, GenerateCall, HealthInfo, InferRequest, Request, Response, StatsInfo,
};
use mymps_core::transport::Connection;
use mymps_core::{Error, ErrorCode, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use crate::msgpack;
use crate::virtual_conn::{BodySpec, CallError, Replies, VirtualConn};

const DASHBOARD: &str = include_str!("dashboard.html");
const MSGPACK: &str = "application/msgpack";
const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const EVENT_STREAM: &str = "text/event-stream";

/// A response body of ready chunks: JSON in one, msgpack results as their
/// small msgpack parts between the result tensors' own buffers.
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl Chunks {
    fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks, len }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.chunks.pop_front().map(|c| {
            this.len -= c.len() as u64;
            Ok(Frame::data(c))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Server-sent events of a streamed `generate`: one `data:` event per
/// step, then `event: done` with the summary, or `event: error`. Dropped
/// before the last (the client went away), the generation is cancelled on
/// the server.
pub struct Events {
    /// The event of the reply read before the answer's head was sent.
    first: Option<Bytes>,
    replies: Replies,
    ended: bool,
}

/// One server-sent event; `data` is JSON (one line: no newline in it).
fn event(name: Option<&str>, data: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(data).expect("JSON values serialise");
    Bytes::from(match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    })
}

/// The `event: error` body: the error's wire code, its name and message.
#[derive(Serialize)]
struct ErrorEvent<'a> {
    code: u16,
    name: &'static str,
    message: &'a str,
}

fn error_event(e: &Error) -> Bytes {
    event(
        Some("error"),
        &ErrorEvent {
            code: e.code.as_u16(),
            name: e.code.name(),
            message: &e.message,
        },
    )
}

impl Events {
    /// The event for one reply of a generate stream, and whether it is the
    /// last.
    fn of(reply: Result<(Response, bool), CallError>) -> (Bytes, bool) {
        match reply {
            Ok((Response::GenerateStep(step), true)) => (event(None, &step), false),
            Ok((Response::Generated(summary), false)) => (event(Some("done"), &summary), true),
            Ok((other, more)) => (
                error_event(&Error::protocol(format!(
                    "unexpected reply in a generate stream: {other:?}"
                ))),
                !more,
            ),
            Err(e) => (error_event(&e.error), true),
        }
    }
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match this.replies.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(reply)) => {
                let (bytes, last) = Events::of(reply);
                this.ended = last;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }
}

/// A response body: ready chunks, or a generate's events as they come.
pub enum RespBody {
    /// Known in full.
    Chunks(Chunks),
    /// Server-sent events.
    Events(Events),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            RespBody::Chunks(c) => Pin::new(c).poll_frame(cx),
            RespBody::Events(e) => Pin::new(e).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Chunks(c) => c.is_end_stream(),
            RespBody::Events(e) => e.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Chunks(c) => c.size_hint(),
            RespBody::Events(e) => e.size_hint(),
        }
    }
}

type Resp = hyper::Response<RespBody>;

/// One HTTP connection's state: its virtual connection to the server,
/// opened on first use and again when the request's token changes.
pub struct ConnCtx {
    accept: mpsc::Sender<Connection>,
    peer: String,
    body_timeout: Duration,
    conn: Mutex<Option<(Option<String>, VirtualConn)>>,
}

impl ConnCtx {
    pub fn new(accept: mpsc::Sender<Connection>, peer: String, body_timeout: Duration) -> ConnCtx {
        ConnCtx {
            accept,
            peer,
            body_timeout,
            conn: Mutex::new(None),
        }
    }

    async fn conn(&self, token: Option<String>) -> Result<VirtualConn, Error> {
        let mut st = self.conn.lock().await;
        if let Some((t, c)) = st.as_ref()
            && *t == token
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        *st = None;
        let c = VirtualConn::open(
            &self.accept,
            token.clone(),
            self.peer.clone(),
            self.body_timeout,
        )
        .await?;
        *st = Some((token, c.clone()));
        Ok(c)
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Chunks) -> Resp {
    let mut r = hyper::Response::new(RespBody::Chunks(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &impl Serialize) -> Resp {
    let body = serde_json::to_vec(value).expect("JSON values serialise");
    response(status, JSON, Chunks::new([Bytes::from(body)]))
}

/// The HTTP status for an error: 4xx for the client's mistakes, 5xx for
/// the server's.
fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UnknownOp
        | ErrorCode::BadArgument
        | ErrorCode::InvalidTensor
        | ErrorCode::Backend
        | ErrorCode::Protocol
        | ErrorCode::UnsupportedVersion
        | ErrorCode::Model => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
        ErrorCode::PayloadTooLarge | ErrorCode::LimitReached => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Busy | ErrorCode::Connection => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'static str,
}

fn error_response(e: &CallError) -> Resp {
    let code = e.error.code;
    // A request the client did not finish sending in time: its timeout,
    // not a gateway's.
    let status = if code == ErrorCode::Timeout && e.body_unread {
        StatusCode::REQUEST_TIMEOUT
    } else {
        status_for(code)
    };
    let mut r = json(
        status,
        &ErrorBody {
            error: &e.error.message,
            code: code.name(),
        },
    );
    if code == ErrorCode::Unauthenticated {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mymps\""),
        );
    }
    if e.body_unread {
        // The unread body cannot be skipped: the connection ends here.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn plain_error(status: StatusCode, code: ErrorCode, msg: String) -> Resp {
    let mut r = error_response(&Error::new(code, msg).into());
    *r.status_mut() = status;
    r
}

/// `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Decodes `%XX` escapes (model names with `/` or spaces).
fn percent_decode(s: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::bad_argument(format!("bad %-escape in the path '{s}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::bad_argument("the path is not UTF-8"))
}

enum Route {
    Dashboard,
    DashboardData,
    History,
    Metrics,
    Health,
    Stats,
    Ops,
    Models,
    LoadModel,
    UnloadModel(String),
    ModelInfo(String),
    Infer,
    Exec,
    Generate,
    Encode,
    Decode,
}

/// The route for a method and path, or the 404 / 405 answer.
fn route(method: &Method, path: &str) -> Result<Route, Box<Resp>> {
    let (allowed, route): (&str, Option<Route>) = match path {
        "/" | "/dashboard" => ("GET", (method == Method::GET).then_some(Route::Dashboard)),
        "/api/dashboard" => (
            "GET",
            (method == Method::GET).then_some(Route::DashboardData),
        ),
        "/metrics" => ("GET", (method == Method::GET).then_some(Route::Metrics)),
        "/history" => ("GET", (method == Method::GET).then_some(Route::History)),
        "/health" => ("GET", (method == Method::GET).then_some(Route::Health)),
        "/stats" => ("GET", (method == Method::GET).then_some(Route::Stats)),
        "/ops" => ("GET", (method == Method::GET).then_some(Route::Ops)),
        "/models" => ("GET", (method == Method::GET).then_some(Route::Models)),
        "/infer" => ("POST", (method == Method::POST).then_some(Route::Infer)),
        "/exec" => ("POST", (method == Method::POST).then_some(Route::Exec)),
        "/generate" => ("POST", (method == Method::POST).then_some(Route::Generate)),
        "/encode" => ("POST", (method == Method::POST).then_some(Route::Encode)),
        "/decode" => ("POST", (method == Method::POST).then_some(Route::Decode)),
        "/models/load" if method == Method::POST => ("POST", Some(Route::LoadModel)),
        p if p.starts_with("/models/") && p.len() > "/models/".len() => {
            let rest = &p["/models/".len()..];
            let decode =
                |s: &str| percent_decode(s).map_err(|e| Box::new(error_response(&e.into())));
            match (method, rest.strip_suffix("/info")) {
                (&Method::DELETE, _) => ("DELETE", Some(Route::UnloadModel(decode(rest)?))),
                (&Method::GET, Some(name)) if !name.is_empty() => {
                    ("GET", Some(Route::ModelInfo(decode(name)?)))
                }
                (_, Some(_)) => ("GET, DELETE", None),
                (_, None) if rest == "load" => ("POST, DELETE", None),
                (_, None) => ("DELETE", None),
            }
        }
        _ => {
            return Err(Box::new(plain_error(
                StatusCode::NOT_FOUND,
                ErrorCode::BadArgument,
                format!("no route {method} {path}"),
            )));
        }
    };
    route.ok_or_else(|| {
        let mut r = plain_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadArgument,
            format!("{method} is not allowed on {path} (allowed: {allowed})"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        Box::new(r)
    })
}

/// Serves one HTTP request; every failure is a JSON error response.
pub async fn serve(ctx: Arc<ConnCtx>, req: hyper::Request<Incoming>) -> Result<Resp, Infallible> {
    let route = match route(req.method(), req.uri().path()) {
        Ok(r) => r,
        Err(resp) => return Ok(*resp),
    };
    if let Route::Dashboard = route {
        let mut r = response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Chunks::new([Bytes::from_static(DASHBOARD.as_bytes())]),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(r);
    }
    let result = async {
        let conn = ctx.conn(bearer(req.headers())).await?;
        dispatch(&conn, route, req).await
    }
    .await;
    Ok(result.unwrap_or_else(|e| error_response(&e)))
}

/// Sends a typed request that carries no tensors (and has no HTTP body)
/// and reads its typed reply (which carries none either).
async fn call<R: Rpc>(conn: &VirtualConn, rpc: R) -> Result<R::Reply, CallError> {
    let (request, tensors) = rpc.into_request();
    debug_assert!(tensors.is_empty(), "{request:?} carries tensors");
    let response = conn.simple(request).await?;
    Ok(R::from_response(response, Vec::new())?)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| Error::bad_argument(format!("the {name} header is not ASCII")))
        })
        .transpose()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `x-kwargs`: a JSON object of scalars and lists of scalars.
fn parse_kwargs(text: Option<&str>) -> Result<BTreeMap<String, Value>, Error> {
    fn value(v: serde_json::Value, key: &str) -> Result<Value, Error> {
        Ok(match v {
            serde_json::Value::Null => Value::None,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().ok_or_else(|| {
                    Error::bad_argument(format!("x-kwargs: '{key}' is out of range"))
                })?),
            },
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(a) => Value::List(
                a.into_iter()
                    .map(|x| value(x, key))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(_) => {
                return Err(Error::bad_argument(format!(
                    "x-kwargs: '{key}' is an object; values are numbers, bools, strings, null or lists of them"
                )));
            }
        })
    }
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::bad_argument(format!("x-kwargs is not JSON: {e}")))?;
    let serde_json::Value::Object(map) = parsed else {
        return Err(Error::bad_argument("x-kwargs must be a JSON object"));
    };
    map.into_iter()
        .map(|(k, v)| {
            let v = value(v, &k)?;
            Ok((k, v))
        })
        .collect()
}

/// The legacy `/models` entry.
#[derive(Serialize)]
struct ModelEntry<'a> {
    name: &'a str,
    model_type: &'a str,
    device: &'a str,
    loaded_at: &'a str,
}

impl<'a> From<&'a ModelInfo> for ModelEntry<'a> {
    fn from(m: &'a ModelInfo) -> ModelEntry<'a> {
        ModelEntry {
            name: &m.name,
            model_type: &m.model_type,
            device: &m.device,
            loaded_at: &m.loaded_at,
        }
    }
}

/// The body of `POST /models/load`.
#[derive(Deserialize)]
struct LoadBody {
    name: String,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    trust_remote_code: Option<bool>,
    #[serde(default)]
    model_path: Option<String>,
    #[serde(default)]
    model_class: Option<String>,
    /// Ours: loader options (a model class's config), an object or its
    /// JSON text.
    #[serde(default)]
    config: Option<serde_json::Value>,
    /// Ours: `native` or `python` (absent: the native engine where it
    /// covers the model, else the Python bridge).
    #[serde(default)]
    engine: Option<String>,
}

fn load_request(body: Bytes) -> Result<LoadRequest, Error> {
    let b: LoadBody = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_argument(format!("the body is not a load request: {e}")))?;
    Ok(LoadRequest {
        name: b.name,
        model_type: b.model_type.unwrap_or_else(|| "huggingface".into()),
        model_path: b.model_path,
        model_class: b.model_class,
        dtype: b.dtype,
        trust_remote_code: b.trust_remote_code.unwrap_or(false),
        config: match b.config {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(v) => Some(v.to_string()),
        },
        engine: b.engine,
    })
}

/// `prompt` in `/generate`: one prompt (text or ids) or a batch of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptBody {
    Text(String),
    Ids(Vec<i64>),
    Texts(Vec<String>),
    Batch(Vec<Vec<i64>>),
}

/// `stop` in `/generate`: one stop string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopBody {
    One(String),
    Many(Vec<String>),
}

/// The body of `POST /generate`: the protocol's options, by their names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    model: String,
    prompt: serde_json::Value,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    do_sample: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    repetition_penalty: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop_ids: Vec<i64>,
    #[serde(default, alias = "stop_strings")]
    stop: Option<StopBody>,
    #[serde(default)]
    ignore_eos: bool,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    skip_special_tokens: Option<bool>,
    #[serde(default)]
    stream: bool,
}

fn generate_call(body: Bytes) -> Result<GenerateCall, Error> {
    let b: GenerateBody = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_argument(format!("the body is not a generate request: {e}")))?;
    let prompts = match serde_json::from_value::<PromptBody>(b.prompt) {
        Ok(PromptBody::Text(t)) => vec![Prompt::Text(t)],
        Ok(PromptBody::Ids(ids)) => vec![Prompt::Ids(ids)],
        Ok(PromptBody::Texts(t)) => t.into_iter().map(Prompt::Text).collect(),
        Ok(PromptBody::Batch(b)) => b.into_iter().map(Prompt::Ids).collect(),
        Err(_) => {
            return Err(Error::bad_argument(
                "`prompt` is a string, a list of token ids, a list of strings or a list of lists of token ids",
            ));
        }
    };
    Ok(GenerateCall {
        name: b.model,
        request: GenerateRequest {
            prompts,
            max_new_tokens: b.max_new_tokens,
            do_sample: b.do_sample,
            temperature: b.temperature,
            top_k: b.top_k,
            top_p: b.top_p,
            repetition_penalty: b.repetition_penalty,
            seed: b.seed,
            stop_ids: b.stop_ids,
            stop_strings: match b.stop {
                None => Vec::new(),
                Some(StopBody::One(s)) => vec![s],
                Some(StopBody::Many(v)) => v,
            },
            ignore_eos: b.ignore_eos,
            add_special_tokens: b.add_special_tokens,
            skip_special_tokens: b.skip_special_tokens,
        },
        stream: b.stream,
    })
}

/// The body of `POST /encode`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncodeBody {
    model: String,
    text: String,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

/// The body of `POST /decode`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeBody {
    model: String,
    ids: Vec<i64>,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
}

fn yes() -> bool {
    true
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_argument(format!("the body is not {what}: {e}")))
}

/// `POST /generate`: the summary as JSON, or (`stream`) server-sent events.
/// The first reply is awaited before the answer's head goes out, so that
/// a request refused before it runs gets its error status; an error after
/// that is an `event: error`.
async fn generate(conn: &VirtualConn, body: Incoming) -> Result<Resp, CallError> {
    // Whether the body asked for a stream: known once the reader has read
    // it, which is before any reply comes.
    let streamed = Arc::new(AtomicBool::new(false));
    let asked = streamed.clone();
    let build: crate::virtual_conn::Build = Box::new(move |b| {
        let call = generate_call(b)?;
        asked.store(call.stream, Ordering::Relaxed);
        Ok((Request::Generate(call), vec![]))
    });
    let mut replies = conn.call_streamed(BodySpec::Json(body), build).await?;
    let first = replies
        .next()
        .await
        .unwrap_or_else(|| Err(Error::protocol("no reply to a generate").into()))?;
    if !streamed.load(Ordering::Relaxed) {
        return match first {
            (Response::Generated(summary), false) => Ok(json(StatusCode::OK, &summary)),
            (other, _) => {
                Err(Error::protocol(format!("unexpected reply to a generate: {other:?}")).into())
            }
        };
    }
    let (first, ended) = Events::of(Ok(first));
    let mut r = hyper::Response::new(RespBody::Events(Events {
        first: Some(first),
        replies,
        ended,
    }));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn tensor_response(r: Outputs) -> Resp {
    let (metas, tensors) = mymps_core::protocol::tensors_to_wire(r.tensors);
    let chunks = msgpack::encode_tensors(&metas, tensors);
    let mut resp = response(StatusCode::OK, MSGPACK, Chunks::new(chunks));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&r.elapsed_s.to_string()) {
        h.insert("x-time", v);
    }
    if let Ok(v) = HeaderValue::from_str(&r.device) {
        h.insert("x-device", v);
    }
    resp
}

async fn dispatch(
    conn: &VirtualConn,
    route: Route,
    req: hyper::Request<Incoming>,
) -> Result<Resp, CallError> {
    let ok = StatusCode::OK;
    Ok(match route {
        Route::Dashboard => {
            return Err(Error::internal("the dashboard page is served without the server").into());
        }
        Route::Health => json(ok, &call(conn, rpc::Health).await?),
        Route::Stats => json(ok, &call(conn, rpc::Stats).await?),
        Route::Ops => json(
            ok,
            &serde_json::json!({ "ops": call(conn, rpc::OpNames).await? }),
        ),
        Route::Models => {
            let models = call(conn, rpc::ListModels).await?;
            json(ok, &models.iter().map(ModelEntry::from).collect::<Vec<_>>())
        }
        Route::ModelInfo(name) => json(ok, &call(conn, rpc::ModelInfo { name }).await?),
        Route::UnloadModel(name) => {
            let request = rpc::UnloadModel { name: name.clone() };
            call(conn, request).await?;
            json(ok, &serde_json::json!({ "status": "ok", "name": name }))
        }
        Route::LoadModel => {
            let body = BodySpec::Json(req.into_body());
            let build: crate::virtual_conn::Build =
                Box::new(|b| Ok(rpc::LoadModel(load_request(b)?).into_request()));
            let (response, tensors) = conn.call(body, build).await?;
            let m = rpc::LoadModel::from_response(response, tensors)?;
            json(
                ok,
                &serde_json::json!({ "status": "ok", "name": m.name, "device": m.device }),
            )
        }
        Route::Exec | Route::Infer => {
            let headers = req.headers();
            let len = content_length(headers);
            // Header problems are reported after the body is read, so that
            // the connection stays usable.
            let build: crate::virtual_conn::Build = if let Route::Exec = route {
                let op = header_str(headers, "x-op").and_then(|o| {
                    o.map(str::to_owned)
                        .ok_or_else(|| Error::bad_argument("missing x-op header (the op to run)"))
                });
                let kwargs = header_str(headers, "x-kwargs").and_then(parse_kwargs);
                Box::new(move |body| {
                    let (op, kwargs) = (op?, kwargs?);
                    let (inputs, bufs) = msgpack::decode_tensors(&body)?;
                    Ok((
                        Request::Exec(ExecRequest {
                            op,
                            inputs,
                            kwargs,
                            ..Default::default()
                        }),
                        bufs,
                    ))
                })
            } else {
                let name = header_str(headers, "x-model").and_then(|o| {
                    o.map(str::to_owned).ok_or_else(|| {
                        Error::bad_argument("missing x-model header (the model's name)")
                    })
                });
                Box::new(move |body| {
                    let name = name?;
                    let (inputs, bufs) = msgpack::decode_tensors(&body)?;
                    Ok((
                        Request::Infer(InferRequest {
                            name,
                            inputs,
                            ..Default::default()
                        }),
                        bufs,
                    ))
                })
            };
            let is_exec = matches!(route, Route::Exec);
            let (response, tensors) = conn
                .call(BodySpec::Tensors(req.into_body(), len), build)
                .await?;
            // The request was built from the body's wire descriptions; the
            // reply is read as its typed request's.
            tensor_response(if is_exec {
                rpc::Call::from_response(response, tensors)?
            } else {
                rpc::Infer::from_response(response, tensors)?
            })
        }
        Route::Generate => generate(conn, req.into_body()).await?,
        Route::Encode => {
            let build: crate::virtual_conn::Build = Box::new(|b| {
                let b: EncodeBody = json_body(&b, "an encode request")?;
                Ok(rpc::Encode {
                    name: b.model,
                    text: b.text,
                    add_special_tokens: b.add_special_tokens,
                }
                .into_request())
            });
            let (response, tensors) = conn.call(BodySpec::Json(req.into_body()), build).await?;
            let ids = rpc::Encode::from_response(response, tensors)?;
            json(ok, &serde_json::json!({ "ids": ids }))
        }
        Route::Decode => {
            let build: crate::virtual_conn::Build = Box::new(|b| {
                let b: DecodeBody = json_body(&b, "a decode request")?;
                Ok(rpc::Decode {
                    name: b.model,
                    ids: b.ids,
                    skip_special_tokens: b.skip_special_tokens,
                }
                .into_request())
            });
            let (response, tensors) = conn.call(BodySpec::Json(req.into_body()), build).await?;
            let text = rpc::Decode::from_response(response, tensors)?;
            json(ok, &serde_json::json!({ "text": text }))
        }
        Route::Metrics => {
            let m = metrics_of(conn).await?;
            response(
                ok,
                PROMETHEUS,
                Chunks::new([Bytes::from(metrics::render_prometheus(&m))]),
            )
        }
        Route::History => {
            let since = since(&req)?;
            json(ok, &call(conn, rpc::History { since }).await?)
        }
        Route::DashboardData => json(ok, &dashboard(conn, since(&req)?).await?),
    })
}

/// The `since` of a query (`?since=N`: samples numbered N or later); 0
/// without one.
fn since<B>(req: &hyper::Request<B>) -> Result<u64, CallError> {
    let Some(query) = req.uri().query() else {
        return Ok(0);
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "since" {
            return value.parse().map_err(|_| {
                Error::bad_argument(format!(
                    "since must be a sample number (an integer of 0 or more), not '{value}'"
                ))
                .into()
            });
        }
    }
    Ok(0)
}

async fn metrics_of(conn: &VirtualConn) -> Result<MetricsSnapshot, CallError> {
    call(conn, rpc::Metrics).await
}

/// Latency figures of one row of the dashboard, milliseconds.
#[derive(Serialize)]
struct Row {
    name: String,
    count: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Requests per second over the server's rate window (`requests`
    /// only; `None` for ops).
    rate_per_s: Option<f64>,
    mean_ms: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Row {
    fn new(
        name: &str,
        count: u64,
        errors: u64,
        bytes: (u64, u64),
        h: &metrics::HistogramSnapshot,
        bounds: &[f64],
    ) -> Row {
        let ms = |q: f64| h.quantile(bounds, q).map(|s| s * 1e3);
        Row {
            name: name.to_owned(),
            count,
            errors,
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            rate_per_s: None,
            mean_ms: (count > 0).then(|| h.sum_s * 1e3 / count as f64),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
        }
    }
}

/// What `/api/dashboard` returns: everything the page shows, in one poll.
#[derive(Serialize)]
struct Dashboard {
    health: HealthInfo,
    stats: StatsInfo,
    models: Vec<ModelInfo>,
    requests: Vec<Row>,
    ops: Vec<Row>,
    errors: Vec<ErrorCount>,
    connections_open: u64,
    connections_total: u64,
    requests_in_flight: u64,
    memory_budget_bytes: u64,
    memory_budget_used_bytes: u64,
    uptime_s: f64,
    /// The samples asked for (`?since=`) and the rates' window.
    history: HistorySnapshot,
}

/// Ops shown on the dashboard (the busiest).
const DASHBOARD_OPS: usize = 12;

async fn dashboard(conn: &VirtualConn, since: u64) -> Result<Dashboard, CallError> {
    let health = call(conn, rpc::Health).await?;
    let stats = call(conn, rpc::Stats).await?;
    let models = call(conn, rpc::ListModels).await?;
    let m = metrics_of(conn).await?;
    let history = call(conn, rpc::History { since }).await?;
    let b = &m.latency_buckets_s;
    let requests = m
        .requests
        .iter()
        .map(|k| {
            let mut row = Row::new(
                &k.kind,
                k.count,
                k.errors,
                (k.bytes_in, k.bytes_out),
                &k.latency,
                b,
            );
            // Each kind's own rate, over the server's window.
            row.rate_per_s = Some(
                history
                    .rates
                    .iter()
                    .find(|r| r.kind == k.kind)
                    .map_or(0.0, |r| r.per_s),
            );
            row
        })
        .collect();
    let mut ops: Vec<Row> = m
        .ops
        .iter()
        .map(|o| Row::new(&o.op, o.count, o.errors, (0, 0), &o.latency, b))
        .collect();
    ops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    ops.truncate(DASHBOARD_OPS);
    Ok(Dashboard {
        health,
        stats,
        models,
        requests,
        ops,
        errors: m.errors,
        connections_open: m.connections_open,
        connections_total: m.connections_total,
        requests_in_flight: m.requests_in_flight,
        memory_budget_bytes: m.memory_budget_bytes,
        memory_budget_used_bytes: m.memory_budget_used_bytes,
        uptime_s: m.uptime_s,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwargs_from_json() {
        let k = parse_kwargs(Some(r#"{"dim": -1, "keepdim": true, "dims": [0, 2, 1], "alpha": 0.5, "equation": "ij->ji", "dtype": null}"#)).unwrap();
        assert_eq!(k["dim"], Value::Int(-1));
        assert_eq!(k["keepdim"], Value::Bool(true));
        assert_eq!(
            k["dims"],
            Value::List(vec![Value::Int(0), Value::Int(2), Value::Int(1)])
        );
        assert_eq!(k["alpha"], Value::Float(0.5));
        assert_eq!(k["dtype"], Value::None);
        assert!(parse_kwargs(None).unwrap().is_empty());
        for bad in ["{", "[1]", r#"{"a": {"b": 1}}"#, "dim=1"] {
            assert_eq!(
                parse_kwargs(Some(bad)).unwrap_err().code,
                ErrorCode::BadArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn routes_and_names() {
        assert!(matches!(
            route(&Method::DELETE, "/models/org/model"),
            Ok(Route::UnloadModel(n)) if n == "org/model"
        ));
        assert!(matches!(
            route(&Method::GET, "/models/org%2Fmy%20model/info"),
            Ok(Route::ModelInfo(n)) if n == "org/my model"
        ));
        assert!(matches!(
            route(&Method::POST, "/models/load"),
            Ok(Route::LoadModel)
        ));
        assert!(matches!(
            route(&Method::POST, "/generate"),
            Ok(Route::Generate)
        ));
        let r = route(&Method::GET, "/encode").err().unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = route(&Method::GET, "/exec").err().unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        assert!(matches!(
            route(&Method::GET, "/history"),
            Ok(Route::History)
        ));
        let r = route(&Method::POST, "/history").err().unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = route(&Method::GET, "/nope").err().unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = route(&Method::GET, "/models/x").err().unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = route(&Method::DELETE, "/models/%zz").err().unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn generate_bodies() {
        let call = |b: &str| generate_call(Bytes::copy_from_slice(b.as_bytes()));
        let g = call(r#"{"model": "m", "prompt": "hi", "stop": "\n", "seed": 3, "stream": true}"#)
            .unwrap();
        assert_eq!(g.name, "m");
        assert_eq!(g.request.prompts, [Prompt::Text("hi".into())]);
        assert_eq!(g.request.stop_strings, ["\n"]);
        assert_eq!(g.request.seed, Some(3));
        assert!(g.stream);
        let g = call(r#"{"model": "m", "prompt": [1, 2], "stop_strings": ["a", "b"]}"#).unwrap();
        assert_eq!(g.request.prompts, [Prompt::Ids(vec![1, 2])]);
        assert_eq!(g.request.stop_strings, ["a", "b"]);
        assert!(!g.stream);
        let g = call(r#"{"model": "m", "prompt": ["a", "b"]}"#).unwrap();
        assert_eq!(
            g.request.prompts,
            [Prompt::Text("a".into()), Prompt::Text("b".into())]
        );
        let g = call(r#"{"model": "m", "prompt": [[1], [2, 3]], "max_new_tokens": 4, "top_k": 5, "top_p": 0.5, "temperature": 0.7, "repetition_penalty": 1.1, "do_sample": true, "stop_ids": [9], "ignore_eos": true, "add_special_tokens": false, "skip_special_tokens": false}"#).unwrap();
        assert_eq!(
            g.request.prompts,
            [Prompt::Ids(vec![1]), Prompt::Ids(vec![2, 3])]
        );
        let r = &g.request;
        assert_eq!(
            (r.max_new_tokens, r.top_k, r.top_p),
            (Some(4), Some(5), Some(0.5))
        );
        assert_eq!(
            (r.temperature, r.repetition_penalty),
            (Some(0.7), Some(1.1))
        );
        assert_eq!(
            (r.do_sample, r.ignore_eos, &r.stop_ids[..]),
            (Some(true), true, &[9][..])
        );
        assert_eq!(
            (r.add_special_tokens, r.skip_special_tokens),
            (Some(false), Some(false))
        );
        for bad in [
            "",
            "{}",
            r#"{"model": "m"}"#,
            r#"{"model": "m", "prompt": [1], "max_tokens": 3}"#,
            r#"{"model": "m", "prompt": [1, "a"]}"#,
            r#"{"model": "m", "prompt": 5}"#,
        ] {
            assert_eq!(call(bad).unwrap_err().code, ErrorCode::BadArgument, "{bad}");
        }
    }

    #[test]
    fn events_are_one_line_of_json_each() {
        let e = event(Some("done"), &serde_json::json!({"text": "a\nb"}));
        assert_eq!(&e[..], b"event: done\ndata: {\"text\":\"a\\nb\"}\n\n");
        let e = error_event(&Error::new(ErrorCode::Cancelled, "stop"));
        let text = std::str::from_utf8(&e).unwrap();
        let data: serde_json::Value = serde_json::from_str(
            text.strip_prefix("event: error\ndata: ")
                .unwrap()
                .trim_end(),
        )
        .unwrap();
        assert_eq!(data["name"], "cancelled");
        assert_eq!(data["code"], ErrorCode::Cancelled.as_u16());
        assert_eq!(data["message"], "stop");
    }

    #[test]
    fn since_queries() {
        let get = |uri: &str| hyper::Request::get(uri).body(()).unwrap();
        assert_eq!(since(&get("/history")).unwrap(), 0);
        assert_eq!(since(&get("/history?since=42")).unwrap(), 42);
        assert_eq!(since(&get("/api/dashboard?x=1&since=7")).unwrap(), 7);
        assert_eq!(since(&get("/history?other=3")).unwrap(), 0);
        for bad in ["/history?since=-1", "/history?since=", "/history?since=x"] {
            let e = since(&get(bad)).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::BadArgument, "{bad}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  s3cret "),
        );
        assert_eq!(bearer(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn load_bodies() {
        let r = load_request(Bytes::from_static(
            br#"{"name": "m", "model_type": null, "dtype": "float16", "trust_remote_code": false, "model_path": "/x", "model_class": null, "config": {"sizes": [2, 3]}}"#,
        ))
        .unwrap();
        assert_eq!(r.model_type, "huggingface");
        assert_eq!(r.config.as_deref(), Some(r#"{"sizes":[2,3]}"#));
        assert_eq!(
            load_request(Bytes::from_static(b"{}")).unwrap_err().code,
            ErrorCode::BadArgument
        );
    }
}
