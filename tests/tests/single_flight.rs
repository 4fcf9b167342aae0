//! Concurrent misses of one block make one origin request, counted at the S3 server itself.

use shardcache_client::Client;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_cold_readers_make_one_get_per_block() {
    let origin = S3Origin::start(&["bucket"]).await;
    let size = 64 * MIB;
    let want = bytes_for(7, size);
    origin.put("bucket", "shards/big.tar", want.clone()).await;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "shards"))
        .start()
        .await;
    let block = 4 * MIB; // the default block size
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let want = std::sync::Arc::new(want);

    let mut readers = Vec::new();
    for r in 0..32 {
        let client = client.clone();
        let want = want.clone();
        readers.push(tokio::spawn(async move {
            // Half read the whole object, half read it through the readahead reader.
            let got = if r % 2 == 0 {
                client.read("ds/big.tar", ..).await.unwrap().to_vec()
            } else {
                use tokio::io::AsyncReadExt;
                let mut reader = client.open("ds/big.tar").await.unwrap();
                let mut v = Vec::new();
                reader.read_to_end(&mut v).await.unwrap();
                v
            };
            assert!(got == *want, "reader {r} got different bytes");
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    let counts = origin.counts("bucket", "shards/big.tar");
    assert_eq!(
        counts.gets,
        (size / block) as u64,
        "one GET per block: {counts:?}"
    );
    assert_eq!(counts.get_bytes, size as u64);
    let stats = server.stats.snapshot();
    assert_eq!(stats.origin_get_requests, (size / block) as u64);
    assert!(stats.single_flight_waits + stats.ram_hits > 0);
}
