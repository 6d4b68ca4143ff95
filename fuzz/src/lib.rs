//! What the fuzz targets share: an allocator that refuses any single
//! allocation over [`MAX_ALLOCATION`].
//!
//! A fuzz input is a few KiB, so a parser that asks for more than that
//! trusted a size its input states. Refused allocations behave as on a
//! machine short of memory: a fallible reservation (`try_reserve`) gets an
//! error, which a reader must turn into its own, and an infallible one
//! aborts the process, which libFuzzer reports as a crash with the input.
//! (libFuzzer's `-malloc_limit_mb` does the same, but only under a
//! sanitizer, whose allocator makes these targets 8 times slower.)

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest allocation the targets' parsers may make: 64 MiB (the
/// stream reader's frame buffers and the budgets the targets give it stay
/// far below).
pub const MAX_ALLOCATION: usize = 64 << 20;

/// The system allocator, refusing allocations over [`MAX_ALLOCATION`].
pub struct Capped;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
