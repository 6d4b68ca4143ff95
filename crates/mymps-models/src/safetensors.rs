//! Reading `.safetensors` files: an 8-byte little-endian header length,
//! a JSON header (`{"name": {"dtype": "F32", "shape": [2, 3],
//! "data_offsets": [0, 24]}, ..., "__metadata__": {...}}`), then the
//! tensors' bytes, one after another.
//!
//! Read here rather than with `tch::Tensor::read_safetensors` (the
//! `safetensors` crate 0.3; 0.8 reads headers the same way), which
//! - adds the last offset to the header's length unchecked: an offset
//!   near 2^64 overflows, a panic wherever overflow checks are on (debug
//!   builds, the tests; a release build gets an error);
//! - buffers the whole header as serde `Content` before it is read (its
//!   tensors are a `#[serde(flatten)]` map): some 16 bytes of memory per
//!   byte of a header of small numbers, up to the format's 100 MB (a
//!   50 MB header of one shape took 830 MB in the `safetensors` Python
//!   package's reader, the crate's 0.8, before it refused the shape);
//! - quotes tensor names whole in its errors.
//!
//! Here:
//!
//! - the header is at most [`MAX_HEADER_BYTES`] and lies inside the file;
//!   it is parsed into what is kept (names, dtypes, shapes of at most
//!   [`MAX_DIMS`] dimensions, offsets; `__metadata__` is skipped), so its
//!   memory is a small multiple of its size;
//! - the tensors must tile the data exactly, from its first byte to the
//!   file's end, with no holes and no overlaps (as the format requires),
//!   so that together they take no more memory than the file; every offset
//!   and size is checked arithmetic;
//! - each tensor's bytes are its numel × item size before libtorch copies
//!   them (`Tensor::f_from_data_size` copies numel × item size bytes from
//!   the pointer it is given, whatever the slice's length);
//! - error messages clip the names they quote.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tch::{Kind, Tensor};

use crate::convert::clip;

type R<T> = std::result::Result<T, String>;

/// The largest header read: the format's own limit (100 MB).
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The most dimensions a tensor may have.
pub(crate) const MAX_DIMS: usize = 64;

/// A tensor of a file: its name, kind, shape and bytes (numel × item size).
#[derive(Debug)]
pub(crate) struct View<'a> {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
    pub data: &'a [u8],
}

/// A tensor's entry in the header.
#[derive(Deserialize)]
struct Info {
    dtype: String,
    #[serde(deserialize_with = "dims")]
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// A shape, refused past [`MAX_DIMS`] as it is read.
fn dims<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u64>, D::Error> {
    struct Dims;
    impl<'de> Visitor<'de> for Dims {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {MAX_DIMS} dimensions")
        }
        fn visit_seq<A: SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<u64>, A::Error> {
            let mut v = Vec::new();
            while let Some(d) = seq.next_element()? {
                if v.len() == MAX_DIMS {
                    return Err(de::Error::custom(format!(
                        "a shape of more than {MAX_DIMS} dimensions"
                    )));
                }
                v.push(d);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Dims)
}

/// The header's tensors, in its order; `__metadata__` is skipped.
struct Header(Vec<(String, Info)>);

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Header, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of tensor names to their dtype, shape and data_offsets")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Header, A::Error> {
                let mut v = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        let info = map.next_value::<Info>().map_err(|e| {
                            de::Error::custom(format!("tensor '{}': {e}", clip(&name)))
                        })?;
                        v.push((name, info));
                    }
                }
                Ok(Header(v))
            }
        }
        d.deserialize_map(Entries)
    }
}

fn kind_of(dtype: &str) -> R<Kind> {
    Ok(match dtype {
        "BOOL" => Kind::Bool,
        "U8" => Kind::Uint8,
        "I8" => Kind::Int8,
        "I16" => Kind::Int16,
        "I32" => Kind::Int,
        "I64" => Kind::Int64,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        other => {
            return Err(format!(
                "dtype '{}' is not supported (BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64 are)",
                clip(other)
            ));
        }
    })
}

/// The tensors of a `.safetensors` file's bytes, checked (see the
/// module's doc), in the order of their data. Nothing here calls into
/// libtorch.
pub(crate) fn parse(file: &[u8]) -> R<Vec<View<'_>>> {
    let len_bytes: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than the 8 bytes of a header length")?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_BYTES {
        return Err(format!(
            "a header of {n} bytes, more than the format's {MAX_HEADER_BYTES}"
        ));
    }
    let data_start = 8 + n as usize;
    if data_start > file.len() {
        return Err(format!(
            "a header of {n} bytes, past the end of the {}-byte file",
            file.len()
        ));
    }
    let text = std::str::from_utf8(&file[8..data_start])
        .map_err(|e| format!("the header is not UTF-8: {e}"))?;
    if !text.starts_with('{') {
        return Err("the header is not a JSON object".into());
    }
    // serde_json's messages may quote a whole string of the header.
    let Header(mut infos) = serde_json::from_str(text)
        .map_err(|e| format!("the header is not valid: {}", clip(&e.to_string())))?;
    let data = &file[data_start..];
    infos.sort_by_key(|(_, i)| i.data_offsets);
    let mut views = Vec::new();
    views
        .try_reserve_exact(infos.len())
        .map_err(|e| e.to_string())?;
    let mut at = 0u64;
    for (name, info) in infos {
        let shown = clip(&name);
        let (start, end) = info.data_offsets;
        if start != at || end < start {
            return Err(format!(
                "tensor '{shown}' has data_offsets [{start}, {end}]: the tensors must follow each other from byte 0 of the data (expected [{at}, ...]), without holes or overlaps"
            ));
        }
        let kind = kind_of(&info.dtype).map_err(|e| format!("tensor '{shown}': {e}"))?;
        let bytes = info
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|numel| numel.checked_mul(kind.elt_size_in_bytes() as u64))
            .ok_or_else(|| format!("tensor '{shown}': shape {:?} overflows", info.shape))?;
        if bytes != end - start {
            return Err(format!(
                "tensor '{shown}': shape {:?} of {} takes {bytes} bytes, but its data_offsets [{start}, {end}] hold {}",
                info.shape,
                info.dtype,
                end - start
            ));
        }
        if end > data.len() as u64 {
            return Err(format!(
                "tensor '{shown}' ends at byte {end} of the data, past its end ({} bytes)",
                data.len()
            ));
        }
        let shape = info
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<Vec<i64>, _>>()
            .map_err(|_| format!("tensor '{shown}': shape {:?} overflows", info.shape))?;
        // In range: start <= end <= data.len().
        views.push(View {
            kind,
            shape,
            data: &data[start as usize..end as usize],
            name,
        });
        at = end;
    }
    if at != data.len() as u64 {
        return Err(format!(
            "the tensors hold {at} bytes, but {} follow the header",
            data.len()
        ));
    }
    let mut names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("tensor '{}' appears twice", clip(w[0])));
    }
    Ok(views)
}

/// The tensors of `file`'s bytes, on the CPU: [`parse`], then a copy of
/// each tensor's bytes.
pub(crate) fn tensors(file: &[u8]) -> R<Vec<(String, Tensor)>> {
    parse(file)?
        .into_iter()
        .map(|v| {
            // parse checked that data holds numel × item size bytes, which
            // is what f_from_data_size copies.
            let t = Tensor::f_from_data_size(v.data, &v.shape, v.kind)
                .map_err(|e| format!("tensor '{}': {e}", clip(&v.name)))?;
            Ok((v.name, t))
        })
        .collect()
}

/// Reads a `.safetensors` file (whole) into (name, tensor) pairs on the
/// CPU.
pub(crate) fn read(path: &Path) -> R<Vec<(String, Tensor)>> {
    let file = std::fs::read(path).map_err(|e| e.to_string())?;
    tensors(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `header` (JSON) and `data`.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn err(header: &str, data: &[u8]) -> String {
        parse(&file(header, data)).unwrap_err()
    }

    #[test]
    fn tensors_and_metadata_read_back() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .chain([7u8, 1, 0])
            .collect();
        let f = file(
            r#"{"__metadata__": {"format": "pt"},
                "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
                "a": {"dtype": "F32", "shape": [2, 1], "data_offsets": [0, 8]},
                "z": {"dtype": "I64", "shape": [0, 4], "data_offsets": [11, 11]}}"#,
            &data,
        );
        let t = tensors(&f).unwrap();
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "z"]);
        assert_eq!(t[0].1.size(), [2, 1]);
        assert_eq!(
            Vec::<f32>::try_from(t[0].1.flatten(0, -1)).unwrap(),
            [1.5, -2.0]
        );
        assert_eq!(Vec::<u8>::try_from(&t[1].1).unwrap(), [7, 1, 0]);
        assert_eq!(t[2].1.size(), [0, 4]);
    }

    /// With the `safetensors` crate, `data_offsets` ending near 2^64 overflowed
    /// its check that the tensors end where the file does (a panic with
    /// overflow checks on).
    #[test]
    fn an_offset_near_2_pow_64_is_an_error_not_an_overflow() {
        let e = err(
            &format!(
                r#"{{"x": {{"dtype": "U8", "shape": [{m}], "data_offsets": [0, {m}]}}}}"#,
                m = u64::MAX
            ),
            b"",
        );
        assert!(e.contains("past its end"), "{e}");
        // Through the loaders' reader, which the crate's panic reached.
        let path =
            std::env::temp_dir().join(format!("mymps-wrap-{}.safetensors", std::process::id()));
        let header = format!(
            r#"{{"x": {{"dtype": "U8", "shape": [{m}], "data_offsets": [0, {m}]}}}}"#,
            m = u64::MAX
        );
        std::fs::write(&path, file(&header, b"")).unwrap();
        let r = crate::checkpoint::read_state_dict(path.to_str().unwrap(), tch::Device::Cpu);
        std::fs::remove_file(&path).unwrap();
        let e = r.expect_err("an error");
        assert_eq!(e.code, mymps_core::ErrorCode::Model, "{e}");
        assert!(e.message.contains("past its end"), "{e}");
        let e = err(
            &format!(
                r#"{{"x": {{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                    "y": {{"dtype": "U8", "shape": [{m}], "data_offsets": [1, {m}]}}}}"#,
                m = u64::MAX
            ),
            b"a",
        );
        assert!(e.contains("takes"), "{e}");
    }

    #[test]
    fn holes_overlaps_and_short_data_are_refused() {
        let t = |name: &str, s: u64, e: u64| {
            format!(
                r#""{name}": {{"dtype": "U8", "shape": [{}], "data_offsets": [{s}, {e}]}}"#,
                e - s
            )
        };
        let hole = format!("{{{}, {}}}", t("a", 0, 2), t("b", 3, 4));
        assert!(err(&hole, b"abcd").contains("without holes"));
        let overlap = format!("{{{}, {}}}", t("a", 0, 2), t("b", 1, 4));
        assert!(err(&overlap, b"abcd").contains("without holes"));
        let late = format!("{{{}}}", t("a", 1, 4));
        assert!(err(&late, b"abcd").contains("expected [0"));
        let short = format!("{{{}}}", t("a", 0, 4));
        assert!(err(&short, b"abc").contains("past its end"));
        let long = format!("{{{}}}", t("a", 0, 3));
        assert!(err(&long, b"abcd").contains("but 4 follow the header"));
        let twice = r#"{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},
                        "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#;
        assert!(err(twice, b"x").contains("appears twice"));
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(parse(b"\x01\x02").unwrap_err().contains("8 bytes"));
        let mut huge = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse(&huge).unwrap_err().contains("more than the format's"));
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(parse(&past).unwrap_err().contains("past the end"));
        assert!(err("[1]", b"").contains("not a JSON object"));
        assert!(err("{\"a\": 1", b"").contains("not valid"));
        let dims = format!(
            r#"{{"a": {{"dtype": "U8", "shape": [{}], "data_offsets": [0, 1]}}}}"#,
            vec!["1"; MAX_DIMS + 1].join(",")
        );
        assert!(err(&dims, b"x").contains("more than 64 dimensions"));
        let f8 = r#"{"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}"#;
        assert!(err(f8, b"x").contains("'F8_E4M3' is not supported"));
        let wide = format!(
            r#"{{"a": {{"dtype": "U8", "shape": [0, {}], "data_offsets": [0, 0]}}}}"#,
            u64::MAX
        );
        assert!(err(&wide, b"").contains("overflows"));
    }

    #[test]
    fn error_messages_clip_what_they_quote() {
        let name = "n".repeat(1 << 20);
        let e = err(
            &format!(r#"{{"{name}": {{"dtype": "Q", "shape": [], "data_offsets": [0, 0]}}}}"#),
            b"",
        );
        assert!(e.len() < 1000, "{} bytes", e.len());
        let e = err(
            &format!(r#"{{"a": {{"dtype": 1, "shape": "{name}"}}}}"#),
            b"",
        );
        assert!(e.len() < 1000, "{} bytes", e.len());
        let e = err(
            &format!(r#"{{"a": {{"dtype": "U8", "shape": ["{name}"]}}}}"#),
            b"",
        );
        assert!(e.len() < 1000, "{} bytes", e.len());
    }
}
