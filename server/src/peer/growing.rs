//! A block filled chunk by chunk, readable while it fills (cut-through).
//!
//! The filler appends chunks in order, each with the CRC32C it had when it entered the chain;
//! readers (the next nodes of chains, and this node's own waiters) take chunks from any offset
//! as soon as they are here, and wait for the rest. Each chunk is also copied, while it is
//! still in the CPU's caches, into the block's one buffer, so when the last chunk is in the
//! block for the tiers is ready without another pass; its CRC32C is combined from the chunks'.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use shardcache_proto::DataChunk;
use tokio::sync::watch;

use crate::cache::{Block, FillSource};
use crate::error::{Error, Result};

/// A block being filled.
pub struct Growing {
    /// Offset of the block in its object.
    start: u64,
    len: u64,
    inner: Mutex<Inner>,
    /// Bytes in so far; closed state is in `inner.end`.
    progress: watch::Sender<u64>,
}

struct Chunk {
    /// Offset inside the block.
    at: u64,
    data: Bytes,
    crc32c: u32,
}

#[derive(Default)]
struct Inner {
    chunks: Vec<Chunk>,
    /// The whole block being put together (`None` before the first chunk, and for good once
    /// a chunk arrived that is not copied: see [`Growing::push_rest_of`]).
    whole: Option<BytesMut>,
    /// The block is put together in `whole`.
    assembling: bool,
    filled: u64,
    /// Set once: the fill finished (every byte is in) or failed.
    end: Option<std::result::Result<(), Error>>,
    /// The whole block, once put together (or handed over whole).
    block: Option<Block>,
}

impl Growing {
    /// An empty block of `len` bytes at `start` in its object.
    pub fn new(start: u64, len: u64) -> Arc<Growing> {
        Arc::new(Growing {
            start,
            len,
            inner: Mutex::new(Inner {
                assembling: true,
                ..Inner::default()
            }),
            progress: watch::Sender::new(0),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in so far (where the next chunk goes).
    pub fn filled(&self) -> u64 {
        self.inner.lock().expect("lock").filled
    }

    /// Append the next chunk; `crc32c` is the checksum it travelled with (already verified by
    /// the caller). Refused if it does not fit.
    pub fn push(&self, data: Bytes, crc32c: u32) -> Result<()> {
        let filled = {
            let mut inner = self.inner.lock().expect("lock");
            if inner.end.is_some() || inner.filled + data.len() as u64 > self.len {
                return Err(Error::Internal {
                    reason: format!(
                        "a chunk of {} bytes at {} does not fit a block of {}",
                        data.len(),
                        inner.filled,
                        self.len
                    ),
                });
            }
            let at = inner.filled;
            inner.filled += data.len() as u64;
            // A block that is one chunk needs no copy.
            if inner.assembling && data.len() as u64 != self.len {
                let len = self.len as usize;
                inner
                    .whole
                    .get_or_insert_with(|| BytesMut::with_capacity(len))
                    .extend_from_slice(&data);
            }
            inner.chunks.push(Chunk { at, data, crc32c });
            inner.filled
        };
        self.progress.send_replace(filled);
        Ok(())
    }

    /// Append the rest of a whole block that arrived another way (another reader's fill, the
    /// disk tier), in chunks of `chunk_size`, checksummed here.
    pub fn push_rest_of(&self, block: &Block, chunk_size: usize) -> Result<()> {
        // The block exists already: nothing to put together.
        {
            let mut inner = self.inner.lock().expect("lock");
            inner.assembling = false;
            inner.whole = None;
            inner.block = Some(block.clone());
        }
        let mut at = self.filled() as usize;
        while at < block.len() {
            let end = (at + chunk_size).min(block.len());
            let data = block.data.slice(at..end);
            let crc = crc32c::crc32c(&data);
            self.push(data, crc)?;
            at = end;
        }
        Ok(())
    }

    /// Mark the fill finished or failed; readers waiting for more are told.
    pub fn finish(&self, result: std::result::Result<(), Error>) {
        let mut inner = self.inner.lock().expect("lock");
        if inner.end.is_none() {
            inner.end = Some(match result {
                Ok(()) if inner.filled < self.len => Err(Error::Internal {
                    reason: format!("fill ended at {} of {} bytes", inner.filled, self.len),
                }),
                other => other,
            });
        }
        let filled = inner.filled;
        drop(inner);
        self.progress.send_replace(filled);
    }

    /// The whole block, once every chunk is in (once: the buffer is handed over), its CRC
    /// combined from the chunks'.
    pub fn assemble(&self, source: FillSource) -> Result<Block> {
        let mut inner = self.inner.lock().expect("lock");
        if inner.filled != self.len {
            return Err(Error::Internal {
                reason: format!("block has {} of {} bytes", inner.filled, self.len),
            });
        }
        let whole = inner.whole.take();
        let data = match (inner.chunks.as_slice(), whole) {
            ([one], _) => one.data.clone(),
            (_, Some(whole)) if whole.len() as u64 == self.len => whole.freeze(),
            _ => {
                return Err(Error::Internal {
                    reason: "the block was not put together here".into(),
                });
            }
        };
        let crc32c = inner.chunks.iter().fold(0u32, |crc, c| {
            crc32c::crc32c_combine(crc, c.crc32c, c.data.len())
        });
        // The chunks now point into the block, so the buffers they arrived in are released
        // while readers still stream from here: a fill holds two copies only while it runs.
        for c in &mut inner.chunks {
            c.data = data.slice(c.at as usize..c.at as usize + c.data.len());
        }
        let block = Block {
            data,
            crc32c,
            source,
        };
        inner.block = Some(block.clone());
        Ok(block)
    }

    /// The whole block, once the fill has put it together or been handed it.
    pub fn block(&self) -> Option<Block> {
        self.inner.lock().expect("lock").block.clone()
    }

    /// CRC32C of the bytes in so far, combined from the chunks' checksums.
    pub fn crc32c(&self) -> u32 {
        let inner = self.inner.lock().expect("lock");
        inner.chunks.iter().fold(0u32, |crc, c| {
            crc32c::crc32c_combine(crc, c.crc32c, c.data.len())
        })
    }

    /// Wait until the fill ends: `Ok` when every byte is in.
    pub async fn wait(&self) -> Result<()> {
        let mut rx = self.progress.subscribe();
        loop {
            if let Some(end) = &self.inner.lock().expect("lock").end {
                return end.clone();
            }
            if rx.changed().await.is_err() {
                return Err(Error::Internal {
                    reason: "block fill abandoned".into(),
                });
            }
        }
    }

    /// The chunk that starts at `pos`, or the part of one from `pos` (checksummed here); `None`
    /// if not in yet. `Err` once the fill failed.
    fn chunk_at(&self, pos: u64) -> Option<Result<DataChunk>> {
        let offset = self.start + pos;
        let part = {
            let inner = self.inner.lock().expect("lock");
            if pos >= inner.filled {
                return match &inner.end {
                    Some(Err(e)) => Some(Err(e.clone())),
                    _ => None,
                };
            }
            let i = inner
                .chunks
                .partition_point(|c| c.at + c.data.len() as u64 <= pos);
            let c = &inner.chunks[i];
            if c.at == pos {
                return Some(Ok(DataChunk {
                    offset,
                    crc32c: c.crc32c,
                    data: c.data.clone(),
                }));
            }
            (c.data.clone(), (pos - c.at) as usize, c.crc32c)
        };
        // A reader resuming inside a chunk: the rest of it, checksummed outside the lock and
        // checked against the chunk's own CRC (head and rest combined), so memory damaged since
        // the chunk arrived is an error here, not a fresh valid checksum.
        let (whole, cut, crc) = part;
        let rest = whole.slice(cut..);
        let head_crc = crc32c::crc32c(&whole[..cut]);
        let rest_crc = crc32c::crc32c(&rest);
        if crc32c::crc32c_combine(head_crc, rest_crc, rest.len()) != crc {
            return Some(Err(Error::Internal {
                reason: "a chunk held for a chain no longer matches its CRC32C".into(),
            }));
        }
        Some(Ok(DataChunk {
            offset,
            crc32c: rest_crc,
            data: rest,
        }))
    }

    /// The block from `offset` (inside the block) to its end, as chunks while they arrive.
    /// Ends after the last byte, or with the fill's error.
    pub fn read_from(self: &Arc<Self>, offset: u64) -> BoxStream<'static, Result<DataChunk>> {
        let rx = self.progress.subscribe();
        stream::unfold((self.clone(), offset, rx), |(g, pos, mut rx)| async move {
            if pos >= g.len {
                return None;
            }
            loop {
                match g.chunk_at(pos) {
                    Some(Ok(chunk)) => {
                        let next = pos + chunk.data.len() as u64;
                        return Some((Ok(chunk), (g, next, rx)));
                    }
                    Some(Err(e)) => {
                        let end = g.len;
                        return Some((Err(e), (g, end, rx)));
                    }
                    None => {}
                }
                if rx.changed().await.is_err() {
                    let end = g.len;
                    let e = Error::Internal {
                        reason: "block fill abandoned".into(),
                    };
                    return Some((Err(e), (g, end, rx)));
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn readers_get_chunks_as_they_arrive_and_the_block_assembles() {
        let g = Growing::new(1000, 10);
        let mut reader = g.read_from(0);
        let a = bytes(4, 1);
        g.push(a.clone(), crc32c::crc32c(&a)).unwrap();
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!((first.offset, first.data.clone()), (1000, a.clone()));
        // The second read waits for the next chunk.
        let pending = tokio::spawn(async move { reader.next().await.unwrap().unwrap() });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!pending.is_finished());
        let b = bytes(6, 2);
        g.push(b.clone(), crc32c::crc32c(&b)).unwrap();
        let second = pending.await.unwrap();
        assert_eq!((second.offset, second.data.clone()), (1004, b.clone()));
        assert!(second.verify());
        g.finish(Ok(()));
        g.wait().await.unwrap();
        let block = g.assemble(FillSource::Origin).unwrap();
        let whole = [a, b].concat();
        assert_eq!(&block.data[..], &whole[..]);
        assert_eq!(block.crc32c, crc32c::crc32c(&whole), "combined CRC");
    }

    #[tokio::test]
    async fn a_reader_resuming_inside_a_chunk_gets_the_rest_checksummed() {
        let g = Growing::new(0, 8);
        let a = bytes(8, 3);
        g.push(a.clone(), crc32c::crc32c(&a)).unwrap();
        let mut r = g.read_from(5);
        let c = r.next().await.unwrap().unwrap();
        assert_eq!((c.offset, &c.data[..]), (5, &a[5..]));
        assert!(c.verify());
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn a_failed_fill_ends_readers_and_waiters_with_its_error() {
        let g = Growing::new(0, 8);
        let mut r = g.read_from(0);
        g.push(bytes(3, 4), 0).unwrap();
        assert!(r.next().await.unwrap().is_ok());
        g.finish(Err(Error::NotCached));
        assert!(matches!(r.next().await, Some(Err(Error::NotCached))));
        assert!(r.next().await.is_none());
        assert!(g.wait().await.is_err());
        // Finishing "successfully" short of the end is a failure too.
        let short = Growing::new(0, 8);
        short.push(bytes(3, 5), 0).unwrap();
        short.finish(Ok(()));
        assert!(short.wait().await.is_err());
        assert!(
            short.push(bytes(1, 6), 0).is_err(),
            "no chunk after the end"
        );
    }

    #[test]
    fn chunks_past_the_end_are_refused() {
        let g = Growing::new(0, 4);
        assert!(g.push(bytes(5, 0), 0).is_err());
        let whole = Block::new(bytes(4, 9));
        g.push_rest_of(&whole, 3).unwrap();
        assert_eq!(g.filled(), 4);
        assert_eq!(g.crc32c(), whole.crc32c);
        // A block that arrived whole is not put together again.
        assert!(g.assemble(FillSource::Origin).is_err());
    }
}
