//! Shutdown: in-flight requests finish, idle connections close, and it does not wait out the
//! grace period because a client keeps a connection open.

use std::time::{Duration, Instant};

use shardcache_client::Client;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_reads_and_closes_idle_connections() {
    let origin = S3Origin::start(&["bucket"]).await;
    origin.put("bucket", "obj", bytes_for(5, 20 << 20)).await;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .start()
        .await;
    let idle = Client::connect(&server.tcp_endpoint()).await.unwrap();
    idle.stat("ds/obj").await.unwrap();
    let busy = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let mut stream = busy.read_stream("ds/obj", 0, None, None).await.unwrap();

    let started = Instant::now();
    let stop = tokio::spawn(server.stop());
    let mut n = 0;
    while let Some(chunk) = stream.next_chunk().await.expect("in-flight read completes") {
        n += chunk.data.len();
    }
    assert_eq!(n, 20 << 20);
    stop.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The idle client sees the connection gone, not a hang.
    let err = idle.stat("ds/obj").await.unwrap_err();
    assert!(
        err.is_retryable() || err.to_string().contains("connect"),
        "{err}"
    );
}
