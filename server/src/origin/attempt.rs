//! One origin request as attempts: the first-byte deadline, the deadline for each silence inside
//! a body and one for the whole answer, bounded retries with backoff, and the error a failed
//! attempt becomes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

use super::{Origin, RetryPolicy, failure};
use crate::error::{Error, Result};

/// Which origin operation an attempt is, for its metrics.
#[derive(Clone, Copy)]
pub(super) enum Op {
    Get,
    Head,
}

/// Why one attempt failed.
pub(super) enum Fail {
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

impl Origin {
    /// The header phase of a request, within the first-byte deadline.
    pub(super) async fn first_byte<T>(
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
    pub(super) async fn read_body(
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

    pub(super) fn failed(&self, key: &str, attempts: u32, e: object_store::Error) -> Error {
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
    pub(super) async fn with_retry<T, F, Fut>(&self, key: &str, kind: Op, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        self.with_attempts(self.retry.attempts, key, kind, op).await
    }

    pub(super) async fn with_attempts<T, F, Fut>(
        &self,
        attempts: u32,
        key: &str,
        kind: Op,
        op: F,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        let attempts = attempts.max(1);
        let mut last: Option<Error> = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                self.metrics.retries.inc();
                let delay = self.retry.delay(attempt - 1, RetryPolicy::random_jitter());
                tokio::time::sleep(delay).await;
            }
            let (counter, duration) = match kind {
                Op::Get => (&self.metrics.get_requests, &self.metrics.get_duration),
                Op::Head => (&self.metrics.head_requests, &self.metrics.head_duration),
            };
            counter.inc();
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
                    self.metrics.errors.inc();
                    let retryable = failure::classify(&e).retryable();
                    let error = self.failed(key, attempt, e);
                    tracing::warn!(dataset = %self.dataset, key, attempt, error = %error, "origin request failed");
                    if !retryable {
                        return Err(error);
                    }
                    error
                }
                Err(Fail::Broken(reason)) => {
                    self.metrics.errors.inc();
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
                    self.metrics.timeouts.inc();
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
