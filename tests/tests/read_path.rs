//! Reads through the cache from a real S3 server and from a local directory: whole objects and
//! ranges byte-exact, over TCP and QUIC, with the async, reader and blocking APIs.

use std::io::{Read, Seek, SeekFrom};

use shardcache_client::{BlockingClient, Client, ClientOptions};
use shardcache_server::config::DatasetConfig;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const BLOCK: usize = 256 * 1024;

/// Sizes around block boundaries, including empty.
const SIZES: &[usize] = &[0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + BLOCK / 2];

async fn s3_setup() -> (S3Origin, TestServer) {
    let origin = S3Origin::start(&["bucket"]).await;
    for (i, &size) in SIZES.iter().enumerate() {
        origin
            .put(
                "bucket",
                &format!("train/obj-{i}"),
                bytes_for(i as u64, size),
            )
            .await;
    }
    let mut d = origin.dataset("ds", "bucket", "train");
    d.block_size = Some(BLOCK as u64);
    let server = TestServer::builder().dataset(d).start().await;
    (origin, server)
}

fn quic_options() -> ClientOptions {
    ClientOptions {
        insecure_skip_verify: true,
        ..ClientOptions::default()
    }
}

/// Ranges of an object of `size` bytes worth checking: edges, block boundaries, the middle.
fn ranges(size: u64) -> Vec<(u64, Option<u64>)> {
    let b = BLOCK as u64;
    let mut out = vec![(0, None), (0, Some(0)), (size, None), (0, Some(size + 100))];
    for &(off, len) in &[
        (1, 10),
        (b - 3, 7),
        (b, b),
        (b / 2, 2 * b),
        (size / 3, size / 3),
    ] {
        if off <= size {
            out.push((off, Some(len)));
        }
    }
    out
}

async fn check_all_reads(client: &Client) {
    for (i, &size) in SIZES.iter().enumerate() {
        let path = format!("ds/obj-{i}");
        let want = bytes_for(i as u64, size);
        let info = client.stat(&path).await.unwrap();
        assert_eq!(info.size, size as u64);
        assert!(!info.etag.is_empty());
        assert_eq!(
            &client.read(&path, ..).await.unwrap()[..],
            &want[..],
            "{path} whole"
        );
        for (off, len) in ranges(size as u64) {
            let end = len.map_or(size, |l| (off + l).min(size as u64) as usize);
            let got = match len {
                Some(l) => client.read(&path, off..off + l).await.unwrap(),
                None => client.read(&path, off..).await.unwrap(),
            };
            assert_eq!(
                &got[..],
                &want[off as usize..end],
                "{path} range {off}+{len:?}"
            );
        }
        // read_into fills a buffer and reports a short count at the end.
        let mut buf = vec![0u8; BLOCK + 10];
        let n = client
            .read_into(&path, 5.min(size as u64), &mut buf)
            .await
            .unwrap();
        let start = 5.min(size);
        assert_eq!(n, (size - start).min(BLOCK + 10));
        assert_eq!(&buf[..n], &want[start..start + n]);
    }
}

#[tokio::test]
async fn s3_reads_are_byte_exact_over_tcp() {
    let (_origin, server) = s3_setup().await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    check_all_reads(&client).await;
    // Second pass from RAM.
    let before = server.stats.snapshot();
    check_all_reads(&client).await;
    let after = server.stats.snapshot();
    assert_eq!(
        after.origin_get_requests, before.origin_get_requests,
        "hot reads hit the origin"
    );
    assert!(after.ram_hits > before.ram_hits);
}

#[tokio::test]
async fn s3_reads_are_byte_exact_over_quic() {
    let (_origin, server) = s3_setup().await;
    let client = Client::connect_with(&server.quic_endpoint(), quic_options())
        .await
        .unwrap();
    check_all_reads(&client).await;
}

#[tokio::test]
async fn quic_refuses_an_untrusted_certificate() {
    let (_origin, server) = s3_setup().await;
    let err = Client::connect(&server.quic_endpoint())
        .await
        .err()
        .expect("no trust anchor");
    assert!(err.to_string().contains("CA"), "{err}");
}

#[tokio::test]
async fn local_directory_reads_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (i, &size) in SIZES.iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("obj-{i}")),
            bytes_for(i as u64, size),
        )
        .unwrap();
    }
    let mut d = DatasetConfig::new("ds", format!("file://{}", dir.path().display()));
    d.block_size = Some(BLOCK as u64);
    let server = TestServer::builder().dataset(d).start().await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    check_all_reads(&client).await;
}

#[tokio::test]
async fn reader_streams_and_seeks() {
    let (_origin, server) = s3_setup().await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let i = SIZES.len() - 1;
    let want = bytes_for(i as u64, SIZES[i]);
    let mut reader = client.open(&format!("ds/obj-{i}")).await.unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, want);
    for pos in [
        0u64,
        17,
        BLOCK as u64 - 1,
        2 * BLOCK as u64 + 5,
        want.len() as u64 - 3,
    ] {
        reader.seek(SeekFrom::Start(pos)).await.unwrap();
        let mut buf = vec![0u8; 1000];
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &want[pos as usize..pos as usize + n], "at {pos}");
    }
    let end = reader.seek(SeekFrom::End(0)).await.unwrap();
    assert_eq!(end, want.len() as u64);
    assert_eq!(reader.read(&mut [0u8; 10]).await.unwrap(), 0, "EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_client_reads_and_seeks() {
    let (_origin, server) = s3_setup().await;
    let endpoint = server.tcp_endpoint();
    tokio::task::spawn_blocking(move || {
        let client = BlockingClient::connect(&endpoint).unwrap();
        let i = SIZES.len() - 1;
        let want = bytes_for(i as u64, SIZES[i]);
        let path = format!("ds/obj-{i}");
        assert_eq!(&client.read(&path, ..).unwrap()[..], &want[..]);
        assert_eq!(client.stat(&path).unwrap().size, want.len() as u64);
        let mut reader = client.open(&path).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, want);
        reader.seek(SeekFrom::Start(BLOCK as u64 + 1)).unwrap();
        let mut buf = [0u8; 64];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..], &want[BLOCK + 1..BLOCK + 65]);
    })
    .await
    .unwrap();
}

/// A bit flipped in the RAM copy of cached blocks is never delivered: a part of a block is
/// checked against the block's stored CRC, found damaged, dropped and fetched again; a whole
/// block goes with its stored CRC, so the client catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_ram_copies_are_caught_never_delivered() {
    const BS: usize = 256 * 1024;
    let origin = S3Origin::start(&["bucket"]).await;
    let want = bytes_for(11, 4 * BS);
    origin.put("bucket", "obj", want.clone()).await;
    let mut d = origin.dataset("ds", "bucket", "");
    d.block_size = Some(BS as u64);
    let server = TestServer::builder().dataset(d).start().await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    assert!(client.read("ds/obj", ..).await.unwrap()[..] == want[..]);
    let gets = origin.total().gets;
    assert_eq!(server.service.ram().damage_all_for_tests().await, 4);

    // Parts of blocks: caught on the server, fetched again, the right bytes served.
    let got = client.read("ds/obj", 1000..BS as u64 + 5000).await.unwrap();
    assert!(got[..] == want[1000..BS + 5000]);
    assert!(server.stats.read.damaged_blocks.get() >= 2);
    assert!(
        origin.total().gets > gets,
        "the damaged blocks were fetched again"
    );

    // A whole damaged block (block 3, untouched so far): the client's check catches it, and no
    // wrong byte is returned.
    let e = client
        .read("ds/obj", 3 * BS as u64..4 * BS as u64)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
}
