//! `.npy` files (numpy's format, versions 1.0–3.0): read into and write
//! from [`Tensor`]s, every dtype.
//!
//! numpy has no native bfloat16: `ml_dtypes` saves it as `'<V2'`, which is
//! read here as bfloat16 and written the same way (load with
//! `np.load(f).view(ml_dtypes.bfloat16)`).

use std::io::{Read, Write};
use std::path::Path;

use crate::{DType, Error, Result, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(d: DType) -> &'static str {
    match d {
        DType::Bool => "|b1",
        DType::UInt8 => "|u1",
        DType::Int8 => "|i1",
        DType::Int16 => "<i2",
        DType::Int32 => "<i4",
        DType::Int64 => "<i8",
        DType::Float16 => "<f2",
        DType::BFloat16 => "<V2",
        DType::Float32 => "<f4",
        DType::Float64 => "<f8",
        DType::Complex64 => "<c8",
        DType::Complex128 => "<c16",
    }
}

fn dtype_of_descr(s: &str) -> Result<DType> {
    let little = |rest: &str| -> Option<DType> {
        Some(match rest {
            "b1" => DType::Bool,
            "u1" => DType::UInt8,
            "i1" => DType::Int8,
            "i2" => DType::Int16,
            "i4" => DType::Int32,
            "i8" => DType::Int64,
            "f2" => DType::Float16,
            "V2" => DType::BFloat16,
            "f4" => DType::Float32,
            "f8" => DType::Float64,
            "c8" => DType::Complex64,
            "c16" => DType::Complex128,
            _ => return None,
        })
    };
    // The byte order is the first character, which may be any character.
    let (order, rest) = s.split_at_checked(1).unwrap_or(("", s));
    let one_byte = matches!(rest, "b1" | "u1" | "i1");
    match order {
        "<" | "|" | "=" => little(rest),
        ">" if one_byte => little(rest),
        _ => None,
    }
    .ok_or_else(|| {
        Error::invalid_tensor(format!(
            "unsupported .npy dtype '{s}' (little-endian bool, int, float, complex and bfloat16 '<V2' are supported)"
        ))
    })
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::bad_argument(format!("cannot open {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Error::bad_argument(format!("cannot read {}: {e}", path.display())))?;
    from_bytes(buf).map_err(|e| Error::new(e.code, format!("{}: {}", path.display(), e.message)))
}

/// Parses a `.npy` file's bytes.
pub fn from_bytes(buf: Vec<u8>) -> Result<Tensor> {
    let bad = |m: &str| Error::invalid_tensor(format!("not a valid .npy file: {m}"));
    if buf.len() < 10 || &buf[..6] != MAGIC {
        return Err(bad("missing magic"));
    }
    let (header_len, start) = match buf[6] {
        1 => (u16::from_le_bytes([buf[8], buf[9]]) as usize, 10usize),
        2 | 3 if buf.len() >= 12 => (
            u32::from_le_bytes(buf[8..12].try_into().expect("4")) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(&buf[start..end]).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(&format!("no '{key}'")))?;
        let rest = header[at + key.len() + 2..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| bad("bad header"))
    };
    let descr_s = field("descr")?;
    let descr_s = descr_s
        .strip_prefix('\'')
        .and_then(|r| r.split_once('\''))
        .map(|(d, _)| d)
        .ok_or_else(|| bad("bad descr"))?;
    let dtype = dtype_of_descr(descr_s)?;
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_s = field("shape")?;
    let shape_s = shape_s
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad("bad shape"))?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>>>()?;
    let data = bytes::Bytes::from(buf).slice(end..);
    if fortran && shape.len() > 1 {
        // The data holds exactly the array, in either order.
        let want = shape
            .iter()
            .try_fold(dtype.itemsize(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        if data.len() != want {
            return Err(bad(&format!(
                "{} bytes of data for shape {shape:?} of {dtype} ({want} bytes)",
                data.len()
            )));
        }
        let mut strides = vec![0usize; shape.len()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(&shape) {
            *s = acc;
            acc = acc.saturating_mul(d.max(1));
        }
        Tensor::with_strides(dtype, &shape, Some(&strides), data)
    } else {
        Tensor::new(dtype, &shape, data)
    }
}

/// Encodes a tensor as `.npy` bytes (version 1.0, C order); fails when a
/// strided view's dense copy cannot be allocated.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.contiguous()?;
    let shape = match t.shape() {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        s => format!(
            "({})",
            s.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(t.dtype())
    );
    // Pad so that the data starts on a 64-byte boundary, ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data().len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(t.data());
    Ok(out)
}

/// Writes a tensor to a `.npy` file.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| Error::bad_argument(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(&to_bytes(t)?)
        .map_err(|e| Error::bad_argument(format!("cannot write {}: {e}", path.display())))
}

/// The fuzz target's entry point (`fuzz/fuzz_targets/npy.rs`), also run
/// over the committed corpus by this module's tests: parses `data` and,
/// when it is a `.npy` file, checks that writing it back and reading that
/// gives the same tensor. Panics only when a promise is broken.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    let Ok(t) = from_bytes(data.to_vec()) else {
        return;
    };
    let dense = t
        .contiguous()
        .expect("a .npy tensor is as large as its file");
    let again = from_bytes(to_bytes(&t).expect("a read tensor writes"))
        .expect("a written .npy file reads back");
    assert!(again == dense, "a .npy file reads back as another tensor");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_dtype() {
        for d in DType::ALL {
            let t = Tensor::new(d, &[2, 3], vec![1u8; 6 * d.itemsize()]).unwrap();
            let back = from_bytes(to_bytes(&t).unwrap()).unwrap();
            assert_eq!(back, t, "{d}");
            let header_end = 10
                + u16::from_le_bytes([to_bytes(&t).unwrap()[8], to_bytes(&t).unwrap()[9]]) as usize;
            assert_eq!(header_end % 64, 0);
        }
        let s = Tensor::scalar(3.5f64);
        assert_eq!(from_bytes(to_bytes(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn the_fuzz_corpus_reads_or_errs_and_round_trips() {
        let dir: std::path::PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../fuzz/corpus/npy"]
            .iter()
            .collect();
        mymps_core::protocol::fuzzing::replay(&dir, fuzz);
    }

    /// Found by the `npy` fuzz target: `split_at(1)` inside a character.
    #[test]
    fn a_descr_that_starts_with_a_multibyte_character_is_refused() {
        let mut b = to_bytes(&Tensor::scalar(1.0f32)).unwrap();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at..at + 3].copy_from_slice("đ4".as_bytes());
        let e = from_bytes(b).unwrap_err();
        assert!(e.message.contains("unsupported .npy dtype 'đ4'"), "{e}");
    }

    /// Found by the `npy` fuzz target: Fortran order took data longer than
    /// the array (C order refused it). And, seen while fixing that, its
    /// strides' product overflowed for large dimensions (a panic with
    /// overflow checks on) before the shape was checked.
    #[test]
    fn fortran_order_holds_exactly_its_array() {
        let f = |shape: &str, data: &[u8]| {
            let mut header =
                format!("{{'descr': '<i2', 'fortran_order': True, 'shape': {shape}, }}");
            header.push_str(&" ".repeat(63 - (10 + header.len()) % 64));
            header.push('\n');
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[1, 0]);
            b.extend_from_slice(&(header.len() as u16).to_le_bytes());
            b.extend_from_slice(header.as_bytes());
            b.extend_from_slice(data);
            from_bytes(b)
        };
        let t = f("(2, 3)", &[1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]).unwrap();
        assert_eq!(t.to_vec::<i16>().unwrap(), [1, 3, 5, 2, 4, 6]);
        let e = f("(1, 1)", &[0; 12]).unwrap_err();
        assert!(e.message.contains("12 bytes of data"), "{e}");
        let e = f("(4294967296, 4294967296, 2)", &[0; 4]).unwrap_err();
        assert!(e.message.contains("shape overflows"), "{e}");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(from_bytes(b"not npy".to_vec()).is_err());
        let mut b = to_bytes(&Tensor::scalar(1.0f32)).unwrap();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at] = b'>';
        assert!(
            from_bytes(b)
                .unwrap_err()
                .message
                .contains("unsupported .npy dtype")
        );
    }
}
