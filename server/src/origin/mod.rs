//! Access to the object stores behind the datasets.
//!
//! An [`Origin`] is one dataset's store plus the rules for talking to it: every request has a
//! deadline and a bounded number of retries with backoff, every range read carries `If-Match`
//! with the version the read pinned, and the ETag the origin answers with is compared too (some
//! S3-compatible servers ignore `If-Match`), so bytes of two versions are never mixed. Origin
//! fetches of all datasets share one concurrency bound, which also bounds the memory of fills in
//! flight.

mod retry;
mod store;

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::sync::Semaphore;

pub use retry::RetryPolicy;
pub use store::{StoreError, build_store, install_crypto_provider};

use crate::error::{Error, Result};
use crate::stats::Stats;

/// Per-dataset caching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSettings {
    pub block_size: u64,
    pub metadata_ttl: Duration,
    /// Objects never change: versions are never revalidated.
    pub immutable: bool,
}

/// The version of an object that a read pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// ETag or version id; empty when the origin gives none.
    pub etag: String,
    pub last_modified_ms: i64,
}

/// One dataset's origin.
pub struct Origin {
    dataset: String,
    store: Arc<dyn ObjectStore>,
    settings: DatasetSettings,
    retry: RetryPolicy,
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
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

/// Which origin operation an attempt is, for its metrics.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Head,
}

/// Outcome of one attempt, before retry classification.
enum Attempt<T> {
    Done(T),
    Failed(object_store::Error),
    TimedOut,
}

impl Origin {
    pub fn new(
        dataset: impl Into<String>,
        store: Arc<dyn ObjectStore>,
        settings: DatasetSettings,
        retry: RetryPolicy,
        permits: Arc<Semaphore>,
        stats: Arc<Stats>,
    ) -> Origin {
        Origin {
            dataset: dataset.into(),
            store,
            settings,
            retry,
            permits,
            stats,
        }
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    pub fn settings(&self) -> &DatasetSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| Error::BadRequest {
            reason: format!("key {key:?}: {e}"),
        })
    }

    /// Whether the origin answers at all: one HEAD of a key that should not exist, within
    /// `timeout`. Found and not found both count as answering.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let path = Path::from(".shardcache-readiness-probe");
        match tokio::time::timeout(timeout, self.store.head(&path)).await {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The current version of `key` (a HEAD).
    pub async fn head(&self, key: &str) -> Result<Version> {
        let path = self.path(key)?;
        let meta = self
            .with_retry(key, Op::Head, || self.store.head(&path))
            .await?;
        Ok(Version {
            size: meta.size,
            etag: meta.e_tag.unwrap_or_default(),
            last_modified_ms: meta.last_modified.timestamp_millis(),
        })
    }

    /// Bytes `range` of `key` at `version`; [`Error::VersionChanged`] if the origin holds another.
    pub async fn get_range(
        &self,
        key: &str,
        version: &Version,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let path = self.path(key)?;
        let expected_len = range.end - range.start;
        let _permit = self.permits.acquire().await.map_err(|_| Error::Internal {
            reason: "origin limiter closed".into(),
        })?;
        let fetch = || async {
            let options = GetOptions {
                if_match: (!version.etag.is_empty()).then(|| version.etag.clone()),
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            let result = self.store.get_opts(&path, options).await?;
            let found = result.meta.e_tag.clone().unwrap_or_default();
            let size = result.meta.size;
            let bytes = result.bytes().await?;
            Ok((found, size, bytes))
        };
        // A 412 says the version changed; name the version this read pinned in the error.
        let (found, size, bytes) = self
            .with_retry(key, Op::Get, fetch)
            .await
            .map_err(|e| self.pinned(e, version))?;
        self.check_answer(
            key,
            version,
            &found,
            size,
            bytes.len() as u64 == expected_len,
        )?;
        Stats::add(&self.stats.origin_bytes, bytes.len() as u64);
        Ok(bytes)
    }

    /// Bytes `range` of `key` at `version`, as the origin sends them (cut-through). Opening
    /// the read is retried like [`Origin::get_range`]; a failure or a silence longer than the
    /// attempt timeout inside the body ends the stream with an error, and the caller resumes
    /// from what it got. Holds one origin permit until the stream is dropped.
    pub async fn open_range(
        &self,
        key: &str,
        version: &Version,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.path(key)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal {
                reason: "origin limiter closed".into(),
            })?;
        let open = || async {
            let options = GetOptions {
                if_match: (!version.etag.is_empty()).then(|| version.etag.clone()),
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            self.store.get_opts(&path, options).await
        };
        let result = self
            .with_retry(key, Op::Get, open)
            .await
            .map_err(|e| self.pinned(e, version))?;
        let found = result.meta.e_tag.clone().unwrap_or_default();
        self.check_answer(
            key,
            version,
            &found,
            result.meta.size,
            result.range == range,
        )?;
        let body = result.into_stream();
        let stats = self.stats.clone();
        let timeout = self.retry.attempt_timeout;
        let (dataset, key) = (self.dataset.clone(), key.to_string());
        let state = (body, permit, stats, dataset, key, false);
        Ok(stream::unfold(state, move |mut st| async move {
            if st.5 {
                return None;
            }
            let item = match tokio::time::timeout(timeout, st.0.next()).await {
                Ok(Some(Ok(bytes))) => {
                    Stats::add(&st.2.origin_bytes, bytes.len() as u64);
                    Ok(bytes)
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    Stats::add(&st.2.origin_errors, 1);
                    Err(Error::Origin {
                        dataset: st.3.clone(),
                        key: st.4.clone(),
                        attempts: 1,
                        source: Arc::new(e),
                    })
                }
                Err(_) => {
                    Stats::add(&st.2.origin_timeouts, 1);
                    Err(Error::OriginTimeout {
                        dataset: st.3.clone(),
                        key: st.4.clone(),
                        attempts: 1,
                        timeout,
                    })
                }
            };
            st.5 = item.is_err();
            Some((item, st))
        })
        .boxed())
    }

    /// Whether the origin answered with the pinned version (some S3-compatible servers ignore
    /// `If-Match`): the ETag it sent, the object size, and whether the range is the one asked.
    fn check_answer(
        &self,
        key: &str,
        version: &Version,
        found: &str,
        size: u64,
        range_ok: bool,
    ) -> Result<()> {
        let changed = |found: String| Error::VersionChanged {
            dataset: self.dataset.clone(),
            key: key.to_string(),
            expected: version.etag.clone(),
            found,
        };
        if !version.etag.is_empty() && !found.is_empty() && found != version.etag {
            return Err(changed(found.to_string()));
        }
        if size != version.size || !range_ok {
            return Err(changed(format!("{found} ({size} bytes)")));
        }
        Ok(())
    }

    /// A version change found by a retried request, naming the version the read pinned.
    fn pinned(&self, e: Error, version: &Version) -> Error {
        match e {
            Error::VersionChanged {
                dataset,
                key,
                found,
                ..
            } => Error::VersionChanged {
                dataset,
                key,
                expected: version.etag.clone(),
                found,
            },
            other => other,
        }
    }

    /// Run `op` with a deadline per attempt and bounded retries. Missing objects and failed
    /// preconditions are answers, not failures: they are returned at once.
    async fn with_retry<T, F, Fut>(&self, key: &str, kind: Op, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let attempts = self.retry.attempts.max(1);
        let mut last = Attempt::TimedOut;
        for attempt in 1..=attempts {
            if attempt > 1 {
                Stats::add(&self.stats.origin_retries, 1);
                let delay = self.retry.delay(attempt - 1, RetryPolicy::random_jitter());
                tokio::time::sleep(delay).await;
            }
            let (counter, duration) = match kind {
                Op::Get => (
                    &self.stats.origin_get_requests,
                    &self.stats.origin_get_duration,
                ),
                Op::Head => (
                    &self.stats.origin_head_requests,
                    &self.stats.origin_head_duration,
                ),
            };
            Stats::add(counter, 1);
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(self.retry.attempt_timeout, op()).await;
            if let Ok(Ok(_)) = &outcome {
                duration.observe(started.elapsed().as_secs_f64());
            }
            last = match outcome {
                Ok(Ok(v)) => Attempt::Done(v),
                Ok(Err(object_store::Error::NotFound { .. })) => {
                    return Err(Error::NotFound {
                        dataset: self.dataset.clone(),
                        key: key.to_string(),
                    });
                }
                Ok(Err(object_store::Error::Precondition { source, .. })) => {
                    return Err(Error::VersionChanged {
                        dataset: self.dataset.clone(),
                        key: key.to_string(),
                        expected: String::new(),
                        found: source.to_string(),
                    });
                }
                Ok(Err(e)) => Attempt::Failed(e),
                Err(_) => Attempt::TimedOut,
            };
            match &last {
                Attempt::Done(_) => break,
                Attempt::Failed(e) => {
                    Stats::add(&self.stats.origin_errors, 1);
                    tracing::warn!(dataset = %self.dataset, key, attempt, error = %e, "origin request failed");
                }
                Attempt::TimedOut => {
                    Stats::add(&self.stats.origin_timeouts, 1);
                    tracing::warn!(dataset = %self.dataset, key, attempt, timeout = ?self.retry.attempt_timeout, "origin request timed out");
                }
            }
        }
        match last {
            Attempt::Done(v) => Ok(v),
            Attempt::Failed(e) => Err(Error::Origin {
                dataset: self.dataset.clone(),
                key: key.to_string(),
                attempts,
                source: Arc::new(e),
            }),
            Attempt::TimedOut => Err(Error::OriginTimeout {
                dataset: self.dataset.clone(),
                key: key.to_string(),
                attempts,
                timeout: self.retry.attempt_timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions};
    use object_store::{PutOptions, PutPayload, PutResult};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A store whose first `fail` calls of `get_opts` fail, then delegates (logic test only).
    #[derive(Debug)]
    struct Flaky {
        inner: InMemory,
        fail: AtomicU32,
        hang: bool,
    }

    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("flaky")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Flaky {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            if options.head {
                return self.inner.get_opts(location, options).await;
            }
            if self.hang {
                std::future::pending::<()>().await;
            }
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(object_store::Error::Generic {
                    store: "flaky",
                    source: "injected failure".into(),
                });
            }
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    async fn origin(fail: u32, hang: bool) -> (Origin, Arc<Stats>) {
        let store = Flaky {
            inner: InMemory::new(),
            fail: AtomicU32::new(fail),
            hang,
        };
        store
            .inner
            .put(&Path::from("k"), PutPayload::from_static(b"0123456789"))
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let retry = RetryPolicy {
            attempts: 3,
            attempt_timeout: Duration::from_secs(5),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let settings = DatasetSettings {
            block_size: 4,
            metadata_ttl: Duration::from_secs(30),
            immutable: false,
        };
        let o = Origin::new(
            "ds",
            Arc::new(store),
            settings,
            retry,
            Arc::new(Semaphore::new(4)),
            stats.clone(),
        );
        (o, stats)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried() {
        let (o, stats) = origin(2, false).await;
        let v = o.head("k").await.unwrap();
        assert_eq!(v.size, 10);
        assert_eq!(&o.get_range("k", &v, 2..6).await.unwrap()[..], b"2345");
        let s = stats.snapshot();
        assert_eq!(s.origin_get_requests, 3);
        assert_eq!(s.origin_retries, 2);
        assert_eq!(s.origin_bytes, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn persistent_failure_names_the_origin_error() {
        let (o, stats) = origin(10, false).await;
        let v = o.head("k").await.unwrap();
        let e = o.get_range("k", &v, 0..4).await.unwrap_err();
        assert!(matches!(e, Error::Origin { attempts: 3, .. }), "{e}");
        assert!(e.to_string().contains("injected failure"), "{e}");
        assert_eq!(stats.snapshot().origin_get_requests, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn hung_origin_times_out_after_bounded_attempts() {
        let (o, _) = origin(0, true).await;
        let v = o.head("k").await.unwrap();
        let started = tokio::time::Instant::now();
        let e = o.get_range("k", &v, 0..4).await.unwrap_err();
        assert!(matches!(e, Error::OriginTimeout { attempts: 3, .. }), "{e}");
        // Three 5 s attempts plus two backoffs of at most 100 ms and 200 ms.
        assert!(
            started.elapsed() <= Duration::from_millis(15_300),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn missing_objects_and_changed_versions_are_not_retried() {
        let (o, stats) = origin(0, false).await;
        assert!(matches!(o.head("nope").await, Err(Error::NotFound { .. })));
        let mut v = o.head("k").await.unwrap();
        v.etag = "stale".into();
        let e = o.get_range("k", &v, 0..4).await.unwrap_err();
        assert!(
            matches!(&e, Error::VersionChanged { expected, .. } if expected == "stale"),
            "{e}"
        );
        assert_eq!(stats.snapshot().origin_retries, 0);
    }
}
