//! The server's side of `generate`: plan, reserve, run on a worker, and
//! (streamed) one reply frame per step.
//!
//! A request is planned first ([`ModelRegistry::plan_generate`]: prompts
//! encoded, options and the server's [`GenerateLimits`] checked, its KV
//! cache and largest transient known), then that peak is taken from the
//! memory budget for as long as it runs, and the model is told it may use
//! no more. It runs on a worker; each step's tokens go through a short
//! queue to a task that writes them as `generate_step` frames with
//! [`FLAG_MORE`](crate::protocol::FLAG_MORE), so that a slow reader slows
//! the generation down instead of piling frames up. The summary is the
//! last frame. The generation stops after the step under way when the
//! client cancels (a `Cancel` frame) or goes away; the summary then says
//! which sequences were cancelled.
//!
//! [`ModelRegistry::plan_generate`]: crate::model::ModelRegistry::plan_generate

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{Held, Peer, Shared, blocking, on_worker, reserve};
use crate::error::{Error, ErrorCode, Result};
use crate::model::{Control, GenerateLimits, Step};
use crate::protocol::{self, Frame, FrameKind, GenerateCall, Response};

/// Steps computed ahead of the ones written: enough to hide a write's
/// latency, few enough that a cancel stops the work soon after the last
/// step the client saw.
const STEP_QUEUE: usize = 4;

/// Answers a `generate` request (see the module docs).
pub(super) async fn generate(
    shared: &Arc<Shared>,
    id: u64,
    call: GenerateCall,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    let GenerateCall {
        name,
        request,
        stream,
    } = call;
    if stream && !peer.streamed {
        return Err(Error::new(
            ErrorCode::Unsupported,
            format!(
                "a streamed generate needs the '{}' feature, which this connection did not negotiate",
                protocol::features::STREAMED_REPLIES
            ),
        ));
    }
    let request = Arc::new(request);
    let limits = GenerateLimits {
        max_bytes: shared
            .config
            .generate
            .max_bytes
            .min(shared.budget.max_request()),
        ..shared.config.generate
    };

    // Encoding the prompts is CPU work: off the reactor.
    let plan = {
        let (s, name, request) = (shared.clone(), name.clone(), request.clone());
        blocking(&format!("planning a generate with '{name}'"), move || {
            s.models.plan_generate(&name, &request, &limits)
        })
        .await?
    };
    peer.check_alive()?;
    held.check_cancelled()?;
    reserve(
        shared,
        plan.peak_bytes,
        held,
        &format!("generating with model '{name}' (its KV cache and activations)"),
    )
    .await?;
    let limits = GenerateLimits {
        max_bytes: plan.peak_bytes,
        ..limits
    };

    let (steps, mut queued) = mpsc::channel::<Step>(STEP_QUEUE);
    let writer = stream.then(|| {
        let replies = peer.replies.clone();
        tokio::spawn(async move {
            while let Some(step) = queued.recv().await {
                let frame = match protocol::encode(
                    FrameKind::Response,
                    id,
                    &Response::GenerateStep(step),
                    vec![],
                ) {
                    Ok(f) => f.with_more(),
                    Err(e) => {
                        tracing::warn!(id, error = %e, "a generate step did not encode");
                        break;
                    }
                };
                if !replies.send(frame).await {
                    break;
                }
            }
        })
    });
    let cancel = held.cancel.clone();
    let replies = peer.replies.clone();
    let s = shared.clone();
    let what = format!("generating with '{name}'");
    let summary = on_worker(shared, peer, held, &what, move || {
        s.models.generate(&name, &request, &limits, &mut |step| {
            // Every step computed is sent, the last one before a cancel
            // too, so that the steps add up to the summary. A full queue
            // waits for the writer: the client's pace.
            if stream && steps.blocking_send(step).is_err() {
                return Control::Stop;
            }
            let cancelled = cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
            if cancelled || replies.is_closed() {
                return Control::Stop;
            }
            Control::Continue
        })
    })
    .await;
    // The closure (and with it the queue's sender) is gone: the writer
    // ends once it has written every step, before the summary goes out.
    if let Some(w) = writer {
        let _ = w.await;
    }
    let summary = summary?;
    tracing::debug!(
        id,
        steps = summary.steps,
        forward_passes = summary.forward_passes,
        "generated"
    );
    protocol::encode(
        FrameKind::Response,
        id,
        &Response::Generated(summary),
        vec![],
    )
}
