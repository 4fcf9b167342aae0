//! Shared-memory regions of local clients, mapped into the server. No `unsafe` here: the mapping
//! is a [`shardcache_mem::SharedMap`].
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

use shardcache_mem::{MapError, SharedMap};

pub struct Region {
    map: SharedMap,
    _fd: OwnedFd,
}

impl Region {
    /// Map `size` bytes of `fd`, which must be a sealed memfd at least that large.
    pub fn map(fd: OwnedFd, size: u64, max: u64) -> Result<Region, String> {
        if size == 0 || size > max {
            return Err(format!(
                "region of {size} bytes: must be 1 byte to {max} bytes (local_max_region)"
            ));
        }
        let len =
            usize::try_from(size).map_err(|_| "region too large for this platform".to_string())?;
        let fs = rustix::fs::fstatfs(&fd).map_err(|e| format!("cannot statfs the region: {e}"))?;
        check_filesystem(fs.f_type as i64)?;
        let map = SharedMap::map(&fd, len).map_err(|e| match e {
            MapError::NotSealable(e) => format!("region is not a sealable memfd ({e})"),
            MapError::NotSealed => "region memfd must be sealed with F_SEAL_SHRINK".into(),
            MapError::Stat(e) => format!("cannot stat the region: {e}"),
            MapError::TooSmall { file_len, .. } => {
                format!("region file has {file_len} bytes, fewer than the {size} declared")
            }
            MapError::Map(e) => format!("cannot map the region: {e}"),
            e @ (MapError::Empty | MapError::Null) => e.to_string(),
        })?;
        Ok(Region { map, _fd: fd })
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `[at, at + len)` lies inside the region.
    pub fn fits(&self, at: u64, len: u64) -> bool {
        self.map.fits(at, len)
    }

    /// Copy `data` into the region at `at`.
    pub fn write(&self, at: u64, data: &[u8]) -> Result<(), String> {
        self.map.write_at(at, data).map_err(|e| {
            format!(
                "{} bytes at offset {at} do not fit the region of {} bytes",
                e.len, e.map_len
            )
        })
    }
}

/// `f_type` of tmpfs/shmem, where memfds live.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `f_type` of hugetlbfs (`MFD_HUGETLB` memfds).
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Only memfds on shmem are mapped: a hugetlb memfd passes the seal checks, but the server's
/// write into it can SIGBUS when the huge page pool runs dry.
fn check_filesystem(f_type: i64) -> Result<(), String> {
    match f_type {
        TMPFS_MAGIC => Ok(()),
        HUGETLBFS_MAGIC => Err(
            "region is a hugetlb memfd, which is refused (a write can fail with SIGBUS when the huge page pool is empty): create the memfd without MFD_HUGETLB".into(),
        ),
        other => Err(format!(
            "region is on a file system of type {other:#x}, not a memfd on shmem"
        )),
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.map.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcache_mem::SealFlags;

    fn memfd(size: u64, seal: bool) -> OwnedFd {
        let fd = shardcache_mem::memfd::create("t").unwrap();
        shardcache_mem::memfd::set_len(&fd, size).unwrap();
        if seal {
            shardcache_mem::memfd::add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        }
        fd
    }

    #[test]
    fn only_shmem_is_accepted() {
        assert!(check_filesystem(TMPFS_MAGIC).is_ok());
        assert!(
            check_filesystem(HUGETLBFS_MAGIC)
                .unwrap_err()
                .contains("MFD_HUGETLB")
        );
        // ext4's magic: a regular file handed over as a region.
        assert!(check_filesystem(0xEF53).unwrap_err().contains("0xef53"));
        // A file on disk is refused by its file system before anything else.
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        let e = Region::map(OwnedFd::from(file), 4096, 1 << 20).unwrap_err();
        assert!(
            e.contains("not a memfd on shmem") || e.contains("tmpfs"),
            "{e}"
        );
    }

    #[test]
    fn a_hugetlb_memfd_is_refused_where_one_can_be_made() {
        use rustix::fs::{MemfdFlags, SealFlags as S};
        let flags = MemfdFlags::HUGETLB | MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC;
        let fd = match rustix::fs::memfd_create("huge", flags) {
            Ok(fd) => fd,
            Err(e) => {
                // This kernel has no hugetlbfs: `only_shmem_is_accepted` covers the decision.
                eprintln!("no hugetlb memfd here ({e}): the refusal was not exercised");
                return;
            }
        };
        let _ = rustix::fs::ftruncate(&fd, 2 << 20);
        let _ = rustix::fs::fcntl_add_seals(&fd, S::SHRINK | S::GROW);
        let e = Region::map(fd, 2 << 20, 1 << 30).unwrap_err();
        assert!(e.contains("hugetlb"), "{e}");
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
