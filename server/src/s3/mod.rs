//! The S3-compatible read endpoint (`--s3-listen`): each dataset is a bucket, so any S3 client
//! reads through the cache by pointing its endpoint URL here.
//!
//! s3s does the S3 side (routing, XML, SigV4 headers and presigned URLs, error documents); this
//! module maps its operations onto the same read path as the native protocol
//! ([`CacheService`]: single flight, tiers, peers, version pinning). GetObject streams the
//! service's chunks as they come, so memory stays at a chunk per response whatever the
//! object's size; every chunk of one response is read at the version the response started
//! with, and a change mid-object ends the body early (the client sees a short read, never
//! mixed bytes). HeadObject, ListObjectsV2, ListBuckets, GetBucketLocation and HeadBucket are
//! answered; every other operation (all writes) is NotImplemented, s3s's default.

mod keys;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use hyper_util::rt::TokioIo;
use s3s::dto::{
    Bucket, CommonPrefix, ETag, ETagCondition, GetBucketLocationInput, GetBucketLocationOutput,
    GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsV2Input, ListObjectsV2Output,
    Object, Range, StreamingBlob, Timestamp,
};
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use shardcache_proto::{ErrorCode, ObjectInfo, ObjectPath, ReadRequest};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use keys::{Keys, KeysError};

use crate::drain::Draining;
use crate::error::Error;
use crate::metrics::S3Metrics;
use crate::service::CacheService;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// Time requests in flight get to finish once the drain starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time a connection has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most keys one ListObjectsV2 page returns (S3's own limit).
const MAX_KEYS: usize = 1000;
/// Most objects one listing walks at the origin before it asks for a longer prefix.
const MAX_LISTED: usize = 100_000;
/// Listings walked at once (each holds up to MAX_LISTED entries, ~200 bytes each); more wait
/// up to LISTING_WAIT, then are answered SlowDown.
const LISTINGS_AT_ONCE: usize = 4;
const LISTING_WAIT: Duration = Duration::from_secs(10);

/// The S3 operations, over this node's read path.
pub struct Endpoint {
    service: Arc<CacheService>,
    keys: Arc<Keys>,
    metrics: Arc<S3Metrics>,
    listings: tokio::sync::Semaphore,
}

impl Endpoint {
    pub fn new(service: Arc<CacheService>, keys: Arc<Keys>, metrics: Arc<S3Metrics>) -> Endpoint {
        Endpoint {
            service,
            keys,
            metrics,
            listings: tokio::sync::Semaphore::new(LISTINGS_AT_ONCE),
        }
    }

    /// `work`, timed and counted by its outcome; failures other than a missing key or bucket
    /// logged.
    async fn observed<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = S3Result<T>>,
    ) -> S3Result<T> {
        let started = std::time::Instant::now();
        let result = work.await;
        let m = &self.metrics;
        m.duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => m.requests.with_label_values(&[op, "ok"]).inc(),
            Err(e) => {
                let code = e.code().as_str();
                m.requests.with_label_values(&[op, code]).inc();
                match e.code() {
                    S3ErrorCode::NoSuchKey
                    | S3ErrorCode::NoSuchBucket
                    | S3ErrorCode::NotModified
                    | S3ErrorCode::PreconditionFailed
                    | S3ErrorCode::InvalidRange => {
                        tracing::debug!(op, code, message = e.message(), "S3 request refused")
                    }
                    _ => tracing::info!(op, code, message = e.message(), "S3 request failed"),
                }
            }
        }
        result
    }

    /// The bucket's dataset, or NoSuchBucket.
    fn origin(&self, bucket: &str) -> S3Result<Arc<crate::origin::Origin>> {
        self.service
            .origin(bucket)
            .map_err(|_| s3_error!(NoSuchBucket, "no dataset {bucket} on this server"))
    }

    /// The object's current version, or NoSuchBucket / NoSuchKey.
    async fn info(&self, bucket: &str, key: &str) -> S3Result<(String, ObjectInfo)> {
        self.origin(bucket)?;
        let path = object_path(bucket, key)?;
        let info = self.service.stat(&path).await.map_err(s3_err)?;
        Ok((path, info))
    }
}

/// `BUCKET/KEY` as the read path names it, keys checked by its rules (no `..`, no empty
/// segments).
fn object_path(bucket: &str, key: &str) -> S3Result<String> {
    let path = format!("{bucket}/{key}");
    ObjectPath::parse(&path).map_err(|e| s3_error!(InvalidArgument, "key {key:?}: {e}"))?;
    Ok(path)
}

/// The read path's error as S3 says it.
fn s3_err(e: Error) -> S3Error {
    let code = match e.code() {
        ErrorCode::UnknownDataset => S3ErrorCode::NoSuchBucket,
        ErrorCode::NotFound => S3ErrorCode::NoSuchKey,
        ErrorCode::InvalidKey | ErrorCode::BadRequest => S3ErrorCode::InvalidArgument,
        ErrorCode::RangeNotSatisfiable => S3ErrorCode::InvalidRange,
        ErrorCode::PreconditionFailed => S3ErrorCode::PreconditionFailed,
        ErrorCode::Busy => S3ErrorCode::SlowDown,
        ErrorCode::OriginUnavailable => S3ErrorCode::ServiceUnavailable,
        ErrorCode::Forbidden | ErrorCode::Unauthenticated => S3ErrorCode::AccessDenied,
        _ => S3ErrorCode::InternalError,
    };
    S3Error::with_message(code, e.to_string())
}

/// An origin ETag as S3 shows it: the value inside the quotes.
fn etag(info: &ObjectInfo) -> ETag {
    ETag::Strong(info.etag.trim_matches('"').to_string())
}

fn last_modified(info: &ObjectInfo) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(info.last_modified_ms.max(0) as u64))
}

fn unix_seconds(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn matches(cond: &ETagCondition, info: &ObjectInfo) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value() == info.etag.trim_matches('"'),
    }
}

/// The conditional headers, in RFC 9110's order: If-Match, else If-Unmodified-Since; then
/// If-None-Match (304), else If-Modified-Since (304).
fn preconditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = info.last_modified_ms.div_euclid(1000);
    match (if_match, if_unmodified_since) {
        (Some(c), _) if !matches(c, info) => {
            return Err(s3_error!(
                PreconditionFailed,
                "If-Match: the object's ETag is {}",
                info.etag
            ));
        }
        (None, Some(t)) if modified > unix_seconds(t) => {
            return Err(s3_error!(
                PreconditionFailed,
                "If-Unmodified-Since: the object changed since"
            ));
        }
        _ => {}
    }
    let not_modified = match (if_none_match, if_modified_since) {
        (Some(c), _) => matches(c, info),
        (None, Some(t)) => modified <= unix_seconds(t),
        (None, None) => false,
    };
    if not_modified {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

/// The byte range a Range header names in an object of `size` bytes.
fn byte_range(range: Option<&Range>, size: u64) -> S3Result<Option<std::ops::Range<u64>>> {
    match range {
        None => Ok(None),
        Some(r) => r.check(size).map(Some).map_err(|_| {
            s3_error!(
                InvalidRange,
                "the range is past the end of the object ({size} bytes)"
            )
        }),
    }
}

/// The service's chunk stream as an HTTP body: `Sync` (which the body needs) by owning the
/// stream behind a mutex only ever taken through `&mut`.
struct Body(std::sync::Mutex<BoxStream<'static, Result<Bytes, BodyError>>>);

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().0.get_mut() {
            Ok(stream) => stream.poll_next_unpin(cx),
            Err(_) => Poll::Ready(None),
        }
    }
}

/// What ends a body early.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(String);

/// The operations, each as answered before it is counted.
impl Endpoint {
    async fn get_object_answer(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "partNumber: ask for a Range instead"
            ));
        }
        // The version known here may be stale (within metadata_ttl): the read, pinned to it,
        // then finds the origin's newer one and refuses; the version cache has forgotten the
        // old one, so the request is answered once more from the start, at the new version.
        let mut retried = false;
        let (info, range, read) = loop {
            let (path, info) = self.info(&input.bucket, &input.key).await?;
            preconditions(
                &info,
                input.if_match.as_ref(),
                input.if_unmodified_since.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
            )?;
            let range = byte_range(input.range.as_ref(), info.size)?;
            let (offset, length) = match &range {
                Some(r) => (r.start, r.end - r.start),
                None => (0, info.size),
            };
            // Pinned to the version just checked: a change during the body ends it.
            let read = self
                .service
                .read(ReadRequest {
                    path,
                    offset,
                    length: Some(length),
                    if_match: Some(info.etag.clone()),
                })
                .await;
            match read {
                Ok(read) => break (info, range, read),
                Err(Error::VersionChanged { .. }) if !retried && input.if_match.is_none() => {
                    retried = true;
                }
                Err(e) => return Err(s3_err(e)),
            }
        };
        let length = range.as_ref().map_or(info.size, |r| r.end - r.start);
        let (sent, cut) = (self.metrics.clone(), self.metrics.clone());
        let chunks = read
            .chunks
            .map_ok(move |c| {
                sent.sent_bytes.inc_by(c.data.len() as u64);
                c.data
            })
            .map_err(move |e| {
                cut.truncated.inc();
                tracing::warn!(error = %e, "S3 GetObject ended before its last byte");
                BodyError(e.to_string())
            })
            .boxed();
        let body = StreamingBlob::wrap(Body(std::sync::Mutex::new(chunks)));
        let content_range = range
            .as_ref()
            .map(|r| format!("bytes {}-{}/{}", r.start, r.end - 1, info.size));
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            content_length: Some(length as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&info)),
            last_modified: Some(last_modified(&info)),
            content_type: Some("application/octet-stream".into()),
            ..Default::default()
        }))
    }

    async fn head_object_answer(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "partNumber: ask for a Range instead"
            ));
        }
        let (_, info) = self.info(&input.bucket, &input.key).await?;
        preconditions(
            &info,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
        )?;
        let range = byte_range(input.range.as_ref(), info.size)?;
        let length = range.as_ref().map_or(info.size, |r| r.end - r.start);
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(length as i64),
            content_range: range.map(|r| format!("bytes {}-{}/{}", r.start, r.end - 1, info.size)),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&info)),
            last_modified: Some(last_modified(&info)),
            content_type: Some("application/octet-stream".into()),
            ..Default::default()
        }))
    }

    async fn head_bucket_answer(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.origin(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location_answer(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.origin(&req.input.bucket)?;
        // No constraint: us-east-1, what clients assume of an endpoint of their own.
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets_answer(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let who = req.credentials.as_ref().map(|c| c.access_key.as_str());
        let now = Timestamp::from(SystemTime::now());
        let buckets = self
            .service
            .datasets()
            .filter(|d| self.keys.may_read(who, d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|d| Bucket {
                name: Some(d.to_string()),
                creation_date: Some(now.clone()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn list_objects_v2_answer(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let origin = self.origin(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = input
            .max_keys
            .map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS));
        // Where this page starts: after the continuation token's key, else after start-after.
        let after = match &input.continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => input.start_after.clone(),
        };
        // The origin lists whole directories: the prefix's, filtered by the whole prefix.
        let dir = match prefix.rsplit_once('/') {
            Some((dir, _)) if !dir.is_empty() => Some(object_store::path::Path::from(dir)),
            _ => None,
        };
        let _slot = tokio::time::timeout(LISTING_WAIT, self.listings.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                s3_error!(
                    SlowDown,
                    "{LISTINGS_AT_ONCE} listings are running; retry later"
                )
            })?;
        let mut listing = origin.store().list(dir.as_ref());
        let mut all = Vec::new();
        while let Some(meta) = listing.try_next().await.map_err(|e| {
            s3_error!(
                ServiceUnavailable,
                "cannot list {}/{prefix} at the origin: {e}",
                input.bucket
            )
        })? {
            let key = meta.location.as_ref().to_string();
            if key.starts_with(&prefix) {
                all.push(meta);
                if all.len() > MAX_LISTED {
                    return Err(s3_error!(
                        InvalidRequest,
                        "more than {MAX_LISTED} objects under {}/{prefix}: list a longer prefix",
                        input.bucket
                    ));
                }
            }
        }
        all.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        // Entries in key order: objects, and (with a delimiter) the common prefixes that roll
        // up the keys with the delimiter after the prefix; each counts once against max-keys.
        let mut contents = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut last = None;
        for meta in &all {
            let key = meta.location.as_ref();
            let entry = match &delimiter {
                Some(d) => match key[prefix.len()..].find(d.as_str()) {
                    Some(at) => key[..prefix.len() + at + d.len()].to_string(),
                    None => key.to_string(),
                },
                None => key.to_string(),
            };
            if after.as_ref().is_some_and(|a| entry.as_str() <= a.as_str()) {
                continue;
            }
            if prefixes.last() == Some(&entry) {
                continue;
            }
            if contents.len() + prefixes.len() == max_keys {
                truncated = true;
                break;
            }
            if entry != key {
                prefixes.push(entry.clone());
            } else {
                contents.push(Object {
                    key: Some(key.to_string()),
                    size: Some(meta.size as i64),
                    e_tag: meta
                        .e_tag
                        .as_ref()
                        .map(|t| ETag::Strong(t.trim_matches('"').to_string())),
                    last_modified: Some(Timestamp::from(SystemTime::from(meta.last_modified))),
                    ..Default::default()
                });
            }
            last = Some(entry);
        }
        let key_count = (contents.len() + prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            is_truncated: Some(truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: if truncated {
                last.as_deref().map(encode_token)
            } else {
                None
            },
            start_after: input.start_after,
            contents: Some(contents),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

/// The trait's answered operations: each its `_answer` method, timed and counted under its S3
/// name (the names `crate::metrics::S3_OPERATIONS` gives series from the start).
macro_rules! answered {
    ($($op:ident => $answer:ident($input:ident) -> $output:ident as $name:literal;)*) => {
        #[async_trait::async_trait]
        impl S3 for Endpoint {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.observed($name, self.$answer(req)).await
                }
            )*
        }
    };
}

answered! {
    get_object => get_object_answer(GetObjectInput) -> GetObjectOutput as "GetObject";
    head_object => head_object_answer(HeadObjectInput) -> HeadObjectOutput as "HeadObject";
    head_bucket => head_bucket_answer(HeadBucketInput) -> HeadBucketOutput as "HeadBucket";
    get_bucket_location => get_bucket_location_answer(GetBucketLocationInput)
        -> GetBucketLocationOutput as "GetBucketLocation";
    list_buckets => list_buckets_answer(ListBucketsInput) -> ListBucketsOutput as "ListBuckets";
    list_objects_v2 => list_objects_v2_answer(ListObjectsV2Input)
        -> ListObjectsV2Output as "ListObjectsV2";
}

/// A continuation token: the last entry of the page, hex-encoded (opaque to clients).
fn encode_token(last: &str) -> String {
    last.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> S3Result<String> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "the continuation token is not one this server gave"
        )
    };
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<S3Result<Vec<u8>>>()?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// Virtual-host-style requests under `--s3-domain`: `BUCKET.DOMAIN[:PORT]` names the bucket;
/// any other host (the domain itself, an address) is path-style.
struct Domain(String);

impl s3s::host::S3Host for Domain {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            _ => host,
        };
        let bucket = name
            .strip_suffix(self.0.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty());
        Ok(match bucket {
            Some(b) => s3s::host::VirtualHost::new(self.0.as_str()).with_bucket(b.to_string()),
            None => s3s::host::VirtualHost::new(name),
        })
    }
}

/// Bucket names: this server's datasets, or any name S3 allows (answered NoSuchBucket).
struct Buckets(BTreeSet<String>);

impl s3s::validation::NameValidation for Buckets {
    fn validate_bucket_name(&self, name: &str) -> bool {
        self.0.contains(name)
            || s3s::validation::AwsNameValidation::new().validate_bucket_name(name)
    }
}

/// Serve the endpoint until `draining` turns true; requests in flight then finish.
pub async fn serve(
    listener: TcpListener,
    service: Arc<CacheService>,
    keys: Arc<Keys>,
    metrics: Arc<S3Metrics>,
    domain: Option<String>,
    mut draining: Draining,
) {
    let datasets: BTreeSet<String> = service.datasets().map(str::to_string).collect();
    let mut builder = S3ServiceBuilder::new(Endpoint::new(service, keys.clone(), metrics.clone()));
    // Dataset names are buckets even where S3's naming rules are stricter (`ds`, `my_data`).
    builder.set_validation(Buckets(datasets));
    // Signed requests are checked against the keys; unsigned ones reach the access check,
    // which lets them through only with --s3-anonymous.
    builder.set_auth(keys::Auth(keys.clone()));
    builder.set_access(keys::Access(keys, metrics));
    if let Some(domain) = domain {
        builder.set_host(Domain(domain.trim_matches('.').to_ascii_lowercase()));
    }
    let s3 = builder.build();
    let mut conns = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some((stream, slot)) =
        crate::admin::accept(&listener, &slots, &mut draining, &mut conns).await
    {
        let _ = stream.set_nodelay(true);
        let s3 = s3.clone();
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), s3);
        let conn = graceful.watch(conn);
        conns.spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    // Idle connections close, requests in flight finish.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    conns.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(etag: &str, modified_s: i64) -> ObjectInfo {
        ObjectInfo {
            size: 10,
            etag: etag.into(),
            last_modified_ms: modified_s * 1000 + 500,
            block_size: 4,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from(UNIX_EPOCH + Duration::from_secs(s as u64))
    }

    fn code(r: S3Result<()>) -> Option<S3ErrorCode> {
        r.err().map(|e| e.code().clone())
    }

    #[test]
    fn preconditions_follow_rfc_9110() {
        let i = info("\"abc\"", 1000);
        let tag = |t: &str| ETagCondition::ETag(ETag::Strong(t.into()));
        assert_eq!(
            code(preconditions(&i, Some(&tag("abc")), None, None, None)),
            None
        );
        assert_eq!(
            code(preconditions(&i, Some(&tag("x")), None, None, None)),
            Some(S3ErrorCode::PreconditionFailed)
        );
        assert_eq!(
            code(preconditions(
                &i,
                Some(&ETagCondition::Any),
                None,
                None,
                None
            )),
            None
        );
        assert_eq!(
            code(preconditions(&i, None, Some(&at(999)), None, None)),
            Some(S3ErrorCode::PreconditionFailed)
        );
        assert_eq!(
            code(preconditions(&i, None, Some(&at(1000)), None, None)),
            None
        );
        assert_eq!(
            code(preconditions(&i, None, None, Some(&tag("abc")), None)),
            Some(S3ErrorCode::NotModified)
        );
        assert_eq!(
            code(preconditions(&i, None, None, Some(&tag("x")), None)),
            None
        );
        assert_eq!(
            code(preconditions(&i, None, None, None, Some(&at(1000)))),
            Some(S3ErrorCode::NotModified)
        );
        assert_eq!(
            code(preconditions(&i, None, None, None, Some(&at(999)))),
            None
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            code(preconditions(
                &i,
                None,
                None,
                Some(&tag("x")),
                Some(&at(2000))
            )),
            None
        );
    }

    #[test]
    fn continuation_tokens_round_trip_and_bad_ones_are_refused() {
        for key in ["", "train/shard-0001.tar", "ünïcode/ключ"] {
            assert_eq!(decode_token(&encode_token(key)).unwrap(), key);
        }
        for bad in ["abc", "zz", "ff"] {
            assert!(decode_token(bad).is_err(), "{bad}");
        }
    }
}
