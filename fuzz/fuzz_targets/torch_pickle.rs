//! torch.save pickles (`data.pkl`): the unpickler and the state_dict's
//! checks, without the zip around them.
#![no_main]

#[global_allocator]
static ALLOC: mymps_fuzz::Capped = mymps_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mymps_models::fuzzing::torch_pickle(data));
