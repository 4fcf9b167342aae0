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
//! - [`settings`]: the effective settings of a dataset's origin (file, environment, profile,
//!   defaults, merged key by key) and where each came from;
//! - `store`: those settings turned into an object_store client;
//! - [`failure`]: origin errors as one line (HTTP status and error code) and a class;
//! - [`check`]: HEAD, LIST and a one-byte read with the effective settings.

mod aws;
pub mod check;
pub mod failure;
mod local;
mod retry;
pub mod settings;
mod store;

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::Semaphore;

pub use retry::RetryPolicy;
pub use settings::{OriginDefaults, OriginSettings};
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
    /// While the origin is unreachable, the last known version is served this long past its
    /// TTL; zero: never.
    pub stale_if_error: Duration,
}

/// The version of an object that a read pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// ETag or version id; empty when the origin gives none.
    pub etag: String,
    pub last_modified_ms: i64,
}

impl Version {
    /// The `If-Match` a read of this version carries: only strong ETags can match (RFC 9110),
    /// so a weak or missing one is checked on the answer instead.
    fn if_match(&self) -> Option<String> {
        (!self.etag.is_empty() && !self.etag.starts_with("W/")).then(|| self.etag.clone())
    }
}

/// Whether two ETags name the same version: quotes and the weak marker aside (servers differ in
/// how they write them between HEAD, GET and LIST).
pub fn same_etag(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    norm(a) == norm(b)
}

/// One dataset's origin.
pub struct Origin {
    dataset: String,
    store: Arc<dyn ObjectStore>,
    settings: DatasetSettings,
    retry: RetryPolicy,
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
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

/// Which origin operation an attempt is, for its metrics.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Head,
}

/// Why one attempt failed.
enum Fail {
    Store(object_store::Error),
    Timeout {
        what: &'static str,
        after: Duration,
    },
    /// An answer that cannot be right (a body of the wrong length): worth another attempt.
    Broken(String),
}

impl From<object_store::Error> for Fail {
    fn from(e: object_store::Error) -> Fail {
        Fail::Store(e)
    }
}

/// What a ranged read found: the bytes, or another version.
enum Got<T> {
    Data(T),
    Changed(String),
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

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| Error::BadRequest {
            reason: format!("key {key:?}: {e}"),
        })
    }

    /// A last known version is being served because the origin is unreachable: counted, and
    /// logged once until the origin answers again.
    pub fn note_stale(&self, key: &str) {
        Stats::add(&self.stats.origin_stale_served, 1);
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

    /// Bytes `range` of `key` at `version`; [`Error::VersionChanged`] if the origin holds another.
    pub async fn get_range(
        &self,
        key: &str,
        version: &Version,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let path = self.path(key)?;
        let expected_len = (range.end - range.start) as usize;
        let _permit = self.permits.acquire().await.map_err(|_| Error::Internal {
            reason: "origin limiter closed".into(),
        })?;
        let fetch = || async {
            let result = self
                .first_byte(
                    self.store
                        .get_opts(&path, self.range_options(version, &range)),
                )
                .await?;
            if let Some(found) = changed(version, &result.meta) {
                return Ok(Got::Changed(found));
            }
            if result.range != range {
                return Err(Fail::Broken(format!(
                    "answered bytes {:?} for the range {range:?}",
                    result.range
                )));
            }
            let bytes = self.read_body(result.into_stream(), expected_len).await?;
            Ok(Got::Data(bytes))
        };
        let got = self.with_retry(key, Op::Get, fetch).await;
        let bytes = match got {
            Ok(Got::Data(bytes)) => bytes,
            Ok(Got::Changed(found)) => return Err(self.version_changed(key, version, found)),
            Err(Error::VersionChanged { .. }) => {
                return Err(self.changed_at_origin(key, version).await);
            }
            Err(e) => return Err(e),
        };
        Stats::add(&self.stats.origin_bytes, bytes.len() as u64);
        Ok(bytes)
    }

    /// Bytes `range` of `key` at `version`, as the origin sends them (cut-through). Opening
    /// the read is retried like [`Origin::get_range`]; a failure, a silence longer than the
    /// first-byte deadline, or more bytes than asked for inside the body end the stream with an
    /// error, and the caller resumes from what it got. Holds one origin permit until the stream
    /// is dropped.
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
            let result = self
                .first_byte(
                    self.store
                        .get_opts(&path, self.range_options(version, &range)),
                )
                .await?;
            if let Some(found) = changed(version, &result.meta) {
                return Ok(Got::Changed(found));
            }
            if result.range != range {
                return Err(Fail::Broken(format!(
                    "answered bytes {:?} for the range {range:?}",
                    result.range
                )));
            }
            Ok(Got::Data(result))
        };
        let result = match self.with_retry(key, Op::Get, open).await {
            Ok(Got::Data(result)) => result,
            Ok(Got::Changed(found)) => return Err(self.version_changed(key, version, found)),
            Err(Error::VersionChanged { .. }) => {
                return Err(self.changed_at_origin(key, version).await);
            }
            Err(e) => return Err(e),
        };
        struct State {
            body: BoxStream<'static, object_store::Result<Bytes>>,
            _permit: tokio::sync::OwnedSemaphorePermit,
            stats: Arc<Stats>,
            dataset: String,
            key: String,
            left: u64,
            done: bool,
        }
        let state = State {
            body: result.into_stream(),
            _permit: permit,
            stats: self.stats.clone(),
            dataset: self.dataset.clone(),
            key: key.to_string(),
            left: range.end - range.start,
            done: false,
        };
        let idle = self.retry.first_byte_timeout;
        Ok(stream::unfold(state, move |mut st| async move {
            if st.done {
                return None;
            }
            let fail = |st: &State, reason: String, unreachable: bool| Error::Origin {
                dataset: st.dataset.clone(),
                key: st.key.clone(),
                attempts: 1,
                reason,
                unreachable,
                source: None,
            };
            let item = match tokio::time::timeout(idle, st.body.next()).await {
                Ok(Some(Ok(bytes))) if bytes.len() as u64 > st.left => {
                    Stats::add(&st.stats.origin_errors, 1);
                    Err(fail(
                        &st,
                        "sent more bytes than the range asked for".into(),
                        false,
                    ))
                }
                Ok(Some(Ok(bytes))) => {
                    st.left -= bytes.len() as u64;
                    Stats::add(&st.stats.origin_bytes, bytes.len() as u64);
                    Ok(bytes)
                }
                Ok(None) if st.left > 0 => {
                    Stats::add(&st.stats.origin_errors, 1);
                    Err(fail(
                        &st,
                        format!("the body ended {} bytes short of the range", st.left),
                        true,
                    ))
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    Stats::add(&st.stats.origin_errors, 1);
                    let f = failure::classify(&e);
                    Err(Error::Origin {
                        dataset: st.dataset.clone(),
                        key: st.key.clone(),
                        attempts: 1,
                        reason: f.summary.clone(),
                        unreachable: f.unreachable(),
                        source: Some(Arc::new(e)),
                    })
                }
                Err(_) => {
                    Stats::add(&st.stats.origin_timeouts, 1);
                    Err(Error::OriginTimeout {
                        dataset: st.dataset.clone(),
                        key: st.key.clone(),
                        attempts: 1,
                        what: "next body bytes",
                        timeout: idle,
                    })
                }
            };
            st.done = item.is_err();
            Some((item, st))
        })
        .boxed())
    }

    fn range_options(&self, version: &Version, range: &Range<u64>) -> GetOptions {
        GetOptions {
            if_match: version.if_match(),
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        }
    }

    /// The header phase of a request, within the first-byte deadline.
    async fn first_byte<T>(
        &self,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, Fail> {
        let after = self.retry.first_byte_timeout;
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| Fail::Timeout {
                what: "first byte",
                after,
            })?
            .map_err(Fail::Store)
    }

    /// A whole body of `expected` bytes, each silence within the first-byte deadline.
    async fn read_body(
        &self,
        mut body: BoxStream<'static, object_store::Result<Bytes>>,
        expected: usize,
    ) -> Result<Bytes, Fail> {
        let idle = self.retry.first_byte_timeout;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut got = 0usize;
        loop {
            match tokio::time::timeout(idle, body.next()).await {
                Err(_) => {
                    return Err(Fail::Timeout {
                        what: "next body bytes",
                        after: idle,
                    });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Fail::Store(e)),
                Ok(Some(Ok(chunk))) => {
                    got += chunk.len();
                    if got > expected {
                        return Err(Fail::Broken(format!(
                            "sent more than the {expected} bytes asked for"
                        )));
                    }
                    parts.push(chunk);
                }
            }
        }
        if got != expected {
            return Err(Fail::Broken(format!(
                "answered {got} bytes for a {expected}-byte range"
            )));
        }
        Ok(match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => {
                let mut buf = BytesMut::with_capacity(expected);
                for p in parts {
                    buf.extend_from_slice(&p);
                }
                buf.freeze()
            }
        })
    }

    fn version_changed(&self, key: &str, version: &Version, found: String) -> Error {
        Error::VersionChanged {
            dataset: self.dataset.clone(),
            key: key.to_string(),
            expected: version.etag.clone(),
            found,
        }
    }

    /// The origin refused the pinned version (412): ask which one it holds now, so the error
    /// names both.
    async fn changed_at_origin(&self, key: &str, version: &Version) -> Error {
        let found = match self.path(key) {
            Ok(path) => match self.first_byte(self.store.head(&path)).await {
                Ok(meta) => {
                    let v = version_of(&meta);
                    if v.etag.is_empty() {
                        format!("another version ({} bytes)", v.size)
                    } else {
                        v.etag
                    }
                }
                Err(Fail::Store(object_store::Error::NotFound { .. })) => {
                    "none (the object was deleted)".into()
                }
                Err(_) => "unknown (the HEAD that asked failed)".into(),
            },
            Err(_) => "unknown".into(),
        };
        self.version_changed(key, version, found)
    }

    fn failed(&self, key: &str, attempts: u32, e: object_store::Error) -> Error {
        let f = failure::classify(&e);
        Error::Origin {
            dataset: self.dataset.clone(),
            key: key.to_string(),
            attempts,
            reason: f.summary.clone(),
            unreachable: f.unreachable(),
            source: Some(Arc::new(e)),
        }
    }

    /// Run `op` with a deadline per attempt and bounded retries. Missing objects, failed
    /// preconditions and definitive refusals (denied, bad request) are answers, not failures:
    /// they are returned at once.
    async fn with_retry<T, F, Fut>(&self, key: &str, kind: Op, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        self.with_attempts(self.retry.attempts, key, kind, op).await
    }

    async fn with_attempts<T, F, Fut>(&self, attempts: u32, key: &str, kind: Op, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        let attempts = attempts.max(1);
        let mut last: Option<Error> = None;
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
            let whole = self.retry.attempt_timeout;
            let outcome = match tokio::time::timeout(whole, op()).await {
                Ok(r) => r,
                Err(_) => Err(Fail::Timeout {
                    what: "whole answer",
                    after: whole,
                }),
            };
            let error = match outcome {
                Ok(v) => {
                    duration.observe(started.elapsed().as_secs_f64());
                    return Ok(v);
                }
                Err(Fail::Store(object_store::Error::NotFound { .. })) => {
                    return Err(Error::NotFound {
                        dataset: self.dataset.clone(),
                        key: key.to_string(),
                    });
                }
                Err(Fail::Store(object_store::Error::Precondition { .. })) => {
                    return Err(Error::VersionChanged {
                        dataset: self.dataset.clone(),
                        key: key.to_string(),
                        expected: String::new(),
                        found: String::new(),
                    });
                }
                Err(Fail::Store(e)) => {
                    Stats::add(&self.stats.origin_errors, 1);
                    let retryable = failure::classify(&e).retryable();
                    let error = self.failed(key, attempt, e);
                    tracing::warn!(dataset = %self.dataset, key, attempt, error = %error, "origin request failed");
                    if !retryable {
                        return Err(error);
                    }
                    error
                }
                Err(Fail::Broken(reason)) => {
                    Stats::add(&self.stats.origin_errors, 1);
                    tracing::warn!(dataset = %self.dataset, key, attempt, reason, "origin answer is broken");
                    Error::Origin {
                        dataset: self.dataset.clone(),
                        key: key.to_string(),
                        attempts: attempt,
                        reason,
                        unreachable: true,
                        source: None,
                    }
                }
                Err(Fail::Timeout { what, after }) => {
                    Stats::add(&self.stats.origin_timeouts, 1);
                    tracing::warn!(dataset = %self.dataset, key, attempt, what, timeout = ?after, "origin request timed out");
                    Error::OriginTimeout {
                        dataset: self.dataset.clone(),
                        key: key.to_string(),
                        attempts: attempt,
                        what,
                        timeout: after,
                    }
                }
            };
            last = Some(error);
        }
        Err(last.expect("at least one attempt"))
    }
}

fn version_of(meta: &ObjectMeta) -> Version {
    Version {
        size: meta.size,
        etag: meta.e_tag.clone().unwrap_or_default(),
        last_modified_ms: meta.last_modified.timestamp_millis(),
    }
}

/// The version an answer shows, if it is not `pinned`: another ETag, size, or (when the origin
/// gives no ETags) modification time.
fn changed(pinned: &Version, meta: &ObjectMeta) -> Option<String> {
    let found = meta.e_tag.clone().unwrap_or_default();
    if !pinned.etag.is_empty() && !found.is_empty() && !same_etag(&found, &pinned.etag) {
        return Some(found);
    }
    if meta.size != pinned.size {
        return Some(format!("{found} ({} bytes)", meta.size).trim().to_string());
    }
    if (pinned.etag.is_empty() || found.is_empty())
        && meta.last_modified.timestamp_millis() != pinned.last_modified_ms
    {
        return Some(format!(
            "a version modified at {}",
            meta.last_modified.to_rfc3339()
        ));
    }
    None
}

#[cfg(test)]
mod tests;
