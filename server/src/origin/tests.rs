use super::*;
use object_store::memory::InMemory;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions,
};
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
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
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

async fn origin(fail: u32, hang: bool) -> (Origin, Arc<OriginMetrics>) {
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
    let stats = OriginMetrics::standalone();
    let retry = RetryPolicy {
        attempts: 3,
        attempt_timeout: Duration::from_secs(5),
        first_byte_timeout: Duration::from_secs(5),
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    let settings = DatasetSettings {
        block_size: 4,
        metadata_ttl: Duration::from_secs(30),
        immutable: false,
        stale_if_error: Duration::ZERO,
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
    let s = &stats;
    assert_eq!(s.get_requests.get(), 3);
    assert_eq!(s.retries.get(), 2);
    assert_eq!(s.bytes.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn persistent_failure_names_the_origin_error() {
    let (o, stats) = origin(10, false).await;
    let v = o.head("k").await.unwrap();
    let e = o.get_range("k", &v, 0..4).await.unwrap_err();
    assert!(matches!(e, Error::Origin { attempts: 3, .. }), "{e}");
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(stats.get_requests.get(), 3);
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
    assert_eq!(stats.retries.get(), 0);
}
