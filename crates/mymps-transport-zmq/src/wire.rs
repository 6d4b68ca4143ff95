//! The multipart layout of a frame, without I/O.
//!
//! One mymps [`Frame`] is one ZeroMQ multipart message:
//!
//! ```text
//! part 0      head: the 16-byte frame prefix (kind, flags, n_tensors,
//!             header_len, id; little-endian, exactly as on TCP), then the
//!             msgpack header (header_len bytes)
//! part 1..=n  one part per tensor, its raw bytes
//! ```
//!
//! There is no tensor length table: each tensor's length is its part's
//! length. `n_tensors` and `header_len` are kept so that the head is the
//! TCP frame head minus the table, and they are checked against the parts
//! actually received. A message of one empty part is a heartbeat (a
//! keep-alive some peers send; it gets no answer).
//!
//! The client decodes whole messages from libzmq ([`decode`]); the server
//! reads the parts one at a time as ZMTP frames (`server.rs`) and refuses
//! a message as soon as one part's header shows it wrong, with the same
//! messages (the functions below).

use bytes::{BufMut, Bytes, BytesMut};
use mymps_core::protocol::{Frame, PREFIX_LEN, Prefix};

/// Most parts a message may have: the head and `u16::MAX` tensors.
pub const MAX_PARTS: usize = 1 + u16::MAX as usize;

/// A message that is not a frame. Its id is known when the head was at
/// least 16 bytes long (0 otherwise); the error is answered with that id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The id read from the head, or 0.
    pub id: u64,
    /// What is wrong.
    pub message: String,
}

/// What a received multipart message is.
#[derive(Debug)]
pub enum Parsed {
    /// A frame.
    Frame(Frame),
    /// A heartbeat: one empty part.
    Heartbeat,
}

/// The 16-byte prefix of `frame`'s head part; `None` for a frame no peer
/// may receive (more than 65535 tensors, a header of 4 GiB or more).
pub fn prefix(frame: &Frame) -> Option<[u8; PREFIX_LEN]> {
    Some(
        Prefix {
            kind: frame.kind,
            flags: frame.flags,
            n_tensors: u16::try_from(frame.tensors.len()).ok()?,
            header_len: u32::try_from(frame.header.len()).ok()?,
            id: frame.id,
        }
        .encode(),
    )
}

/// The head part of `frame`: its prefix, then its header.
///
/// Panics if the frame has more than 65535 tensors or a header over 4 GiB;
/// the client never builds such frames.
pub fn encode_head(frame: &Frame) -> Vec<u8> {
    let prefix = prefix(frame).expect("at most 65535 tensors and a header under 4 GiB");
    let mut b = BytesMut::with_capacity(PREFIX_LEN + frame.header.len());
    b.put_slice(&prefix);
    b.put_slice(&frame.header);
    b.to_vec()
}

/// The error for a first part too short for the prefix.
pub fn short_head(len: u64) -> String {
    format!(
        "the first part of a message must hold the 16-byte frame prefix and the header; it has {len} bytes"
    )
}

/// The error for a `header_len` that disagrees with the head part.
pub fn header_mismatch(declared: u32, carried: u64) -> String {
    format!(
        "the prefix says the header has {declared} bytes but the first part carries {carried} after the prefix"
    )
}

/// The error for a message whose parts after the first are not one per
/// tensor: `parts` of them (`None`: more than `n_tensors`, found when the
/// last announced part says more follow).
pub fn part_count(n_tensors: u16, parts: Option<usize>) -> String {
    match parts {
        Some(p) if p < n_tensors as usize => format!(
            "missing tensor parts: the prefix announces {n_tensors} tensors, one part each, but the message has {p} parts after the first"
        ),
        Some(p) => format!(
            "extra parts: the prefix announces {n_tensors} tensors, one part each, but the message has {p} parts after the first"
        ),
        None => format!(
            "extra parts: the prefix announces {n_tensors} tensors, one part each, but the message has more parts after the first"
        ),
    }
}

/// Decodes the parts of one message (after the routing identity, on the
/// server). `total_parts` counts parts beyond those in `parts` that the
/// receiver dropped (more than [`MAX_PARTS`]).
pub fn decode(parts: Vec<Bytes>, total_parts: usize) -> Result<Parsed, Malformed> {
    let Some(head) = parts.first() else {
        return Err(Malformed {
            id: 0,
            message: "empty message".into(),
        });
    };
    if total_parts == 1 && head.is_empty() {
        return Ok(Parsed::Heartbeat);
    }
    if head.len() < PREFIX_LEN {
        return Err(Malformed {
            id: 0,
            message: short_head(head.len() as u64),
        });
    }
    let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let bad = |message: String| Malformed { id, message };
    let prefix = Prefix::decode(head[..PREFIX_LEN].try_into().expect("16 bytes"))
        .map_err(|e| bad(e.to_error().message))?;
    let header_len = head.len() - PREFIX_LEN;
    if prefix.header_len as usize != header_len {
        return Err(bad(header_mismatch(prefix.header_len, header_len as u64)));
    }
    let tensor_parts = total_parts - 1;
    if prefix.n_tensors as usize != tensor_parts {
        return Err(bad(part_count(prefix.n_tensors, Some(tensor_parts))));
    }
    let mut parts = parts.into_iter();
    let head = parts.next().expect("checked");
    Ok(Parsed::Frame(Frame {
        kind: prefix.kind,
        flags: prefix.flags,
        id,
        header: head.slice(PREFIX_LEN..),
        tensors: parts.collect(),
    }))
}

/// The core's admission of whole frames (the client's replies): the
/// limits, then the budget.
pub use mymps_core::transport::admit_frame as admit;

#[cfg(test)]
mod tests {
    use super::*;
    use mymps_core::protocol::{FrameError, FrameKind, Limits};
    use mymps_core::transport::MemoryBudget;

    fn parts_of(f: &Frame) -> Vec<Bytes> {
        std::iter::once(Bytes::from(encode_head(f)))
            .chain(f.tensors.iter().cloned())
            .collect()
    }

    fn frame() -> Frame {
        Frame::new(
            FrameKind::Request,
            77,
            Bytes::from_static(b"\x81\xa4type\xa6health"),
            vec![Bytes::from_static(b"abcd"), Bytes::new()],
        )
    }

    #[test]
    fn frames_round_trip() {
        let f = frame();
        let parts = parts_of(&f);
        assert_eq!(parts[0].len(), 16 + f.header.len());
        let n = parts.len();
        match decode(parts, n).unwrap() {
            Parsed::Frame(g) => assert_eq!(g, f),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(vec![Bytes::new()], 1).unwrap(),
            Parsed::Heartbeat
        ));
    }

    #[test]
    fn malformed_messages_are_classified_with_their_id() {
        let f = frame();
        // A missing tensor part.
        let mut p = parts_of(&f);
        p.pop();
        let e = decode(p, 2).unwrap_err();
        assert_eq!(e.id, 77);
        assert!(e.message.contains("missing tensor parts"), "{}", e.message);
        // An extra part.
        let mut p = parts_of(&f);
        p.push(Bytes::from_static(b"x"));
        let e = decode(p, 4).unwrap_err();
        assert!(e.message.contains("extra parts"), "{}", e.message);
        // A header length that disagrees with the head.
        let mut p = parts_of(&f);
        let mut head = p[0].to_vec();
        head.push(0);
        p[0] = Bytes::from(head);
        let e = decode(p, 3).unwrap_err();
        assert!(e.message.contains("header has"), "{}", e.message);
        // A short head, an unknown kind.
        assert_eq!(
            decode(vec![Bytes::from_static(b"abc")], 1).unwrap_err().id,
            0
        );
        let mut p = parts_of(&f);
        let mut head = p[0].to_vec();
        head[0] = 0x7f;
        p[0] = Bytes::from(head);
        let e = decode(p, 3).unwrap_err();
        assert_eq!(e.id, 77);
        assert!(e.message.contains("unknown frame kind"), "{}", e.message);
        // Too many parts (the receiver dropped the rest).
        let e = decode(parts_of(&f), MAX_PARTS + 5).unwrap_err();
        assert!(e.message.contains("extra parts"), "{}", e.message);
    }

    #[tokio::test]
    async fn limits_and_budget_are_checked() {
        let f = frame();
        let small = Limits {
            max_payload: 3,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            admit(&f, &small, None).await,
            Err(FrameError::TooLarge {
                id: 77,
                skip: 0,
                ..
            })
        ));
        assert!(matches!(
            admit(&f, &Limits::HANDSHAKE, None).await,
            Err(FrameError::TooLarge { .. })
        ));
        let budget = MemoryBudget::new(1024);
        assert!(
            admit(&f, &Limits::DEFAULT, Some(&budget))
                .await
                .unwrap()
                .is_some()
        );
        let big = Frame::new(
            FrameKind::Request,
            5,
            Bytes::new(),
            vec![Bytes::from(vec![0u8; 4096])],
        );
        assert!(matches!(
            admit(&big, &Limits::DEFAULT, Some(&budget)).await,
            Err(FrameError::TooLarge { id: 5, .. })
        ));
    }
}
