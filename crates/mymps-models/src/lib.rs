//! # mymps-models
//!
//! Model loaders for mymps:
//! - [`hf`]: HuggingFace model directories (`config.json` plus safetensors
//!   or `pytorch_model.bin` weights), run by Rust implementations of their
//!   architectures (bert, roberta, distilbert, gpt2, llama, mistral, qwen2,
//!   vit, ...).
//! - [`torchscript`]: `torch.jit.save` files, loaded on the server's device.
//! - [`checkpoint`]: a state_dict (`torch.save(model.state_dict())` as
//!   `.pt`/`.bin`, or `.safetensors`) loaded into a registered
//!   [`checkpoint::ModelClass`] (built in: `linear`, `mlp`, `cnn`).
//! - [`bridge`]: the Python engine (the `mymps-bridge` plugin, started on
//!   first use): Hugging Face architectures the native path lacks, a
//!   `package.Class` of the server's Python path for `checkpoint`, and
//!   `torch_export` programs (`.pt2`); and the per-request engine choice.
//!
//! Model files are not trusted. A failed allocation aborts a Rust process
//! and a stack overflow cannot be caught, so no guard around a load could
//! save the server from a hostile file: instead every size and count that a
//! file states (zip entry sizes, storage numels, tensor views, config
//! integers, layer counts) is checked against what the file really holds,
//! or against a documented bound, before anything is allocated for it;
//! sizes taken from files are reserved with `try_reserve` and read with a
//! bounded `take`; the unpickler recurses over nothing and counts its
//! memory; error messages clip the names they quote. A hostile file gets a
//! model error.
//!
//! Built two ways: as a `cdylib` plugin that `mymps serve` loads at start
//! (`--plugin PATH`, or the plugins folder), and as an `rlib` for
//! applications that link the loaders in ([`loaders`]).
#![warn(missing_docs)]

use std::sync::Arc;

use mymps_core::Result;
use mymps_core::model::ModelLoader;
use mymps_core::plugin::PluginRegistrar;

pub mod bridge;
pub mod checkpoint;
mod convert;
#[doc(hidden)]
pub mod fuzzing;
mod generate;
pub mod hf;
mod safetensors;
mod torch_pickle;
pub mod torchscript;

/// Every loader of this crate, for applications that link it.
pub fn loaders() -> Vec<Arc<dyn ModelLoader>> {
    vec![
        Arc::new(hf::HuggingFaceLoader),
        Arc::new(torchscript::TorchScriptLoader),
        Arc::new(checkpoint::CheckpointLoader::all()),
        Arc::new(bridge::PythonClassLoader),
        Arc::new(bridge::TorchExportLoader),
    ]
}

fn register(r: &mut PluginRegistrar) -> Result<()> {
    r.add_loader(hf::HuggingFaceLoader);
    r.add_loader(torchscript::TorchScriptLoader);
    r.add_loader(checkpoint::CheckpointLoader::all());
    r.add_loader(bridge::PythonClassLoader);
    r.add_loader(bridge::TorchExportLoader);
    Ok(())
}

mymps_core::declare_plugin!(
    name: c"mymps-models",
    tch_version: mymps_backend_tch::TCH_VERSION_C,
    register: register,
);
