//! Frames: the sans-IO head decoder (`decode_head`, `admit_payload`,
//! `Frame::decode`) against the stream reader, over any bytes.
#![no_main]

#[global_allocator]
static ALLOC: mymps_fuzz::Capped = mymps_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mymps_core::protocol::fuzzing::frame(data));
