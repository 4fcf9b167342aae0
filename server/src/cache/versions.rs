//! Object versions: which `(size, etag)` a read of `DATASET/KEY` pins.
//!
//! Versions come from a HEAD at the origin and are kept for the dataset's `metadata_ttl`
//! (forever for `immutable` datasets), in a cache bounded by entry count. Concurrent lookups of
//! one object share one HEAD. A read that finds the origin at another version invalidates the
//! entry, so the next lookup asks the origin again.
//!
//! `stale_if_error`: when an entry has expired and the origin cannot be reached (network,
//! overload, server errors — not "denied" or "not found"), the last known version keeps being
//! served for that long past its TTL, so fully cached objects stay readable through an origin
//! outage. One revalidation at a time asks the origin, with a single attempt; while it fails,
//! the entry is served stale without asking again for a short pause, so readers do not each
//! wait for an origin that does not answer.

use std::sync::Arc;

use moka::future::Cache;
use tokio::time::Instant;

use crate::cache::DiskTier;
use crate::error::Error;
use crate::origin::{Origin, Version};

#[derive(Debug, Clone)]
struct Entry {
    version: Version,
    /// When the origin last confirmed this version.
    fetched: Instant,
    /// Served stale until then without asking the origin again.
    stale_pause: Option<Instant>,
}

/// How long a stale entry is served before the origin is asked again.
fn stale_pause(ttl: std::time::Duration) -> std::time::Duration {
    ttl.clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(10),
    )
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

    /// The version of `key` in `origin`'s dataset, fresh within the dataset's TTL (or, under
    /// `stale_if_error`, the last known one while the origin is unreachable).
    pub async fn get(&self, origin: &Origin, key: &str) -> Result<Version, Error> {
        let id = (origin.dataset().to_string(), key.to_string());
        let settings = origin.settings();
        if let Some(e) = self.cache.get(&id).await {
            if settings.immutable || e.fetched.elapsed() < settings.metadata_ttl {
                return Ok(e.version);
            }
            let stale_ok = !settings.stale_if_error.is_zero()
                && e.fetched.elapsed() < settings.metadata_ttl + settings.stale_if_error;
            if stale_ok {
                if let Some(v) = self.revalidate(origin, key, id.clone()).await? {
                    return Ok(v);
                }
            } else {
                self.cache.invalidate(&id).await;
            }
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
                        stale_pause: None,
                    });
                }
                let version = origin.head(key).await?;
                if let Some(disk) = disk {
                    disk.store_version(origin.dataset(), key, &version);
                }
                Ok::<_, Error>(Entry {
                    version,
                    fetched: Instant::now(),
                    stale_pause: None,
                })
            })
            .await
            .map_err(Arc::unwrap_or_clone)?;
        Ok(entry.version)
    }

    /// Revalidate an expired entry that may be served stale: one caller at a time asks the
    /// origin (one attempt); `None` when the entry went away meanwhile.
    async fn revalidate(
        &self,
        origin: &Origin,
        key: &str,
        id: (String, String),
    ) -> Result<Option<Version>, Error> {
        let settings = *origin.settings();
        let outcome: std::sync::Mutex<Option<Result<Version, Error>>> = std::sync::Mutex::new(None);
        let set = |r: Result<Version, Error>| *outcome.lock().expect("lock") = Some(r);
        self.cache
            .entry(id)
            .and_compute_with(|current| async {
                use moka::ops::compute::Op;
                let Some(current) = current else {
                    return Op::Nop;
                };
                let e = current.into_value();
                let now = Instant::now();
                if e.fetched.elapsed() < settings.metadata_ttl {
                    // Another reader revalidated it while this one waited.
                    set(Ok(e.version.clone()));
                    return Op::Nop;
                }
                if let Some(pause) = e.stale_pause
                    && now < pause
                {
                    set(Ok(e.version.clone()));
                    return Op::Nop;
                }
                match origin.head_once(key).await {
                    Ok(version) => {
                        origin.note_answered();
                        set(Ok(version.clone()));
                        Op::Put(Entry {
                            version,
                            fetched: now,
                            stale_pause: None,
                        })
                    }
                    Err(err) if err.origin_unreachable() => {
                        if e.fetched.elapsed() >= settings.metadata_ttl + settings.stale_if_error {
                            set(Err(err));
                            return Op::Remove;
                        }
                        set(Ok(e.version.clone()));
                        Op::Put(Entry {
                            stale_pause: Some(now + stale_pause(settings.metadata_ttl)),
                            ..e
                        })
                    }
                    Err(err) => {
                        set(Err(err));
                        Op::Remove
                    }
                }
            })
            .await;
        let result = outcome.into_inner().expect("lock");
        match result {
            Some(Ok(v)) => {
                // Served past its TTL: counted (and logged once) by the origin.
                if let Some(e) = self
                    .cache
                    .get(&(origin.dataset().to_string(), key.to_string()))
                    .await
                    && e.fetched.elapsed() >= settings.metadata_ttl
                {
                    origin.note_stale(key);
                }
                Ok(Some(v))
            }
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
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
    use crate::origin::OriginMetrics;
    use crate::origin::{DatasetSettings, RetryPolicy};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use std::time::Duration;

    async fn setup(immutable: bool) -> (Origin, Arc<InMemory>, Arc<OriginMetrics>) {
        let store = Arc::new(InMemory::new());
        store
            .put(&Path::from("k"), PutPayload::from_static(b"v1"))
            .await
            .unwrap();
        let stats = OriginMetrics::standalone();
        let settings = DatasetSettings {
            block_size: 1 << 20,
            metadata_ttl: Duration::from_secs(10),
            immutable,
            stale_if_error: Duration::ZERO,
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
        assert_eq!(stats.head_requests.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn immutable_datasets_never_revalidate() {
        let (origin, _store, stats) = setup(true).await;
        let versions = VersionCache::new(100, None);
        versions.get(&origin, "k").await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        versions.get(&origin, "k").await.unwrap();
        assert_eq!(stats.head_requests.get(), 1);
    }
}
