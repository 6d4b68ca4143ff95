//! torch.save files: the zip, its entries and storages, the pickle and the
//! state_dict's checks (no tensor is made: libtorch is not called).
#![no_main]

#[global_allocator]
static ALLOC: mymps_fuzz::Capped = mymps_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mymps_models::fuzzing::torch_zip(data));
