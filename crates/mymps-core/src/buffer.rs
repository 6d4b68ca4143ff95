//! Memory for large received tensors, and who may write to it.
//!
//! A tensor of [`LARGE`] bytes or more is read into memory of its own, a
//! [`LargeBuf`], which then becomes the tensor's storage without a copy.
//! Fresh memory costs a page fault per page on first touch, and for large
//! transfers the faults, not the copy, dominate: a 64 MiB tensor in 4 KiB
//! pages is 16,384 faults. The buffer's data therefore starts on a 2 MiB
//! boundary and, on Linux, is marked `MADV_HUGEPAGE`, so that the kernel
//! backs it with transparent huge pages where it can (32 faults for
//! 64 MiB). Where huge pages are off, or on other systems, it is ordinary
//! memory.
//!
//! Fresh memory still costs zeroing a page at each fault (about 6 ms for
//! 64 MiB in huge pages here). So a `LargeBuf` that is dropped goes back to
//! a small process-wide pool ([`POOL_MAX_BYTES`], [`POOL_MAX_BUFFERS`]) and
//! the next large tensor of a similar size is read into it, already
//! faulted in. A pooled buffer is marked `MADV_FREE`, so under memory
//! pressure the kernel may take its pages back (they then fault in again,
//! zeroed); one idle for [`POOL_IDLE`] is freed (by a thread that runs while
//! the pool holds buffers), so an idle process gives the memory back. A
//! reused buffer still holds an earlier tensor's bytes where it is not
//! written, and a [`Filler`] writes every byte before it becomes a tensor.
//!
//! # Uniqueness is a type
//!
//! A [`LargeBuf`] is not `Clone`: whoever holds one holds the only handle
//! to its memory, and may write to it (`&mut self`). A tensor's data is
//! shared [`Bytes`], which anyone may clone, so writing to it needs proof
//! that no other handle exists. That proof is the `Bytes`' own reference
//! count: [`LargeBuf::freeze`] makes `Bytes` of the buffer's allocation
//! itself (the `bytes` crate's shared storage, not an owner it cannot see
//! into), and [`LargeBuf::reclaim`] turns `Bytes` back into a `LargeBuf`
//! only when `Bytes::try_into_mut` finds the count at one: no clone or
//! slice of them is alive anywhere. The check is the library's, made at run
//! time, and cannot be wrong whatever a caller did; there is no table of
//! addresses and no "the caller must not keep a clone". (`Bytes` made with
//! `Bytes::from_owner`, as [`LargeBuf::share`] and every backend's result
//! are, always answer "shared": the `bytes` crate cannot count their
//! handles, so those are never written.)
//!
//! The server's CPU backend reclaims a large input to run a unary op in it
//! (the result is sent from the request's own memory), and gives its inputs
//! back to the pool once the last handle to them drops; the Python client
//! hands a reclaimed result to numpy as a writable array, which gives it
//! back to the pool when the array dies. Memory nobody reclaims is freed
//! as any `Bytes`' is.
//!
//! A backend may supply the memory instead ([`HostAlloc`]): a CUDA server's
//! is pinned host memory, which the device copies from at full DMA speed
//! with no staging copy. A [`Filler`] is filled from a stream (as
//! uninitialised memory is, through [`bytes::BufMut`]) and then frozen into
//! the tensor's [`Bytes`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};

/// Tensors of at least this many bytes get a [`LargeBuf`].
pub const LARGE: usize = 2 << 20;

/// At most this many bytes of free large buffers are kept for reuse.
pub const POOL_MAX_BYTES: usize = 512 << 20;
/// At most this many free large buffers are kept for reuse.
pub const POOL_MAX_BUFFERS: usize = 8;
/// A free buffer unused this long is freed.
pub const POOL_IDLE: Duration = Duration::from_secs(30);

/// The alignment of a [`LargeBuf`]'s data: a huge page.
pub const ALIGN: usize = 2 << 20;

/// Memory for one large tensor, held by this value alone: it is not
/// `Clone`, and it is made only from fresh or pooled memory or by
/// [`LargeBuf::reclaim`] of `Bytes` that nothing else refers to. Its
/// length grows as it is filled ([`BufMut`], up to its capacity);
/// [`LargeBuf::freeze`] makes it a tensor's shared [`Bytes`]. Dropped, it
/// goes back to the pool (see the module docs).
pub struct LargeBuf {
    /// Unique (not shared with any other `BytesMut` or `Bytes`), so the
    /// `bytes` crate frees its allocation when it drops.
    buf: BytesMut,
}

impl fmt::Debug for LargeBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LargeBuf")
            .field("len", &self.buf.len())
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

/// Pages of `buf`'s capacity (rounded inward to whole pages, so nothing
/// outside its allocation is touched), for `madvise`.
#[cfg(target_os = "linux")]
fn advise(buf: &mut BytesMut, advice: libc::c_int) {
    const PAGE: usize = 4096;
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(PAGE);
    let end = (start + buf.capacity()) / PAGE * PAGE;
    if end > first {
        // Advice only: without transparent huge pages MADV_HUGEPAGE fails
        // and the memory is ordinary memory; MADV_FREE only lets the kernel
        // reclaim pages whose bytes are never read before they are written.
        // SAFETY: whole pages inside the buffer's own allocation, which this
        // value holds alone; neither advice makes the memory invalid.
        let _ = unsafe { libc::madvise(first as *mut libc::c_void, end - first, advice) };
    }
}

impl LargeBuf {
    /// An empty buffer for `capacity` bytes: a pooled one of a similar size
    /// (at most four times larger), else fresh memory. Either way its data
    /// starts on an [`ALIGN`] boundary; its bytes are unspecified until
    /// written.
    pub fn with_capacity(capacity: usize) -> std::io::Result<LargeBuf> {
        let (reused, expired) = {
            let mut p = pool();
            let expired = p.expire(Instant::now());
            (p.take(capacity), expired)
        };
        drop(expired); // Freed outside the lock.
        if let Some(buf) = reused {
            return Ok(LargeBuf { buf });
        }
        let total = capacity
            .checked_add(ALIGN)
            .ok_or_else(|| std::io::Error::other("buffer size overflows"))?;
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(total).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {total} bytes"),
            )
        })?;
        // (No copy: a Vec's only handle becomes a BytesMut as it is.)
        let mut whole = BytesMut::from(Bytes::from(v));
        // The data starts at the first huge-page boundary: the bytes before
        // it are split off (nothing is written or initialised) and dropped,
        // which leaves this part the allocation's only handle.
        let offset = whole.as_ptr().align_offset(ALIGN);
        let mut buf = whole.split_off(offset);
        drop(whole);
        #[cfg(target_os = "linux")]
        advise(&mut buf, libc::MADV_HUGEPAGE);
        debug_assert!(buf.capacity() >= capacity);
        Ok(LargeBuf { buf })
    }

    /// Takes back exclusive ownership of `bytes`, without a copy, when
    /// nothing else refers to their memory (their reference count is one:
    /// no clone or slice of them is alive); gives them back otherwise, and
    /// always for `Bytes` whose handles the `bytes` crate cannot count
    /// (`Bytes::from_owner`, static). Any such bytes qualify, whoever made
    /// them; the buffer holds their length, and whatever capacity their
    /// allocation has beyond them.
    pub fn reclaim(bytes: Bytes) -> Result<LargeBuf, Bytes> {
        bytes.try_into_mut().map(|buf| LargeBuf { buf })
    }

    /// The bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The bytes written so far, for reading and writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..]
    }

    /// Whether holding the buffer holds not much more memory than its
    /// bytes, so that a long-lived owner of them (a numpy array) may keep
    /// it: its capacity beyond them is at most a quarter of them, or, for
    /// [`LARGE`] bytes or more, at most what the pool hands out for them
    /// (four times, plus the [`ALIGN`] slack; pooled pages beyond the bytes
    /// are `MADV_FREE`, the kernel's to take back).
    pub fn is_tight(&self) -> bool {
        let (len, spare) = (self.len(), self.capacity() - self.len());
        spare <= len / 4
            || (len >= LARGE && self.capacity() <= len.saturating_mul(4).saturating_add(ALIGN))
    }

    /// The buffer as shared bytes that [`LargeBuf::reclaim`] can make
    /// exclusive again once they are the only handle (no copy). Their
    /// memory is freed, not pooled, if nobody reclaims it.
    pub fn freeze(mut self) -> Bytes {
        // `self` drops empty, which gives nothing to the pool.
        std::mem::take(&mut self.buf).freeze()
    }

    /// The buffer as shared bytes that go back to the pool when their last
    /// handle drops, and can never be exclusive again (for memory nobody
    /// will write: a reply sent from it).
    pub fn share(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for LargeBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..]
    }
}

// SAFETY: `chunk_mut` is the unwritten capacity (never more: the buffer
// does not grow), and `advance_mut` only moves over what the caller wrote,
// checked against the capacity.
unsafe impl BufMut for LargeBuf {
    fn remaining_mut(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining_mut(), "advance past the end");
        // SAFETY: the caller initialised `cnt` bytes of the spare capacity.
        unsafe { self.buf.set_len(self.buf.len() + cnt) };
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }
}

/// Gives the memory to the pool (see the module docs).
impl Drop for LargeBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() < LARGE || (buf.as_ptr() as usize) % ALIGN != 0 {
            return; // Not one this module makes: freed.
        }
        buf.clear();
        // Pages the kernel may reclaim under pressure until written again.
        #[cfg(target_os = "linux")]
        advise(&mut buf, libc::MADV_FREE);
        let mut p = pool();
        let evicted = p.put(buf, Instant::now());
        let start_reaper = !p.reaper && !p.free.is_empty();
        p.reaper |= start_reaper;
        drop(p);
        drop(evicted); // Freed outside the lock.
        if start_reaper {
            let spawned = std::thread::Builder::new()
                .name("mymps-buffers".into())
                .spawn(reap);
            if spawned.is_err() {
                pool().reaper = false; // Expired at the next pool operation.
            }
        }
    }
}

/// Free buffers kept for reuse (each empty, with its capacity), most
/// recently freed last.
struct Pool {
    free: Vec<(BytesMut, Instant)>,
    max_bytes: usize,
    max_buffers: usize,
    idle: Duration,
    /// Whether the thread that frees idle buffers runs (see [`reap`]).
    reaper: bool,
}

impl Pool {
    const fn new(max_bytes: usize, max_buffers: usize, idle: Duration) -> Pool {
        Pool {
            free: Vec::new(),
            max_bytes,
            max_buffers,
            idle,
            reaper: false,
        }
    }

    /// Takes out (to be freed) the buffers idle for too long.
    fn expire(&mut self, now: Instant) -> Vec<BytesMut> {
        let idle = self.idle;
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.free)
            .into_iter()
            .partition(|(_, t)| now.duration_since(*t) >= idle);
        self.free = keep;
        old.into_iter().map(|(b, _)| b).collect()
    }

    /// The smallest free buffer that holds `len` bytes and is not over
    /// four times larger (a small tensor does not take a big buffer).
    fn take(&mut self, len: usize) -> Option<BytesMut> {
        let i = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| b.capacity() >= len && b.capacity() / 4 <= len)
            .min_by_key(|(_, (b, _))| b.capacity())
            .map(|(i, _)| i)?;
        Some(self.free.remove(i).0)
    }

    /// Keeps `b` for reuse, making room by evicting the least recently
    /// freed; gives back what is not kept (to be freed).
    fn put(&mut self, b: BytesMut, now: Instant) -> Vec<BytesMut> {
        if b.capacity() > self.max_bytes || self.max_buffers == 0 {
            return vec![b];
        }
        let mut out = Vec::new();
        let held = |p: &Pool| p.free.iter().map(|(b, _)| b.capacity()).sum::<usize>();
        while !self.free.is_empty()
            && (self.free.len() >= self.max_buffers || held(self) + b.capacity() > self.max_bytes)
        {
            out.push(self.free.remove(0).0);
        }
        self.free.push((b, now));
        out
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new(POOL_MAX_BYTES, POOL_MAX_BUFFERS, POOL_IDLE));

fn pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pool's reaper: while the pool holds buffers, frees those idle for
/// [`POOL_IDLE`] every few seconds, so that an idle process gives the
/// memory back; ends when the pool is empty.
fn reap() {
    loop {
        std::thread::sleep(POOL_IDLE / 6);
        let mut p = pool();
        let expired = p.expire(Instant::now());
        let done = p.free.is_empty();
        if done {
            p.reaper = false;
        }
        drop(p);
        drop(expired); // Freed outside the lock.
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frozen buffer of `len` bytes of `fill`.
    fn frozen(len: usize, fill: u8) -> Bytes {
        let mut b = LargeBuf::with_capacity(len).unwrap();
        b.put_bytes(fill, len);
        b.freeze()
    }

    #[test]
    fn large_buffers_fill_up_to_their_capacity_and_become_bytes() {
        for len in [LARGE, LARGE + 1, 3 * LARGE + 12345] {
            let mut b = LargeBuf::with_capacity(len).unwrap();
            assert!(b.is_empty() && b.capacity() >= len);
            b.put_bytes(7, len - 1);
            b.put_u8(2);
            assert_eq!(b.len(), len);
            b.as_mut_slice()[0] = 1;
            assert!(b.is_tight());
            let bytes = b.freeze();
            assert_eq!(bytes.len(), len);
            assert_eq!((bytes[0], bytes[1], bytes[len - 1]), (1, 7, 2));
            // Huge-page aligned, so that the whole buffer can use them.
            assert_eq!(bytes.as_ptr() as usize % ALIGN, 0);
            let part = bytes.slice(10..20);
            drop(bytes);
            assert_eq!(&part[..], &[7; 10]);
        }
        let mut b = LargeBuf::with_capacity(LARGE).unwrap();
        let room = b.remaining_mut();
        b.put_bytes(0, room);
        assert_eq!(b.remaining_mut(), 0, "it never grows");
    }

    #[test]
    fn a_large_tensor_that_is_the_last_holder_gives_its_memory_to_the_pool() {
        use crate::{DType, Tensor};
        // An unusual size, so that no other test takes the buffer meanwhile.
        let len = 43 * 1024 * 1024 + 4 * 17;
        let tensor = |data: Bytes| Tensor::new(DType::Float32, &[len / 4], data).unwrap();
        let pooled = |ptr: *const u8| {
            let mut p = pool();
            match p.take(len) {
                Some(b) if b.as_ptr() == ptr => true,
                Some(b) => {
                    p.put(b, Instant::now());
                    false
                }
                None => false,
            }
        };
        // Shared: the clone keeps the memory, nothing is pooled.
        let t = tensor(frozen(len, 1));
        let ptr = t.data().as_ptr();
        let keep = t.data().clone();
        drop(t);
        assert!(!pooled(ptr));
        assert_eq!(keep[len - 1], 1);
        drop(keep);
        // The only holder: its memory goes to the pool as it drops.
        let t = tensor(frozen(len, 2));
        let ptr = t.data().as_ptr();
        drop(t);
        assert!(pooled(ptr), "the tensor's memory is in the pool");
    }

    #[test]
    fn only_bytes_nothing_else_refers_to_are_reclaimed() {
        let bytes = frozen(LARGE + 5, 1);
        let ptr = bytes.as_ptr();
        // A clone or a slice alive: shared, given back untouched.
        let clone = bytes.clone();
        let bytes = LargeBuf::reclaim(bytes).unwrap_err();
        drop(clone);
        let part = bytes.slice(1..);
        let bytes = LargeBuf::reclaim(bytes).unwrap_err();
        drop(part);
        // The only handle: the same memory, writable, no copy.
        let mut b = LargeBuf::reclaim(bytes).expect("unique");
        assert_eq!((b.as_mut_slice().as_ptr(), b.len()), (ptr, LARGE + 5));
        b.as_mut_slice()[LARGE + 4] = 9;
        let bytes = b.freeze();
        assert_eq!((bytes[0], bytes[LARGE + 4]), (1, 9));
        // A slice that outlived its whole is unique too: only its bytes.
        let part = bytes.slice(4..);
        drop(bytes);
        let b = LargeBuf::reclaim(part).expect("the only handle");
        assert_eq!(b.len(), LARGE + 1);
        // Bytes the crate cannot count are never unique.
        let shared = LargeBuf::with_capacity(LARGE).unwrap().share();
        assert!(LargeBuf::reclaim(shared).is_err());
        assert!(LargeBuf::reclaim(Bytes::from_static(b"static")).is_err());
        // Ordinary unique bytes are.
        let v = LargeBuf::reclaim(Bytes::from(vec![3u8; 100])).unwrap();
        assert!(v.is_tight());
    }

    #[test]
    fn the_pool_reuses_fits_evicts_the_oldest_and_expires_idle_buffers() {
        const M: usize = 2 << 20;
        let t0 = Instant::now();
        let mut p = Pool::new(10 * M, 3, Duration::from_secs(30));
        let buf = |len| BytesMut::with_capacity(len);
        let (a, b) = (buf(4 * M), buf(8 * M));
        let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
        assert!(p.put(a, t0).is_empty());
        // 4 + 8 MiB is over 10 MiB: the oldest (a) goes.
        let out = p.put(b, t0);
        assert_eq!(out.iter().map(|b| b.as_ptr()).collect::<Vec<_>>(), [a_ptr]);
        drop(out);
        // Too small a request for an 8 MiB buffer; then one that fits.
        assert!(p.take(M).is_none());
        let got = p.take(5 * M).expect("fits");
        assert_eq!(got.as_ptr(), b_ptr);
        assert!(p.take(5 * M).is_none(), "taken once");
        // Buffers over the byte cap are never kept.
        assert_eq!(p.put(buf(12 * M), t0).len(), 1);
        // At most 3 buffers.
        for _ in 0..4 {
            let _ = p.put(buf(M), t0);
        }
        assert_eq!(p.free.len(), 3);
        // Idle ones expire.
        let _ = p.put(got, t0 + Duration::from_secs(20));
        let expired = p.expire(t0 + Duration::from_secs(40));
        assert_eq!(expired.len(), 2);
        assert_eq!(p.free.len(), 1);
        assert_eq!(p.free[0].0.as_ptr(), b_ptr);
    }

    #[test]
    fn dropped_buffers_go_back_to_the_pool_and_others_do_not() {
        // An odd size no other test uses, so the pooled buffer is this one.
        let len = 7 * LARGE + 77;
        let b = LargeBuf::with_capacity(len).unwrap();
        let ptr = b.buf.as_ptr();
        drop(b);
        let again = LargeBuf::with_capacity(len).unwrap();
        // (Another test may have taken it meanwhile: then it is fresh.)
        if again.buf.as_ptr() == ptr {
            assert!(again.is_empty());
        }
        drop(again);
        // Reclaimed ordinary memory is freed, never pooled.
        let other = LargeBuf::reclaim(Bytes::from(vec![0u8; LARGE])).unwrap();
        let other_ptr = other.buf.as_ptr();
        drop(other);
        if other_ptr as usize % ALIGN != 0 {
            assert!(pool().free.iter().all(|(b, _)| b.as_ptr() != other_ptr));
        }
    }
}

/// Host memory a backend supplies for large received tensors (pinned
/// memory on a CUDA server).
pub trait HostAlloc: Send + Sync {
    /// `len` bytes, uninitialised; `None` to use the default memory.
    fn alloc(&self, len: usize) -> Option<HostBlock>;
}

/// A block of host memory and the value that keeps it alive.
pub struct HostBlock {
    ptr: *mut u8,
    len: usize,
    _owner: Box<dyn Send>,
}

// SAFETY: the block is used only through this value (see `new`).
unsafe impl Send for HostBlock {}

impl HostBlock {
    /// A block of `len` bytes at `ptr`, kept alive by `owner`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes for as long
    /// as `owner` lives, and nothing else may use that memory meanwhile.
    pub unsafe fn new(ptr: *mut u8, len: usize, owner: Box<dyn Send>) -> HostBlock {
        HostBlock {
            ptr,
            len,
            _owner: owner,
        }
    }
}

/// A full block: every byte written.
struct FullBlock(HostBlock);

impl AsRef<[u8]> for FullBlock {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: valid for `len` bytes (HostBlock::new), all initialised
        // (a Filler freezes only when full), and no longer written.
        unsafe { std::slice::from_raw_parts(self.0.ptr, self.0.len) }
    }
}

/// A shareable [`HostAlloc`], compared by identity (it travels in
/// `TransportOptions`).
#[derive(Clone)]
pub struct HostAllocRef(pub Arc<dyn HostAlloc>);

impl fmt::Debug for HostAllocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostAllocRef(..)")
    }
}

impl PartialEq for HostAllocRef {
    fn eq(&self, other: &HostAllocRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for HostAllocRef {}

enum Backing {
    Default(LargeBuf),
    Host(HostBlock),
}

/// A large tensor's memory being filled (it implements [`BufMut`], so
/// `read_buf` fills it even where it is uninitialised); [`Filler::freeze`]
/// makes it the tensor's bytes once full.
pub struct Filler {
    backing: Backing,
    len: usize,
    filled: usize,
}

impl Filler {
    /// Memory for `len` bytes: from `alloc` when it gives some, else a
    /// [`LargeBuf`].
    pub fn new(len: usize, alloc: Option<&dyn HostAlloc>) -> std::io::Result<Filler> {
        let backing = match alloc.and_then(|a| a.alloc(len)) {
            Some(block) if block.len == len => Backing::Host(block),
            _ => Backing::Default(LargeBuf::with_capacity(len)?),
        };
        Ok(Filler {
            backing,
            len,
            filled: 0,
        })
    }

    /// Whether the memory came from the backend's [`HostAlloc`].
    pub fn is_host_block(&self) -> bool {
        matches!(self.backing, Backing::Host(_))
    }

    /// The bytes, once every one is written; `None` before. From the
    /// default memory they can be made exclusive again
    /// ([`LargeBuf::reclaim`]); a backend's block never can.
    pub fn freeze(self) -> Option<Bytes> {
        if self.filled != self.len {
            return None;
        }
        Some(match self.backing {
            Backing::Default(b) => b.freeze(),
            Backing::Host(h) => Bytes::from_owner(FullBlock(h)),
        })
    }
}

// SAFETY: `chunk_mut` is the unwritten rest of the memory, and `advance_mut`
// only moves over what the caller wrote (checked against the length).
unsafe impl BufMut for Filler {
    fn remaining_mut(&self) -> usize {
        self.len - self.filled
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.len - self.filled, "advance past the end");
        if let Backing::Default(b) = &mut self.backing {
            // SAFETY: the caller wrote `cnt` bytes of `chunk_mut`, the start
            // of the buffer's unwritten capacity.
            unsafe { b.advance_mut(cnt) };
        }
        self.filled += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let (filled, len) = (self.filled, self.len);
        match &mut self.backing {
            // The buffer's unwritten capacity, up to the tensor's length.
            Backing::Default(b) => &mut b.chunk_mut()[..len - filled],
            // SAFETY: the block is valid for `len` bytes (HostBlock::new) and
            // borrowed uniquely through `&mut self`.
            Backing::Host(h) => unsafe {
                UninitSlice::from_raw_parts_mut(h.ptr.add(filled), h.len - filled)
            },
        }
    }
}

#[cfg(test)]
mod filler_tests {
    use super::*;

    /// Ordinary heap memory as a "backend" block, counting allocations.
    struct VecAlloc(std::sync::atomic::AtomicUsize);

    impl HostAlloc for VecAlloc {
        fn alloc(&self, len: usize) -> Option<HostBlock> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut v: Vec<u8> = Vec::with_capacity(len);
            let ptr = v.as_mut_ptr();
            // SAFETY: the Vec's buffer holds `len` bytes and moves with it.
            Some(unsafe { HostBlock::new(ptr, len, Box::new(v)) })
        }
    }

    #[test]
    fn fillers_fill_from_either_memory_and_freeze_only_when_full() {
        let alloc = VecAlloc(Default::default());
        for a in [None, Some(&alloc as &dyn HostAlloc)] {
            let len = LARGE + 7;
            let mut f = Filler::new(len, a).unwrap();
            assert_eq!(f.is_host_block(), a.is_some());
            f.put_slice(&[1, 2, 3]);
            let data: Vec<u8> = (0..len - 3).map(|i| (i % 251) as u8).collect();
            let (x, y) = data.split_at(1000);
            f.put_slice(x);
            assert_eq!(f.remaining_mut(), y.len());
            f.put_slice(y);
            let b = f.freeze().expect("full");
            assert_eq!(&b[..3], &[1, 2, 3]);
            assert_eq!(&b[3..], &data[..]);
        }
        assert_eq!(alloc.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        let f = Filler::new(LARGE, Some(&alloc)).unwrap();
        assert!(
            f.freeze().is_none(),
            "a partly filled buffer never becomes bytes"
        );
    }
}
