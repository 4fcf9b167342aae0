//! Access to the object stores behind the datasets.
//!
//! An [`Origin`] is one dataset's store plus the rules for talking to it: every request has a
//! first-byte deadline, a deadline for each silence inside a body and one for the whole answer,
//! and a bounded number of retries with backoff; every range read carries `If-Match` with the
//! version the read pinned, and the ETag, size and length the origin answers with are compared
//! too (some S3-compatible servers ignore `If-Match`), so bytes of two versions are never mixed.
//! Origin fetches of all datasets share one concurrency bound, which also bounds the memory of
//! fills in flight.
//!
//! - `attempt`: the deadlines and bounded retries every request runs under;
//! - `range`: ranged reads of a pinned version, whole or cut-through;
//! - `version`: the version a read pins, and how an answer is compared with it;
//! - [`settings`]: the effective settings of a dataset's origin (file, environment, profile,
//!   defaults, merged key by key) and where each came from;
//! - `store`: those settings turned into an object_store client;
//! - [`failure`]: origin errors as one line (HTTP status and error code) and a class;
//! - [`check`]: HEAD, LIST and a one-byte read with the effective settings.

mod attempt;
mod aws;
pub mod check;
pub mod dataset;
pub mod failure;
mod local;
pub mod metrics;
mod range;
mod retry;
pub mod settings;
mod store;
mod version;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::Semaphore;

pub use dataset::{DatasetConfig, Secret};
pub use metrics::OriginMetrics;
pub use retry::RetryPolicy;
pub use settings::{OriginDefaults, OriginSettings};
pub use store::{StoreError, build_store, install_crypto_provider};
pub use version::{Version, same_etag};

use attempt::Op;
use version::version_of;

use crate::error::{Error, Result};

/// Per-dataset caching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSettings {
    pub block_size: u64,
    pub metadata_ttl: Duration,
    /// Objects never change: versions are never revalidated.
    pub immutable: bool,
    /// While the origin is unreachable, the last known version is served this long past its
    /// TTL; zero: never.
    pub stale_if_error: Duration,
}

/// One dataset's origin.
pub struct Origin {
    dataset: String,
    store: Arc<dyn ObjectStore>,
    settings: DatasetSettings,
    retry: RetryPolicy,
    permits: Arc<Semaphore>,
    metrics: Arc<OriginMetrics>,
    /// How the store was configured, for `check-origin` and the start-up log.
    described: Option<Arc<OriginSettings>>,
    /// Whether serving stale versions has been logged since the origin last answered.
    stale_logged: AtomicBool,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("dataset", &self.dataset)
            .field("store", &self.store.to_string())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Origin {
    pub fn new(
        dataset: impl Into<String>,
        store: Arc<dyn ObjectStore>,
        settings: DatasetSettings,
        retry: RetryPolicy,
        permits: Arc<Semaphore>,
        metrics: Arc<OriginMetrics>,
    ) -> Origin {
        Origin {
            dataset: dataset.into(),
            store,
            settings,
            retry,
            permits,
            metrics,
            described: None,
            stale_logged: AtomicBool::new(false),
        }
    }

    /// Attach the settings the store was built from.
    pub fn with_description(mut self, described: Arc<OriginSettings>) -> Origin {
        self.described = Some(described);
        self
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    pub fn settings(&self) -> &DatasetSettings {
        &self.settings
    }

    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn described(&self) -> Option<&Arc<OriginSettings>> {
        self.described.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<OriginMetrics> {
        &self.metrics
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| Error::BadRequest {
            reason: format!("key {key:?}: {e}"),
        })
    }

    /// A last known version is being served because the origin is unreachable: counted, and
    /// logged once until the origin answers again.
    pub fn note_stale(&self, key: &str) {
        self.metrics.stale_served.inc();
        if !self.stale_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dataset = %self.dataset,
                key,
                stale_if_error = ?self.settings.stale_if_error,
                "origin unreachable: serving the last known versions of cached objects"
            );
        }
    }

    /// The origin answered: the next stale period is logged again.
    pub fn note_answered(&self) {
        if self.stale_logged.swap(false, Ordering::Relaxed) {
            tracing::info!(dataset = %self.dataset, "origin answers again");
        }
    }

    /// Whether the origin answers at all: one HEAD of a key that should not exist, within
    /// `timeout`. Found and not found both count as answering.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let path = Path::from(".shardcache-readiness-probe");
        match tokio::time::timeout(timeout, self.store.head(&path)).await {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(failure::classify(&e).summary),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The first objects under `prefix` (one LIST page), within the first-byte deadline.
    pub async fn list_first(&self, prefix: Option<&str>, limit: usize) -> Result<Vec<ObjectMeta>> {
        let path = match prefix {
            Some(p) if !p.is_empty() => Some(self.path(p.trim_end_matches('/'))?),
            _ => None,
        };
        let what = match prefix {
            Some(p) if !p.is_empty() => format!("a listing of {p}"),
            _ => "a listing".to_string(),
        };
        let first_byte = self.retry.first_byte_timeout;
        let whole = self.retry.attempt_timeout;
        let list = async {
            let mut out = Vec::new();
            let mut listing = self.store.list(path.as_ref());
            // The first entry within the first-byte deadline, the page within the whole one.
            let first = tokio::time::timeout(first_byte, listing.next())
                .await
                .map_err(|_| ("first byte", first_byte))?;
            match first {
                Some(Ok(m)) => out.push(m),
                Some(Err(e)) => return Ok(Err(e)),
                None => return Ok(Ok(out)),
            }
            while out.len() < limit {
                match listing.next().await {
                    Some(Ok(m)) => out.push(m),
                    Some(Err(e)) => return Ok(Err(e)),
                    None => break,
                }
            }
            Ok(Ok(out))
        };
        let timed = match tokio::time::timeout(whole, list).await {
            Ok(r) => r,
            Err(_) => Err(("whole answer", whole)),
        };
        match timed {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(&what, 1, e)),
            Err((stage, timeout)) => Err(Error::OriginTimeout {
                dataset: self.dataset.clone(),
                key: what,
                attempts: 1,
                what: stage,
                timeout,
            }),
        }
    }

    /// The current version of `key` (a HEAD).
    pub async fn head(&self, key: &str) -> Result<Version> {
        let path = self.path(key)?;
        let meta = self
            .with_retry(key, Op::Head, || async {
                self.first_byte(self.store.head(&path)).await
            })
            .await?;
        Ok(version_of(&meta))
    }

    /// The current version of `key`, with one attempt (revalidations that can fall back to
    /// the last known version do not wait for retries).
    pub async fn head_once(&self, key: &str) -> Result<Version> {
        let path = self.path(key)?;
        let meta = self
            .with_attempts(1, key, Op::Head, || async {
                self.first_byte(self.store.head(&path)).await
            })
            .await?;
        Ok(version_of(&meta))
    }
}

#[cfg(test)]
mod tests;
