//! Frame reading and writing over any byte stream (`AsyncRead` /
//! `AsyncWrite`): the shared half of every stream transport.
//!
//! Reads go through one buffer for prefixes, headers and small tensors; a
//! large tensor is read straight into a buffer of its own size, which then
//! becomes the tensor's storage without another copy (huge-page backed from
//! 2 MiB on, see [`crate::buffer`]). Writes are vectored:
//! the frame head and each tensor buffer go to the kernel as they are.

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::buffer::{Filler, HostAlloc, LARGE};
use crate::protocol::{Frame, Head, Limits, PREFIX_LEN, decode_head};
use crate::transport::{
    BoxFuture, FrameReader, FrameWriter, Incoming, MemoryBudget, ReadError, acquire_payload,
};

const READ_CHUNK: usize = 64 * 1024;
/// Tensors up to this size are sliced out of the read buffer; larger ones
/// get a buffer of their own.
const SMALL_TENSOR: usize = 16 * 1024;

/// A byte stream read through one buffer: the reading half of
/// [`StreamReader`], public for transports that frame their messages their
/// own way over a byte stream (ZeroMQ's ZMTP), so that they buffer, time
/// and allocate exactly as it does.
///
/// Reads of bytes that belong to something already begun (`mid`, or bytes
/// already buffered) must make progress within the stall timeout
/// ([`set_stall`](Self::set_stall)), or fail with
/// [`io::ErrorKind::TimedOut`]. Large tensors are read straight into
/// buffers of their own ([`read_tensor`](Self::read_tensor)).
pub struct Buffered<R> {
    inner: R,
    buf: BytesMut,
    host_alloc: Option<Arc<dyn HostAlloc>>,
    stall: Duration,
}

impl<R> std::fmt::Debug for Buffered<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffered")
            .field("buffered", &self.buf.len())
            .field("host_alloc", &self.host_alloc.is_some())
            .finish_non_exhaustive()
    }
}

/// `read`, failing with `TimedOut` if it takes longer than `stall`.
async fn within<T>(stall: Duration, read: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    if stall == Duration::MAX {
        return read.await;
    }
    match tokio::time::timeout(stall, read).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer sent nothing for {:.1} s in the middle of a frame",
                stall.as_secs_f64()
            ),
        )),
    }
}

impl<R: AsyncRead + Unpin> Buffered<R> {
    /// Wraps the receiving half of a stream; large tensors are read into
    /// memory from `alloc` (a backend's, e.g. pinned memory) when given.
    pub fn new(inner: R, host_alloc: Option<Arc<dyn HostAlloc>>) -> Buffered<R> {
        Buffered {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            host_alloc,
            stall: Limits::DEFAULT.stall_timeout,
        }
    }

    /// The stall timeout of the reads that follow.
    pub fn set_stall(&mut self, stall: Duration) {
        self.stall = stall;
    }

    /// The bytes buffered and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the first `n` buffered bytes (at most what is buffered).
    pub fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.buf.len());
        self.buf.split_to(n).freeze()
    }

    /// Drops the first `n` buffered bytes (at most what is buffered).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        let _ = self.buf.split_to(n);
    }

    /// The stream back (bytes already buffered are dropped).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads until the buffer holds `n` bytes. `Ok(false)` on end of stream
    /// with the buffer empty (a clean close between frames). Reads are
    /// timed once the frame has begun (`mid`, or bytes already buffered).
    pub async fn fill(&mut self, n: usize, mid: bool) -> io::Result<bool> {
        while self.buf.len() < n {
            self.buf.reserve((n - self.buf.len()).max(READ_CHUNK));
            let timed = mid || !self.buf.is_empty();
            let read = self.inner.read_buf(&mut self.buf);
            let got = if timed {
                within(self.stall, read).await?
            } else {
                read.await?
            };
            if got == 0 {
                if self.buf.is_empty() && !mid {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                ));
            }
        }
        Ok(true)
    }

    /// Skips `n` bytes (buffered first, then read and dropped), each read
    /// timed.
    pub async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let from_buf = n.min(self.buf.len() as u64) as usize;
        let _ = self.buf.split_to(from_buf);
        n -= from_buf as u64;
        if n == 0 {
            return Ok(());
        }
        let mut scratch = vec![0u8; READ_CHUNK];
        while n > 0 {
            let want = n.min(READ_CHUNK as u64) as usize;
            let got = within(self.stall, self.inner.read(&mut scratch[..want])).await?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads the next `len` bytes as a tensor: small ones sliced out of the
    /// buffer, large ones read straight into a buffer of their own
    /// ([`crate::buffer::LargeBuf`] from 2 MiB, or the host allocator's
    /// memory).
    pub async fn read_tensor(&mut self, len: usize) -> io::Result<Bytes> {
        if len <= SMALL_TENSOR || self.buf.len() >= len {
            self.fill(len, true).await?;
            return Ok(self.buf.split_to(len).freeze());
        }
        let eof = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a tensor",
            )
        };
        let stall = self.stall;
        if len >= LARGE {
            let mut t = Filler::new(len, self.host_alloc.as_deref())?;
            t.put_slice(&self.buf.split_to(self.buf.len()));
            while t.remaining_mut() > 0 {
                if within(stall, self.inner.read_buf(&mut t)).await? == 0 {
                    return Err(eof());
                }
            }
            return Ok(t.freeze().expect("filled to its length"));
        }
        let mut t = BytesMut::with_capacity(len);
        t.extend_from_slice(&self.buf.split_to(self.buf.len()));
        while t.len() < len {
            if within(stall, self.inner.read_buf(&mut t)).await? == 0 {
                return Err(eof());
            }
        }
        Ok(t.freeze())
    }
}

/// Reads frames from a byte stream.
///
/// Once a frame's first byte has arrived, every further read must make
/// progress within [`Limits::stall_timeout`], or the read fails with
/// [`io::ErrorKind::TimedOut`] (the connection is then lost, and the memory
/// budget its frame held is released). A refused frame is reported at once
/// and its bytes are skipped at the start of the next read, so the peer
/// gets its answer before the skipping starts.
pub struct StreamReader<R> {
    input: Buffered<R>,
    /// Bytes of a refused frame still to be skipped.
    skip: u64,
}

impl<R> std::fmt::Debug for StreamReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("input", &self.input)
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> StreamReader<R> {
    /// Wraps the receiving half of a stream.
    pub fn new(inner: R) -> StreamReader<R> {
        StreamReader::with_host_alloc(inner, None)
    }

    /// Wraps the receiving half of a stream; large tensors are read into
    /// memory from `alloc` (a backend's, e.g. pinned memory) when given.
    pub fn with_host_alloc(inner: R, alloc: Option<Arc<dyn HostAlloc>>) -> StreamReader<R> {
        StreamReader {
            input: Buffered::new(inner, alloc),
            skip: 0,
        }
    }

    /// The stream back (bytes already buffered are dropped).
    pub fn into_inner(self) -> R {
        self.input.into_inner()
    }

    /// Consumes the head of a refused frame, arranges for what follows it to
    /// be skipped where the frame is skipped, and gives the error to report.
    fn refuse(&mut self, table_end: usize, refused: Head) -> ReadError {
        self.input.consume(table_end);
        match refused {
            Head::Skip { error, skip } => {
                self.skip = skip;
                ReadError::Frame(error)
            }
            Head::Close(error) => ReadError::Frame(error),
            Head::Read { .. } => unreachable!("a refusal"),
        }
    }

    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        self.input.set_stall(limits.stall_timeout);
        if self.skip > 0 {
            let skip = std::mem::take(&mut self.skip);
            self.input.skip(skip).await?;
        }
        if !self.input.fill(PREFIX_LEN, false).await? {
            return Ok(None);
        }
        let (head, table_end) = loop {
            match decode_head(self.input.buffered(), limits) {
                Ok(decoded) => break decoded,
                Err(need) => {
                    self.input.fill(need, true).await?;
                }
            }
        };
        let (prefix, lens, payload) = match head {
            Head::Read {
                prefix,
                lens,
                payload,
            } => (prefix, lens, payload),
            refused => return Err(self.refuse(table_end, refused)),
        };
        let permit = match acquire_payload(&prefix, payload, limits, budget).await {
            Ok(p) => p,
            Err(refused) => return Err(self.refuse(table_end, refused)),
        };
        let header_end = table_end + prefix.header_len as usize;
        self.input.fill(header_end, true).await?;
        self.input.consume(table_end);
        let header = self.input.take(prefix.header_len as usize);
        let mut tensors = Vec::with_capacity(lens.len());
        for len in lens {
            tensors.push(self.input.read_tensor(len as usize).await?);
        }
        Ok(Some(Incoming {
            frame: Frame {
                kind: prefix.kind,
                flags: prefix.flags,
                id: prefix.id,
                header,
                tensors,
            },
            permit,
        }))
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameReader for StreamReader<R> {
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>> {
        Box::pin(self.read(limits, budget))
    }
}

/// Writes frames to a byte stream with vectored writes.
#[derive(Debug)]
pub struct StreamWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamWriter<W> {
    /// Wraps the sending half of a stream.
    pub fn new(inner: W) -> StreamWriter<W> {
        StreamWriter { inner }
    }

    async fn write(&mut self, frame: Frame) -> io::Result<()> {
        let head = frame.encode_head();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + frame.tensors.len());
        parts.push(&head);
        parts.extend(frame.tensors.iter().map(|t| &t[..]));
        write_all_vectored(&mut self.inner, &parts).await?;
        self.inner.flush().await
    }
}

/// Writes `parts` one after another with vectored writes (up to 64 buffers
/// a call, empty ones left out): each goes to the kernel from where it is,
/// never copied into a contiguous buffer. Does not flush.
pub async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    parts: &[&[u8]],
) -> io::Result<()> {
    let parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let (mut part, mut offset) = (0usize, 0usize);
    while part < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[part][offset..]))
            .chain(parts[part + 1..].iter().take(63).map(|p| IoSlice::new(p)))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = parts[part].len() - offset;
            if n >= left {
                n -= left;
                part += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl<W: AsyncWrite + Unpin + Send + 'static> FrameWriter for StreamWriter<W> {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.write(frame))
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.inner.shutdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameError, FrameKind};

    #[tokio::test]
    async fn frames_cross_a_duplex_stream_in_small_pieces() {
        // A 4-byte pipe forces partial reads and writes everywhere.
        let (a, b) = tokio::io::duplex(4);
        let mut w = StreamWriter::new(a);
        let mut r = StreamReader::new(b);
        let big = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let frames = vec![
            Frame::new(FrameKind::Request, 1, Bytes::from_static(b"h1"), vec![]),
            Frame::new(
                FrameKind::Request,
                2,
                Bytes::from_static(b"h2"),
                vec![Bytes::from_static(b"abc"), big, Bytes::new()],
            ),
        ];
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            for f in sent {
                w.write_frame(f).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        for f in frames {
            let got = r.read_frame(&Limits::DEFAULT, None).await.unwrap().unwrap();
            assert_eq!(got.frame, f);
        }
        assert!(
            r.read_frame(&Limits::DEFAULT, None)
                .await
                .unwrap()
                .is_none()
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_frames_are_skipped_and_the_stream_survives() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = StreamReader::new(b);
        let big = Frame::new(
            FrameKind::Request,
            5,
            Bytes::from_static(b"hh"),
            vec![Bytes::from(vec![7u8; 5000])],
        );
        let next = Frame::new(
            FrameKind::Request,
            6,
            Bytes::from_static(b"ok"),
            vec![Bytes::from_static(b"x")],
        );
        let mut wire = big.to_vec();
        wire.extend(next.to_vec());
        tokio::spawn(async move { a.write_all(&wire).await.unwrap() });
        let limits = Limits {
            max_payload: 1000,
            ..Limits::DEFAULT
        };
        match r.read_frame(&limits, None).await {
            Err(ReadError::Frame(FrameError::TooLarge { id: 5, .. })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.read_frame(&limits, None).await.unwrap().unwrap().frame,
            next
        );
    }

    #[tokio::test]
    async fn the_memory_budget_refuses_what_can_never_fit() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = StreamReader::new(b);
        let f = Frame::new(
            FrameKind::Request,
            8,
            Bytes::new(),
            vec![Bytes::from(vec![1u8; 4096])],
        );
        let g = Frame::new(
            FrameKind::Request,
            9,
            Bytes::new(),
            vec![Bytes::from(vec![1u8; 1024])],
        );
        let mut wire = f.to_vec();
        wire.extend(g.to_vec());
        tokio::spawn(async move { a.write_all(&wire).await.unwrap() });
        let budget = MemoryBudget::new(2048);
        assert!(matches!(
            r.read_frame(&Limits::DEFAULT, Some(&budget)).await,
            Err(ReadError::Frame(FrameError::TooLarge { id: 8, .. }))
        ));
        let ok = r
            .read_frame(&Limits::DEFAULT, Some(&budget))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ok.frame.id, 9);
        assert!(ok.permit.is_some());
    }
}
