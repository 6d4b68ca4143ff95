//! Deadlines and fair share: what bounds a request's time and one
//! connection's take of the server.
//!
//! - **Deadlines.** A request's deadline is the sooner of its own
//!   `timeout_ms` ([`RequestOptions`]) and the server's
//!   [`request_timeout`](super::ServerConfig::request_timeout), both
//!   counted from when it was read. A request answered on a task of its
//!   own gets a *watchdog* ([`Reply::race`]): at the deadline it answers
//!   `Timeout` (unless the work answered first) and sets the request's
//!   cancellation flag, so that queued work is not run and a `generate`
//!   stops after the step under way. The work itself is never dropped
//!   while it runs: a kernel cannot be interrupted, so its worker and its
//!   memory budget stay held until it returns, and its result is then
//!   dropped. The watchdog is a task apart because a worker may run a
//!   request on its own task's thread (`block_in_place`), where nothing of
//!   that task is polled until the kernel returns. A streamed reply is not
//!   cut short (its steps would follow their end): its watchdog only sets
//!   the flag, and the handler answers `Timeout` once the steps written so
//!   far are out.
//! - **Fair share.** A connection's requests not yet answered may hold at
//!   most its share of the memory budget ([`ShareGate`]): past it, the
//!   connection's next frame is not read until some of them are answered,
//!   so that other connections still find budget. A server-wide cap on
//!   connections ([`Connections`]) and an idle timeout ([`idle`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::{Replies, ServerConfig, Shared, answer};
use crate::error::{Error, ErrorCode, Result};
use crate::metrics;
use crate::protocol::{self, Frame, Request, RequestOptions};

/// The deadline of a request read just now (`request`, decoded from
/// `frame`): the sooner of its `timeout_ms` and the server's limit.
/// `load_model` and `unload_model` have none: their effect (a model in the
/// registry) cannot be dropped. Options that do not decode make the
/// request a `protocol` error.
pub(super) fn with_deadline(
    config: &ServerConfig,
    frame: &Frame,
    request: Result<Request>,
) -> (Result<Request>, Option<Instant>) {
    let request = match request {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    let options = match protocol::decode_header::<RequestOptions>(frame) {
        Ok(o) => o,
        Err(e) => return (Err(e), None),
    };
    if matches!(request, Request::LoadModel(_) | Request::UnloadModel { .. }) {
        return (Ok(request), None);
    }
    let own = options.timeout_ms.map(Duration::from_millis);
    let limit = match (own, config.request_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let now = Instant::now();
    (
        Ok(request),
        limit.map(|d| {
            now.checked_add(d)
                .unwrap_or(now + Duration::from_secs(1 << 30))
        }),
    )
}

/// The `Timeout` error of a request past its deadline.
fn timed_out(what: &str) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!("the request's deadline passed {what}"),
    )
}

/// `Timeout` if `deadline` has passed: checked as a request reaches a
/// worker, so that work nobody waits for any more is not started.
pub(super) fn check_deadline(deadline: Option<Instant>) -> Result<()> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(timed_out("before it ran")),
        _ => Ok(()),
    }
}

/// How a request answered on a task of its own is answered: at once when
/// its work ends, or (with a deadline) by whichever comes first, the work
/// or the deadline's watchdog.
pub(super) enum Reply {
    /// No deadline.
    Now(metrics::RequestTimer, metrics::Label),
    /// A deadline, watched by a task of its own.
    Raced {
        race: Arc<Race>,
        watchdog: tokio::task::JoinHandle<()>,
    },
}

/// What a request's work and its watchdog share.
pub(super) struct Race {
    /// Taken by whoever answers.
    slot: Mutex<Option<(metrics::RequestTimer, metrics::Label)>>,
    /// Set when the deadline passed.
    expired: AtomicBool,
}

impl Reply {
    /// The reply of request `id`, raced against `deadline` when it has
    /// one: at the deadline the watchdog sets `cancel` (queued work is then
    /// not run, a `generate` stops after the step under way) and, unless
    /// the reply is streamed, answers `Timeout`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn race(
        shared: &Arc<Shared>,
        tx: &Replies,
        id: u64,
        timer: metrics::RequestTimer,
        label: metrics::Label,
        deadline: Option<Instant>,
        streams: bool,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Reply {
        let Some(deadline) = deadline else {
            return Reply::Now(timer, label);
        };
        let race = Arc::new(Race {
            slot: Mutex::new(Some((timer, label))),
            expired: AtomicBool::new(false),
        });
        let (r, shared, tx) = (race.clone(), shared.clone(), tx.clone());
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            r.expired.store(true, Ordering::Relaxed);
            if let Some(c) = &cancel {
                c.store(true, Ordering::Relaxed);
            }
            if streams {
                return;
            }
            let taken = r.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((timer, label)) = taken {
                tracing::debug!(id, "deadline passed; answered timeout");
                let e = timed_out("before the request was answered; its result is dropped");
                answer(&shared, &tx, id, Err(e), timer, label).await;
            }
        });
        Reply::Raced { race, watchdog }
    }

    /// Answers with the work's `reply`, unless the watchdog answered
    /// already (the reply is then dropped); a streamed reply past its
    /// deadline becomes `Timeout`.
    pub(super) async fn answer(self, shared: &Shared, tx: &Replies, id: u64, reply: Result<Frame>) {
        match self {
            Reply::Now(timer, label) => answer(shared, tx, id, reply, timer, label).await,
            Reply::Raced { race, watchdog } => {
                watchdog.abort();
                let taken = race.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                let Some((timer, label)) = taken else {
                    return;
                };
                let reply = if race.expired.load(Ordering::Relaxed) {
                    Err(timed_out("while the request ran; it was stopped"))
                } else {
                    reply
                };
                answer(shared, tx, id, reply, timer, label).await;
            }
        }
    }
}

/// The cap on one connection's tensor bytes in requests not yet answered.
pub(super) struct ShareGate {
    held: AtomicU64,
    cap: u64,
    freed: Notify,
}

/// A request's charge on its connection's [`ShareGate`], given back when
/// the request's permits are (it travels with them in `Held`).
pub(super) struct ShareCharge {
    gate: Arc<ShareGate>,
    bytes: u64,
}

impl ShareGate {
    /// A gate of `cap` bytes.
    pub(super) fn new(cap: u64) -> Arc<ShareGate> {
        Arc::new(ShareGate {
            held: AtomicU64::new(0),
            cap: cap.max(1),
            freed: Notify::new(),
        })
    }

    /// The cap for a connection of this server: its share of the memory
    /// budget.
    pub(super) fn cap_for(config: &ServerConfig, capacity: u64) -> u64 {
        let share = config.connection_share.clamp(0.0, 1.0);
        ((capacity as f64) * share) as u64
    }

    /// Waits until the connection holds less than its share.
    pub(super) async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            if self.held.load(Ordering::Acquire) < self.cap {
                return;
            }
            freed.await;
        }
    }

    /// Charges `bytes` (a frame's payload, just admitted) to the
    /// connection.
    pub(super) fn charge(self: &Arc<Self>, bytes: u64) -> Option<ShareCharge> {
        if bytes == 0 {
            return None;
        }
        self.held.fetch_add(bytes, Ordering::AcqRel);
        Some(ShareCharge {
            gate: self.clone(),
            bytes,
        })
    }
}

impl Drop for ShareCharge {
    fn drop(&mut self) {
        self.gate.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.gate.freed.notify_waiters();
    }
}

/// The payload bytes a frame's budget permit holds.
pub(super) fn permit_bytes(permit: Option<&tokio::sync::OwnedSemaphorePermit>) -> u64 {
    permit.map_or(0, |p| p.num_permits() as u64 * 1024)
}

/// The server's open connections, against its cap.
#[derive(Default)]
pub(super) struct Connections {
    open: AtomicUsize,
}

/// One connection's place among the open ones, held while it is open.
pub(super) struct ConnectionSlot<'a> {
    connections: &'a Connections,
    /// Whether it came over the cap (it is refused in its handshake).
    pub(super) over: bool,
}

impl Connections {
    /// Counts a new connection; `over` when there were `max` open already.
    pub(super) fn enter(&self, max: usize) -> ConnectionSlot<'_> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot {
            connections: self,
            over: before >= max,
        }
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `Busy` answer to a handshake over the connection cap.
pub(super) fn over_capacity(max: usize) -> Error {
    Error::new(
        ErrorCode::Busy,
        format!("the server has its most connections open ({max}); try again later"),
    )
}

/// Resolves once the connection has been idle for `timeout`: no frame
/// read (this runs while the next one is awaited) and nothing in flight
/// (`in_flight` has all its permits but the reader's own). A connection
/// with requests in flight is looked at again a `timeout` later.
pub(super) async fn idle(timeout: Option<Duration>, in_flight: &Semaphore, max: usize) {
    let Some(t) = timeout else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(t).await;
        if in_flight.available_permits() + 1 >= max {
            return;
        }
    }
}
