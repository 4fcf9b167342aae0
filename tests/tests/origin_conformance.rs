//! The origin conformance suite: the same checks against every kind of origin the server reads,
//! each built the way the server builds it (settings resolved, store built, `Origin` on top):
//! s3s-fs over HTTP/1.1 only, over HTTP/2 (prior knowledge) and over HTTPS with ALPN; moto's
//! S3 server and Azurite as separate processes; a local directory; memory. Then the ways an
//! origin misbehaves, through a fault proxy in front of s3s-fs: ETags quoted, weak or missing,
//! bodies shorter or longer than announced, a stall inside a body, 5xx, 503 SlowDown,
//! connection resets, a refusal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shardcache_server::Error;
use shardcache_server::config::DatasetConfig;
use shardcache_server::origin::OriginMetrics;
use shardcache_server::origin::settings::resolve;
use shardcache_server::origin::{
    DatasetSettings, Origin, OriginDefaults, RetryPolicy, build_store, same_etag,
};
use shardcache_testsuite::emulators::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto};
use shardcache_testsuite::fault::{Fault, FaultProxy, Match};
use shardcache_testsuite::{HttpVersions, S3Origin, bytes_for, test_ca};

const FIRST_BYTE: Duration = Duration::from_millis(800);

/// `d` as the server would build it, with short deadlines and fast retries.
fn origin(d: DatasetConfig) -> Origin {
    shardcache_testsuite::init();
    let env = BTreeMap::<String, String>::new();
    let defaults = OriginDefaults {
        first_byte_timeout: FIRST_BYTE,
        request_timeout: Duration::from_secs(10),
        stale_if_error: Duration::ZERO,
    };
    let settings = resolve(&d, &defaults, &env).expect("settings");
    let store = build_store(&settings, false).expect("store");
    Origin::new(
        d.name.clone(),
        store,
        DatasetSettings {
            block_size: 1 << 20,
            metadata_ttl: Duration::from_secs(30),
            immutable: false,
            stale_if_error: Duration::ZERO,
        },
        RetryPolicy {
            attempts: 3,
            attempt_timeout: Duration::from_secs(10),
            first_byte_timeout: FIRST_BYTE,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        Arc::new(tokio::sync::Semaphore::new(8)),
        OriginMetrics::standalone(),
    )
    .with_description(Arc::new(settings))
}

async fn put(o: &Origin, key: &str, data: &[u8]) {
    o.store()
        .put(&Path::from(key), PutPayload::from(data.to_vec()))
        .await
        .unwrap_or_else(|e| panic!("put {key} to {}: {e}", o.dataset()));
}

/// Keys under `prefix`, sorted, through the store's listing (what the control plane lists).
async fn listed(o: &Origin, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = o
        .store()
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys
}

/// The checks every origin passes.
async fn conformance(o: &Origin, list_count: usize) {
    let ds = o.dataset().to_string();
    let data = bytes_for(7, 300_000);
    put(o, "conf/a.bin", &data).await;

    // HEAD: size, a version, a modification time.
    let v = o.head("conf/a.bin").await.expect("head");
    assert_eq!(v.size, data.len() as u64, "{ds}");
    assert!(!v.etag.is_empty(), "{ds}: no ETag");
    let now = chrono_now_ms();
    assert!(
        (v.last_modified_ms - now).abs() < 86_400_000,
        "{ds}: last modified {} vs now {now}",
        v.last_modified_ms
    );

    // Ranged reads at the pinned version, whole and streamed.
    for range in [0..1u64, 1000..5000, 299_990..300_000, 0..300_000] {
        let got = o
            .get_range("conf/a.bin", &v, range.clone())
            .await
            .expect("get");
        assert!(
            got[..] == data[range.start as usize..range.end as usize],
            "{ds}: bytes of {range:?}"
        );
    }
    let streamed: Vec<bytes::Bytes> = o
        .open_range("conf/a.bin", &v, 10..200_010)
        .await
        .expect("open")
        .try_collect()
        .await
        .expect("stream");
    assert!(
        streamed.concat()[..] == data[10..200_010],
        "{ds}: streamed bytes"
    );

    // The 412 path: the object changes; a read of the old version names both versions.
    let changed = bytes_for(8, 300_000);
    put(o, "conf/a.bin", &changed).await;
    let v2 = o.head("conf/a.bin").await.expect("head v2");
    assert!(!same_etag(&v2.etag, &v.etag), "{ds}: ETag did not change");
    match o.get_range("conf/a.bin", &v, 0..1000).await {
        Err(Error::VersionChanged {
            expected, found, ..
        }) => {
            assert_eq!(expected, v.etag, "{ds}");
            assert!(
                same_etag(&found, &v2.etag),
                "{ds}: found {found}, now {}",
                v2.etag
            );
        }
        other => panic!("{ds}: expected a version change, got {other:?}"),
    }
    let e = o.get_range("conf/a.bin", &v, 0..1000).await.unwrap_err();
    assert!(
        e.to_string().contains(&v.etag) && !e.to_string().contains('<'),
        "{ds}: {e}"
    );
    let got = o
        .get_range("conf/a.bin", &v2, 0..1000)
        .await
        .expect("get v2");
    assert!(got[..] == changed[..1000], "{ds}");

    // Missing objects.
    assert!(
        matches!(o.head("conf/missing").await, Err(Error::NotFound { .. })),
        "{ds}"
    );

    // Listing.
    for i in 0..list_count {
        put(o, &format!("list/k-{i:04}"), b"0123456789").await;
    }
    let keys = listed(o, "list").await;
    let expected: Vec<String> = (0..list_count).map(|i| format!("list/k-{i:04}")).collect();
    assert_eq!(keys, expected, "{ds}");
    let first = o.list_first(Some("list/"), 3).await.expect("list first");
    assert_eq!(first.len(), 3.min(list_count), "{ds}");

    // The check an operator runs passes.
    let report = shardcache_server::origin::check::check(o).await;
    assert!(report.ok(), "{ds}: {report}");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn s3s_fs_over_http1_only() {
    let s3 = S3Origin::builder()
        .bucket("bkt")
        .http(HttpVersions::Http1Only)
        .start()
        .await;
    conformance(&origin(s3.dataset("h1", "bkt", "data")), 20).await;
}

#[tokio::test]
async fn s3s_fs_over_http2() {
    let s3 = S3Origin::builder()
        .bucket("bkt")
        .http(HttpVersions::Http2Only)
        .start()
        .await;
    let mut d = s3.dataset("h2", "bkt", "data");
    d.options.insert("http2_only".into(), "true".into());
    conformance(&origin(d), 20).await;
}

#[tokio::test]
async fn s3s_fs_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path(), &["127.0.0.1", "localhost"]);
    let s3 = S3Origin::builder()
        .bucket("bkt")
        .tls(&cert, &key)
        .start()
        .await;
    let mut d = s3.dataset("tls", "bkt", "data");
    d.ca_bundle = Some(ca);
    // ALPN picks HTTP/2 when the client offers it.
    d.options.insert("http1_only".into(), "false".into());
    conformance(&origin(d), 20).await;
    assert!(s3.h2_tls_connections() > 0, "HTTP/2 was negotiated");
}

#[tokio::test]
async fn moto_server() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("bkt").await;
    let mut d = DatasetConfig::new("moto", "s3://bkt/data/");
    d.endpoint = Some(moto.endpoint());
    d.region = Some("us-east-1".into());
    d.access_key_id = Some("moto".into());
    d.secret_access_key = Some(shardcache_server::config::Secret("moto".into()));
    conformance(&origin(d), 20).await;
}

#[tokio::test]
async fn azurite() {
    let Some(az) = Azurite::start().await else {
        return;
    };
    az.create_container("ctr").await;
    let mut d = DatasetConfig::new("azure", "az://ctr/data/");
    d.endpoint = Some(az.endpoint());
    d.options
        .insert("azure_storage_account_name".into(), AZURITE_ACCOUNT.into());
    d.options
        .insert("azure_storage_account_key".into(), AZURITE_KEY.into());
    conformance(&origin(d), 20).await;
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = DatasetConfig::new("local", format!("file://{}", dir.path().display()));
    conformance(&origin(d), 20).await;
}

#[tokio::test]
async fn memory() {
    conformance(&origin(DatasetConfig::new("mem", "memory://")), 20).await;
}

#[tokio::test]
async fn listings_follow_pagination() {
    let s3 = S3Origin::builder().bucket("bkt").anonymous().start().await;
    let proxy = FaultProxy::start(s3.addr()).await;
    proxy.page_size(40);
    let mut d = s3.dataset("paged", "bkt", "data");
    d.endpoint = Some(proxy.endpoint());
    let o = origin(d);
    for i in 0..130 {
        put(&o, &format!("list/k-{i:04}"), b"x").await;
    }
    let before = proxy.requests();
    let keys = listed(&o, "list").await;
    assert_eq!(keys.len(), 130);
    assert_eq!(keys[129], "list/k-0129");
    assert!(
        proxy.requests() - before >= 4,
        "four pages of 40: {} requests",
        proxy.requests() - before
    );

    if let Some(moto) = Moto::start().await {
        moto.create_bucket("bkt").await;
        let proxy = FaultProxy::start(moto.addr()).await;
        proxy.page_size(40);
        let mut d = DatasetConfig::new("moto", "s3://bkt/data/");
        d.endpoint = Some(proxy.endpoint());
        d.access_key_id = Some("moto".into());
        d.secret_access_key = Some(shardcache_server::config::Secret("moto".into()));
        let o = origin(d);
        for i in 0..130 {
            put(&o, &format!("list/k-{i:04}"), b"x").await;
        }
        let before = proxy.requests();
        assert_eq!(listed(&o, "list").await.len(), 130);
        assert!(proxy.requests() - before >= 4);
    }
}

/// s3s-fs behind a fault proxy, with one object.
async fn faulty() -> (S3Origin, FaultProxy, Origin, Vec<u8>) {
    let s3 = S3Origin::builder().bucket("bkt").anonymous().start().await;
    let proxy = FaultProxy::start(s3.addr()).await;
    let mut d = s3.dataset("faulty", "bkt", "data");
    d.endpoint = Some(proxy.endpoint());
    let o = origin(d);
    let data = bytes_for(11, 200_000);
    put(&o, "obj", &data).await;
    (s3, proxy, o, data)
}

#[tokio::test]
async fn etags_quoted_weak_or_missing() {
    let (_s3, proxy, o, data) = faulty().await;
    for fault in [Fault::UnquotedEtag, Fault::WeakEtag, Fault::NoEtag] {
        // The HEAD and every read see the same kind of ETag.
        proxy.always(Match::Any, fault.clone());
        let v = o.head("obj").await.expect("head");
        match fault {
            Fault::NoEtag => assert!(v.etag.is_empty(), "{fault:?}: {}", v.etag),
            Fault::WeakEtag => assert!(v.etag.starts_with("W/"), "{fault:?}: {}", v.etag),
            _ => assert!(!v.etag.starts_with('"'), "{fault:?}: {}", v.etag),
        }
        let got = o.get_range("obj", &v, 100..50_100).await.expect("read");
        assert!(got[..] == data[100..50_100], "{fault:?}");
        proxy.heal();
    }
    // A quoted HEAD and an unquoted GET answer name the same version.
    let v = o.head("obj").await.expect("head");
    proxy.inject(Match::Get, 1, Fault::UnquotedEtag);
    let got = o.get_range("obj", &v, 0..10).await.expect("read");
    assert!(got[..] == data[..10]);
    // Without ETags a change is still seen (size and modification time).
    proxy.always(Match::Any, Fault::NoEtag);
    let v = o.head("obj").await.expect("head");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy.heal();
    put(&o, "obj", &bytes_for(12, 200_000)).await;
    proxy.always(Match::Any, Fault::NoEtag);
    let e = o.get_range("obj", &v, 0..10).await.unwrap_err();
    assert!(matches!(e, Error::VersionChanged { .. }), "{e}");
}

#[tokio::test]
async fn bodies_shorter_or_longer_than_announced_are_retried() {
    let (_s3, proxy, o, data) = faulty().await;
    let v = o.head("obj").await.expect("head");
    proxy.inject(Match::Get, 1, Fault::ShortBody { keep: 1000 });
    proxy.inject(Match::Get, 1, Fault::LongBody { extra: 77 });
    let got = o.get_range("obj", &v, 0..100_000).await.expect("read");
    assert!(got[..] == data[..100_000]);
    assert_eq!(o.metrics().retries.get(), 2);
    // A body that is always wrong: the error says what was wrong, after the bounded attempts.
    proxy.always(Match::Get, Fault::LongBody { extra: 5 });
    let e = o.get_range("obj", &v, 0..100_000).await.unwrap_err();
    assert!(e.to_string().contains("3 attempt(s)"), "{e}");
    assert!(e.to_string().contains("bytes"), "{e}");
    // Streamed reads end with an error rather than pass on extra bytes.
    let stream = o.open_range("obj", &v, 0..100_000).await.expect("open");
    let r: Result<Vec<bytes::Bytes>, _> = stream.try_collect().await;
    assert!(r.is_err(), "a longer body must not stream through");
}

#[tokio::test]
async fn a_stall_inside_a_body_times_out_and_is_retried() {
    let (_s3, proxy, o, data) = faulty().await;
    let v = o.head("obj").await.expect("head");
    proxy.inject(Match::Get, 1, Fault::StallBody { after: 4096 });
    let started = Instant::now();
    let got = o.get_range("obj", &v, 0..150_000).await.expect("read");
    assert!(got[..] == data[..150_000]);
    assert!(
        started.elapsed() < FIRST_BYTE * 3,
        "{:?}",
        started.elapsed()
    );
    // A stalled answer without even headers, every time: bounded.
    proxy.always(Match::Head, Fault::Stall);
    let started = Instant::now();
    let e = o.head("obj").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no first byte within 800ms, 3 attempt(s)"),
        "{e}"
    );
    assert!(
        started.elapsed() < FIRST_BYTE * 4,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_slowdown_and_resets_are_retried_and_reported_in_one_line() {
    let (_s3, proxy, o, data) = faulty().await;
    let v = o.head("obj").await.expect("head");
    proxy.inject(Match::Get, 1, Fault::Status(500, "InternalError"));
    proxy.inject(Match::Get, 1, Fault::Status(503, "SlowDown"));
    let got = o.get_range("obj", &v, 0..1000).await.expect("read");
    assert!(got[..] == data[..1000]);
    proxy.inject(Match::Get, 1, Fault::Reset);
    proxy.inject(Match::Get, 1, Fault::Close);
    let got = o.get_range("obj", &v, 1000..2000).await.expect("read");
    assert!(got[..] == data[1000..2000]);

    proxy.always(Match::Get, Fault::Status(503, "SlowDown"));
    let e = o.get_range("obj", &v, 0..1000).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("HTTP 503 Service Unavailable, SlowDown: injected SlowDown"),
        "{text}"
    );
    assert!(!text.contains('<') && !text.contains('\n'), "{text}");
    assert!(e.origin_unreachable());
    proxy.heal();
    proxy.always(Match::Get, Fault::Reset);
    let e = o.get_range("obj", &v, 0..1000).await.unwrap_err();
    assert!(e.origin_unreachable(), "{e}");
    assert!(e.to_string().contains("3 attempt(s)"), "{e}");
}

#[tokio::test]
async fn a_refusal_is_an_answer_not_retried() {
    let (_s3, proxy, o, _) = faulty().await;
    let v = o.head("obj").await.expect("head");
    let before = o.metrics().get_requests.get();
    proxy.always(Match::Get, Fault::Status(403, "AccessDenied"));
    let e = o.get_range("obj", &v, 0..1000).await.unwrap_err();
    assert_eq!(o.metrics().get_requests.get() - before, 1);
    assert!(
        e.to_string().contains("HTTP 403 Forbidden, AccessDenied"),
        "{e}"
    );
    assert!(!e.origin_unreachable());
}
