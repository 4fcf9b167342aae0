//! [`SharedMap`]: a shared read-write mapping of a sealed memfd, accessed only by copies.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::fs::SealFlags;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// Why a memfd could not be mapped.
#[derive(Debug)]
pub enum MapError {
    /// A mapping needs at least one byte.
    Empty,
    /// Reading the seals failed: the file cannot be sealed (it is not a memfd).
    NotSealable(Errno),
    /// The file is not sealed with `F_SEAL_SHRINK`, so it could be truncated under the mapping.
    NotSealed,
    /// The file's length could not be read.
    Stat(Errno),
    /// The file is shorter than the mapping would be.
    TooSmall { file_len: u64, len: usize },
    /// `mmap` failed.
    Map(Errno),
    /// `mmap` returned a null address.
    Null,
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::Empty => write!(f, "a mapping needs at least one byte"),
            MapError::NotSealable(e) => write!(f, "not a sealable memfd ({e})"),
            MapError::NotSealed => write!(f, "the memfd must be sealed with F_SEAL_SHRINK"),
            MapError::Stat(e) => write!(f, "cannot stat the memfd: {e}"),
            MapError::TooSmall { file_len, len } => {
                write!(
                    f,
                    "the file has {file_len} bytes, fewer than the {len} to map"
                )
            }
            MapError::Map(e) => write!(f, "cannot map the memfd: {e}"),
            MapError::Null => write!(f, "mmap returned null"),
        }
    }
}

impl std::error::Error for MapError {}

/// A copy that does not fit inside a [`SharedMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Offset of the copy.
    pub at: u64,
    /// Bytes copied.
    pub len: usize,
    /// Bytes mapped.
    pub map_len: usize,
}

impl std::fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes at offset {} do not fit the mapping of {} bytes",
            self.len, self.at, self.map_len
        )
    }
}

impl std::error::Error for OutOfBounds {}

/// `len` bytes of a memfd mapped shared, readable and writable, from offset 0; unmapped on drop.
///
/// The file must be sealed with `F_SEAL_SHRINK` and be at least `len` bytes long
/// ([`SharedMap::map`] checks both), so no access inside the mapping can fault with SIGBUS,
/// whatever the process on the other side does. The memory is never viewed through a Rust
/// reference: only bounds-checked copies go in and out, so another process writing it at the
/// same time cannot break this process's aliasing guarantees.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value (no thread-local state); all
// access goes through bounds-checked raw copies (`write_at`, `read_at`), so moving the owner to
// another thread changes nothing about what those copies touch.
unsafe impl Send for SharedMap {}
// SAFETY: `&SharedMap` only allows bounds-checked raw copies, never a reference into the
// memory, so sharing it between threads can never invalidate a reference. Two threads copying
// into overlapping ranges at once race on those bytes, exactly as the peer process that shares
// the memfd may at any time: the bytes end up unspecified and nothing outside the copied range
// is touched. That is the documented contract of memory shared with a peer (the server's
// concurrent requests for one client are that client's own doing).
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Map `len` bytes of `fd`, which must be sealed with `F_SEAL_SHRINK` and at least `len`
    /// bytes long. The mapping does not need `fd` to stay open.
    pub fn map(fd: impl AsFd, len: usize) -> Result<SharedMap, MapError> {
        let fd = fd.as_fd();
        if len == 0 {
            return Err(MapError::Empty);
        }
        let seals = crate::memfd::seals(fd).map_err(MapError::NotSealable)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(MapError::NotSealed);
        }
        let file_len = crate::memfd::len(fd).map_err(MapError::Stat)?;
        if file_len < len as u64 {
            return Err(MapError::TooSmall { file_len, len });
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks (no existing memory is
        // replaced), of `len > 0` bytes of a file at least `len` bytes long that cannot shrink
        // (F_SEAL_SHRINK, checked above; seals cannot be removed), so every byte of it stays
        // backed by the file for the mapping's life.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(MapError::Map)?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MapError::Null)?;
        Ok(SharedMap { ptr, len })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the mapping (for the owner's views and for device drivers).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether `[at, at + len)` lies inside the mapping (checked arithmetic: no wrap).
    pub fn fits(&self, at: u64, len: u64) -> bool {
        at.checked_add(len)
            .is_some_and(|end| end <= self.len as u64)
    }

    fn check(&self, at: u64, len: usize) -> Result<usize, OutOfBounds> {
        if self.fits(at, len as u64) {
            // `at + len <= self.len`, so `at` fits a usize.
            Ok(at as usize)
        } else {
            Err(OutOfBounds {
                at,
                len,
                map_len: self.len,
            })
        }
    }

    /// Copy `data` into the mapping at `at`.
    pub fn write_at(&self, at: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let at = self.check(at, data.len())?;
        // SAFETY: `at + data.len() <= self.len` (checked), so the destination lies inside the
        // mapping, which is alive while `self` is. `data` is a Rust reference, and the only
        // references into a `SharedMap`'s range are those of the `PinnedMemfd` that owns it
        // privately (it never calls this), so `data` lies outside the range: no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(at), data.len());
        }
        Ok(())
    }

    /// Copy `out.len()` bytes of the mapping from `at` into `out`.
    pub fn read_at(&self, at: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let at = self.check(at, out.len())?;
        // SAFETY: as in `write_at`, with the mapping as the source: `at + out.len() <=
        // self.len`, and `out`, a Rust reference, lies outside the range.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), out.as_mut_ptr(), out.len());
        }
        Ok(())
    }
}

impl std::fmt::Debug for SharedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMap").field("len", &self.len).finish()
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`, once. No reference into it exists
        // (this type makes none; an owner's views borrow the owner, which drops this last).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
