//! The legacy tensor body, both ways: a msgpack map from argument or result
//! name to `{"shape": [ints], "dtype": "<numpy name>", "data": <bin>}`.
//!
//! Decoding reads the map in place: each tensor's data becomes a slice of
//! the body buffer (no copy). Encoding writes only the small msgpack parts;
//! result tensors' bytes are sent as their own chunks (no copy either).

use std::ops::Range;

use bytes::Bytes;
use mymps_core::protocol::TensorMeta;
use mymps_core::{Error, ErrorCode};
use rmp::Marker;

/// Deepest nesting skipped in an ignored value.
const MAX_DEPTH: usize = 16;

fn bad(msg: impl Into<String>) -> Error {
    Error::new(
        ErrorCode::BadArgument,
        format!("bad msgpack body: {}", msg.into()),
    )
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<Range<usize>, Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad("truncated"))?;
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }

    fn be(&mut self, n: usize) -> Result<u64, Error> {
        let r = self.take(n)?;
        Ok(self.buf[r].iter().fold(0u64, |a, &b| (a << 8) | b as u64))
    }

    fn marker(&mut self) -> Result<Marker, Error> {
        let r = self.take(1)?;
        Ok(Marker::from_u8(self.buf[r.start]))
    }

    fn map_len(&mut self) -> Result<usize, Error> {
        match self.marker()? {
            Marker::FixMap(n) => Ok(n as usize),
            Marker::Map16 => Ok(self.be(2)? as usize),
            Marker::Map32 => Ok(self.be(4)? as usize),
            m => Err(bad(format!("expected a map, found {}", describe(m)))),
        }
    }

    fn array_len(&mut self) -> Result<usize, Error> {
        match self.marker()? {
            Marker::FixArray(n) => Ok(n as usize),
            Marker::Array16 => Ok(self.be(2)? as usize),
            Marker::Array32 => Ok(self.be(4)? as usize),
            m => Err(bad(format!("expected an array, found {}", describe(m)))),
        }
    }

    /// A str or bin value's byte range (old msgpack writers send raw
    /// bytes as str).
    fn raw(&mut self) -> Result<Range<usize>, Error> {
        let n = match self.marker()? {
            Marker::FixStr(n) => n as usize,
            Marker::Str8 | Marker::Bin8 => self.be(1)? as usize,
            Marker::Str16 | Marker::Bin16 => self.be(2)? as usize,
            Marker::Str32 | Marker::Bin32 => self.be(4)? as usize,
            m => {
                return Err(bad(format!(
                    "expected a string or bytes, found {}",
                    describe(m)
                )));
            }
        };
        self.take(n)
    }

    fn str(&mut self, what: &str) -> Result<&'a str, Error> {
        let r = self.raw()?;
        std::str::from_utf8(&self.buf[r]).map_err(|_| bad(format!("{what} is not UTF-8")))
    }

    fn uint(&mut self) -> Result<u64, Error> {
        let v: i128 = match self.marker()? {
            Marker::FixPos(n) => n as i128,
            Marker::FixNeg(n) => n as i128,
            Marker::U8 => self.be(1)? as i128,
            Marker::U16 => self.be(2)? as i128,
            Marker::U32 => self.be(4)? as i128,
            Marker::U64 => self.be(8)? as i128,
            Marker::I8 => self.be(1)? as u8 as i8 as i128,
            Marker::I16 => self.be(2)? as u16 as i16 as i128,
            Marker::I32 => self.be(4)? as u32 as i32 as i128,
            Marker::I64 => self.be(8)? as i64 as i128,
            m => return Err(bad(format!("expected an integer, found {}", describe(m)))),
        };
        u64::try_from(v).map_err(|_| bad(format!("negative dimension {v}")))
    }

    fn skip(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(bad("nested too deeply"));
        }
        let n = match self.marker()? {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                0
            }
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(n) => n as usize,
            Marker::Str8 | Marker::Bin8 => self.be(1)? as usize,
            Marker::Str16 | Marker::Bin16 => self.be(2)? as usize,
            Marker::Str32 | Marker::Bin32 => self.be(4)? as usize,
            Marker::FixExt1 => 2,
            Marker::FixExt2 => 3,
            Marker::FixExt4 => 5,
            Marker::FixExt8 => 9,
            Marker::FixExt16 => 17,
            Marker::Ext8 => self.be(1)? as usize + 1,
            Marker::Ext16 => self.be(2)? as usize + 1,
            Marker::Ext32 => self.be(4)? as usize + 1,
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                self.pos -= 1;
                for _ in 0..self.array_len()? {
                    self.skip(depth + 1)?;
                }
                return Ok(());
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                self.pos -= 1;
                for _ in 0..self.map_len()? {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
                return Ok(());
            }
            Marker::Reserved => return Err(bad("reserved byte 0xc1")),
        };
        self.take(n).map(drop)
    }
}

fn describe(m: Marker) -> &'static str {
    match m {
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "an integer",
        Marker::F32 | Marker::F64 => "a float",
        Marker::Null => "nil",
        Marker::True | Marker::False => "a bool",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "a string",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "bytes",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "an array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "a map",
        Marker::Reserved => "the reserved byte 0xc1",
        _ => "an extension value",
    }
}

/// Decodes a tensor body into wire descriptions and buffers (slices of
/// `body`). dtypes and lengths are checked later, by the server core, as
/// for every transport. An empty body means no tensors.
pub fn decode_tensors(body: &Bytes) -> Result<(Vec<TensorMeta>, Vec<Bytes>), Error> {
    if body.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut c = Cursor { buf: body, pos: 0 };
    let n = c.map_len()?;
    // Every entry takes at least a few bytes, so `n` is bounded by the
    // body's length; still, do not trust it for the allocation.
    let mut metas = Vec::with_capacity(n.min(1024));
    let mut bufs = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let name = c.str("a tensor name")?.to_owned();
        let fields = c.map_len().map_err(|e| {
            bad(format!(
                "tensor '{name}' must be a map {{shape, dtype, data}}: {}",
                e.message
            ))
        })?;
        let (mut shape, mut dtype, mut data) = (None, None, None);
        for _ in 0..fields {
            match c.str("a field name")? {
                "shape" => {
                    let len = c.array_len()?;
                    if len > 64 {
                        return Err(Error::invalid_tensor(format!(
                            "tensor '{name}': {len} dimensions; at most 64"
                        )));
                    }
                    shape = Some((0..len).map(|_| c.uint()).collect::<Result<Vec<_>, _>>()?);
                }
                "dtype" => dtype = Some(c.str("a dtype")?.to_owned()),
                "data" => data = Some(c.raw()?),
                _ => c.skip(0)?,
            }
        }
        let missing = |f: &str| bad(format!("tensor '{name}' has no '{f}'"));
        let shape = shape.ok_or_else(|| missing("shape"))?;
        let dtype = dtype.ok_or_else(|| missing("dtype"))?;
        let data = data.ok_or_else(|| missing("data"))?;
        metas.push(TensorMeta {
            name,
            dtype,
            shape,
            strides: None,
        });
        bufs.push(body.slice(data));
    }
    if c.pos != body.len() {
        return Err(bad(format!("{} bytes after the map", body.len() - c.pos)));
    }
    Ok((metas, bufs))
}

/// Encodes results as chunks: small msgpack parts between the tensors' own
/// buffers.
pub fn encode_tensors(metas: &[TensorMeta], bufs: Vec<Bytes>) -> Vec<Bytes> {
    let mut chunks = Vec::with_capacity(2 * metas.len() + 1);
    let mut head = Vec::with_capacity(64);
    rmp::encode::write_map_len(&mut head, metas.len() as u32).expect("vec write");
    for (m, data) in metas.iter().zip(bufs) {
        rmp::encode::write_str(&mut head, &m.name).expect("vec write");
        rmp::encode::write_map_len(&mut head, 3).expect("vec write");
        rmp::encode::write_str(&mut head, "shape").expect("vec write");
        rmp::encode::write_array_len(&mut head, m.shape.len() as u32).expect("vec write");
        for &d in &m.shape {
            rmp::encode::write_uint(&mut head, d).expect("vec write");
        }
        rmp::encode::write_str(&mut head, "dtype").expect("vec write");
        rmp::encode::write_str(&mut head, &m.dtype).expect("vec write");
        rmp::encode::write_str(&mut head, "data").expect("vec write");
        // Results stay under the protocol's 4 GiB per-request payload.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        rmp::encode::write_bin_len(&mut head, len).expect("vec write");
        chunks.push(Bytes::from(std::mem::take(&mut head)));
        if !data.is_empty() {
            chunks.push(data);
        }
    }
    if !head.is_empty() {
        chunks.push(Bytes::from(head));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, dtype: &str, shape: Vec<u64>) -> TensorMeta {
        TensorMeta {
            name: name.into(),
            dtype: dtype.into(),
            shape,
            strides: None,
        }
    }

    #[test]
    fn round_trip_without_copies() {
        let metas = vec![
            meta("0", "float32", vec![2, 2]),
            meta("input_ids", "int64", vec![]),
            meta("empty", "bool", vec![0, 70000]),
        ];
        let bufs = vec![
            Bytes::from(vec![1u8; 16]),
            Bytes::from(vec![2u8; 8]),
            Bytes::new(),
        ];
        let body: Vec<u8> = encode_tensors(&metas, bufs.clone())
            .iter()
            .flat_map(|c| c.to_vec())
            .collect();
        let body = Bytes::from(body);
        let (m2, b2) = decode_tensors(&body).unwrap();
        assert_eq!(m2, metas);
        assert_eq!(b2, bufs);
        // The data is a view of the body.
        let start = b2[0].as_ptr() as usize - body.as_ptr() as usize;
        assert!(start < body.len());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for (body, want) in [
            (&b"\x81\xa1x\x80"[..], "no 'shape'"),
            (&b"\x91\x01"[..], "expected a map"),
            (&b"\x81\xa1x\x81\xa5shape\x91\xff"[..], "negative dimension"),
            (&b"\x81\xa1x"[..], "truncated"),
            (&b"\xc1"[..], "expected a map"),
            (&b"\x80\x00"[..], "after the map"),
            (&b"{\"a\": 1}"[..], "expected a map"),
        ] {
            let e = decode_tensors(&Bytes::copy_from_slice(body)).unwrap_err();
            assert!(e.message.contains(want), "{body:?}: {}", e.message);
        }
        // Unknown fields are skipped, however nested (within bounds).
        let mut deep = b"\x81\xa1x\x84\xa5shape\x90\xa5dtype\xa4bool\xa4data\xc4\x00\xa1z".to_vec();
        deep.extend(std::iter::repeat_n(0x91u8, 40));
        deep.push(0x01);
        let e = decode_tensors(&Bytes::from(deep)).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{}", e.message);
    }
}
