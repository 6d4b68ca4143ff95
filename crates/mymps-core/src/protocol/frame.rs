//! Frames: the binary envelope of every message, without I/O.
//!
//! ```text
//! offset  size        field
//! 0       1           kind          (FrameKind)
//! 1       1           flags         (bit 0: MORE, more frames follow for this id; other bits must be 0)
//! 2       2  u16 LE   n_tensors
//! 4       4  u32 LE   header_len
//! 8       8  u64 LE   id            (request id; a response carries its request's id)
//! 16      8×n u64 LE  byte length of each tensor
//! ..      header_len  header        (msgpack, see `message`)
//! ..      Σ lengths   tensor bytes, one after another, never re-encoded
//! ```
//!
//! Every size is known from the first `16 + 8n` bytes, so a reader checks
//! them against its [`Limits`] before it allocates anything, then reads each
//! tensor straight into a buffer of its own.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, ErrorCode};

/// Bytes of the fixed frame prefix.
pub const PREFIX_LEN: usize = 16;

/// Flag bit: more frames follow for this id (a streamed reply: every frame
/// of it but the last).
pub const FLAG_MORE: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_MORE;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → server, first frame of a connection: [`super::Hello`].
    Hello = 1,
    /// Server → client, answer to `Hello`: [`super::Welcome`].
    Welcome = 2,
    /// Client → server: a [`super::Request`].
    Request = 3,
    /// Server → client: a [`super::Response`] to the request with the same id.
    Response = 4,
    /// Client → server: cancel the request with this id (header: an empty
    /// map). A queued request is answered `Cancelled` instead of run; a
    /// running `generate` stops after its current step and answers its
    /// summary; other running work ends normally. Never answered itself;
    /// an id not in flight is ignored.
    Cancel = 5,
}

impl FrameKind {
    /// The kind for a wire byte.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Request,
            4 => FrameKind::Response,
            5 => FrameKind::Cancel,
            _ => return None,
        })
    }
}

/// Size caps a reader enforces before allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header, bytes.
    pub max_header_len: u32,
    /// Most tensors in one frame.
    pub max_tensors: u16,
    /// Largest total of tensor bytes in one frame.
    pub max_payload: u64,
    /// Longest a peer may pause in the middle of a frame (between its first
    /// byte and its last) before the reader gives up on the connection.
    /// Enforced by the I/O drivers (this module does no I/O), so that a peer
    /// that declares a large frame and stalls cannot hold the memory budget
    /// it was granted. Idle time between frames is not limited by this.
    pub stall_timeout: std::time::Duration,
}

impl Limits {
    /// Before the handshake completes: a small header and no tensors.
    pub const HANDSHAKE: Limits = Limits {
        max_header_len: 64 * 1024,
        max_tensors: 0,
        max_payload: 0,
        stall_timeout: std::time::Duration::from_secs(10),
    };

    /// A generous default: 16 MiB header, 1024 tensors, 4 GiB of tensor
    /// data, 30 s stall timeout.
    pub const DEFAULT: Limits = Limits {
        max_header_len: 16 * 1024 * 1024,
        max_tensors: 1024,
        max_payload: 4 * 1024 * 1024 * 1024,
        stall_timeout: std::time::Duration::from_secs(30),
    };

    /// The most bytes a reader skips to keep a connection whose frame it
    /// refused: twice the payload cap and one header. A frame declaring
    /// more (a length of 2^64 - 1, a 4 GiB header) is answered and the
    /// connection closed, instead of waiting for bytes that never come.
    pub fn max_skip(&self) -> u64 {
        self.max_payload
            .saturating_mul(2)
            .saturating_add(self.max_header_len as u64)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// The decoded fixed prefix of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Frame kind.
    pub kind: FrameKind,
    /// Flag bits.
    pub flags: u8,
    /// Number of tensors.
    pub n_tensors: u16,
    /// Header length, bytes.
    pub header_len: u32,
    /// Request id.
    pub id: u64,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes are not a frame (unknown kind or flags): the stream cannot
    /// be resynchronised and must be closed.
    Malformed(String),
    /// A well-formed frame exceeds the limits. Its size is known, so the
    /// reader can skip it and answer `id` with an error.
    TooLarge {
        /// The frame's id.
        id: u64,
        /// The frame's kind.
        kind: FrameKind,
        /// What exceeded which limit.
        message: String,
        /// Bytes after the prefix and length table to skip.
        skip: u64,
    },
    /// A frame declares more than a reader will skip ([`Limits::max_skip`]):
    /// the reader answers `id` with an error and closes the connection,
    /// rather than wait for bytes that will likely never come.
    Unskippable {
        /// The frame's id.
        id: u64,
        /// What exceeded which limit.
        message: String,
    },
}

impl FrameError {
    /// The error to report to the peer.
    pub fn to_error(&self) -> Error {
        match self {
            FrameError::Malformed(m) => Error::new(ErrorCode::Protocol, m.clone()),
            FrameError::TooLarge { message, .. } | FrameError::Unskippable { message, .. } => {
                Error::new(ErrorCode::PayloadTooLarge, message.clone())
            }
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_error().fmt(f)
    }
}

impl std::error::Error for FrameError {}

impl Prefix {
    /// Decodes the 16-byte prefix.
    pub fn decode(b: &[u8; PREFIX_LEN]) -> Result<Prefix, FrameError> {
        let kind = FrameKind::from_u8(b[0])
            .ok_or_else(|| FrameError::Malformed(format!("unknown frame kind {:#04x}", b[0])))?;
        let flags = b[1];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::Malformed(format!(
                "unknown frame flags {flags:#04x}"
            )));
        }
        Ok(Prefix {
            kind,
            flags,
            n_tensors: u16::from_le_bytes([b[2], b[3]]),
            header_len: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            id: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        })
    }

    /// Encodes the 16-byte prefix.
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut b = [0u8; PREFIX_LEN];
        b[0] = self.kind as u8;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.n_tensors.to_le_bytes());
        b[4..8].copy_from_slice(&self.header_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b
    }

    /// Bytes of the tensor length table that follows the prefix.
    pub fn table_len(&self) -> usize {
        8 * self.n_tensors as usize
    }
}

/// Parses the tensor length table (at most 8 × 65535 bytes, so always read)
/// and checks the tensor count, header and payload sizes against `limits`
/// ([`check_lengths`]).
pub fn parse_lengths(
    prefix: &Prefix,
    table: &[u8],
    limits: &Limits,
) -> Result<Vec<u64>, FrameError> {
    debug_assert_eq!(table.len(), prefix.table_len());
    let (lens, total) = read_table(table);
    check_lengths(prefix, total, limits)?;
    Ok(lens)
}

/// The lengths of a length table, and their sum (`None`: over 2^64).
fn read_table(table: &[u8]) -> (Vec<u64>, Option<u64>) {
    let lens: Vec<u64> = table
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let total = lens.iter().try_fold(0u64, |acc, &l| acc.checked_add(l));
    (lens, total)
}

/// Checks a frame's sizes against `limits`: its tensor count and header
/// length (from `prefix`) and `payload`, the sum of its tensor lengths
/// (`None`: more than 2^64). A refusal is [`FrameError::TooLarge`], whose
/// `skip` is the header and the payload.
///
/// Byte streams check a whole length table at once ([`parse_lengths`]); a
/// message transport that learns each length just before its bytes
/// (ZeroMQ: one part per tensor) checks the lengths declared so far, again
/// as each one arrives, with [`check_sizes`].
pub fn check_lengths(
    prefix: &Prefix,
    payload: Option<u64>,
    limits: &Limits,
) -> Result<(), FrameError> {
    let skip = payload.and_then(|t| t.checked_add(prefix.header_len as u64));
    let too_large = |message: String| FrameError::TooLarge {
        id: prefix.id,
        kind: prefix.kind,
        message,
        skip: skip.unwrap_or(u64::MAX),
    };
    if prefix.n_tensors > limits.max_tensors {
        return Err(too_large(format!(
            "frame carries {} tensors; the limit is {}",
            prefix.n_tensors, limits.max_tensors
        )));
    }
    if prefix.header_len > limits.max_header_len {
        return Err(too_large(format!(
            "header of {} bytes exceeds the limit of {} bytes",
            prefix.header_len, limits.max_header_len
        )));
    }
    match payload {
        Some(t) if t <= limits.max_payload => Ok(()),
        _ => Err(too_large(format!(
            "tensor payload of {} bytes exceeds the limit of {} bytes",
            payload.map_or_else(|| "more than 2^64".to_owned(), |t| t.to_string()),
            limits.max_payload
        ))),
    }
}

/// [`decode_head`]'s decision on a frame's sizes ([`check_lengths`]):
/// `Ok` within the limits, else [`Head::Skip`] or [`Head::Close`] by the
/// same rules. For message transports that learn the tensor lengths one at
/// a time: they ask with the lengths declared so far (`payload`), again as
/// each one arrives, and skip or close before reading its bytes.
pub fn check_sizes(prefix: &Prefix, payload: Option<u64>, limits: &Limits) -> Result<(), Head> {
    match check_lengths(prefix, payload, limits) {
        Ok(()) => Ok(()),
        Err(e @ FrameError::TooLarge { .. }) => {
            let FrameError::TooLarge { skip, .. } = e else {
                unreachable!()
            };
            Err(skip_or_close(prefix, e, skip, limits))
        }
        Err(e) => Err(Head::Close(e)),
    }
}

/// What a reader does with a frame whose head (prefix and length table)
/// it has decoded: the decision of [`decode_head`], without I/O, so every
/// reader (byte streams, QUIC streams, ZeroMQ messages) refuses, skips and
/// closes by the same rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Within the limits: take `payload` bytes from the memory budget
    /// ([`admit_payload`] says what to do if it can never fit), then read
    /// the header and the tensors.
    Read {
        /// The frame's prefix.
        prefix: Prefix,
        /// Each tensor's length.
        lens: Vec<u64>,
        /// Their sum.
        payload: u64,
    },
    /// Refused, but the connection survives: answer `error` (to the
    /// frame's id), then skip `skip` bytes (the header and the tensors).
    Skip {
        /// What to answer.
        error: FrameError,
        /// Bytes to skip after the head.
        skip: u64,
    },
    /// Refused, and the connection is closed after the answer: the bytes
    /// are not a frame ([`FrameError::Malformed`]), or a frame declares
    /// more than a reader skips ([`FrameError::Unskippable`]).
    Close(FrameError),
}

/// Decodes and checks the head of the frame at the front of `buf`.
/// `Err(n)`: at least `n` bytes must be buffered first. `Ok((head, used))`:
/// what to do, and how many bytes the prefix and length table took.
///
/// A frame over the limits is skipped (its answer goes out first) unless it
/// declares more than [`Limits::max_skip`] or a header over twice the cap
/// (headers are small; a peer over that is broken or hostile): then the
/// connection is closed instead of waiting for bytes that may never come.
pub fn decode_head(buf: &[u8], limits: &Limits) -> Result<(Head, usize), usize> {
    if buf.len() < PREFIX_LEN {
        return Err(PREFIX_LEN);
    }
    let prefix = match Prefix::decode(buf[..PREFIX_LEN].try_into().expect("16 bytes")) {
        Ok(p) => p,
        Err(e) => return Ok((Head::Close(e), 0)),
    };
    let table_end = PREFIX_LEN + prefix.table_len();
    if buf.len() < table_end {
        return Err(table_end);
    }
    let (lens, total) = read_table(&buf[PREFIX_LEN..table_end]);
    let head = match check_sizes(&prefix, total, limits) {
        Ok(()) => Head::Read {
            payload: total.expect("within the payload limit"),
            prefix,
            lens,
        },
        Err(refused) => refused,
    };
    Ok((head, table_end))
}

/// The decision for a frame whose payload the memory budget refuses
/// (`max_request`: the most it can ever admit): skip it, answering
/// `PayloadTooLarge`, or close (see [`decode_head`]).
pub fn admit_payload(prefix: &Prefix, payload: u64, max_request: u64, limits: &Limits) -> Head {
    let e = FrameError::TooLarge {
        id: prefix.id,
        kind: prefix.kind,
        message: format!(
            "tensor payload of {payload} bytes exceeds the server's memory budget of {max_request} bytes"
        ),
        skip: 0,
    };
    skip_or_close(prefix, e, prefix.header_len as u64 + payload, limits)
}

fn skip_or_close(prefix: &Prefix, e: FrameError, skip: u64, limits: &Limits) -> Head {
    let huge_header = prefix.header_len as u64 > 2 * limits.max_header_len as u64;
    match e {
        FrameError::TooLarge { id, message, .. } if skip > limits.max_skip() || huge_header => {
            Head::Close(FrameError::Unskippable {
                id,
                message: format!(
                    "{message}; a frame that large is not skipped: closing the connection"
                ),
            })
        }
        error => Head::Skip { error, skip },
    }
}

/// One frame: kind, id, header bytes and tensor buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind.
    pub kind: FrameKind,
    /// Flag bits.
    pub flags: u8,
    /// Request id.
    pub id: u64,
    /// The msgpack header.
    pub header: Bytes,
    /// Tensor bytes, in the order the header lists them.
    pub tensors: Vec<Bytes>,
}

impl Frame {
    /// A frame without flags.
    pub fn new(kind: FrameKind, id: u64, header: Bytes, tensors: Vec<Bytes>) -> Frame {
        Frame {
            kind,
            flags: 0,
            id,
            header,
            tensors,
        }
    }

    /// This frame with [`FLAG_MORE`] set: more frames follow for its id.
    pub fn with_more(mut self) -> Frame {
        self.flags |= FLAG_MORE;
        self
    }

    /// Whether more frames follow for this id ([`FLAG_MORE`]).
    pub fn more(&self) -> bool {
        self.flags & FLAG_MORE != 0
    }

    /// The prefix, length table and header as one buffer; the tensors follow
    /// it on the wire, each from its own buffer.
    ///
    /// Panics if the frame has more than `u16::MAX` tensors or a header over
    /// 4 GiB; [`super::encode`] never builds such frames.
    pub fn encode_head(&self) -> Bytes {
        let prefix = Prefix {
            kind: self.kind,
            flags: self.flags,
            n_tensors: u16::try_from(self.tensors.len()).expect("at most 65535 tensors"),
            header_len: u32::try_from(self.header.len()).expect("header under 4 GiB"),
            id: self.id,
        };
        let mut b = BytesMut::with_capacity(PREFIX_LEN + prefix.table_len() + self.header.len());
        b.put_slice(&prefix.encode());
        for t in &self.tensors {
            b.put_u64_le(t.len() as u64);
        }
        b.put_slice(&self.header);
        b.freeze()
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> u64 {
        (PREFIX_LEN + 8 * self.tensors.len() + self.header.len()) as u64
            + self.tensors.iter().map(|t| t.len() as u64).sum::<u64>()
    }

    /// The whole frame as one contiguous buffer (tests, golden files,
    /// message-based transports).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len() as usize);
        v.extend_from_slice(&self.encode_head());
        for t in &self.tensors {
            v.extend_from_slice(t);
        }
        v
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes
    /// are needed, else the frame and the number of bytes it used.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let prefix = Prefix::decode(buf[..PREFIX_LEN].try_into().expect("16 bytes"))?;
        let table_end = PREFIX_LEN + prefix.table_len();
        if buf.len() < table_end {
            return Ok(None);
        }
        let lens = parse_lengths(&prefix, &buf[PREFIX_LEN..table_end], limits)?;
        let header_end = table_end + prefix.header_len as usize;
        let total = header_end as u64 + lens.iter().sum::<u64>();
        if (buf.len() as u64) < total {
            return Ok(None);
        }
        let header = Bytes::copy_from_slice(&buf[table_end..header_end]);
        let mut at = header_end;
        let tensors = lens
            .iter()
            .map(|&l| {
                let t = Bytes::copy_from_slice(&buf[at..at + l as usize]);
                at += l as usize;
                t
            })
            .collect();
        Ok(Some((
            Frame {
                kind: prefix.kind,
                flags: prefix.flags,
                id: prefix.id,
                header,
                tensors,
            },
            at,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_input() {
        let f = Frame::new(
            FrameKind::Request,
            42,
            Bytes::from_static(b"hdr"),
            vec![
                Bytes::from_static(b"abcd"),
                Bytes::new(),
                Bytes::from_static(b"xy"),
            ],
        );
        let wire = f.to_vec();
        assert_eq!(wire.len() as u64, f.wire_len());
        for cut in 0..wire.len() {
            assert_eq!(Frame::decode(&wire[..cut], &Limits::DEFAULT).unwrap(), None);
        }
        let (g, used) = Frame::decode(&wire, &Limits::DEFAULT).unwrap().unwrap();
        assert_eq!((g, used), (f, wire.len()));
    }

    #[test]
    fn heads_are_read_skipped_or_closed() {
        let limits = Limits {
            max_payload: 1000,
            max_header_len: 100,
            ..Limits::DEFAULT
        };
        let head = |n_tensors: u16, header_len: u32, lens: &[u64]| {
            let mut v = Prefix {
                kind: FrameKind::Request,
                flags: 0,
                n_tensors,
                header_len,
                id: 5,
            }
            .encode()
            .to_vec();
            for l in lens {
                v.extend_from_slice(&l.to_le_bytes());
            }
            v
        };
        // Not enough bytes yet: how many are needed.
        assert_eq!(decode_head(&[1, 0], &limits), Err(PREFIX_LEN));
        assert_eq!(decode_head(&head(2, 10, &[])[..], &limits), Err(32));
        // Within the limits.
        let (h, used) = decode_head(&head(2, 10, &[3, 4]), &limits).unwrap();
        assert_eq!(used, 32);
        assert!(matches!(h, Head::Read { payload: 7, ref lens, .. } if lens == &[3, 4]));
        // A little over: skipped (header and tensors).
        let (h, _) = decode_head(&head(1, 10, &[1500]), &limits).unwrap();
        assert!(matches!(h, Head::Skip { skip: 1510, .. }), "{h:?}");
        // Far over, or a header far over its cap, or 2^64 - 1: closed.
        for (n, hl, lens) in [
            (1, 10, vec![5000u64]),
            (0, 201, vec![]),
            (1, 0, vec![u64::MAX]),
        ] {
            let (h, _) = decode_head(&head(n, hl, &lens), &limits).unwrap();
            assert!(
                matches!(h, Head::Close(FrameError::Unskippable { id: 5, .. })),
                "{h:?}"
            );
        }
        // Garbage.
        let mut g = head(0, 0, &[]);
        g[0] = 0xEE;
        assert!(matches!(
            decode_head(&g, &limits),
            Ok((Head::Close(FrameError::Malformed(_)), 0))
        ));
        // The budget's refusal follows the same rule.
        let p = Prefix::decode(head(1, 10, &[])[..16].try_into().unwrap()).unwrap();
        assert!(matches!(
            admit_payload(&p, 900, 500, &limits),
            Head::Skip { skip: 910, .. }
        ));
    }

    #[test]
    fn lengths_learnt_one_at_a_time_meet_the_same_decision() {
        let limits = Limits {
            max_payload: 1000,
            max_header_len: 100,
            max_tensors: 3,
            ..Limits::DEFAULT
        };
        let prefix = |n_tensors: u16, header_len: u32| Prefix {
            kind: FrameKind::Request,
            flags: 0,
            n_tensors,
            header_len,
            id: 9,
        };
        let whole = |p: &Prefix, lens: &[u64]| {
            let mut v = p.encode().to_vec();
            for l in lens {
                v.extend_from_slice(&l.to_le_bytes());
            }
            decode_head(&v, &limits).unwrap().0
        };
        for (p, lens) in [
            (prefix(3, 10), vec![400u64, 500, 90]),
            (prefix(2, 10), vec![600, 500]),
            (prefix(2, 10), vec![600, 5000]),
            (prefix(2, 10), vec![u64::MAX, 1]),
            (prefix(4, 10), vec![1, 1, 1, 1]),
            (prefix(1, 150), vec![1]),
            (prefix(1, 250), vec![1]),
        ] {
            // Before any length: the count and the header.
            let mut verdict = check_sizes(&p, Some(0), &limits);
            let mut seen = Some(0u64);
            for &l in &lens {
                if verdict.is_err() {
                    break;
                }
                seen = seen.and_then(|s| s.checked_add(l));
                verdict = check_sizes(&p, seen, &limits);
            }
            // The same verdict; the incremental one may come before the
            // last length (with the sizes declared so far in its message).
            let kind = |h: &Head| match h {
                Head::Read { .. } => "read",
                Head::Skip { .. } => "skip",
                Head::Close(FrameError::Unskippable { id: 9, .. }) => "close",
                Head::Close(_) => "other",
            };
            let w = whole(&p, &lens);
            let v = verdict.err().unwrap_or(Head::Read {
                prefix: p,
                lens: vec![],
                payload: 0,
            });
            assert_eq!(kind(&w), kind(&v), "{p:?} {lens:?}: {w:?} vs {v:?}");
        }
    }

    #[test]
    fn garbage_and_oversize_are_classified() {
        let mut wire = Frame::new(FrameKind::Request, 7, Bytes::new(), vec![]).to_vec();
        wire[0] = 0xEE;
        assert!(matches!(
            Frame::decode(&wire, &Limits::DEFAULT),
            Err(FrameError::Malformed(_))
        ));
        wire[0] = FrameKind::Request as u8;
        wire[1] = 0x80;
        assert!(matches!(
            Frame::decode(&wire, &Limits::DEFAULT),
            Err(FrameError::Malformed(_))
        ));

        let big = Frame::new(
            FrameKind::Request,
            9,
            Bytes::new(),
            vec![Bytes::from(vec![0u8; 100])],
        );
        let limits = Limits {
            max_payload: 99,
            ..Limits::DEFAULT
        };
        match Frame::decode(&big.to_vec(), &limits) {
            Err(FrameError::TooLarge {
                id: 9, skip: 100, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Before the handshake, no tensors at all.
        assert!(matches!(
            Frame::decode(&big.to_vec(), &Limits::HANDSHAKE),
            Err(FrameError::TooLarge { id: 9, .. })
        ));
        // A length table whose sum overflows.
        let mut wire = Frame::new(
            FrameKind::Request,
            3,
            Bytes::new(),
            vec![Bytes::new(), Bytes::new()],
        )
        .to_vec();
        wire[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        wire[24..32].copy_from_slice(&2u64.to_le_bytes());
        assert!(matches!(
            Frame::decode(&wire, &Limits::DEFAULT),
            Err(FrameError::TooLarge { id: 3, .. })
        ));
    }
}
