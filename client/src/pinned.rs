//! [`PinnedBuffer`]: page-locked shared memory that a local shardcache server writes into.
//!
//! The buffer is a memfd mapped into this process, locked into RAM with `mlock` (so the GPU
//! driver can DMA from it without staging, and the kernel never pages it out), and sealed against
//! shrinking so the server that maps it too can never be made to fault. This module holds the
//! client's only `unsafe` code.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::ClientError;

/// Whether a buffer must be page-locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// Fail if the memory cannot be locked.
    Required,
    /// Lock if possible; otherwise an ordinary (pageable) shared buffer.
    Preferred,
}

/// Page-locked (or, explicitly, unlocked) shared memory. See the module documentation.
pub struct PinnedBuffer {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    pinned: bool,
    /// The local connection this buffer is registered on, once used with a local server.
    pub(crate) registration: Option<crate::local::Registration>,
    /// Registered with the CUDA driver (feature `cuda`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) cuda_registered: bool,
}

// SAFETY: the buffer owns its mapping; shared access goes through `&self` (read-only views)
// and exclusive access through `&mut self`, as for a `Vec<u8>`.
unsafe impl Send for PinnedBuffer {}
// SAFETY: as above.
unsafe impl Sync for PinnedBuffer {}

fn err(reason: String) -> ClientError {
    ClientError::Buffer { reason }
}

impl PinnedBuffer {
    /// A page-locked buffer of `len` bytes; an error naming RLIMIT_MEMLOCK and CAP_IPC_LOCK
    /// when the memory cannot be locked.
    pub fn new(len: usize) -> Result<PinnedBuffer, ClientError> {
        PinnedBuffer::with_pinning(len, Pinning::Required)
    }

    /// An ordinary shared buffer that is not page-locked: the explicit fallback where locking
    /// is not allowed. Device copies from it are slower (staged by the driver).
    pub fn unpinned(len: usize) -> Result<PinnedBuffer, ClientError> {
        PinnedBuffer::with_pinning(len, Pinning::Preferred).map(|mut b| {
            b.unlock();
            b
        })
    }

    pub fn with_pinning(len: usize, pinning: Pinning) -> Result<PinnedBuffer, ClientError> {
        if len == 0 {
            return Err(err("a pinned buffer needs at least one byte".into()));
        }
        let fd = rustix::fs::memfd_create(
            "shardcache-buffer",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| err(format!("memfd_create failed: {e}")))?;
        rustix::fs::ftruncate(&fd, len as u64)
            .map_err(|e| err(format!("cannot size the buffer to {len} bytes: {e}")))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| err(format!("cannot seal the buffer: {e}")))?;
        // SAFETY: a fresh shared mapping of the whole (sealed, so fixed-size) memfd; the kernel
        // picks the address and nothing else in this process aliases it.
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
        .map_err(|e| err(format!("cannot map the buffer: {e}")))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| err("mmap returned null".into()))?;
        let mut buf = PinnedBuffer {
            ptr,
            len,
            fd,
            pinned: false,
            registration: None,
            cuda_registered: false,
        };
        // SAFETY: locking exactly the mapping made above.
        match unsafe { rustix::mm::mlock(buf.ptr.as_ptr().cast(), len) } {
            Ok(()) => buf.pinned = true,
            Err(e) if pinning == Pinning::Required => {
                return Err(err(format!(
                    "cannot page-lock {len} bytes ({e}): raise RLIMIT_MEMLOCK (ulimit -l, or the \
                     pod's memlock limit) or grant CAP_IPC_LOCK; PinnedBuffer::unpinned is the \
                     explicit unlocked fallback"
                )));
            }
            Err(_) => {}
        }
        Ok(buf)
    }

    fn unlock(&mut self) {
        if self.pinned {
            // SAFETY: unlocking exactly the mapping this buffer owns.
            let _ = unsafe { rustix::mm::munlock(self.ptr.as_ptr().cast(), self.len) };
            self.pinned = false;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the memory is page-locked.
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// The start of the buffer, for registering it with a device driver.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`. The server writes it
        // only while a read borrows the buffer mutably, so no write overlaps this borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, with `&mut self` making this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("len", &self.len)
            .field("pinned", &self.pinned)
            .finish()
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        // The server's mapping (if registered) stays valid until it unmaps; ours goes now.
        self.registration = None;
        #[cfg(feature = "cuda")]
        self.unregister_cuda();
        self.unlock();
        // SAFETY: unmapping exactly the mapping made in `with_pinning`, once; the slices handed
        // out borrow `self`, so none outlives this.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A fixed set of equal buffers, handed out and returned, so a loader reuses its pinned memory
/// instead of locking new pages for every shard.
pub struct PinnedBufferPool {
    free: std::sync::Mutex<Vec<PinnedBuffer>>,
    available: tokio::sync::Semaphore,
}

impl PinnedBufferPool {
    /// `count` buffers of `len` bytes each, page-locked as `pinning` says.
    pub fn new(
        count: usize,
        len: usize,
        pinning: Pinning,
    ) -> Result<PinnedBufferPool, ClientError> {
        let free = (0..count)
            .map(|_| PinnedBuffer::with_pinning(len, pinning))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PinnedBufferPool {
            free: std::sync::Mutex::new(free),
            available: tokio::sync::Semaphore::new(count),
        })
    }

    /// A buffer, waiting until one is free.
    pub async fn acquire(&self) -> PooledBuffer<'_> {
        let permit = self
            .available
            .acquire()
            .await
            .expect("pool semaphore never closes");
        permit.forget();
        let buf = self
            .free
            .lock()
            .expect("lock")
            .pop()
            .expect("a permit means a free buffer");
        PooledBuffer {
            pool: self,
            buf: Some(buf),
        }
    }
}

/// A buffer borrowed from a [`PinnedBufferPool`]; returned when dropped.
pub struct PooledBuffer<'a> {
    pool: &'a PinnedBufferPool,
    buf: Option<PinnedBuffer>,
}

impl std::ops::Deref for PooledBuffer<'_> {
    type Target = PinnedBuffer;
    fn deref(&self) -> &PinnedBuffer {
        self.buf.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledBuffer<'_> {
    fn deref_mut(&mut self) -> &mut PinnedBuffer {
        self.buf.as_mut().expect("present until drop")
    }
}

impl Drop for PooledBuffer<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.free.lock().expect("lock").push(buf);
            self.pool.available.add_permits(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_sealed_shared_memory() {
        let mut b = PinnedBuffer::with_pinning(1 << 20, Pinning::Preferred).unwrap();
        b.as_mut_slice()[..5].copy_from_slice(b"hello");
        assert_eq!(&b.as_slice()[..5], b"hello");
        let seals = rustix::fs::fcntl_get_seals(b.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW));
        assert!(!PinnedBuffer::unpinned(4096).unwrap().is_pinned());
        assert!(PinnedBuffer::new(0).is_err());
    }

    #[tokio::test]
    async fn pool_hands_out_and_takes_back() {
        let pool = PinnedBufferPool::new(2, 4096, Pinning::Preferred).unwrap();
        let a = pool.acquire().await;
        let b = pool.acquire().await;
        assert_eq!(a.len() + b.len(), 8192);
        drop(a);
        let c = pool.acquire().await;
        assert_eq!(c.len(), 4096);
    }
}
