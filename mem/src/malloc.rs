//! The C allocator's handling of large buffers.
//!
//! glibc serves allocations above a threshold (128 KiB at start) with their own `mmap`, which
//! `free` returns to the system at once. But it raises that threshold to the size of each such
//! buffer freed (up to 32 MiB), after which blocks of a few MiB come from its heaps, and freed
//! ones stay in the process: a server that cycles its RAM tier's blocks through the allocator
//! then holds far more than its budget (its RSS stays near the high-water mark of everything
//! ever allocated). [`return_large_buffers`] fixes the threshold, so every block-sized buffer
//! is mapped on its own and returned when freed, and RSS follows the bytes in use.

/// The threshold fixed by [`return_large_buffers`]: glibc's own starting value.
pub const LARGE_BUFFER: usize = 128 * 1024;

/// Fix the allocator's threshold for buffers mapped on their own at [`LARGE_BUFFER`]. Returns
/// whether it was set (only with glibc; other C libraries are left as they are). Call it once,
/// at start.
pub fn return_large_buffers() -> bool {
    imp::set()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::ffi::c_int;

    /// `M_MMAP_THRESHOLD` of glibc's `<malloc.h>`.
    const M_MMAP_THRESHOLD: c_int = -3;

    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    pub(super) fn set() -> bool {
        // SAFETY: `mallopt` only sets a parameter of glibc's allocator, taking plain integers;
        // setting M_MMAP_THRESHOLD to a value below its maximum is always valid and has no
        // effect on memory already allocated.
        unsafe { mallopt(M_MMAP_THRESHOLD, super::LARGE_BUFFER as c_int) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn set() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_threshold_is_set_with_glibc() {
        let set = super::return_large_buffers();
        assert_eq!(set, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Large buffers still work (mapped on their own now).
        let v = vec![7u8; 4 << 20];
        assert_eq!(v[(4 << 20) - 1], 7);
    }
}
