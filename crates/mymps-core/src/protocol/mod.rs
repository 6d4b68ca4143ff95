//! The wire protocol, without I/O: frames, headers, tensor encoding and the
//! handshake. Everything here is deterministic and can be tested and fuzzed
//! without sockets.
//!
//! A connection is a sequence of [`Frame`]s. The client's first frame is a
//! [`Hello`]; the server answers with a [`Welcome`] (or an error response and
//! a close). After that the client sends [`Request`]s, each with an id of its
//! choosing, and the server answers each with one [`Response`] carrying the
//! same id, in any order.
//!
//! [`rpc`] types each kind of request with its reply ([`rpc::Rpc`]): the
//! client, the cluster and the HTTP routes build requests and read replies
//! through it instead of matching on [`Response`] each.
//!
//! `docs/protocol.md` describes the format for implementers in other languages.

mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod message;
pub mod rpc;

pub use frame::*;
pub use message::*;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Builds a frame from a header and tensor buffers.
pub fn encode<T: Serialize>(
    kind: FrameKind,
    id: u64,
    header: &T,
    tensors: Vec<Bytes>,
) -> Result<Frame> {
    let header = rmp_serde::to_vec_named(header)
        .map_err(|e| Error::internal(format!("cannot encode header: {e}")))?;
    if tensors.len() > u16::MAX as usize {
        return Err(Error::new(
            crate::ErrorCode::PayloadTooLarge,
            format!(
                "{} tensors in one message; at most {}",
                tensors.len(),
                u16::MAX
            ),
        ));
    }
    Ok(Frame::new(kind, id, Bytes::from(header), tensors))
}

/// Builds a request frame: the request's header with `options` at its
/// top level ([`WithOptions`]); without options, exactly the request's
/// own header, as before options existed.
pub fn encode_request(
    id: u64,
    request: &Request,
    options: RequestOptions,
    tensors: Vec<Bytes>,
) -> Result<Frame> {
    if options.is_empty() {
        encode(FrameKind::Request, id, request, tensors)
    } else {
        encode(
            FrameKind::Request,
            id,
            &WithOptions { request, options },
            tensors,
        )
    }
}

/// The deepest a header's maps and arrays may nest. Protocol 1's headers
/// nest less than 16 deep; rmp-serde's own limit, 1024, is past what a
/// tokio worker's 2 MiB stack holds in a debug build (an internally tagged
/// header is first buffered whole, recursively): 500 to 700 levels
/// overflowed it, aborting the process.
pub const MAX_HEADER_DEPTH: usize = 64;

/// Decodes a frame's header; failure (including nesting deeper than
/// [`MAX_HEADER_DEPTH`]) is a [`crate::ErrorCode::Protocol`] error.
pub fn decode_header<T: DeserializeOwned>(frame: &Frame) -> Result<T> {
    let mut d = rmp_serde::Deserializer::from_read_ref(&frame.header);
    d.set_max_depth(MAX_HEADER_DEPTH);
    T::deserialize(&mut d)
        .map_err(|e| Error::protocol(format!("undecodable {:?} header: {e}", frame.kind)))
}

/// Splits named tensors into header descriptions and buffers.
pub fn tensors_to_wire(tensors: Vec<(String, Tensor)>) -> (Vec<TensorMeta>, Vec<Bytes>) {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let meta = TensorMeta {
                name,
                dtype: t.dtype().name().to_owned(),
                shape: t.shape().iter().map(|&d| d as u64).collect(),
                strides: t.strides().map(|s| s.iter().map(|&x| x as u64).collect()),
            };
            (meta, t.into_data())
        })
        .unzip()
}

/// Rebuilds named tensors from header descriptions and buffers, checking
/// dtype, shape, strides and byte lengths.
pub fn tensors_from_wire(
    metas: Vec<TensorMeta>,
    bufs: Vec<Bytes>,
) -> Result<Vec<(String, Tensor)>> {
    if metas.len() != bufs.len() {
        return Err(Error::protocol(format!(
            "header describes {} tensors but the frame carries {}",
            metas.len(),
            bufs.len()
        )));
    }
    metas
        .into_iter()
        .zip(bufs)
        .map(|(m, data)| {
            let dtype: crate::DType = m.dtype.parse().map_err(|e: Error| {
                Error::invalid_tensor(format!("tensor '{}': {}", m.name, e.message))
            })?;
            let to_usize = |v: &[u64]| -> Result<Vec<usize>> {
                v.iter()
                    .map(|&x| {
                        usize::try_from(x).map_err(|_| {
                            Error::invalid_tensor(format!(
                                "tensor '{}': dimension {x} too large",
                                m.name
                            ))
                        })
                    })
                    .collect()
            };
            let shape = to_usize(&m.shape)?;
            let strides = m.strides.as_deref().map(to_usize).transpose()?;
            let t = Tensor::with_strides(dtype, &shape, strides.as_deref(), data).map_err(|e| {
                Error::invalid_tensor(format!("tensor '{}': {}", m.name, e.message))
            })?;
            Ok((m.name, t))
        })
        .collect()
}

/// The client's [`Hello`] for this build.
pub fn hello(agent: &str, token: Option<String>) -> Hello {
    Hello {
        magic: MAGIC.to_owned(),
        protocol: PROTOCOL_VERSION,
        min_protocol: MIN_PROTOCOL_VERSION,
        features: features::ALL.iter().map(|s| s.to_string()).collect(),
        agent: agent.to_owned(),
        token,
    }
}

/// The server side of the handshake: checks a [`Hello`] and chooses the
/// protocol version and common features.
pub fn negotiate(hello: &Hello) -> Result<(u32, Vec<String>)> {
    if hello.magic != MAGIC {
        return Err(Error::protocol(format!(
            "not a mymps client (magic {:?})",
            hello.magic
        )));
    }
    let version = hello.protocol.min(PROTOCOL_VERSION);
    if version < hello.min_protocol.max(MIN_PROTOCOL_VERSION) {
        return Err(Error::new(
            crate::ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol {}..={}, server speaks {}..={}",
                hello.min_protocol, hello.protocol, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
            ),
        ));
    }
    let common = hello
        .features
        .iter()
        .filter(|f| features::ALL.contains(&f.as_str()))
        .cloned()
        .collect();
    Ok((version, common))
}

#[cfg(test)]
mod tests;
