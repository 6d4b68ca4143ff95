//! A mymps plugin for tests. `MYMPS_FIXTURE_MODE` (read when the host asks
//! for the header) picks its behaviour:
//!
//! - `ok` (default): a correct header; registers the `fixture` model loader
//!   and the ops `fixture_double` and `fixture_panic`;
//! - `abi`, `mymps`, `rustc`, `tch`: the header claims another version of
//!   that component;
//! - `register-panic`: registration panics.
//!
//! The `fixture` loader echoes its inputs; it panics when loading from the
//! path `panic`, and its model panics on an input named `panic`.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};

use mymps_core::Result;
use mymps_core::model::{LoadRequest, Model, ModelLoader};
use mymps_core::plugin::{self, PluginHeader, PluginRegistrar};
use mymps_ops::{OpOutput, Outputs, Param, op};

fn mode() -> String {
    std::env::var("MYMPS_FIXTURE_MODE").unwrap_or_else(|_| "ok".into())
}

op!("fixture_double", "fixture", "2 × input (a plugin's op)",
    [Param::tensor("input")] -> Outputs::One,
    |a| Ok(OpOutput::One(a.tensor("input")?.f_mul_scalar(2)?)));

op!("fixture_panic", "fixture", "panics (a plugin's buggy op)",
    [Param::tensor("input")] -> Outputs::One,
    |_| panic!("fixture_panic was called"));

struct Echo;

impl Model for Echo {
    fn forward(
        &self,
        inputs: Vec<(String, mymps_core::Tensor)>,
    ) -> Result<Vec<(String, mymps_core::Tensor)>> {
        if inputs.iter().any(|(n, _)| n == "panic") {
            panic!("the fixture model panics on an input named 'panic'");
        }
        Ok(inputs)
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("architecture".to_owned(), "echo".to_owned())])
    }
}

struct FixtureLoader;

impl ModelLoader for FixtureLoader {
    fn model_type(&self) -> &str {
        "fixture"
    }

    fn load(&self, request: &LoadRequest, _device: &str) -> Result<Box<dyn Model>> {
        if request.path().ends_with("panic") {
            panic!("the fixture loader panics on the path 'panic'");
        }
        Ok(Box::new(Echo))
    }
}

fn register(r: &mut PluginRegistrar) -> Result<()> {
    if mode() == "register-panic" {
        panic!("the fixture panics during registration");
    }
    r.add_loader(FixtureLoader);
    for e in mymps_ops::plugin_ops(&["fixture_double", "fixture_panic"])? {
        r.add_op(e);
    }
    Ok(())
}

unsafe extern "C" fn register_c(r: *mut c_void, buf: *mut c_char, len: usize) -> i32 {
    // SAFETY: the host passes a registrar of the checked build and a buffer.
    unsafe { plugin::run_register(register, r, buf, len) }
}

fn version(component: &str, other: &'static CStr, real: &'static CStr) -> *const c_char {
    if mode() == component {
        other.as_ptr()
    } else {
        real.as_ptr()
    }
}

/// The entry point, with a header built from the mode.
#[unsafe(no_mangle)]
pub extern "C" fn mymps_plugin_header() -> *const PluginHeader {
    Box::leak(Box::new(PluginHeader {
        magic: plugin::PLUGIN_MAGIC,
        abi_version: if mode() == "abi" {
            999
        } else {
            plugin::PLUGIN_ABI_VERSION
        },
        name: c"mymps-plugin-fixture".as_ptr(),
        mymps_version: version("mymps", c"mymps 0.0.0-other", plugin::MYMPS_VERSION_C),
        rustc_version: version("rustc", c"rustc 0.0.0-other", plugin::RUSTC_VERSION_C),
        tch_version: version("tch", c"tch 0.0.0-other", mymps_backend_tch::TCH_VERSION_C),
        register: register_c,
    }))
}
