//! .safetensors files: the header and the tensors' places (no tensor is
//! made: libtorch is not called).
#![no_main]

#[global_allocator]
static ALLOC: mymps_fuzz::Capped = mymps_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mymps_models::fuzzing::safetensors(data));
