//! Object versions: which `(size, etag)` a read of `DATASET/KEY` pins.
//!
//! Versions come from a HEAD at the origin and are kept for the dataset's `metadata_ttl`
//! (forever for `immutable` datasets), in a cache bounded by entry count. Concurrent lookups of
//! one object share one HEAD. A read that finds the origin at another version invalidates the
//! entry, so the next lookup asks the origin again.

use std::sync::Arc;

use moka::future::Cache;
use tokio::time::Instant;

use crate::cache::DiskTier;
use crate::error::Error;
use crate::origin::{Origin, Version};

#[derive(Debug, Clone)]
struct Entry {
    version: Version,
    fetched: Instant,
}

#[derive(Clone)]
pub struct VersionCache {
    cache: Cache<(String, String), Entry>,
    /// Where versions of immutable datasets are also saved, so a restarted node serves them
    /// without asking the origin.
    disk: Option<Arc<DiskTier>>,
}

impl VersionCache {
    pub fn new(max_entries: u64, disk: Option<Arc<DiskTier>>) -> VersionCache {
        VersionCache {
            cache: Cache::builder().max_capacity(max_entries).build(),
            disk,
        }
    }

    /// The version of `key` in `origin`'s dataset, fresh within the dataset's TTL.
    pub async fn get(&self, origin: &Origin, key: &str) -> Result<Version, Error> {
        let id = (origin.dataset().to_string(), key.to_string());
        let settings = origin.settings();
        if let Some(e) = self.cache.get(&id).await {
            if settings.immutable || e.fetched.elapsed() < settings.metadata_ttl {
                return Ok(e.version);
            }
            self.cache.invalidate(&id).await;
        }
        let entry = self
            .cache
            .try_get_with(id, async {
                let disk = self.disk.as_ref().filter(|_| settings.immutable);
                if let Some(disk) = disk
                    && let Some(version) = disk.load_version(origin.dataset(), key).await
                {
                    return Ok(Entry {
                        version,
                        fetched: Instant::now(),
                    });
                }
                let version = origin.head(key).await?;
                if let Some(disk) = disk {
                    disk.store_version(origin.dataset(), key, &version);
                }
                Ok::<_, Error>(Entry {
                    version,
                    fetched: Instant::now(),
                })
            })
            .await
            .map_err(Arc::unwrap_or_clone)?;
        Ok(entry.version)
    }

    /// Forget the version of `key`, after the origin was found at another one.
    pub async fn invalidate(&self, dataset: &str, key: &str) {
        self.cache
            .invalidate(&(dataset.to_string(), key.to_string()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{DatasetSettings, RetryPolicy};
    use crate::stats::Stats;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use std::time::Duration;

    async fn setup(immutable: bool) -> (Origin, Arc<InMemory>, Arc<Stats>) {
        let store = Arc::new(InMemory::new());
        store
            .put(&Path::from("k"), PutPayload::from_static(b"v1"))
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let settings = DatasetSettings {
            block_size: 1 << 20,
            metadata_ttl: Duration::from_secs(10),
            immutable,
        };
        let origin = Origin::new(
            "ds",
            store.clone() as Arc<dyn ObjectStore>,
            settings,
            RetryPolicy::default(),
            Arc::new(tokio::sync::Semaphore::new(1)),
            stats.clone(),
        );
        (origin, store, stats)
    }

    #[tokio::test(start_paused = true)]
    async fn revalidates_after_ttl() {
        let (origin, store, stats) = setup(false).await;
        let versions = VersionCache::new(100, None);
        let v1 = versions.get(&origin, "k").await.unwrap();
        store
            .put(&Path::from("k"), PutPayload::from_static(b"v2 longer"))
            .await
            .unwrap();
        assert_eq!(
            versions.get(&origin, "k").await.unwrap(),
            v1,
            "within the TTL"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let v2 = versions.get(&origin, "k").await.unwrap();
        assert_eq!(v2.size, 9);
        assert_ne!(v2.etag, v1.etag);
        assert_eq!(stats.snapshot().origin_head_requests, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn immutable_datasets_never_revalidate() {
        let (origin, _store, stats) = setup(true).await;
        let versions = VersionCache::new(100, None);
        versions.get(&origin, "k").await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        versions.get(&origin, "k").await.unwrap();
        assert_eq!(stats.snapshot().origin_head_requests, 1);
    }
}
