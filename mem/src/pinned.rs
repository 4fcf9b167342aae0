//! [`PinnedMemfd`]: a sealed memfd this process creates, maps and (as asked) page-locks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use crate::map::{MapError, SharedMap};
use crate::memfd::{self, CreateError};

/// Whether a buffer must be page-locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// Fail if the memory cannot be locked.
    Required,
    /// Lock if possible; otherwise an ordinary (pageable) shared buffer.
    Preferred,
}

/// Why a [`PinnedMemfd`] could not be made.
#[derive(Debug)]
pub enum PinError {
    /// A buffer needs at least one byte.
    Empty,
    /// Creating, sizing or sealing the memfd failed.
    Create(CreateError),
    /// Mapping it failed.
    Map(MapError),
    /// `mlock` of `len` bytes failed (RLIMIT_MEMLOCK, or no CAP_IPC_LOCK) and the buffer was
    /// [`Pinning::Required`].
    Lock { len: usize, errno: Errno },
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinError::Empty => write!(f, "a buffer needs at least one byte"),
            PinError::Create(e) => e.fmt(f),
            PinError::Map(e) => e.fmt(f),
            PinError::Lock { len, errno } => write!(f, "cannot page-lock {len} bytes ({errno})"),
        }
    }
}

impl std::error::Error for PinError {}

/// Shared memory this process owns: a memfd of fixed size (sealed `F_SEAL_SHRINK |
/// F_SEAL_GROW | F_SEAL_SEAL`), mapped, and locked into RAM with `mlock` when [`Pinning`]
/// allows. Unregistered (CUDA), unlocked and unmapped when dropped, in that order.
///
/// The bytes are viewed as `&[u8]` through `&self` and as `&mut [u8]` through `&mut self`, as
/// for a `Vec<u8>`. [`PinnedMemfd::fd`] hands the file to a peer (the server) that maps it too;
/// the peer must write only while the owner has lent the buffer out mutably (the local
/// protocol's reads borrow it `&mut`), which this type cannot enforce: see the crate
/// documentation.
pub struct PinnedMemfd {
    map: SharedMap,
    fd: OwnedFd,
    locked: bool,
    /// Registered with the CUDA driver (feature `cuda`).
    #[cfg(feature = "cuda")]
    pub(crate) cuda_registered: bool,
}

impl PinnedMemfd {
    /// `len` bytes of a new memfd named `name`, mapped, and page-locked as `pinning` says: with
    /// [`Pinning::Preferred`] a failed `mlock` leaves the memory pageable (see
    /// [`PinnedMemfd::is_locked`]); with [`Pinning::Required`] it is [`PinError::Lock`].
    pub fn new(name: &str, len: usize, pinning: Pinning) -> Result<PinnedMemfd, PinError> {
        if len == 0 {
            return Err(PinError::Empty);
        }
        let fd = memfd::create_sealed(name, len as u64).map_err(PinError::Create)?;
        let map = SharedMap::map(&fd, len).map_err(PinError::Map)?;
        let mut mem = PinnedMemfd {
            map,
            fd,
            locked: false,
            #[cfg(feature = "cuda")]
            cuda_registered: false,
        };
        // SAFETY: locking exactly the `len` bytes mapped above, which stay mapped while `mem`
        // lives; mlock only changes how the pages are kept, never their contents.
        match unsafe { rustix::mm::mlock(mem.map.as_ptr().cast(), len) } {
            Ok(()) => mem.locked = true,
            Err(errno) if pinning == Pinning::Required => {
                return Err(PinError::Lock { len, errno });
            }
            Err(_) => {}
        }
        Ok(mem)
    }

    /// Unlock the memory (it stays mapped, now pageable); nothing when it is not locked.
    pub fn unlock(&mut self) {
        if self.locked {
            // SAFETY: unlocking exactly the range locked in `new`, which is still mapped.
            let _ = unsafe { rustix::mm::munlock(self.map.as_ptr().cast(), self.map.len()) };
            self.locked = false;
        }
    }

    /// Bytes mapped (at least one).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: a buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the memory is page-locked.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The start of the memory, for registering it with a device driver.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// The memfd, to hand to the peer that maps it too.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` initialised bytes (a memfd reads as zeros until written)
        // and stays mapped while `self` lives, which the returned borrow cannot outlive. The
        // `SharedMap` is private to `self` and makes no references of its own, so in this
        // process only `&mut self` (`as_mut_slice`) could write it, and that cannot coexist
        // with this borrow. A peer mapping of the file writes only while the buffer is
        // borrowed mutably (the protocol's contract; see the type's documentation).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, with `&mut self` making this the only view in this process.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.map.len()) }
    }
}

impl std::fmt::Debug for PinnedMemfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedMemfd")
            .field("len", &self.map.len())
            .field("locked", &self.locked)
            .finish()
    }
}

impl Drop for PinnedMemfd {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        self.unregister_cuda();
        self.unlock();
        // Then the fields: `map` unmaps (no slice outlives `self`), `fd` closes. A peer's own
        // mapping of the file stays valid until the peer unmaps it.
    }
}
