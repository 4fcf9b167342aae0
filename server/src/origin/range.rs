//! Ranged reads of one pinned version: a whole range at once, or a cut-through stream of it,
//! and the error that names the version the origin holds instead.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt};

use super::attempt::{Fail, Op};
use super::metrics::OriginMetrics;
use super::version::{Version, changed, version_of};
use super::{Origin, failure};
use crate::error::{Error, Result};

/// What a ranged read found: the bytes, or another version.
enum Got<T> {
    Data(T),
    Changed(String),
}

impl Origin {
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
            Ok(match self.open_attempt(&path, version, &range).await? {
                Got::Data(result) => {
                    Got::Data(self.read_body(result.into_stream(), expected_len).await?)
                }
                Got::Changed(found) => Got::Changed(found),
            })
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
        self.metrics.bytes.inc_by(bytes.len() as u64);
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
        let open = || self.open_attempt(&path, version, &range);
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
            metrics: Arc<OriginMetrics>,
            dataset: String,
            key: String,
            left: u64,
            done: bool,
        }
        let state = State {
            body: result.into_stream(),
            _permit: permit,
            metrics: self.metrics.clone(),
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
                    st.metrics.errors.inc();
                    Err(fail(
                        &st,
                        "sent more bytes than the range asked for".into(),
                        false,
                    ))
                }
                Ok(Some(Ok(bytes))) => {
                    st.left -= bytes.len() as u64;
                    st.metrics.bytes.inc_by(bytes.len() as u64);
                    Ok(bytes)
                }
                Ok(None) if st.left > 0 => {
                    st.metrics.errors.inc();
                    Err(fail(
                        &st,
                        format!("the body ended {} bytes short of the range", st.left),
                        true,
                    ))
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    st.metrics.errors.inc();
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
                    st.metrics.timeouts.inc();
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

    /// One attempt at opening `range` at `version`: the answer, unless the origin holds another
    /// version or answered another range.
    async fn open_attempt(
        &self,
        path: &object_store::path::Path,
        version: &Version,
        range: &Range<u64>,
    ) -> Result<Got<object_store::GetResult>, Fail> {
        let result = self
            .first_byte(
                self.store
                    .get_opts(path, self.range_options(version, range)),
            )
            .await?;
        if let Some(found) = changed(version, &result.meta) {
            return Ok(Got::Changed(found));
        }
        if result.range != *range {
            return Err(Fail::Broken(format!(
                "answered bytes {:?} for the range {range:?}",
                result.range
            )));
        }
        Ok(Got::Data(result))
    }

    fn range_options(&self, version: &Version, range: &Range<u64>) -> GetOptions {
        GetOptions {
            if_match: version.if_match(),
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        }
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
}
