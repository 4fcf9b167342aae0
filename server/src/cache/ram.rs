//! The RAM tier: a byte-weighted moka cache with a hard budget, and single-flight fills.
//!
//! Concurrent misses of one block coalesce on moka's entry API: one fill future runs, every other
//! reader of that block waits for its result, success or error. moka applies evictions in
//! batches, so usage can run ahead of the budget by the blocks inserted since the last batch;
//! `run_pending_tasks` is called after each fill to keep that window small.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use moka::future::Cache;
use moka::notification::RemovalCause;
use prometheus::IntCounter;

use super::{Block, BlockKey};
use crate::error::Error;

/// How a block was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Already in RAM.
    Hit,
    /// This call ran the fill.
    Filled,
    /// Another reader's fill was in flight; this call waited for it.
    Waited,
}

#[derive(Clone)]
pub struct RamTier {
    cache: Cache<BlockKey, Block>,
    capacity: u64,
}

impl RamTier {
    /// A tier of `capacity` bytes; `evictions` counts blocks dropped to stay within it.
    pub fn new(capacity: u64, evictions: IntCounter) -> RamTier {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &BlockKey, b: &Block| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        RamTier { cache, capacity }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now (approximate until pending maintenance has run).
    pub fn used(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub async fn get(&self, key: &BlockKey) -> Option<Block> {
        self.cache.get(key).await
    }

    /// The block, from RAM or from `fill`, with concurrent misses sharing one fill.
    pub async fn get_or_fill<F>(&self, key: BlockKey, fill: F) -> Result<(Block, Filled), Error>
    where
        F: Future<Output = Result<Block, Error>>,
    {
        if let Some(block) = self.cache.get(&key).await {
            return Ok((block, Filled::Hit));
        }
        let ran = AtomicBool::new(false);
        let init = async {
            ran.store(true, Ordering::Relaxed);
            fill.await
        };
        let result = self.cache.entry(key).or_try_insert_with(init).await;
        let how = if ran.load(Ordering::Relaxed) {
            Filled::Filled
        } else {
            Filled::Waited
        };
        match result {
            Ok(entry) => {
                if how == Filled::Filled {
                    self.cache.run_pending_tasks().await;
                }
                Ok((entry.into_value(), how))
            }
            Err(e) => Err(Arc::unwrap_or_clone(e)),
        }
    }

    /// Store a block filled outside the single flight (a chain fill).
    pub async fn insert(&self, key: BlockKey, block: Block) {
        self.cache.insert(key, block).await;
        self.cache.run_pending_tasks().await;
    }

    /// Whether the block is held, without counting as a use (eviction order is untouched).
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.cache.contains_key(key)
    }

    pub async fn invalidate(&self, key: &BlockKey) {
        self.cache.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectId;
    use bytes::Bytes;
    use std::sync::atomic::AtomicU32;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            object: ObjectId([7; 16]),
            index: i,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fill() {
        let tier = RamTier::new(1 << 20, IntCounter::new("t", "t").unwrap());
        let fills = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let tier = tier.clone();
            let fills = fills.clone();
            tasks.push(tokio::spawn(async move {
                tier.get_or_fill(key(1), async move {
                    fills.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Ok(Block::new(Bytes::from_static(b"block")))
                })
                .await
                .unwrap()
            }));
        }
        let mut filled = 0;
        for t in tasks {
            let (block, how) = t.await.unwrap();
            assert_eq!(&block.data[..], b"block");
            filled += usize::from(how == Filled::Filled);
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert_eq!(filled, 1);
    }

    #[tokio::test]
    async fn failed_fill_is_shared_then_forgotten() {
        let tier = RamTier::new(1 << 20, IntCounter::new("t", "t").unwrap());
        let e = tier
            .get_or_fill(key(2), async { Err(Error::Busy { what: "test" }) })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Busy { .. }));
        let (_, how) = tier
            .get_or_fill(key(2), async { Ok(Block::new(Bytes::from_static(b"x"))) })
            .await
            .unwrap();
        assert_eq!(how, Filled::Filled);
    }

    #[tokio::test]
    async fn budget_holds_after_maintenance() {
        let evictions = IntCounter::new("t", "t").unwrap();
        let tier = RamTier::new(64 * 1024, evictions.clone());
        for i in 0..64 {
            tier.get_or_fill(key(i), async {
                Ok(Block::new(Bytes::from(vec![0u8; 4096])))
            })
            .await
            .unwrap();
        }
        tier.cache.run_pending_tasks().await;
        assert!(tier.used() <= 64 * 1024, "used {}", tier.used());
        assert!(tier.used() > 0);
        assert!(
            evictions.get() >= 48,
            "evictions counted: {}",
            evictions.get()
        );
    }
}
