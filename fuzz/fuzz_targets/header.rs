//! Headers: msgpack `Hello`, `Welcome`, `Request` and `Response`, the
//! tensors they describe, and their re-encoding.
#![no_main]

#[global_allocator]
static ALLOC: mymps_fuzz::Capped = mymps_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mymps_core::protocol::fuzzing::header(data));
