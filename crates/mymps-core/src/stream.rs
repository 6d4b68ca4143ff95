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

/// Reads frames from a byte stream.
///
/// Once a frame's first byte has arrived, every further read must make
/// progress within [`Limits::stall_timeout`], or the read fails with
/// [`io::ErrorKind::TimedOut`] (the connection is then lost, and the memory
/// budget its frame held is released). A refused frame is reported at once
/// and its bytes are skipped at the start of the next read, so the peer
/// gets its answer before the skipping starts.
pub struct StreamReader<R> {
    inner: R,
    buf: BytesMut,
    host_alloc: Option<Arc<dyn HostAlloc>>,
    /// Bytes of a refused frame still to be skipped.
    skip: u64,
    /// The stall timeout of the read in progress.
    stall: Duration,
}

impl<R> std::fmt::Debug for StreamReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("buffered", &self.buf.len())
            .field("host_alloc", &self.host_alloc.is_some())
            .field("skip", &self.skip)
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

impl<R: AsyncRead + Unpin + Send + 'static> StreamReader<R> {
    /// Wraps the receiving half of a stream.
    pub fn new(inner: R) -> StreamReader<R> {
        StreamReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            host_alloc: None,
            skip: 0,
            stall: Limits::DEFAULT.stall_timeout,
        }
    }

    /// Wraps the receiving half of a stream; large tensors are read into
    /// memory from `alloc` (a backend's, e.g. pinned memory) when given.
    pub fn with_host_alloc(inner: R, alloc: Option<Arc<dyn HostAlloc>>) -> StreamReader<R> {
        StreamReader {
            host_alloc: alloc,
            ..StreamReader::new(inner)
        }
    }

    /// The stream back (bytes already buffered are dropped).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Consumes the head of a refused frame, arranges for what follows it to
    /// be skipped where the frame is skipped, and gives the error to report.
    fn refuse(&mut self, table_end: usize, refused: Head) -> ReadError {
        let _ = self.buf.split_to(table_end);
        match refused {
            Head::Skip { error, skip } => {
                self.skip = skip;
                ReadError::Frame(error)
            }
            Head::Close(error) => ReadError::Frame(error),
            Head::Read { .. } => unreachable!("a refusal"),
        }
    }

    /// Reads until the buffer holds `n` bytes. `Ok(false)` on end of stream
    /// with the buffer empty (a clean close between frames). Reads are
    /// timed once the frame has begun (`mid`, or bytes already buffered).
    async fn fill(&mut self, n: usize, mid: bool) -> io::Result<bool> {
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

    /// Skips what is left of a refused frame.
    async fn skip_pending(&mut self) -> io::Result<()> {
        let from_buf = self.skip.min(self.buf.len() as u64) as usize;
        let _ = self.buf.split_to(from_buf);
        self.skip -= from_buf as u64;
        if self.skip == 0 {
            return Ok(());
        }
        let mut scratch = vec![0u8; READ_CHUNK];
        while self.skip > 0 {
            let want = self.skip.min(READ_CHUNK as u64) as usize;
            let got = within(self.stall, self.inner.read(&mut scratch[..want])).await?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.skip -= got as u64;
        }
        Ok(())
    }

    async fn read_tensor(&mut self, len: usize) -> io::Result<Bytes> {
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

    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        self.stall = limits.stall_timeout;
        if self.skip > 0 {
            self.skip_pending().await?;
        }
        if !self.fill(PREFIX_LEN, false).await? {
            return Ok(None);
        }
        let (head, table_end) = loop {
            match decode_head(&self.buf, limits) {
                Ok(decoded) => break decoded,
                Err(need) => {
                    self.fill(need, true).await?;
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
        self.fill(header_end, true).await?;
        let _ = self.buf.split_to(table_end);
        let header = self.buf.split_to(prefix.header_len as usize).freeze();
        let mut tensors = Vec::with_capacity(lens.len());
        for len in lens {
            tensors.push(self.read_tensor(len as usize).await?);
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
        parts.extend(
            frame
                .tensors
                .iter()
                .map(|t| &t[..])
                .filter(|t| !t.is_empty()),
        );
        let (mut part, mut offset) = (0usize, 0usize);
        while part < parts.len() {
            let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[part][offset..]))
                .chain(parts[part + 1..].iter().take(63).map(|p| IoSlice::new(p)))
                .collect();
            let mut n = self.inner.write_vectored(&slices).await?;
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
        self.inner.flush().await
    }
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
