//! The entry points of the model-file fuzz targets (`fuzz/fuzz_targets/`,
//! see `docs/fuzzing.md`), and of the test that replays their committed
//! corpus (`fuzz/corpus/{torch_pickle,torch_zip,safetensors}`) on every
//! `cargo test`. Not part of the API.
//!
//! They parse and check, and never call into libtorch (the fuzz binaries
//! link it, through tch, but do not need it at run time); the corpus test
//! also runs the rest of each reader, which makes the tensors. Bad bytes
//! must give errors; these functions panic only when a reader breaks a
//! promise: a panic of its own, an error message that is not short, or
//! contents that disagree with their checks.

use std::io::Cursor;

use crate::{safetensors, torch_pickle};

/// The longest error message a reader may give, whatever its input:
/// messages quote a bounded part of values and clip names.
pub const MAX_ERROR_BYTES: usize = 64 << 10;

/// The size of the file a fuzzed pickle is checked as if it came from.
const PICKLE_FILE_LEN: u64 = 1 << 30;

fn short(e: String) {
    assert!(
        e.len() <= MAX_ERROR_BYTES,
        "an error message of {} bytes: {}…",
        e.len(),
        e.chars().take(200).collect::<String>()
    );
}

/// A `torch.save` file's pickle (`data.pkl`), unpickled and checked as a
/// state_dict (as if from a 1 GiB file): the unpickler, which fuzzing
/// through a zip would hardly reach (the zip's CRC covers the pickle).
pub fn torch_pickle(data: &[u8]) {
    if let Err(e) = torch_pickle::check_pickle(data, PICKLE_FILE_LEN) {
        short(e);
    }
}

/// A `torch.save` file: its zip, byte order, pickle, entries and storages,
/// read and checked as the checkpoint loader reads them, up to (not
/// including) making tensors.
pub fn torch_zip(data: &[u8]) {
    match torch_pickle::read_contents(Cursor::new(data)) {
        Err(e) => short(e),
        Ok(c) => {
            for e in &c.entries {
                let (kind, bytes) = &c.storages[&e.storage];
                let item = kind.elt_size_in_bytes();
                assert_eq!(bytes.len() % item, 0, "a storage of part of an item");
                assert!(bytes.len() <= data.len(), "a storage larger than its file");
                // The view lies inside its storage (read_contents checked
                // it with checked arithmetic: none overflows here).
                let numel = (bytes.len() / item) as i64;
                assert_eq!(e.size.len(), e.stride.len(), "size and stride");
                assert!(e.offset >= 0 && e.offset <= numel, "a view's offset");
                if !e.size.contains(&0) {
                    let last: i64 = e
                        .size
                        .iter()
                        .zip(&e.stride)
                        .map(|(&s, &t)| (s - 1) * t)
                        .sum::<i64>()
                        + e.offset;
                    assert!(
                        last < numel,
                        "entry '{}' reaches item {last} of a storage of {numel}",
                        e.name
                    );
                }
            }
        }
    }
}

/// A `.safetensors` file: its header and the tensors' places, checked as
/// the loaders read them, up to (not including) making tensors.
pub fn safetensors(data: &[u8]) {
    match safetensors::parse(data) {
        Err(e) => short(e),
        Ok(views) => {
            // The tensors tile the data, in order, from the header's end
            // to the file's, and their names differ.
            let mut at = 8 + u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
            let mut names = std::collections::HashSet::new();
            for v in &views {
                assert_eq!(
                    v.data.as_ptr() as usize - data.as_ptr() as usize,
                    at,
                    "a hole or an overlap before tensor '{}'",
                    v.name
                );
                at += v.data.len();
                assert!(names.insert(&v.name), "tensor '{}' twice", v.name);
            }
            assert_eq!(at, data.len(), "the tensors do not end where the file does");
            for v in &views {
                // parse checked the product (and a zero ends it).
                let numel: i64 = if v.shape.contains(&0) {
                    0
                } else {
                    v.shape.iter().product()
                };
                assert_eq!(
                    v.data.len() as i64,
                    numel * v.kind.elt_size_in_bytes() as i64,
                    "tensor '{}' of other than numel × item size bytes",
                    v.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use mymps_core::protocol::fuzzing::replay;

    fn corpus(target: &str) -> PathBuf {
        [env!("CARGO_MANIFEST_DIR"), "../../fuzz/corpus", target]
            .iter()
            .collect()
    }

    #[test]
    fn the_torch_pickle_corpus_gives_errors_or_state_dicts() {
        replay(&corpus("torch_pickle"), super::torch_pickle);
    }

    #[test]
    fn the_torch_zip_corpus_gives_errors_or_state_dicts() {
        replay(&corpus("torch_zip"), |data| {
            super::torch_zip(data);
            // And the tensors, with libtorch.
            if let Err(e) = crate::torch_pickle::read_state_dict(std::io::Cursor::new(data)) {
                super::short(e);
            }
        });
    }

    #[test]
    fn the_safetensors_corpus_gives_errors_or_tensors() {
        replay(&corpus("safetensors"), |data| {
            super::safetensors(data);
            if let Err(e) = crate::safetensors::tensors(data) {
                super::short(e);
            }
        });
    }
}
