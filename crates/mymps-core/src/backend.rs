//! The `Backend` trait: what computes.

use crate::error::Result;
use crate::ops::{Args, OpEntry, OpRegistry};
use crate::resident::{Operand, OperandOutput, Resident};
use crate::tensor::Tensor;

/// What a backend reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Backend name (`tch`).
    pub name: String,
    /// Version of the library underneath (libtorch's).
    pub version: String,
    /// The device requests run on (`cpu`, `cuda:0`, `mps`).
    pub device: String,
}

/// Accelerator memory, where the device reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceleratorMemory {
    /// Total device memory, bytes.
    pub total: u64,
    /// Free device memory, bytes.
    pub free: u64,
}

/// The result of running an op.
#[derive(Debug)]
pub struct ExecOutput {
    /// Results with their wire names (`"output"`, or `"0"`, `"1"`, ...).
    pub outputs: Vec<(String, Tensor)>,
    /// The device that ran the op (the CPU when the op fell back to it).
    pub device: String,
}

/// A compute backend: runs whitelisted ops (and, later, models) on one
/// device.
///
/// Every method may block (libtorch calls do): the server calls them from
/// its blocking pool, never from the async reactor. Implementations must not
/// panic on bad input; errors are returned and become error replies.
pub trait Backend: Send + Sync + 'static {
    /// Name, library version and device.
    fn info(&self) -> BackendInfo;

    /// The ops this backend can run.
    fn ops(&self) -> &OpRegistry;

    /// Runs `op` on arguments already checked against its signature.
    ///
    /// A backend may compute in an input's memory, but only in memory it
    /// proves is the call's alone: [`crate::buffer::LargeBuf::reclaim`]
    /// succeeds only when no other handle to the `Bytes` exists, so a
    /// caller that keeps a clone of an input simply sees the op run out of
    /// place (the server passes the request's tensors, which nothing else
    /// holds, and so gets in-place runs where the backend has them).
    fn exec(&self, op: &'static OpEntry, args: Args<Tensor>) -> Result<ExecOutput>;

    /// The bytes that `op`'s outputs will take on `args`, found without
    /// running it (shape inference), or `None` when the backend cannot tell
    /// without running it. The server takes this from its memory budget
    /// before the op runs, and refuses an op whose outputs could never fit.
    /// It runs on the server's I/O thread: it must cost microseconds and
    /// allocate nothing in proportion to the tensors. Default: `None`.
    fn output_bytes(&self, op: &'static OpEntry, args: &Args<Tensor>) -> Option<u64> {
        let _ = (op, args);
        None
    }

    /// [`output_bytes`](Self::output_bytes) for arguments that may be
    /// server-resident tensors (only their descriptions are read). Default:
    /// `None`.
    fn operand_output_bytes(&self, op: &'static OpEntry, args: &Args<Operand>) -> Option<u64> {
        let _ = (op, args);
        None
    }

    /// Keeps `t` between requests: on an accelerator, in device memory (the
    /// upload finished when this returns, so `t`'s memory may be reused).
    /// Default: the host tensor itself.
    fn put(&self, t: Tensor) -> Result<Resident> {
        Ok(Resident::host(t))
    }

    /// A kept tensor's data, as a host tensor. Default: the host tensor
    /// [`put`](Self::put) kept.
    fn fetch(&self, r: &Resident) -> Result<Tensor> {
        r.as_host()
            .cloned()
            .ok_or_else(crate::resident::foreign_value)
    }

    /// Runs `op` on arguments that may be kept tensors, keeping the results
    /// whose names `keep` accepts ([`Operand::Resident`], on the device:
    /// no copy to the host) and returning the others as data. Default:
    /// kept arguments are [fetched](Self::fetch), the op runs through
    /// [`exec`](Self::exec), and kept results are [put](Self::put).
    fn exec_operands(
        &self,
        op: &'static OpEntry,
        args: Args<Operand>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<OperandOutput> {
        let args = args.try_map_tensors(|o| match o {
            Operand::Host(t) => Ok(t),
            Operand::Resident(r) => self.fetch(&r),
        })?;
        let out = self.exec(op, args)?;
        let outputs = out
            .outputs
            .into_iter()
            .map(|(name, t)| {
                let o = if keep(&name) {
                    Operand::Resident(self.put(t)?)
                } else {
                    Operand::Host(t)
                };
                Ok((name, o))
            })
            .collect::<Result<_>>()?;
        Ok(OperandOutput {
            outputs,
            device: out.device,
        })
    }

    /// Accelerator memory, if the device is an accelerator that reports it.
    fn accelerator_memory(&self) -> Option<AcceleratorMemory> {
        None
    }

    /// The largest element-wise or reduction request, in bytes (the tensor
    /// inputs broadcast together, 8 bytes an element), that the server may
    /// run on its I/O thread instead of handing it to the blocking pool:
    /// the two thread hand-offs cost more than such an op itself. Return
    /// more than 0 only when such calls take microseconds and never wait on
    /// other requests' work (a CPU backend, not a GPU queue that another
    /// request may fill). Default 0: every call goes to the blocking pool.
    fn inline_limit(&self) -> u64 {
        0
    }

    /// Host memory that large received tensors are read into, when the
    /// backend has memory its device copies from faster than from ordinary
    /// memory (pinned memory for CUDA). Default: none.
    fn host_alloc(&self) -> Option<std::sync::Arc<dyn crate::buffer::HostAlloc>> {
        None
    }

    /// Returns memory the backend keeps cached but no longer uses to the
    /// system or device (called after a model is unloaded). Default: nothing.
    fn release_memory(&self) {}
}
