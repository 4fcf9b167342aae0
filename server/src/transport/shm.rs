//! Shared-memory regions of local clients, mapped into the server. The server's only `unsafe`.
//!
//! A client hands over a memfd; the server maps it shared and copies blocks into it at offsets
//! the client names. Three things keep a lying or dying client from hurting the server:
//! - every write is bounds-checked against the mapped length (checked arithmetic, no wrap);
//! - the memfd must carry `F_SEAL_SHRINK`, so the client cannot truncate the file under the
//!   mapping (which would turn the server's next write into SIGBUS);
//! - the mapping is owned by the connection and unmapped when it ends, however it ends.
//!
//! The server never forms a Rust reference (`&[u8]`/`&mut [u8]`) into the region, only raw
//! copies into it, so a client writing its own memory concurrently cannot break the server's
//! aliasing guarantees; at worst it corrupts its own buffer, which its CRC check then reports.

use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};

pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the region is plain shared memory; all access goes through `write`, which copies with
// raw pointers into bounds-checked ranges. Concurrent writes to overlapping ranges by two
// requests of the same client are that client's own doing and touch only its buffer.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only allows bounds-checked raw copies.
unsafe impl Sync for Region {}

impl Region {
    /// Map `size` bytes of `fd`, which must be a sealed memfd at least that large.
    pub fn map(fd: OwnedFd, size: u64, max: u64) -> Result<Region, String> {
        if size == 0 || size > max {
            return Err(format!(
                "region of {size} bytes: must be 1 byte to {max} bytes (local_max_region)"
            ));
        }
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| format!("region is not a sealable memfd ({e})"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err("region memfd must be sealed with F_SEAL_SHRINK".into());
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat the region: {e}"))?;
        if (stat.st_size as u64) < size {
            return Err(format!(
                "region file has {} bytes, fewer than the {size} declared",
                stat.st_size
            ));
        }
        let len =
            usize::try_from(size).map_err(|_| "region too large for this platform".to_string())?;
        // SAFETY: a fresh shared mapping of `len` bytes of a file at least `len` bytes long that
        // cannot shrink (sealed); the kernel picks the address; nothing else aliases it in this
        // process.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| format!("cannot map the region: {e}"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Region { ptr, len, _fd: fd })
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[at, at + len)` lies inside the region.
    pub fn fits(&self, at: u64, len: u64) -> bool {
        at.checked_add(len)
            .is_some_and(|end| end <= self.len as u64)
    }

    /// Copy `data` into the region at `at`.
    pub fn write(&self, at: u64, data: &[u8]) -> Result<(), String> {
        if !self.fits(at, data.len() as u64) {
            return Err(format!(
                "{} bytes at offset {at} do not fit the region of {} bytes",
                data.len(),
                self.len
            ));
        }
        // SAFETY: `at + data.len() <= self.len` was just checked, the mapping is alive for
        // `self`'s lifetime, and `data` is server memory, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(at as usize),
                data.len(),
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("len", &self.len).finish()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`, once; no reference into it exists.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::MemfdFlags;

    fn memfd(size: u64, seal: bool) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        if seal {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        }
        fd
    }

    #[test]
    fn writes_are_bounds_checked() {
        let r = Region::map(memfd(4096, true), 4096, 1 << 20).unwrap();
        r.write(0, &[1; 4096]).unwrap();
        r.write(4000, &[2; 96]).unwrap();
        assert!(r.write(4001, &[2; 96]).is_err());
        assert!(r.write(u64::MAX - 2, &[2; 8]).is_err());
        assert!(!r.fits(u64::MAX, 2));
    }

    #[test]
    fn unsealed_small_or_oversized_regions_are_refused() {
        assert!(
            Region::map(memfd(4096, false), 4096, 1 << 20)
                .unwrap_err()
                .contains("F_SEAL_SHRINK")
        );
        assert!(
            Region::map(memfd(4096, true), 8192, 1 << 20)
                .unwrap_err()
                .contains("fewer")
        );
        assert!(
            Region::map(memfd(4096, true), 4096, 1024)
                .unwrap_err()
                .contains("local_max_region")
        );
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        assert!(
            Region::map(file.into(), 4096, 1 << 20).is_err(),
            "a plain file cannot be sealed"
        );
    }
}
