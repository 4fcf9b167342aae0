//! [`PinnedBuffer`]: page-locked shared memory that a local shardcache server writes into.
//!
//! The buffer is a memfd mapped into this process, locked into RAM with `mlock` (so the GPU
//! driver can DMA from it without staging, and the kernel never pages it out), and sealed against
//! shrinking so the server that maps it too can never be made to fault. The memory itself is a
//! [`shardcache_mem::PinnedMemfd`]: the mapping code (and every `unsafe` line) is in
//! shardcache-mem.

use shardcache_mem::memfd::CreateError;
use shardcache_mem::{Errno, MapError, PinError, PinnedMemfd};

use crate::error::ClientError;

pub use shardcache_mem::Pinning;

/// Page-locked (or, explicitly, unlocked) shared memory. See the module documentation.
pub struct PinnedBuffer {
    mem: PinnedMemfd,
    /// The local connection this buffer is registered on, once used with a local server.
    pub(crate) registration: Option<crate::local::Registration>,
}

/// The client's words for why the memory could not be made, with the failed call's error as
/// the source.
fn pin_err(e: PinError) -> ClientError {
    let errno = |reason: String, errno: Errno| ClientError::buffer(reason).caused_by(errno);
    match e {
        PinError::Empty => ClientError::buffer("a pinned buffer needs at least one byte"),
        PinError::Create(CreateError::Create(e)) => errno(format!("memfd_create failed: {e}"), e),
        PinError::Create(CreateError::Size { len, errno: e }) => {
            errno(format!("cannot size the buffer to {len} bytes: {e}"), e)
        }
        PinError::Create(CreateError::Seal(e)) => errno(format!("cannot seal the buffer: {e}"), e),
        PinError::Map(MapError::Null) => ClientError::buffer("mmap returned null"),
        PinError::Map(MapError::Map(e)) => errno(format!("cannot map the buffer: {e}"), e),
        PinError::Map(e) => ClientError::buffer(format!("cannot map the buffer: {e}")).caused_by(e),
        PinError::Lock { len, errno: e } => errno(
            format!(
                "cannot page-lock {len} bytes ({e}): raise RLIMIT_MEMLOCK (ulimit -l, or the \
                 pod's memlock limit) or grant CAP_IPC_LOCK; PinnedBuffer::unpinned is the \
                 explicit unlocked fallback"
            ),
            e,
        ),
    }
}

/// Shared memory of `len` bytes, page-locked as `pinning` says, with the client's errors: a
/// [`PinnedBuffer`]'s, or a local connection's scratch.
pub(crate) fn memfd(len: usize, pinning: Pinning) -> Result<PinnedMemfd, ClientError> {
    PinnedMemfd::new("shardcache-buffer", len, pinning).map_err(pin_err)
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
            b.mem.unlock();
            b
        })
    }

    pub fn with_pinning(len: usize, pinning: Pinning) -> Result<PinnedBuffer, ClientError> {
        let mem = memfd(len, pinning)?;
        Ok(PinnedBuffer {
            mem,
            registration: None,
        })
    }

    pub fn len(&self) -> usize {
        self.mem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// Whether the memory is page-locked.
    pub fn is_pinned(&self) -> bool {
        self.mem.is_locked()
    }

    /// The start of the buffer, for registering it with a device driver.
    pub fn as_ptr(&self) -> *const u8 {
        self.mem.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // The server writes the buffer only while a read borrows it mutably, so no write
        // overlaps this borrow.
        self.mem.as_slice()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mem.as_mut_slice()
    }

    /// The memory: what the local path registers and reads into, and what the `cuda`
    /// feature registers with the driver.
    pub(crate) fn mem_mut(&mut self) -> &mut PinnedMemfd {
        &mut self.mem
    }

    pub(crate) fn mem(&self) -> &PinnedMemfd {
        &self.mem
    }
}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("len", &self.len())
            .field("pinned", &self.is_pinned())
            .finish()
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        // The server's mapping (if registered) stays valid until it unmaps; ours goes next, when
        // `mem` drops (unregistered from CUDA, unlocked, unmapped).
        self.registration = None;
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
        let seals = shardcache_mem::memfd::seals(b.mem().fd()).unwrap();
        assert!(
            seals.contains(shardcache_mem::SealFlags::SHRINK | shardcache_mem::SealFlags::GROW)
        );
        assert!(!PinnedBuffer::unpinned(4096).unwrap().is_pinned());
        let e = PinnedBuffer::new(0).unwrap_err().to_string();
        assert!(e.contains("a pinned buffer needs at least one byte"), "{e}");
    }

    #[test]
    fn buffers_move_and_share_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PinnedBuffer>();
        send_sync::<PinnedBufferPool>();
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
