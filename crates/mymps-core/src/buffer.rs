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

use bytes::Bytes;
#[cfg(not(target_os = "linux"))]
use bytes::BytesMut;

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
