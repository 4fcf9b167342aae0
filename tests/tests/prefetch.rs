//! Prefetch hints: the server loads the named objects in order in the background, so the reads
//! that follow make no origin request; hints never block or grow without bound.

use std::time::Duration;

use shardcache_client::Client;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_objects_are_cached_before_they_are_read() {
    let origin = S3Origin::start(&["bucket"]).await;
    let names: Vec<String> = (0..5).map(|i| format!("shard-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        origin.put("bucket", n, bytes_for(i as u64, 3 << 20)).await;
    }
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .start()
        .await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let mut paths: Vec<String> = names.iter().map(|n| format!("ds/{n}")).collect();
    paths.push("ds/not-there".into()); // a bad hint costs nothing
    assert_eq!(client.prefetch(&paths).await.unwrap(), 6);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while names
        .iter()
        .any(|n| origin.counts("bucket", n).get_bytes < 3 << 20)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not load every object"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gets = origin.total().gets;
    for (i, p) in paths[..5].iter().enumerate() {
        assert!(client.read(p, ..).await.unwrap()[..] == bytes_for(i as u64, 3 << 20)[..]);
    }
    assert_eq!(
        origin.total().gets,
        gets,
        "reads after the hint hit the cache"
    );
    // The bad hint's failure is counted when its lookup ends, which may be after the loads.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = server.admin_get("/metrics").await;
        let done = m.contains("shardcache_prefetch_objects_total{outcome=\"loaded\"} 5")
            && m.contains("shardcache_prefetch_objects_total{outcome=\"failed\"} 1");
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A prefetch loads for the connection that asked: when it goes away, the loading stops (the
/// fill in flight ends; no further object is fetched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_stops_when_its_connection_ends() {
    const MIB: usize = 1 << 20;
    let origin = S3Origin::start(&["bucket"]).await;
    let names: Vec<String> = (0..8).map(|i| format!("shard-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        origin.put("bucket", n, bytes_for(i as u64, MIB)).await;
    }
    // 8 MiB at 2 MiB/s: loading them all would take 4 s.
    origin.limit_egress(2 * MIB as u64);
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .start()
        .await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let paths: Vec<String> = names.iter().map(|n| format!("ds/{n}")).collect();
    assert_eq!(client.prefetch(&paths).await.unwrap(), 8);
    drop(client);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = names
        .iter()
        .filter(|n| origin.counts("bucket", n).get_bytes > 0)
        .count();
    assert!(
        loaded <= 2,
        "{loaded} of 8 objects fetched after the connection that asked went away"
    );
}
