//! Memfds: creating, sizing and sealing them, and reading their seals. No `unsafe` here; the
//! mapping is in [`SharedMap`](crate::SharedMap).

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

/// The seals of a buffer's memfd: fixed size, and no seal can be removed or added later.
pub const BUFFER_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A new, empty memfd that allows sealing, closed on exec.
pub fn create(name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
}

/// Set the file's length to `len` bytes.
pub fn set_len(fd: impl AsFd, len: u64) -> Result<(), Errno> {
    rustix::fs::ftruncate(fd, len)
}

/// Add `seals` to the file's seals.
pub fn add_seals(fd: impl AsFd, seals: SealFlags) -> Result<(), Errno> {
    rustix::fs::fcntl_add_seals(fd, seals)
}

/// The file's seals; an error for a file that cannot be sealed (not a memfd).
pub fn seals(fd: impl AsFd) -> Result<SealFlags, Errno> {
    rustix::fs::fcntl_get_seals(fd)
}

/// The file's length in bytes.
pub fn len(fd: impl AsFd) -> Result<u64, Errno> {
    let stat = rustix::fs::fstat(fd)?;
    // A regular file's size is never negative.
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// Why [`create_sealed`] failed.
#[derive(Debug)]
pub enum CreateError {
    /// `memfd_create` failed.
    Create(Errno),
    /// The file could not be sized to `len` bytes.
    Size { len: u64, errno: Errno },
    /// The seals could not be added.
    Seal(Errno),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Create(e) => write!(f, "memfd_create failed: {e}"),
            CreateError::Size { len, errno } => {
                write!(f, "cannot size the memfd to {len} bytes: {errno}")
            }
            CreateError::Seal(e) => write!(f, "cannot seal the memfd: {e}"),
        }
    }
}

impl std::error::Error for CreateError {}

/// A memfd of `len` bytes sealed with [`BUFFER_SEALS`]: its size can never change again.
pub fn create_sealed(name: &str, len: u64) -> Result<OwnedFd, CreateError> {
    let fd = create(name).map_err(CreateError::Create)?;
    set_len(&fd, len).map_err(|errno| CreateError::Size { len, errno })?;
    add_seals(&fd, BUFFER_SEALS).map_err(CreateError::Seal)?;
    Ok(fd)
}
