//! An object overwritten at the origin is never served as a mix of two versions, and its new
//! version is served once the metadata TTL has passed.

use std::time::Duration;

use shardcache_client::{Client, ErrorCode};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};
use tokio::io::AsyncReadExt;

const BLOCK: usize = 64 * 1024;
const SIZE: usize = 5 * BLOCK + 123;

async fn setup(ttl: Duration, ram: u64) -> (S3Origin, TestServer, Client) {
    let origin = S3Origin::start(&["bucket"]).await;
    origin.put("bucket", "obj", bytes_for(1, SIZE)).await;
    let mut d = origin.dataset("ds", "bucket", "");
    d.block_size = Some(BLOCK as u64);
    d.metadata_ttl = Some(ttl);
    let server = TestServer::builder()
        .dataset(d)
        .config(|c| c.ram_cache = ram)
        .start()
        .await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    (origin, server, client)
}

#[tokio::test]
async fn new_version_is_served_after_the_ttl() {
    let (origin, _server, client) = setup(Duration::from_millis(700), 64 << 20).await;
    let v1 = bytes_for(1, SIZE);
    let v2 = bytes_for(2, SIZE + 1000);
    assert_eq!(&client.read("ds/obj", ..).await.unwrap()[..], &v1[..]);
    origin.put("bucket", "obj", v2.clone()).await;
    // Within the TTL the cached version is still served, whole and consistent.
    assert_eq!(&client.read("ds/obj", ..).await.unwrap()[..], &v1[..]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(&client.read("ds/obj", ..).await.unwrap()[..], &v2[..]);
    assert_eq!(client.stat("ds/obj").await.unwrap().size, v2.len() as u64);
}

#[tokio::test]
async fn stale_version_found_before_any_byte_restarts_at_the_new_one() {
    // A long TTL keeps the old version's metadata; no block of it is cached yet.
    let (origin, server, client) = setup(Duration::from_secs(3600), 64 << 20).await;
    let v1_info = client.stat("ds/obj").await.unwrap();
    let v2 = bytes_for(2, SIZE);
    origin.put("bucket", "obj", v2.clone()).await;
    // The first block fetch finds another ETag at the origin: the read restarts at v2.
    let got = client.read("ds/obj", ..).await.unwrap();
    assert!(got[..] == v2[..], "not the new version");
    let info = client.stat("ds/obj").await.unwrap();
    assert_ne!(
        info.etag, v1_info.etag,
        "metadata refreshed after the mismatch"
    );
    assert!(server.stats.snapshot().origin_head_requests >= 2);
}

#[tokio::test]
async fn pinned_reader_fails_instead_of_mixing_versions() {
    let (origin, _server, client) = setup(Duration::from_secs(3600), 64 << 20).await;
    let v1 = bytes_for(1, SIZE);
    let mut reader = client.open("ds/obj").await.unwrap();
    let mut first = vec![0u8; BLOCK];
    reader.read_exact(&mut first).await.unwrap();
    assert_eq!(first, v1[..BLOCK]);
    origin.put("bucket", "obj", bytes_for(2, SIZE)).await;
    // Let the server notice: a fresh read restarts at v2 and invalidates v1's metadata.
    client.read("ds/obj", ..).await.unwrap();
    // The reader is pinned to v1: whatever it still returns is v1, then it must fail.
    let mut rest = Vec::new();
    let err = reader.read_to_end(&mut rest).await;
    assert!(
        rest[..] == v1[BLOCK..BLOCK + rest.len()],
        "pinned reader returned other bytes"
    );
    let err = err.expect_err("the rest of v1 is gone from the origin");
    assert!(err.to_string().contains("version"), "{err}");
}

#[tokio::test]
async fn reads_racing_overwrites_see_one_version_or_an_error() {
    // Tiny RAM and TTL so reads keep going back to the origin while it changes.
    let (origin, _server, client) = setup(Duration::from_millis(1), 2 * BLOCK as u64).await;
    let versions: Vec<Vec<u8>> = (0..4)
        .map(|v| bytes_for(10 + v, SIZE + v as usize))
        .collect();
    let writer = {
        let versions = versions.clone();
        let store = origin.store("bucket");
        tokio::spawn(async move {
            use object_store::ObjectStoreExt;
            for round in 0..40 {
                let v = versions[round % versions.len()].clone();
                store.put(&"obj".into(), v.into()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut whole = 0;
    for _ in 0..60 {
        match client.read("ds/obj", ..).await {
            Ok(got) => {
                let matches = std::iter::once(bytes_for(1, SIZE))
                    .chain(versions.iter().cloned())
                    .any(|v| v[..] == got[..]);
                assert!(
                    matches,
                    "read returned bytes of no single version ({} bytes)",
                    got.len()
                );
                whole += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::PreconditionFailed), "{e}"),
        }
    }
    writer.await.unwrap();
    assert!(whole > 0, "no read completed");
}
