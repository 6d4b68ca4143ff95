//! The entry points of the protocol's fuzz targets (`fuzz/fuzz_targets/`,
//! see `docs/fuzzing.md`), and of the test that replays their committed
//! corpus (`fuzz/corpus/frame`, `fuzz/corpus/header`) on every
//! `cargo test`. Not part of the API.
//!
//! Each takes any bytes. Bad bytes must give errors; these functions panic
//! only when a decoder breaks a promise: a panic of its own, two decoders
//! that disagree, or a message that does not survive its re-encoding.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, ReadBuf};

use super::rpc::{self, Rpc};
use super::{
    Frame, FrameError, FrameKind, Head, Hello, Limits, PREFIX_LEN, Request, Response, TensorMeta,
    Welcome, admit_payload, decode_head, negotiate, tensors_from_wire,
};
use crate::stream::StreamReader;
use crate::transport::{FrameReader, MemoryBudget, ReadError, check_frame};

/// Limits small enough for a fuzzer's inputs to cross every one of them.
const SMALL: Limits = Limits {
    max_header_len: 256,
    max_tensors: 4,
    max_payload: 4096,
    stall_timeout: Duration::from_secs(10),
};

/// How many bytes the stream reader's source hands out per read.
const CHUNKS: [usize; 8] = [1, 3, 16, 61, 509, 4096, usize::MAX, usize::MAX];

/// What a reader makes of a stream, frame after frame.
#[derive(Debug, PartialEq)]
enum Event {
    /// A frame, read whole.
    Frame(Frame),
    /// A frame refused and skipped: the connection goes on.
    Skipped(FrameError),
    /// A frame refused, and the connection closed.
    Closed(FrameError),
    /// The stream ended between frames.
    End,
    /// The stream ended inside a frame (or inside a refused frame's bytes).
    Truncated,
}

/// The frame decoder: `data[0]` picks the limits, the memory budget and
/// how the stream arrives; the rest is the stream. The sans-IO decision
/// ([`decode_head`], [`admit_payload`]) is followed frame by frame, each
/// head checked against the limits and each frame against
/// [`Frame::decode`] and [`check_frame`]; the stream reader
/// ([`StreamReader`], what the server and client read with) must see the
/// same frames, refusals and end.
pub fn frame(data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    // The server's limits, the handshake's, and small ones. The stream
    // reader reserves a declared header's length as it waits for its
    // bytes (up to 16 MiB with the default limits, which is slow to fuzz):
    // it reads with the default limits' header cap cut to 64 KiB, the
    // sans-IO decoder with both.
    let default = sel % 3 == 2;
    let limits = match sel % 3 {
        0 => Limits::HANDSHAKE,
        1 => SMALL,
        _ => Limits {
            max_header_len: 64 << 10,
            ..Limits::DEFAULT
        },
    };
    // The server always reads with a budget; the default limits without
    // one would allocate a declared 4 GiB tensor as it waits for its bytes,
    // by design.
    let budget = match (sel / 3) % 3 {
        0 if !default => None,
        1 => Some(64 << 10),
        _ => Some(8 << 20),
    };
    let chunk = CHUNKS[(sel / 9) as usize % CHUNKS.len()];
    let max_request = budget.map(|b| MemoryBudget::new(b).max_request());
    if default {
        sans_io(bytes, &Limits::DEFAULT, max_request);
    }
    let model = sans_io(bytes, &limits, max_request);
    // The source never stalls: no timer needs to run.
    let stream = read_stream(
        bytes,
        &Limits {
            stall_timeout: Duration::MAX,
            ..limits
        },
        budget,
        chunk,
    );
    assert_eq!(model, stream, "the stream reader and decode_head disagree");
}

/// The frames of `bytes` by the sans-IO functions alone.
fn sans_io(bytes: &[u8], limits: &Limits, max_request: Option<u64>) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            events.push(Event::End);
            return events;
        }
        let (head, used) = match decode_head(rest, limits) {
            Ok(decoded) => decoded,
            Err(need) => {
                assert!(
                    need > rest.len() && need <= PREFIX_LEN + 8 * u16::MAX as usize,
                    "decode_head asks for {need} bytes with {} buffered",
                    rest.len()
                );
                assert!(
                    matches!(Frame::decode(rest, limits), Ok(None)),
                    "Frame::decode decodes what decode_head waits for"
                );
                events.push(Event::Truncated);
                return events;
            }
        };
        let head = match head {
            Head::Read {
                prefix,
                lens,
                payload,
            } => {
                assert_eq!(used, PREFIX_LEN + prefix.table_len());
                assert_eq!(lens.len(), prefix.n_tensors as usize);
                assert_eq!(payload, lens.iter().sum::<u64>());
                assert!(prefix.n_tensors <= limits.max_tensors);
                assert!(prefix.header_len <= limits.max_header_len);
                assert!(payload <= limits.max_payload);
                match max_request {
                    Some(max) if payload > max => admit_payload(&prefix, payload, max, limits),
                    _ => Head::Read {
                        prefix,
                        lens,
                        payload,
                    },
                }
            }
            refused => {
                if let Head::Skip { skip, .. } = refused {
                    assert!(skip <= limits.max_skip(), "skips more than max_skip");
                }
                // Frame::decode refuses by the same limits (it has no budget).
                assert!(
                    matches!(
                        (&refused, Frame::decode(rest, limits)),
                        (Head::Close(FrameError::Malformed(a)), Err(FrameError::Malformed(b))) if *a == b
                    ) || matches!(
                        (&refused, Frame::decode(rest, limits)),
                        (
                            Head::Skip { .. } | Head::Close(FrameError::Unskippable { .. }),
                            Err(FrameError::TooLarge { .. })
                        )
                    ),
                    "Frame::decode and decode_head refuse differently: {refused:?}"
                );
                refused
            }
        };
        match head {
            Head::Read {
                prefix, payload, ..
            } => {
                let whole = used as u64 + prefix.header_len as u64 + payload;
                let Some((frame, n)) = Frame::decode(rest, limits).expect("decode_head read it")
                else {
                    assert!(
                        (rest.len() as u64) < whole,
                        "Frame::decode waits for nothing"
                    );
                    events.push(Event::Truncated);
                    return events;
                };
                assert_eq!(n as u64, whole, "Frame::decode used another length");
                assert_eq!(
                    frame.to_vec(),
                    rest[..n],
                    "a frame re-encodes to other bytes"
                );
                assert_eq!(
                    check_frame(&frame, limits),
                    Ok(payload),
                    "check_frame disagrees"
                );
                events.push(Event::Frame(frame));
                rest = &rest[n..];
            }
            Head::Skip { error, skip } => {
                assert!(matches!(error, FrameError::TooLarge { .. }));
                events.push(Event::Skipped(error));
                match usize::try_from(used as u64 + skip) {
                    Ok(end) if end <= rest.len() => rest = &rest[end..],
                    _ => {
                        events.push(Event::Truncated);
                        return events;
                    }
                }
            }
            Head::Close(error) => {
                assert!(!matches!(error, FrameError::TooLarge { .. }));
                events.push(Event::Closed(error));
                return events;
            }
        }
    }
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// The frames of `bytes` as [`StreamReader`] reads them, `chunk` bytes at
/// a time, with a fresh budget of `budget` bytes.
fn read_stream(bytes: &[u8], limits: &Limits, budget: Option<u64>, chunk: usize) -> Vec<Event> {
    let budget = budget.map(MemoryBudget::new);
    let mut reader = StreamReader::new(Chunked {
        data: Bytes::copy_from_slice(bytes),
        chunk,
    });
    let run = async {
        let mut events = Vec::new();
        loop {
            let event = match reader.read_frame(limits, budget.as_ref()).await {
                Ok(Some(incoming)) => Event::Frame(incoming.frame),
                Ok(None) => Event::End,
                Err(ReadError::Frame(e @ FrameError::TooLarge { .. })) => Event::Skipped(e),
                Err(ReadError::Frame(e)) => Event::Closed(e),
                Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Event::Truncated
                }
                Err(e) => panic!("the stream reader fails with {e:?}"),
            };
            let last = !matches!(event, Event::Frame(_) | Event::Skipped(_));
            events.push(event);
            if last {
                return events;
            }
        }
    };
    RUNTIME.with_borrow_mut(|rt| {
        rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime")
        })
        .block_on(run)
    })
}

/// A byte source that never blocks and hands out at most `chunk` bytes a
/// read.
struct Chunked {
    data: Bytes,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let part = self.data.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

/// Headers: `data` as the msgpack header of each kind of frame (`Hello`,
/// `Welcome`, `Request`, `Response`). What decodes must encode, and decode
/// again to what encodes to the same bytes; the tensors a request or a
/// response describes are built from buffers of the lengths their
/// descriptions need (of other lengths when `data`'s length is odd), and
/// replies are read by their typed requests ([`Rpc::from_response`]).
pub fn header(data: &[u8]) {
    if let Some(hello) = round_trip::<Hello>(data) {
        let _ = negotiate(&hello);
    }
    let _ = round_trip::<Welcome>(data);
    let off_by_one = data.len() % 2 == 1;
    match round_trip::<Request>(data) {
        Some(Request::Exec(e)) => {
            let bufs = buffers(&e.inputs, off_by_one);
            tensors(e.inputs, bufs);
        }
        Some(Request::Infer(i)) => {
            let bufs = buffers(&i.inputs, off_by_one);
            tensors(i.inputs, bufs);
        }
        Some(r) => {
            let _ = r.kind_name();
        }
        None => {}
    }
    if let Some(response) = round_trip::<Response>(data) {
        let bufs = match &response {
            Response::Exec(r) => buffers(&r.outputs, off_by_one),
            _ => Vec::new(),
        };
        if let Ok(outputs) = rpc::Call::from_response(response.clone(), bufs.clone()) {
            outputs.tensors.iter().for_each(|(_, t)| check_tensor(t));
        }
        let _ = rpc::Infer::from_response(response.clone(), bufs);
        let _ = rpc::Health::from_response(response, Vec::new());
    }
}

/// [`tensors_from_wire`], and what it builds checked.
fn tensors(metas: Vec<TensorMeta>, bufs: Vec<Bytes>) {
    if let Ok(ts) = tensors_from_wire(metas, bufs) {
        ts.iter().for_each(|(_, t)| check_tensor(t));
    }
}

/// A tensor keeps its promises: a C-order one holds exactly numel ×
/// itemsize bytes, a strided one reaches no byte past its data.
fn check_tensor(t: &crate::Tensor) {
    let item = t.dtype().itemsize();
    if t.is_contiguous() {
        assert_eq!(
            Some(t.data().len()),
            t.dense_len(),
            "a C-order tensor's bytes"
        );
    } else if t.numel() > 0 {
        let last: usize = t
            .shape()
            .iter()
            .zip(t.strides_or_contiguous())
            .map(|(&d, s)| (d - 1) * s)
            .sum();
        assert!(
            (last + 1) * item <= t.data().len(),
            "a strided tensor's bytes"
        );
    }
}

/// `data` decoded as a `T` header, if it is one; then checks that it
/// re-encodes into bytes that decode and encode to the same bytes again.
fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let frame = Frame::new(
        FrameKind::Request,
        0,
        Bytes::copy_from_slice(data),
        Vec::new(),
    );
    let value: T = super::decode_header(&frame).ok()?;
    let once = rmp_serde::to_vec_named(&value).expect("a decoded header encodes");
    let again: T = rmp_serde::from_slice(&once)
        .unwrap_or_else(|e| panic!("{value:?} encodes to a header that does not decode: {e}"));
    let twice = rmp_serde::to_vec_named(&again).expect("a decoded header encodes");
    assert_eq!(once, twice, "{value:?} does not survive its re-encoding");
    Some(value)
}

/// One zeroed buffer per tensor description, of the length it needs (as
/// far as 64 KiB; 0 beyond), one byte longer when `off_by_one`.
fn buffers(metas: &[TensorMeta], off_by_one: bool) -> Vec<Bytes> {
    metas
        .iter()
        .map(|m| {
            let item = m.dtype.parse::<crate::DType>().map_or(1, |d| d.itemsize()) as u64;
            let extent = match &m.strides {
                None => m.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)),
                Some(_) if m.shape.contains(&0) => Some(0),
                Some(st) => m
                    .shape
                    .iter()
                    .zip(st)
                    .try_fold(1u64, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?)),
            };
            let len = extent
                .and_then(|e| e.checked_mul(item))
                .filter(|&l| l <= 64 << 10)
                .unwrap_or(0);
            Bytes::from(vec![0u8; len as usize + off_by_one as usize])
        })
        .collect()
}

/// Runs every file of the corpus directory `dir` (a fuzz target's,
/// `fuzz/corpus/<target>`) through `f`, and panics listing the files
/// whose run panicked, or if there are none: the regression test of a fuzz
/// target, for the crates' own `cargo test`.
pub fn replay(dir: &std::path::Path, f: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            std::panic::catch_unwind(|| f(&data)).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs panic: {failed:?}",
        failed.len(),
        files.len()
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn corpus(target: &str) -> PathBuf {
        [env!("CARGO_MANIFEST_DIR"), "../../fuzz/corpus", target]
            .iter()
            .collect()
    }

    /// The corpus tests fail on an input that panics, and on a corpus
    /// that is missing or empty.
    #[test]
    fn replay_fails_on_a_panic_and_on_a_missing_or_empty_corpus() {
        let dir = std::env::temp_dir().join(format!("mymps-replay-{}", std::process::id()));
        let fails = |f: fn(&[u8])| {
            let dir = dir.clone();
            std::panic::catch_unwind(move || super::replay(&dir, f)).is_err()
        };
        assert!(fails(|_| {}), "a missing corpus passes");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(fails(|_| {}), "an empty corpus passes");
        std::fs::write(dir.join("a"), b"ok").unwrap();
        std::fs::write(dir.join("b"), b"boom").unwrap();
        assert!(!fails(|_| {}), "a corpus of good inputs fails");
        assert!(
            fails(|d| assert_ne!(d, b"boom")),
            "an input that panics passes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_frame_corpus_decodes_alike_in_both_decoders() {
        super::replay(&corpus("frame"), super::frame);
    }

    #[test]
    fn the_header_corpus_decodes_or_errs_and_re_encodes() {
        super::replay(&corpus("header"), super::header);
    }

    /// The fuzzer runs on the main thread (8 MiB of stack); the server
    /// and the clients decode headers on tokio's workers (2 MiB). A
    /// header nested deeper than rmp-serde's limit (1024 levels), in a
    /// field that is skipped and in one that is read, must be refused
    /// within a worker's stack, in a debug build too.
    #[test]
    fn headers_nested_past_rmp_serde_s_limit_fit_a_worker_s_stack() {
        let s = |v: &mut Vec<u8>, x: &str| {
            v.push(0xa0 | x.len() as u8);
            v.extend_from_slice(x.as_bytes());
        };
        let mut skipped = vec![0x82];
        s(&mut skipped, "type");
        s(&mut skipped, "exec");
        s(&mut skipped, "junk");
        skipped.extend(std::iter::repeat_n(0x91, 4000));
        skipped.push(0xc0);
        let mut kwargs = vec![0x84];
        s(&mut kwargs, "type");
        s(&mut kwargs, "exec");
        s(&mut kwargs, "op");
        s(&mut kwargs, "neg");
        s(&mut kwargs, "inputs");
        kwargs.push(0x90);
        s(&mut kwargs, "kwargs");
        kwargs.push(0x81);
        s(&mut kwargs, "x");
        kwargs.extend(std::iter::repeat_n(0x91, 4000));
        kwargs.push(0xc0);
        for h in [skipped, kwargs] {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || super::header(&h))
                .unwrap()
                .join()
                .unwrap();
        }
    }
}
