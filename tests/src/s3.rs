//! A real S3 server for tests: s3s-fs behind s3s's HTTP service, with request counting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "shardcache-test";
pub const SECRET_KEY: &str = "shardcache-test-secret";
pub const REGION: &str = "us-east-1";

/// Requests the origin answered for one object.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OriginCounts {
    pub gets: u64,
    pub heads: u64,
    /// Bytes of object data sent in GET responses.
    pub get_bytes: u64,
}

#[derive(Default)]
struct Counter {
    per_object: Mutex<HashMap<String, OriginCounts>>,
}

impl Counter {
    fn bump(&self, bucket: &str, key: &str, f: impl FnOnce(&mut OriginCounts)) {
        let mut map = self.per_object.lock().expect("lock");
        f(map.entry(format!("{bucket}/{key}")).or_default());
    }
}

/// A shared egress budget for GET bodies: the origin's bandwidth to the cache cluster (an
/// object store's limit, or the cluster's uplink), so benchmarks can model a network-bound
/// origin instead of one bound by this machine's CPU.
#[derive(Default)]
struct Egress {
    /// Bytes per second for all GET bodies together; 0: unlimited.
    rate: std::sync::atomic::AtomicU64,
    /// When the bytes granted so far will have left.
    next: Mutex<Option<tokio::time::Instant>>,
}

impl Egress {
    /// Wait until `n` more bytes fit the budget.
    async fn pace(&self, n: usize) {
        let rate = self.rate.load(std::sync::atomic::Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock().expect("lock");
            let now = tokio::time::Instant::now();
            let start = next.map_or(now, |t| t.max(now));
            *next = Some(start + std::time::Duration::from_secs_f64(n as f64 / rate as f64));
            start
        };
        // Bodies run a little ahead (a few ms of credit) rather than sleep per piece: timers
        // are coarse, and the average rate is what the budget keeps.
        let slack = std::time::Duration::from_millis(5);
        if start > tokio::time::Instant::now() + slack {
            tokio::time::sleep_until(start - slack).await;
        }
    }

    fn limit(&self, body: StreamingBlob, egress: Arc<Egress>) -> StreamingBlob {
        use futures::StreamExt;
        if self.rate.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return body;
        }
        StreamingBlob::wrap(body.then(move |piece| {
            let egress = egress.clone();
            async move {
                let piece = piece.map_err(std::io::Error::other)?;
                egress.pace(piece.len()).await;
                Ok::<_, std::io::Error>(piece)
            }
        }))
    }
}

/// s3s-fs with every GET and HEAD counted.
struct CountingS3 {
    inner: s3s_fs::FileSystem,
    counter: Arc<Counter>,
    egress: Arc<Egress>,
}

#[async_trait::async_trait]
impl S3 for CountingS3 {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let mut resp = self.inner.get_object(req).await;
        self.counter.bump(&bucket, &key, |c| {
            c.gets += 1;
            if let Ok(r) = &resp {
                c.get_bytes += r.output.content_length.unwrap_or(0) as u64;
            }
        });
        if let Ok(r) = &mut resp
            && let Some(body) = r.output.body.take()
        {
            // s3s-fs yields empty pieces between file reads; over HTTP/2 each becomes an empty
            // DATA frame, which h2 clients count as a flood and answer with GOAWAY. Real S3
            // servers do not send them.
            use futures::StreamExt;
            let body = StreamingBlob::wrap(
                body.filter(|piece| std::future::ready(!matches!(piece, Ok(b) if b.is_empty())))
                    .map(|piece| piece.map_err(std::io::Error::other)),
            );
            r.output.body = Some(self.egress.limit(body, self.egress.clone()));
        }
        resp
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        self.counter.bump(&bucket, &key, |c| c.heads += 1);
        self.inner.head_object(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.inner.put_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.inner.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }
}

/// Which HTTP versions an [`S3Origin`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersions {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS).
    #[default]
    Both,
    Http1Only,
    Http2Only,
}

/// How an [`S3Origin`] is served.
#[derive(Default)]
pub struct S3OriginBuilder {
    buckets: Vec<String>,
    http: HttpVersions,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    anonymous: bool,
    keys: Vec<(String, String)>,
}

impl S3OriginBuilder {
    pub fn bucket(mut self, b: &str) -> Self {
        self.buckets.push(b.to_string());
        self
    }

    pub fn http(mut self, v: HttpVersions) -> Self {
        self.http = v;
        self
    }

    /// Serve HTTPS with this PEM certificate chain and key.
    pub fn tls(mut self, cert: &FsPath, key: &FsPath) -> Self {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// No signature checks: every request is anonymous (signed requests are refused), so a
    /// proxy may rewrite queries.
    pub fn anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// Accept this key pair too (temporary credentials a test STS hands out), beside the
    /// test keys the harness itself uses.
    pub fn key(mut self, access: &str, secret: &str) -> Self {
        self.keys.push((access.to_string(), secret.to_string()));
        self
    }

    pub async fn start(self) -> S3Origin {
        crate::init();
        let dir = tempfile::tempdir().expect("tempdir");
        for b in &self.buckets {
            std::fs::create_dir_all(dir.path().join(b)).expect("bucket dir");
        }
        S3Origin::serve(dir, self).await
    }
}

/// An S3-compatible server on a loopback port, over a temporary directory.
pub struct S3Origin {
    addr: SocketAddr,
    scheme: &'static str,
    h2_tls: Arc<std::sync::atomic::AtomicU64>,
    anonymous: bool,
    counter: Arc<Counter>,
    egress: Arc<Egress>,
    task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Drop for S3Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Origin {
    /// Start the server with the given buckets (HTTP/1.1 and HTTP/2, the test keys).
    pub async fn start(buckets: &[&str]) -> S3Origin {
        let mut b = S3Origin::builder();
        for name in buckets {
            b = b.bucket(name);
        }
        b.start().await
    }

    pub fn builder() -> S3OriginBuilder {
        S3OriginBuilder::default()
    }

    async fn serve(dir: tempfile::TempDir, opts: S3OriginBuilder) -> S3Origin {
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
        let counter = Arc::new(Counter::default());
        let egress = Arc::new(Egress::default());
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(CountingS3 {
                inner: fs,
                counter: counter.clone(),
                egress: egress.clone(),
            });
            if !opts.anonymous {
                let mut auth = s3s::auth::SimpleAuth::new();
                auth.register(ACCESS_KEY.into(), SECRET_KEY.into());
                for (a, k) in &opts.keys {
                    auth.register(a.clone(), k.clone().into());
                }
                b.set_auth(auth);
            }
            b.build()
        };
        let alpn: &[&[u8]] = match opts.http {
            HttpVersions::Both => &[b"h2", b"http/1.1"],
            HttpVersions::Http1Only => &[b"http/1.1"],
            HttpVersions::Http2Only => &[b"h2"],
        };
        let tls = opts
            .tls
            .as_ref()
            .map(|(cert, key)| crate::tls_acceptor(cert, key, alpn));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
        let addr = listener.local_addr().expect("addr");
        let versions = opts.http;
        let h2_conns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h2_tls = h2_conns.clone();
        let task = tokio::spawn(async move {
            let mut http = ConnBuilder::new(TokioExecutor::new());
            match versions {
                HttpVersions::Both => {}
                HttpVersions::Http1Only => http = http.http1_only(),
                HttpVersions::Http2Only => http = http.http2_only(),
            }
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (http, tls, h2) = (http.clone(), tls.clone(), h2_conns.clone());
                // Error answers to HEAD carry an XML body in s3s; HTTP/1.1 drops it, but over
                // HTTP/2 it goes out as DATA on a HEAD stream, a protocol error to clients.
                let s3 = service.clone();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s3 = s3.clone();
                        async move {
                            let head = req.method() == hyper::Method::HEAD;
                            let mut resp = hyper::service::Service::call(&s3, req).await?;
                            if head {
                                *resp.body_mut() = s3s::Body::empty();
                            }
                            Ok::<_, s3s::HttpError>(resp)
                        }
                    },
                );
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(socket), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                    h2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        S3Origin {
            addr,
            scheme,
            h2_tls,
            anonymous: opts.anonymous,
            counter,
            egress,
            task,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TLS connections that chose HTTP/2 by ALPN.
    pub fn h2_tls_connections(&self) -> u64 {
        self.h2_tls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Limit the bytes per second of all GET bodies together (0: no limit), like an object
    /// store's egress to a cluster; requests are not limited, only their bodies' pace.
    pub fn limit_egress(&self, bytes_per_sec: u64) {
        self.egress
            .rate
            .store(bytes_per_sec, std::sync::atomic::Ordering::Relaxed);
        *self.egress.next.lock().expect("lock") = None;
    }

    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn root(&self) -> &FsPath {
        self.dir.path()
    }

    /// A dataset config for `s3://bucket/prefix` on this server, with its keys.
    pub fn dataset(
        &self,
        name: &str,
        bucket: &str,
        prefix: &str,
    ) -> shardcache_server::config::DatasetConfig {
        let mut d = shardcache_server::config::DatasetConfig::new(
            name,
            format!("s3://{bucket}/{}", prefix.trim_matches('/')),
        );
        d.endpoint = Some(self.endpoint());
        d.region = Some(REGION.into());
        if self.anonymous {
            d.skip_signature = Some(true);
        } else {
            d.access_key_id = Some(ACCESS_KEY.into());
            d.secret_access_key = Some(shardcache_server::config::Secret(SECRET_KEY.into()));
        }
        d.allow_http = Some(self.scheme == "http");
        d
    }

    /// An object_store client of one bucket, talking S3 to this server.
    pub fn store(&self, bucket: &str) -> AmazonS3 {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_allow_http(true);
        if self.anonymous {
            b = b.with_skip_signature(true);
        } else {
            b = b
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY);
        }
        if self.scheme == "https" {
            b = b.with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_invalid_certificates(true)
                    .with_allow_http(true),
            );
        }
        b.build().expect("s3 client")
    }

    /// Upload an object through the S3 API.
    pub async fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        self.store(bucket)
            .put(&Path::from(key), PutPayload::from(data))
            .await
            .expect("put object");
    }

    /// Requests answered so far for `bucket/key`.
    pub fn counts(&self, bucket: &str, key: &str) -> OriginCounts {
        let map = self.counter.per_object.lock().expect("lock");
        map.get(&format!("{bucket}/{key}"))
            .copied()
            .unwrap_or_default()
    }

    /// Requests answered so far, all objects together.
    pub fn total(&self) -> OriginCounts {
        let map = self.counter.per_object.lock().expect("lock");
        map.values()
            .fold(OriginCounts::default(), |a, c| OriginCounts {
                gets: a.gets + c.gets,
                heads: a.heads + c.heads,
                get_bytes: a.get_bytes + c.get_bytes,
            })
    }
}
