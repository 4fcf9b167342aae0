//! Receive buffers that are reused instead of freed.
//!
//! Large data chunks are read from the socket straight into a buffer from this pool and handed
//! to the caller as `Bytes`; when the caller drops the last reference the buffer comes back. A
//! fresh multi-MiB allocation per chunk costs a page fault and a page clear for every 4 KiB on
//! the first write; a reused buffer costs neither. The pool keeps at most `max_buffers` idle
//! buffers; beyond that they are freed.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

#[derive(Debug)]
pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_buffers: usize,
}

impl BufPool {
    pub fn new(max_buffers: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Vec::new()),
            max_buffers,
        })
    }

    /// An empty buffer with room for at least `len` bytes.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free.lock().expect("lock");
        match free.iter().position(|b| b.capacity() >= len) {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                Vec::with_capacity(len)
            }
        }
    }

    /// Hand `buf` out as `Bytes`; it returns to the pool when the last reference drops.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.free.lock().expect("lock").len()
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut free = self.pool.free.lock().expect("lock");
        if free.len() < self.pool.max_buffers {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_the_pool_stays_bounded() {
        let pool = BufPool::new(3);
        let mut held = Vec::new();
        for i in 0..4u8 {
            let mut b = pool.take(1024);
            b.extend_from_slice(&[i; 1024]);
            held.push(pool.freeze(b));
        }
        let slice = held[3].slice(10..20);
        assert_eq!(&slice[..], &[3u8; 10]);
        held.clear();
        assert_eq!(
            pool.idle(),
            3,
            "three came back; a slice still holds the fourth"
        );
        drop(slice);
        assert_eq!(pool.idle(), 3, "bounded at max_buffers");
        let b = pool.take(512);
        assert!(b.capacity() >= 1024 && b.is_empty());
    }
}
