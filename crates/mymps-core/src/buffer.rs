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

/// Zeroed memory for one large tensor; becomes a [`Bytes`] with
/// [`LargeBuf::freeze`].
pub struct LargeBuf {
    inner: Inner,
}

#[cfg(target_os = "linux")]
struct Inner {
    map: *mut libc::c_void,
    map_len: usize,
    data: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone, and shared access after
// `freeze` is read-only.
#[cfg(target_os = "linux")]
unsafe impl Send for Inner {}
#[cfg(target_os = "linux")]
unsafe impl Sync for Inner {}

#[cfg(not(target_os = "linux"))]
struct Inner(BytesMut);

impl LargeBuf {
    /// `len` zeroed bytes.
    #[cfg(target_os = "linux")]
    pub fn new(len: usize) -> std::io::Result<LargeBuf> {
        const HUGE: usize = 2 << 20;
        let rounded = len
            .checked_next_multiple_of(HUGE)
            .and_then(|r| r.checked_add(HUGE))
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
        // SAFETY: offset < HUGE, so the data and its rounded length lie
        // inside the mapping.
        let data = unsafe { (map as *mut u8).add(offset) };
        // Advice only: without transparent huge pages it fails and the
        // buffer is ordinary memory.
        // SAFETY: the range lies inside the mapping.
        let _ =
            unsafe { libc::madvise(data.cast(), len.next_multiple_of(HUGE), libc::MADV_HUGEPAGE) };
        Ok(LargeBuf {
            inner: Inner {
                map,
                map_len: rounded,
                data,
                len,
            },
        })
    }

    /// `len` zeroed bytes.
    #[cfg(not(target_os = "linux"))]
    pub fn new(len: usize) -> std::io::Result<LargeBuf> {
        let mut b = BytesMut::new();
        b.resize(len, 0);
        Ok(LargeBuf { inner: Inner(b) })
    }

    /// The bytes, to be filled.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        #[cfg(target_os = "linux")]
        // SAFETY: `len` initialised (zeroed by the kernel) bytes, borrowed
        // uniquely through `&mut self`.
        unsafe {
            std::slice::from_raw_parts_mut(self.inner.data, self.inner.len)
        }
        #[cfg(not(target_os = "linux"))]
        &mut self.inner.0[..]
    }

    /// The buffer as immutable, shareable bytes (no copy).
    pub fn freeze(self) -> Bytes {
        #[cfg(target_os = "linux")]
        return Bytes::from_owner(self);
        #[cfg(not(target_os = "linux"))]
        self.inner.0.freeze()
    }
}

impl AsRef<[u8]> for LargeBuf {
    fn as_ref(&self) -> &[u8] {
        #[cfg(target_os = "linux")]
        // SAFETY: `len` initialised bytes that live as long as `self`.
        unsafe {
            std::slice::from_raw_parts(self.inner.data, self.inner.len)
        }
        #[cfg(not(target_os = "linux"))]
        &self.inner.0[..]
    }
}

#[cfg(target_os = "linux")]
impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.map, self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_zeroed_writable_and_become_bytes() {
        for len in [LARGE, LARGE + 1, 3 * LARGE + 12345] {
            let mut b = LargeBuf::new(len).unwrap();
            let s = b.as_mut_slice();
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&x| x == 0));
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
            assert_eq!(&part[..], &[0; 10]);
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
