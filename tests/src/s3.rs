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

/// An S3-compatible server on a loopback port, over a temporary directory.
pub struct S3Origin {
    addr: SocketAddr,
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
    /// Start the server with the given buckets.
    pub async fn start(buckets: &[&str]) -> S3Origin {
        crate::init();
        let dir = tempfile::tempdir().expect("tempdir");
        for b in buckets {
            std::fs::create_dir_all(dir.path().join(b)).expect("bucket dir");
        }
        S3Origin::start_in(dir).await
    }

    async fn start_in(dir: tempfile::TempDir) -> S3Origin {
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
        let counter = Arc::new(Counter::default());
        let egress = Arc::new(Egress::default());
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(CountingS3 {
                inner: fs,
                counter: counter.clone(),
                egress: egress.clone(),
            });
            b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                let conn = conn.into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Origin {
            addr,
            counter,
            egress,
            task,
            dir,
        }
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
        format!("http://{}", self.addr)
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
        d.access_key_id = Some(ACCESS_KEY.into());
        d.secret_access_key = Some(shardcache_server::config::Secret(SECRET_KEY.into()));
        d.allow_http = Some(true);
        d
    }

    /// An object_store client of one bucket, talking S3 to this server.
    pub fn store(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .expect("s3 client")
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
