//! The S3-compatible endpoint (`--s3-listen`) read by object_store's S3 client, unchanged but
//! for the endpoint URL and keys, over a real S3 origin: gets, ranges, heads, listings with a
//! delimiter and pages, SigV4 refused with a wrong secret or an unknown key, unsigned requests
//! refused unless allowed, buckets a key may not read, writes answered NotImplemented, and a
//! read through one node's endpoint served from another node's RAM.

use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for, http_get};

const READER: &str = "reader";
const READER_SECRET: &str = "reader-secret-0123456789";
const ADMIN: &str = "admin";
const ADMIN_SECRET: &str = "admin-secret-0123456789ab";

fn client(addr: std::net::SocketAddr, bucket: &str, key: &str, secret: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(format!("http://{addr}"))
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap()
}

/// The origin's objects under `train/` of bucket `bucket`: `(key in the dataset, bytes)`.
async fn objects(origin: &S3Origin) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, key) in ["a.bin", "dir/b.bin", "dir/c.bin", "dir/sub/d.bin", "e.bin"]
        .iter()
        .enumerate()
    {
        let data = bytes_for(
            i as u64,
            if i == 0 {
                (9 << 20) + 123
            } else {
                1000 + i * 7
            },
        );
        origin
            .put("bucket", &format!("train/{key}"), data.clone())
            .await;
        out.push((key.to_string(), data));
    }
    out
}

async fn server(origin: &S3Origin, dir: &std::path::Path, anonymous: bool) -> TestServer {
    let creds = dir.join("s3-credentials");
    std::fs::write(
        &creds,
        format!("# keys\n{READER}:{READER_SECRET}:ds\n{ADMIN}:{ADMIN_SECRET}\n"),
    )
    .unwrap();
    TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "train"))
        .dataset(origin.dataset("other", "bucket", "other"))
        .config(|c| {
            c.s3_listen = Some("127.0.0.1:0".parse().unwrap());
            c.s3_credentials = Some(creds);
            c.s3_anonymous = anonymous;
            c.s3_domain = Some("s3.test".into());
            c.block_size = 1 << 20;
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_reads_lists_and_is_refused_as_s3_refuses() {
    let origin = S3Origin::start(&["bucket"]).await;
    let want = objects(&origin).await;
    let dir = tempfile::tempdir().unwrap();
    let s = server(&origin, dir.path(), false).await;
    let addr = s.s3.expect("s3 endpoint");
    let store = client(addr, "ds", READER, READER_SECRET);

    // Whole objects, a range across blocks, a head with the origin's size and ETag.
    for (key, data) in &want {
        let got = store
            .get(&Path::from(key.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got[..] == data[..], "{key}");
    }
    let big = &want[0].1;
    let range = store
        .get_range(&Path::from("a.bin"), 1_000..3_500_000)
        .await
        .unwrap();
    assert!(range[..] == big[1_000..3_500_000]);
    let head = store.head(&Path::from("a.bin")).await.unwrap();
    assert_eq!(head.size, big.len() as u64);
    let at_origin = origin
        .store("bucket")
        .head(&Path::from("train/a.bin"))
        .await
        .unwrap();
    assert_eq!(
        head.e_tag.as_deref().map(|t| t.trim_matches('"')),
        at_origin.e_tag.as_deref().map(|t| t.trim_matches('"'))
    );
    // Read through the cache: the second get of the big object asks the origin for nothing.
    let before = s.stats.origin.get_requests.get();
    store
        .get(&Path::from("a.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        s.stats.origin.get_requests.get(),
        before,
        "a hot read reaches no origin"
    );

    // Listings: with a delimiter (objects and common prefixes), under a prefix, and in full.
    let listed = store.list_with_delimiter(None).await.unwrap();
    let keys: Vec<&str> = listed.objects.iter().map(|m| m.location.as_ref()).collect();
    assert_eq!(keys, ["a.bin", "e.bin"]);
    let dirs: Vec<&str> = listed.common_prefixes.iter().map(|p| p.as_ref()).collect();
    assert_eq!(dirs, ["dir"]);
    let listed = store
        .list_with_delimiter(Some(&Path::from("dir")))
        .await
        .unwrap();
    let keys: Vec<&str> = listed.objects.iter().map(|m| m.location.as_ref()).collect();
    assert_eq!(keys, ["dir/b.bin", "dir/c.bin"]);
    let mut all: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    all.sort();
    let mut names: Vec<String> = want.iter().map(|(k, _)| k.clone()).collect();
    names.sort();
    assert_eq!(all, names);

    // Refusals, as S3 words them.
    let wrong = client(addr, "ds", READER, "not-the-secret-at-all-0000");
    let e = wrong
        .get(&Path::from("a.bin"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("SignatureDoesNotMatch"), "{e}");
    let stranger = client(addr, "ds", "nobody", READER_SECRET);
    let e = stranger
        .get(&Path::from("a.bin"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidAccessKeyId"), "{e}");
    let other = client(addr, "other", READER, READER_SECRET);
    let e = other.head(&Path::from("x")).await.unwrap_err().to_string();
    assert!(
        e.contains("403") || e.contains("AccessDenied") || e.contains("Forbidden"),
        "{e}"
    );
    let e = store.get(&Path::from("missing.bin")).await.unwrap_err();
    assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    let e = store
        .get_range(&Path::from("e.bin"), 50_000..60_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidRange") || e.contains("416"), "{e}");
    let nobucket = client(addr, "nope", ADMIN, ADMIN_SECRET);
    let e = nobucket
        .get(&Path::from("a.bin"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("NoSuchBucket"), "{e}");
    let e = store
        .put(&Path::from("new.bin"), PutPayload::from_static(b"x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("NotImplemented"), "{e}");
    assert!(
        origin
            .store("bucket")
            .head(&Path::from("train/new.bin"))
            .await
            .is_err(),
        "no write reaches the origin"
    );

    // Unsigned requests: refused here (no --s3-anonymous), with S3's XML error.
    let (status, body) = http_get(addr, "/ds/a.bin").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");

    // Counted by operation and outcome, beside the native data plane's metrics.
    let (_, metrics) = s.admin_get("/metrics").await;
    let value = |op: &str, code: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("shardcache_s3_requests_total{"))
            .filter(|l| {
                l.contains(&format!("op=\"{op}\"")) && l.contains(&format!("code=\"{code}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(value("GetObject", "ok") >= 7.0, "{metrics}");
    assert_eq!(value("GetObject", "NoSuchKey"), 1.0);
    assert_eq!(value("GetObject", "InvalidRange"), 1.0);
    assert_eq!(value("GetObject", "NoSuchBucket"), 1.0);
    assert!(value("HeadObject", "AccessDenied") + value("GetObject", "AccessDenied") >= 2.0);
    assert!(value("ListObjectsV2", "ok") >= 3.0);
    let sent: f64 = metrics
        .lines()
        .find(|l| l.starts_with("shardcache_s3_sent_bytes_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(sent >= (2 * big.len()) as f64, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_reads_only_where_allowed_and_pages_of_a_listing() {
    let origin = S3Origin::start(&["bucket"]).await;
    for i in 0..25 {
        origin
            .put("bucket", &format!("train/p/{i:03}.bin"), vec![i as u8; 10])
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = server(&origin, dir.path(), true).await;
    let addr = s.s3.unwrap();
    let (status, body) = http_get(addr, "/ds/p/007.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), &[7u8; 10][..]);
    // Virtual-host style: the bucket in the Host header, under --s3-domain.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /p/009.bin HTTP/1.1\r\nHost: ds.s3.test:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer)
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.ends_with(&[9u8; 10]));
    // A listing in pages of 10: continuation tokens, then start-after.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for page in 0.. {
        let mut path = "/ds?list-type=2&prefix=p/&max-keys=10".to_string();
        if let Some(t) = &token {
            path.push_str(&format!("&continuation-token={t}"));
        }
        let (status, body) = http_get(addr, &path).await;
        assert_eq!(status, 200, "{body}");
        let keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect();
        seen.extend(keys);
        token = body.split("<NextContinuationToken>").nth(1).map(|s| {
            s.split("</NextContinuationToken>")
                .next()
                .unwrap()
                .to_string()
        });
        if token.is_none() {
            assert!(body.contains("<IsTruncated>false</IsTruncated>"), "{body}");
            assert_eq!(page, 2);
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("p/{i:03}.bin")).collect();
    assert_eq!(seen, want);
    let (_, body) = http_get(addr, "/ds?list-type=2&start-after=p/020.bin").await;
    assert_eq!(body.matches("<Key>").count(), 4, "{body}");
    let (status, body) = http_get(addr, "/ds?list-type=2&continuation-token=zz").await;
    assert_eq!(status, 400, "{body}");
    // Keys that would leave the dataset are refused before any origin hears of them.
    let (status, body) = http_get(addr, "/ds/p/..%2F..%2Fother%2Fx").await;
    assert!(status == 400 || status == 404, "{status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_through_one_nodes_endpoint_is_served_from_another_nodes_ram() {
    let origin = S3Origin::start(&["bucket"]).await;
    let data = bytes_for(3, 6 << 20);
    origin.put("bucket", "train/x.bin", data.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let peers = dir.path().join("peers");
    std::fs::write(&peers, "").unwrap();
    let a = {
        let creds = dir.path().join("creds");
        std::fs::write(&creds, format!("{READER}:{READER_SECRET}\n")).unwrap();
        TestServer::builder()
            .dataset(origin.dataset("ds", "bucket", "train"))
            .config(|c| {
                c.node_id = Some("node-a".into());
                c.s3_listen = Some("127.0.0.1:0".parse().unwrap());
                c.s3_credentials = Some(creds);
                c.block_size = 1 << 20;
                c.peers_file = Some(peers.clone());
                c.peer_refresh = std::time::Duration::from_millis(100);
                c.peer_probe_interval = std::time::Duration::from_millis(100);
            })
            .start()
            .await
    };
    let b = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "train"))
        .config(|c| {
            c.node_id = Some("node-b".into());
            c.block_size = 1 << 20;
            c.peers_file = Some(peers.clone());
            c.peer_refresh = std::time::Duration::from_millis(100);
            c.peer_probe_interval = std::time::Duration::from_millis(100);
        })
        .start()
        .await;
    std::fs::write(&peers, format!("{}\n{}\n", a.tcp, b.tcp)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a.stats.cluster.peers.with_label_values(&["up"]).get() != 1
        || b.stats.cluster.peers.with_label_values(&["up"]).get() != 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the two nodes never met"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // B reads the object first (its blocks land with their owners), then A's S3 endpoint.
    let native = Arc::new(
        shardcache_client::Client::connect(&b.tcp_endpoint())
            .await
            .unwrap(),
    );
    assert!(native.read("ds/x.bin", ..).await.unwrap()[..] == data[..]);
    let origin_before = origin.counts("bucket", "train/x.bin").gets;
    let store = client(a.s3.unwrap(), "ds", READER, READER_SECRET);
    let got = store
        .get(&Path::from("x.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == data[..]);
    assert_eq!(
        origin.counts("bucket", "train/x.bin").gets,
        origin_before,
        "no block came from the origin again"
    );
    assert!(
        a.stats.read.served_bytes_peer.get() > 0,
        "node A served blocks it took from node B"
    );
}

/// The binary refuses an endpoint nobody may use safely, and a credentials file it cannot use,
/// saying what to give.
#[test]
fn an_endpoint_without_keys_or_with_bad_ones_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(shardcache_testsuite::server_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args(["--control-listen", "off", "--s3-listen", "127.0.0.1:0"])
            .arg("--dataset")
            .arg(format!("ds=file://{}", dir.path().display()))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let said = run(&[]);
    assert!(
        said.contains("has no access keys: give --s3-credentials FILE"),
        "{said}"
    );
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "reader:short\n").unwrap();
    let said = run(&["--s3-credentials", &creds.display().to_string()]);
    assert!(
        said.contains("line 1: the secret key is shorter than 16"),
        "{said}"
    );
    std::fs::write(&creds, "reader:0123456789abcdef0123:imagenet\n").unwrap();
    let said = run(&["--s3-credentials", &creds.display().to_string()]);
    assert!(
        said.contains("bucket \"imagenet\" is no dataset of this server (ds)"),
        "{said}"
    );
}

/// An object rewritten at the origin while a GetObject body is under way: the body ends early
/// (counted), and every byte it did carry is the old version's — never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changed_mid_body_ends_the_body_never_mixing_versions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = S3Origin::start(&["bucket"]).await;
    let old = bytes_for(1, 64 << 20);
    origin.put("bucket", "train/big.bin", old.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::write(&creds, format!("{READER}:{READER_SECRET}\n")).unwrap();
    let s = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "train"))
        .config(|c| {
            c.s3_listen = Some("127.0.0.1:0".parse().unwrap());
            c.s3_credentials = Some(creds);
            c.s3_anonymous = true;
            c.block_size = 1 << 20;
            c.readahead_blocks = 1;
        })
        .start()
        .await;
    let addr = s.s3.unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /ds/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The head and the first MiB, then the origin's object changes under the reader.
    let mut got = vec![0u8; 1 << 20];
    conn.read_exact(&mut got).await.unwrap();
    let other = bytes_for(2, 64 << 20);
    origin.put("bucket", "train/big.bin", other).await;
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    got.extend_from_slice(&rest);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &got[head_end..];
    assert!(
        body.len() < old.len(),
        "the body went on to its end across a version change"
    );
    assert!(body == &old[..body.len()], "the body mixes versions");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.stats.s3.truncated.get() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut was not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An object the server knows a version of (a HEAD) rewritten at the origin before a GET:
/// the GET finds the newer version at the origin and answers it, not 412 to a client that
/// asked for no version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_the_origin_changed_answers_the_new_version() {
    let origin = S3Origin::start(&["bucket"]).await;
    origin
        .put("bucket", "train/x.bin", bytes_for(1, 3 << 20))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let s = server(&origin, dir.path(), false).await;
    let store = client(s.s3.unwrap(), "ds", READER, READER_SECRET);
    let old = store.head(&Path::from("x.bin")).await.unwrap();
    let new = bytes_for(2, 5 << 20);
    origin.put("bucket", "train/x.bin", new.clone()).await;
    let got = store.get(&Path::from("x.bin")).await.unwrap();
    assert_ne!(got.meta.e_tag, old.e_tag);
    assert_eq!(got.meta.size, new.len() as u64);
    assert!(got.bytes().await.unwrap()[..] == new[..]);
}
