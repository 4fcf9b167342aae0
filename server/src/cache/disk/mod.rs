//! The disk tier: blocks on a local (NVMe) directory within a byte budget, kept across restarts.
//!
//! - Lookups go through an in-memory index (block key → file size) rebuilt at start-up by
//!   listing the directory; nothing else is persisted, so there is no index to corrupt.
//! - Blocks filled from the origin are admitted directly, written in the background on the
//!   blocking pool (at most `write_queue` at once; beyond that a block is not written, never
//!   queued without bound). Space is reserved before a write, evicting victims chosen by the
//!   [policy](super::policy), so usage never exceeds the budget.
//! - Every read is checked against the block's CRC32C; a damaged file is deleted, counted in
//!   `shardcache_checksum_failures_total`, and the block is fetched again from the origin.
//! - I/O errors (a full or read-only disk) never fail a read: the tier counts them, reports
//!   itself degraded, logs a warning, and the read continues from the origin.

pub mod file;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::policy::{EvictionPolicy, PolicyKind};
use super::{Block, BlockKey};
use crate::cache::metrics::TierMetrics;
use crate::origin::Version;

/// Settings of a disk tier.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub root: PathBuf,
    pub budget: u64,
    pub policy: PolicyKind,
    /// Typical block size, to size the policy's structures.
    pub block_size: u64,
    /// Background block writes in flight at most.
    pub write_queue: usize,
}

struct State {
    index: HashMap<BlockKey, u64>,
    /// Bytes of files in the index.
    used: u64,
    /// Bytes reserved by writes in flight.
    reserved: u64,
    policy: Box<dyn EvictionPolicy>,
}

pub struct DiskTier {
    root: PathBuf,
    budget: u64,
    state: Mutex<State>,
    writes: Arc<Semaphore>,
    degraded: AtomicBool,
    metrics: Arc<TierMetrics>,
}

impl DiskTier {
    /// Open (creating if needed) the directory and rebuild the index from its files. Blocking.
    pub fn open(config: &DiskConfig, metrics: Arc<TierMetrics>) -> io::Result<DiskTier> {
        std::fs::create_dir_all(config.root.join("blocks"))?;
        std::fs::create_dir_all(config.root.join("versions"))?;
        let started = std::time::Instant::now();
        let files = file::scan_blocks(&config.root)?;
        let capacity_blocks = (config.budget / config.block_size.max(1)).max(1) as usize;
        let mut policy = config.policy.build(capacity_blocks);
        let mut index = HashMap::with_capacity(files.len());
        let mut used = 0;
        for (key, size) in files {
            policy.insert(key);
            index.insert(key, size);
            used += size;
        }
        let tier = DiskTier {
            root: config.root.clone(),
            budget: config.budget,
            state: Mutex::new(State {
                index,
                used,
                reserved: 0,
                policy,
            }),
            writes: Arc::new(Semaphore::new(config.write_queue.max(1))),
            degraded: AtomicBool::new(false),
            metrics,
        };
        // A smaller budget than last time: trim now.
        let (_, victims) = tier.evict_until(0, None);
        tier.delete(&victims);
        let state = tier.state.lock().expect("lock");
        tracing::info!(
            root = %config.root.display(),
            blocks = state.index.len(),
            used = state.used,
            budget = config.budget,
            elapsed = ?started.elapsed(),
            "disk tier index rebuilt"
        );
        drop(state);
        tier.publish();
        Ok(tier)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn used(&self) -> u64 {
        self.state.lock().expect("lock").used
    }

    pub fn capacity(&self) -> u64 {
        self.budget
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("lock").index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn publish(&self) {
        let used = self.used();
        self.metrics
            .used_bytes
            .with_label_values(&["disk"])
            .set(used as i64);
        self.metrics
            .capacity_bytes
            .with_label_values(&["disk"])
            .set(self.budget as i64);
        self.metrics
            .degraded
            .with_label_values(&["disk"])
            .set(i64::from(self.is_degraded()));
    }

    fn io_error(&self, what: &str, e: &io::Error) {
        self.metrics.disk_errors.inc();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                root = %self.root.display(),
                error = %e,
                what,
                "disk tier degraded: serving from RAM and origin until a write succeeds"
            );
        }
        self.publish();
    }

    /// The block, if the tier holds it intact.
    pub async fn get(self: &Arc<Self>, key: &BlockKey) -> Option<Block> {
        {
            let mut state = self.state.lock().expect("lock");
            state.policy.record_request(key);
            if !state.index.contains_key(key) {
                self.metrics.disk_misses.inc();
                return None;
            }
        }
        let this = self.clone();
        let k = *key;
        let read = tokio::task::spawn_blocking(move || file::read_block(&this.root, &k)).await;
        let result = match read {
            Ok(r) => r,
            Err(e) => Err(file::ReadError::Io(io::Error::other(e))),
        };
        match result {
            Ok(block) => {
                self.state.lock().expect("lock").policy.touch(key);
                self.metrics.disk_hits.inc();
                Some(block)
            }
            Err(e) => {
                self.metrics.disk_misses.inc();
                match &e {
                    file::ReadError::Missing => {}
                    file::ReadError::Corrupt(why) => {
                        self.metrics.checksum_failures.inc();
                        tracing::warn!(block = %key.object.to_hex(), index = key.index, why, "damaged block file dropped; refetching");
                    }
                    file::ReadError::Io(err) => self.io_error("read", err),
                }
                self.forget(key);
                let _ = file::remove_block(&self.root, key);
                self.publish();
                None
            }
        }
    }

    /// Whether the index holds the block (without reading or touching it).
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.state.lock().expect("lock").index.contains_key(key)
    }

    /// Drop a block (eviction asked by an operator); true when it was held.
    pub async fn remove(self: &Arc<Self>, key: &BlockKey) -> bool {
        if !self.contains(key) {
            return false;
        }
        self.forget(key);
        let this = self.clone();
        let k = *key;
        let removed = tokio::task::spawn_blocking(move || file::remove_block(&this.root, &k)).await;
        if let Ok(Err(e)) = removed
            && e.kind() != io::ErrorKind::NotFound
        {
            self.io_error("remove", &e);
        }
        self.publish();
        true
    }

    fn forget(&self, key: &BlockKey) {
        let mut state = self.state.lock().expect("lock");
        if let Some(size) = state.index.remove(key) {
            state.used -= size;
            state.policy.remove(key);
        }
    }

    /// Offer a freshly filled block. Written in the background if a write slot is free and the
    /// policy admits it; dropped otherwise (the next miss will offer it again).
    pub fn admit(self: &Arc<Self>, key: BlockKey, block: Block) {
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            self.metrics.disk_admissions_skipped.inc();
            return;
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.write(key, &block);
            drop(permit);
        });
    }

    /// Reserve room for `size` more bytes by evicting. `candidate` must pass the policy's
    /// admission rule against the first victim. Returns whether the room was reserved and the
    /// evicted keys (their files still to delete, whatever the outcome).
    fn evict_until(&self, size: u64, candidate: Option<&BlockKey>) -> (bool, Vec<BlockKey>) {
        let mut state = self.state.lock().expect("lock");
        let mut victims = Vec::new();
        if state.used + state.reserved + size > self.budget
            && let (Some(c), Some(v)) = (candidate, state.policy.victim())
            && !state.policy.admit(c, &v)
        {
            self.metrics.disk_admissions_rejected.inc();
            return (false, victims);
        }
        while state.used + state.reserved + size > self.budget {
            // Nothing left to evict: the rest is reserved by writes in flight.
            let Some(victim) = state.policy.victim() else {
                return (false, victims);
            };
            let freed = state.index.remove(&victim).unwrap_or(0);
            state.policy.remove(&victim);
            state.used -= freed;
            victims.push(victim);
        }
        state.reserved += size;
        (true, victims)
    }

    fn delete(&self, victims: &[BlockKey]) {
        for v in victims {
            self.metrics.disk_evictions.inc();
            if let Err(e) = file::remove_block(&self.root, v) {
                self.io_error("evict", &e);
            }
        }
    }

    fn write(&self, key: BlockKey, block: &Block) {
        let size = file::HEADER_LEN + block.data.len() as u64;
        if size > self.budget || self.state.lock().expect("lock").index.contains_key(&key) {
            return;
        }
        let (reserved, victims) = self.evict_until(size, Some(&key));
        self.delete(&victims);
        if !reserved {
            return;
        }
        let result = file::write_block(&self.root, &key, block);
        let mut state = self.state.lock().expect("lock");
        state.reserved -= size;
        match result {
            Ok(written) => {
                if state.index.insert(key, written).is_none() {
                    state.used += written;
                    state.policy.insert(key);
                }
                drop(state);
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(root = %self.root.display(), "disk tier writable again");
                }
            }
            Err(e) => {
                drop(state);
                self.io_error("write", &e);
            }
        }
        self.publish();
    }

    /// The recorded version of an object, if one was saved.
    pub async fn load_version(self: &Arc<Self>, dataset: &str, key: &str) -> Option<Version> {
        let this = self.clone();
        let (d, k) = (dataset.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || file::read_version(&this.root, &d, &k))
            .await
            .ok()
            .flatten()
    }

    /// Save an object's version in the background (best effort).
    pub fn store_version(self: &Arc<Self>, dataset: &str, key: &str, version: &Version) {
        let this = self.clone();
        let (d, k, v) = (dataset.to_string(), key.to_string(), version.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = file::write_version(&this.root, &d, &k, &v) {
                this.io_error("version", &e);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectId;
    use bytes::Bytes;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            object: ObjectId([3; 16]),
            index: i,
        }
    }

    fn config(root: &Path, budget: u64, policy: PolicyKind) -> DiskConfig {
        DiskConfig {
            root: root.to_path_buf(),
            budget,
            policy,
            block_size: 1000,
            write_queue: 4,
        }
    }

    #[tokio::test]
    async fn usage_stays_within_budget_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let stats = TierMetrics::standalone();
        let budget = 10 * (1000 + file::HEADER_LEN);
        let tier = Arc::new(
            DiskTier::open(&config(dir.path(), budget, PolicyKind::Lru), stats.clone()).unwrap(),
        );
        for i in 0..25 {
            tier.write(key(i), &Block::new(Bytes::from(vec![i as u8; 1000])));
            assert!(
                tier.used() <= budget,
                "used {} > budget {budget}",
                tier.used()
            );
        }
        assert_eq!(tier.len(), 10);
        assert_eq!(stats.disk_evictions.get(), 15);
        drop(tier);
        let tier =
            Arc::new(DiskTier::open(&config(dir.path(), budget, PolicyKind::Lru), stats).unwrap());
        assert_eq!(tier.len(), 10);
        let b = tier.get(&key(24)).await.expect("kept across reopen");
        assert_eq!(&b.data[..], &[24u8; 1000][..]);
        // A smaller budget trims at open.
        drop(tier);
        let tier = DiskTier::open(
            &config(dir.path(), budget / 2, PolicyKind::Lru),
            TierMetrics::standalone(),
        )
        .unwrap();
        assert_eq!(tier.len(), 5);
    }

    #[tokio::test]
    async fn damaged_files_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let stats = TierMetrics::standalone();
        let tier = Arc::new(
            DiskTier::open(&config(dir.path(), 1 << 20, PolicyKind::Lru), stats.clone()).unwrap(),
        );
        tier.write(key(1), &Block::new(Bytes::from(vec![9u8; 1000])));
        let path = file::block_path(dir.path(), &key(1));
        let mut raw = std::fs::read(&path).unwrap();
        raw[500] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(tier.get(&key(1)).await.is_none());
        assert_eq!(stats.checksum_failures.get(), 1);
        assert!(!path.exists());
        assert_eq!(tier.len(), 0);
    }
}
