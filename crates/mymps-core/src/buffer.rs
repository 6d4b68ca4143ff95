//! Memory for large received tensors.
//!
//! A tensor of [`LARGE`] bytes or more is read into memory of its own,
//! which then becomes the tensor's storage without a copy. Fresh memory
//! costs a page fault per page on first touch, and for large transfers the
//! faults, not the copy, dominate: a 64 MiB tensor in 4 KiB pages is 16,384
//! faults. On Linux the buffer is therefore an anonymous mapping aligned to
//! 2 MiB and marked `MADV_HUGEPAGE`, so that the kernel backs it with
//! transparent huge pages where it can (32 faults for 64 MiB). Where huge
//! pages are off, or on other systems, it is ordinary memory.
//!
//! Fresh memory still costs zeroing a page at each fault (about 6 ms for
//! 64 MiB in huge pages here). So a buffer that is dropped goes back to a
//! small process-wide pool ([`POOL_MAX_BYTES`], [`POOL_MAX_BUFFERS`]) and the
//! next large tensor of a similar size is read into it, already faulted in:
//! repeated large calls then touch no fresh memory on either side. A pooled
//! buffer is marked `MADV_FREE`, so under memory pressure the kernel may
//! take its pages back (they then fault in again, zeroed); one idle for
//! [`POOL_IDLE`] is unmapped (by a thread that runs while the pool holds
//! buffers), so an idle process gives the memory back. A reused buffer
//! still holds an earlier tensor's bytes until it is overwritten, and it is
//! always overwritten in full before it becomes a tensor ([`Filler`]).
//!
//! A backend may supply the memory instead ([`HostAlloc`]): a CUDA server's
//! is pinned host memory, which the device copies from at full DMA speed
//! with no staging copy. A [`Filler`] is filled from a stream (as
//! uninitialised memory is, through [`bytes::BufMut`]) and then frozen into
//! the tensor's [`Bytes`].

use std::fmt;
use std::sync::Arc;

#[cfg(not(target_os = "linux"))]
use bytes::BytesMut;
use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

/// Tensors of at least this many bytes get a [`LargeBuf`].
pub const LARGE: usize = 2 << 20;

/// At most this many bytes of free large buffers are kept for reuse.
pub const POOL_MAX_BYTES: usize = 512 << 20;
/// At most this many free large buffers are kept for reuse.
pub const POOL_MAX_BUFFERS: usize = 8;
/// A free buffer unused this long is unmapped.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Memory for one large tensor (bytes of unspecified value: zero, or an
/// earlier tensor's); becomes a [`Bytes`] with [`LargeBuf::freeze`].
pub struct LargeBuf {
    #[cfg(target_os = "linux")]
    map: Option<Mapping>,
    #[cfg(target_os = "linux")]
    len: usize,
    #[cfg(not(target_os = "linux"))]
    inner: BytesMut,
}

/// A private anonymous mapping with a 2 MiB aligned data area of `cap`
/// bytes; unmapped on drop.
#[cfg(target_os = "linux")]
struct Mapping {
    map: *mut libc::c_void,
    map_len: usize,
    data: *mut u8,
    cap: usize,
}

// SAFETY: the mapping is owned by this value alone, and shared access after
// `freeze` is read-only.
#[cfg(target_os = "linux")]
unsafe impl Send for Mapping {}
#[cfg(target_os = "linux")]
unsafe impl Sync for Mapping {}

#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
impl Mapping {
    /// A fresh mapping for `len` bytes, marked for huge pages.
    fn new(len: usize) -> std::io::Result<Mapping> {
        let cap = len
            .checked_next_multiple_of(HUGE)
            .ok_or_else(|| std::io::Error::other("buffer size overflows"))?;
        let rounded = cap
            .checked_add(HUGE)
            .ok_or_else(|| std::io::Error::other("buffer size overflows"))?;
        // SAFETY: a fresh private anonymous mapping; the arguments are valid.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                rounded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let offset = (map as usize).next_multiple_of(HUGE) - map as usize;
        // SAFETY: offset < HUGE, so the data area of `cap` bytes lies inside
        // the mapping.
        let data = unsafe { (map as *mut u8).add(offset) };
        // Advice only: without transparent huge pages it fails and the
        // buffer is ordinary memory.
        // SAFETY: the range lies inside the mapping.
        let _ = unsafe { libc::madvise(data.cast(), cap, libc::MADV_HUGEPAGE) };
        Ok(Mapping {
            map,
            map_len: rounded,
            data,
            cap,
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.map, self.map_len);
        }
    }
}

/// Free mappings kept for reuse, most recently freed last.
#[cfg(target_os = "linux")]
struct Pool {
    free: Vec<(Mapping, std::time::Instant)>,
    max_bytes: usize,
    max_buffers: usize,
    idle: std::time::Duration,
    /// Whether the thread that unmaps idle buffers runs (see [`reap`]).
    reaper: bool,
}

#[cfg(target_os = "linux")]
impl Pool {
    const fn new(max_bytes: usize, max_buffers: usize, idle: std::time::Duration) -> Pool {
        Pool {
            free: Vec::new(),
            max_bytes,
            max_buffers,
            idle,
            reaper: false,
        }
    }

    /// Unmaps (drops) the buffers idle for too long.
    fn expire(&mut self, now: std::time::Instant) -> Vec<Mapping> {
        let idle = self.idle;
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.free)
            .into_iter()
            .partition(|(_, t)| now.duration_since(*t) >= idle);
        self.free = keep;
        old.into_iter().map(|(m, _)| m).collect()
    }

    /// The smallest free mapping that holds `len` bytes and is not over
    /// four times larger (a small tensor does not take a big buffer).
    fn take(&mut self, len: usize) -> Option<Mapping> {
        let i = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, (m, _))| m.cap >= len && m.cap / 4 <= len)
            .min_by_key(|(_, (m, _))| m.cap)
            .map(|(i, _)| i)?;
        Some(self.free.remove(i).0)
    }

    /// Keeps `m` for reuse, making room by evicting the least recently
    /// freed; gives back what is not kept (to be unmapped).
    fn put(&mut self, m: Mapping, now: std::time::Instant) -> Vec<Mapping> {
        if m.cap > self.max_bytes || self.max_buffers == 0 {
            return vec![m];
        }
        let mut out = Vec::new();
        let held = |p: &Pool| p.free.iter().map(|(m, _)| m.cap).sum::<usize>();
        while !self.free.is_empty()
            && (self.free.len() >= self.max_buffers || held(self) + m.cap > self.max_bytes)
        {
            out.push(self.free.remove(0).0);
        }
        self.free.push((m, now));
        out
    }
}

#[cfg(target_os = "linux")]
static POOL: std::sync::Mutex<Pool> =
    std::sync::Mutex::new(Pool::new(POOL_MAX_BYTES, POOL_MAX_BUFFERS, POOL_IDLE));

#[cfg(target_os = "linux")]
fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pool's reaper: while the pool holds buffers, unmaps those idle for
/// [`POOL_IDLE`] every few seconds, so that an idle process gives the
/// memory back; ends when the pool is empty.
#[cfg(target_os = "linux")]
fn reap() {
    loop {
        std::thread::sleep(POOL_IDLE / 6);
        let mut p = pool();
        let expired = p.expire(std::time::Instant::now());
        let done = p.free.is_empty();
        if done {
            p.reaper = false;
        }
        drop(p);
        drop(expired); // Unmapped outside the lock.
        if done {
            return;
        }
    }
}

impl LargeBuf {
    /// Memory for `len` bytes: a pooled buffer of a similar size, else a
    /// fresh mapping.
    #[cfg(target_os = "linux")]
    pub fn new(len: usize) -> std::io::Result<LargeBuf> {
        let (reused, expired) = {
            let mut p = pool();
            let expired = p.expire(std::time::Instant::now());
            (p.take(len), expired)
        };
        drop(expired); // Unmapped outside the lock.
        let map = match reused {
            Some(m) => m,
            None => Mapping::new(len)?,
        };
        Ok(LargeBuf {
            map: Some(map),
            len,
        })
    }

    /// `len` zeroed bytes.
    #[cfg(not(target_os = "linux"))]
    pub fn new(len: usize) -> std::io::Result<LargeBuf> {
        let mut b = BytesMut::new();
        b.resize(len, 0);
        Ok(LargeBuf { inner: b })
    }

    /// The bytes, to be filled.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        #[cfg(target_os = "linux")]
        {
            let m = self.map.as_ref().expect("mapped until dropped");
            // SAFETY: `len <= cap` initialised bytes (zeroed by the kernel or
            // written before), borrowed uniquely through `&mut self`.
            unsafe { std::slice::from_raw_parts_mut(m.data, self.len) }
        }
        #[cfg(not(target_os = "linux"))]
        &mut self.inner[..]
    }

    /// The buffer as immutable, shareable bytes (no copy).
    pub fn freeze(self) -> Bytes {
        #[cfg(target_os = "linux")]
        {
            let m = self.map.as_ref().expect("mapped until dropped");
            frozen().insert(m.data as usize, (WritePtr(m.data), self.len));
            Bytes::from_owner(self)
        }
        #[cfg(not(target_os = "linux"))]
        self.inner.freeze()
    }
}

/// A frozen buffer's data pointer, as the mapping gave it (so writes
/// through it are allowed).
#[cfg(target_os = "linux")]
struct WritePtr(*mut u8);

// SAFETY: only handed out by `writable`, whose caller owns the bytes.
#[cfg(target_os = "linux")]
unsafe impl Send for WritePtr {}

/// Frozen large buffers alive now: data address → (pointer, length).
#[cfg(target_os = "linux")]
static FROZEN: std::sync::Mutex<std::collections::BTreeMap<usize, (WritePtr, usize)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

#[cfg(target_os = "linux")]
fn frozen() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<usize, (WritePtr, usize)>>
{
    FROZEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// The memory of `bytes` for writing, when they are the whole of a large
/// buffer this module made (a received tensor of [`LARGE`] bytes or more,
/// see [`Filler`]); `None` otherwise. A client hands such a result to a
/// program that writes to it (a numpy array) without copying it.
///
/// # Safety
///
/// The caller must hold the only handle to these bytes (no clone or slice
/// of them alive anywhere else), and write through the pointer only while
/// it keeps `bytes` alive.
pub unsafe fn writable(bytes: &Bytes) -> Option<*mut u8> {
    #[cfg(target_os = "linux")]
    {
        let f = frozen();
        let (ptr, len) = f.get(&(bytes.as_ptr() as usize))?;
        (*len == bytes.len()).then_some(ptr.0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = bytes;
        None
    }
}

impl AsRef<[u8]> for LargeBuf {
    fn as_ref(&self) -> &[u8] {
        #[cfg(target_os = "linux")]
        {
            let m = self.map.as_ref().expect("mapped until dropped");
            // SAFETY: `len` initialised bytes that live as long as `self`.
            unsafe { std::slice::from_raw_parts(m.data, self.len) }
        }
        #[cfg(not(target_os = "linux"))]
        &self.inner[..]
    }
}

/// Gives the mapping to the pool (see the module docs).
#[cfg(target_os = "linux")]
impl Drop for LargeBuf {
    fn drop(&mut self) {
        let Some(m) = self.map.take() else { return };
        frozen().remove(&(m.data as usize));
        // Pages the kernel may reclaim under pressure until written again.
        // SAFETY: the data area lies inside the mapping, which is not in use.
        let _ = unsafe { libc::madvise(m.data.cast(), m.cap, libc::MADV_FREE) };
        let mut p = pool();
        let evicted = p.put(m, std::time::Instant::now());
        let start_reaper = !p.reaper && !p.free.is_empty();
        p.reaper |= start_reaper;
        drop(p);
        drop(evicted); // Unmapped outside the lock.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_writable_and_become_bytes() {
        for len in [LARGE, LARGE + 1, 3 * LARGE + 12345] {
            let mut b = LargeBuf::new(len).unwrap();
            let s = b.as_mut_slice();
            assert_eq!(s.len(), len);
            s.fill(7);
            s[0] = 1;
            s[len - 1] = 2;
            let bytes = b.freeze();
            assert_eq!(bytes.len(), len);
            assert_eq!((bytes[0], bytes[len - 1]), (1, 2));
            // Huge-page aligned, so that the whole buffer can use them.
            #[cfg(target_os = "linux")]
            assert_eq!(bytes.as_ptr() as usize % (2 << 20), 0);
            let part = bytes.slice(10..20);
            drop(bytes);
            assert_eq!(&part[..], &[7; 10]);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_pool_reuses_fits_evicts_the_oldest_and_expires_idle_buffers() {
        use std::time::{Duration, Instant};
        const M: usize = 2 << 20;
        let t0 = Instant::now();
        let mut p = Pool::new(10 * M, 3, Duration::from_secs(30));
        let map = |len| Mapping::new(len).unwrap();
        let (a, b) = (map(4 * M), map(8 * M));
        let (a_ptr, b_ptr) = (a.data, b.data);
        assert!(p.put(a, t0).is_empty());
        // 4 + 8 MiB is over 10 MiB: the oldest (a) goes.
        let out = p.put(b, t0);
        assert_eq!(out.iter().map(|m| m.data).collect::<Vec<_>>(), [a_ptr]);
        drop(out);
        // Too small a request for an 8 MiB buffer; then one that fits.
        assert!(p.take(M).is_none());
        let got = p.take(5 * M).expect("fits");
        assert_eq!(got.data, b_ptr);
        assert!(p.take(5 * M).is_none(), "taken once");
        // Buffers over the byte cap are never kept.
        assert_eq!(p.put(map(12 * M), t0).len(), 1);
        // At most 3 buffers.
        for _ in 0..4 {
            let _ = p.put(map(M), t0);
        }
        assert_eq!(p.free.len(), 3);
        // Idle ones expire.
        let _ = p.put(got, t0 + Duration::from_secs(20));
        let expired = p.expire(t0 + Duration::from_secs(40));
        assert_eq!(expired.len(), 2);
        assert_eq!(p.free.len(), 1);
        assert_eq!(p.free[0].0.data, b_ptr);
    }

    #[test]
    fn only_whole_frozen_large_buffers_are_writable() {
        let mut b = LargeBuf::new(LARGE + 5).unwrap();
        b.as_mut_slice().fill(1);
        let bytes = b.freeze();
        // SAFETY: `bytes` is the only handle; written while alive.
        let p = unsafe { writable(&bytes) };
        if cfg!(target_os = "linux") {
            let p = p.expect("a whole frozen buffer");
            assert_eq!(p as usize, bytes.as_ptr() as usize);
            // SAFETY: inside the buffer, which nothing else uses.
            unsafe { p.add(LARGE + 4).write(7) };
            assert_eq!(bytes[LARGE + 4], 7);
        }
        let part = bytes.slice(1..);
        // SAFETY: not written through.
        assert!(unsafe { writable(&part) }.is_none(), "a slice is not");
        drop(part);
        let addr = bytes.as_ptr() as usize;
        drop(bytes);
        let other = Bytes::from(vec![0u8; 16]);
        // SAFETY: not written through.
        assert!(unsafe { writable(&other) }.is_none(), "nor other bytes");
        // (Another test may have taken the memory from the pool since: the
        // length, unique to this test, tells.)
        #[cfg(target_os = "linux")]
        assert_ne!(
            frozen().get(&addr).map(|e| e.1),
            Some(LARGE + 5),
            "forgotten when dropped"
        );
        let _ = addr;
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reused_buffer_holds_old_bytes_or_zeros() {
        // The process-wide pool: another test may take the buffer first, and
        // the kernel may reclaim pooled pages (MADV_FREE), which then read
        // as zeros; every 4 KiB page holds one or the other, never garbage.
        let len = 5 * LARGE + 3;
        let mut b = LargeBuf::new(len).unwrap();
        b.as_mut_slice().fill(9);
        drop(b);
        let mut c = LargeBuf::new(len).unwrap();
        let s = c.as_mut_slice();
        assert_eq!(s.len(), len);
        for page in s.chunks(4096) {
            assert!(page.iter().all(|&x| x == 9) || page.iter().all(|&x| x == 0));
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
            _ => Backing::Default(LargeBuf::new(len)?),
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

    /// The bytes, once every one is written; `None` before.
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
        self.filled += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let filled = self.filled;
        match &mut self.backing {
            Backing::Default(b) => UninitSlice::new(&mut b.as_mut_slice()[filled..]),
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
