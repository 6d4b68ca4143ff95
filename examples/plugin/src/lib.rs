//! An example of a third-party mymps extension: one op (`example_swish`)
//! and one checkpoint model class (`swiglu`). It is used two ways:
//!
//! 1. **Linked in**: an application that depends on this crate and builds
//!    its own server (see `src/bin/custom_server.rs`) gets both through
//!    `inventory`, with no code beyond naming the crate.
//! 2. **As a plugin**: the same crate built as a `cdylib`
//!    (`libmymps_example_plugin.so`) and loaded by the stock server with
//!    `mymps serve --plugin PATH`; [`register`] hands the op and a loader for
//!    the class to the server.

use mymps_core::Result;
use mymps_core::plugin::PluginRegistrar;
use mymps_models::checkpoint::{CheckpointLoader, ModelClass, Net, StateDict};
use mymps_ops::{OpOutput, Outputs, Param, op, torch_error};
use serde_json::Value as Json;
use tch::Tensor;

// Element-wise: each output element from its own input element, a bounded
// amount of work each. Saying so lets the server run small calls on its I/O
// thread and bound the output before it runs; an op that does not say so is
// `Cost::Heavy`. (A unary op could also give its in-place variant:
// `in_place: |t| Ok(t.f_sigmoid_()?)`.)
op!("example_swish", "example", "x × sigmoid(beta × x) (an example plugin's op)",
[Param::tensor("input"), Param::float("beta").or_float(1.0)] -> Outputs::One,
|a| {
    let x = a.tensor("input")?;
    Ok(OpOutput::One(x.f_mul(&x.f_mul_scalar(a.float("beta")?)?.f_sigmoid()?)?))
}, cost: Elementwise);

/// A SwiGLU feed-forward block, as in LLaMA:
/// `w3(silu(w1(x)) * w2(x))` with bias-free `nn.Linear` layers `w1`, `w2`
/// (`in → hidden`) and `w3` (`hidden → out`).
struct SwiGlu {
    w1: Weight,
    w2: Weight,
    w3: Weight,
}

/// A parameter shared by concurrent forward passes (never written).
struct Weight(Tensor);

// SAFETY: read-only after the model is built; libtorch tensors may be read
// from several threads at once.
unsafe impl Sync for Weight {}

impl Net for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let gate = x.f_linear::<Tensor>(&self.w1.0, None)?.f_silu()?;
            let up = x.f_linear::<Tensor>(&self.w2.0, None)?;
            gate.f_mul(&up)?.f_linear::<Tensor>(&self.w3.0, None)
        };
        f().map_err(torch_error)
    }
}

fn dim(sd: &StateDict, key: &str, axis: usize) -> i64 {
    sd.get(key)
        .and_then(|t| t.size().get(axis).copied())
        .unwrap_or(0)
}

inventory::submit! {
    ModelClass {
        name: "swiglu",
        doc: "SwiGLU block: w3(silu(w1 x) * w2 x), bias-free nn.Linear w1, w2 (in→hidden), w3 (hidden→out)",
        expected: |sd: &StateDict, _cfg: &Json| {
            let (hidden, input, out) = (dim(sd, "w1.weight", 0), dim(sd, "w1.weight", 1), dim(sd, "w3.weight", 0));
            Ok(vec![
                ("w1.weight".to_owned(), vec![hidden, input]),
                ("w2.weight".to_owned(), vec![hidden, input]),
                ("w3.weight".to_owned(), vec![out, hidden]),
            ])
        },
        build: |mut sd: StateDict, _cfg: &Json| {
            let mut take = |k: &str| sd.remove(k).map(Weight).ok_or_else(|| mymps_core::Error::internal(format!("missing {k}")));
            Ok(Box::new(SwiGlu { w1: take("w1.weight")?, w2: take("w2.weight")?, w3: take("w3.weight")? }) as Box<dyn Net>)
        },
    }
}

/// Hands this crate's op and model class to a server that loads it as a
/// plugin. (Only its own: the plugin's binary also holds the built-in ops
/// and classes, which the server has already.)
pub fn register(r: &mut PluginRegistrar) -> Result<()> {
    for e in mymps_ops::plugin_ops(&["example_swish"])? {
        r.add_op(e);
    }
    r.add_loader(CheckpointLoader::only(&["swiglu"]));
    Ok(())
}

mymps_core::declare_plugin!(
    name: c"mymps-example-plugin",
    tch_version: mymps_backend_tch::TCH_VERSION_C,
    register: register,
);

/// Naming this function from a binary links the crate in, which is all
/// `inventory` needs to register the op and the class.
pub fn link() {}
