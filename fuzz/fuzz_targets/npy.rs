//! `.npy` files: `mymps::npy::from_bytes`.
#![no_main]

#[global_allocator]
static ALLOC: mymps_fuzz::Capped = mymps_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mymps::npy::fuzz(data));
