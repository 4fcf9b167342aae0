//! The client never returns bytes whose checksum does not match: a server that corrupts a chunk
//! (here a deliberately broken peer on a real loopback socket) gets a checksum error, after the
//! client's retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use shardcache_client::{Client, ClientError, ClientOptions};
use shardcache_proto::{DataChunk, Frame, ObjectInfo, ReadStart};
use shardcache_testsuite::scripted_server;

/// Answers every read of 1 KiB with one chunk whose first `bad_answers` copies are corrupted.
async fn broken_server(bad_answers: u32) -> (String, Arc<AtomicU32>) {
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    let (addr, _task) = scripted_server(move |_req| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let mut chunk = DataChunk::new(0, Bytes::from(vec![7u8; 1024]));
        if n < bad_answers {
            let mut raw = chunk.data.to_vec();
            raw[100] ^= 0x01;
            chunk.data = Bytes::from(raw);
        }
        let info = ObjectInfo {
            size: 1024,
            etag: "e".into(),
            last_modified_ms: 0,
            block_size: 1 << 20,
        };
        vec![
            Frame::ReadStart(ReadStart {
                info,
                offset: 0,
                length: 1024,
            }),
            Frame::Data(chunk),
        ]
    })
    .await;
    (addr.to_string(), served)
}

#[tokio::test]
async fn corrupted_chunk_is_an_error_never_data() {
    let (addr, served) = broken_server(u32::MAX).await;
    let client = Client::connect(&addr).await.unwrap();
    let err = client.read("ds/obj", ..).await.unwrap_err();
    assert!(matches!(err, ClientError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        3,
        "first try plus two retries"
    );
}

#[tokio::test]
async fn a_transient_corruption_is_retried_to_correct_bytes() {
    let (addr, served) = broken_server(1).await;
    let options = ClientOptions {
        retries: 2,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&addr, options).await.unwrap();
    let got = client.read("ds/obj", ..).await.unwrap();
    assert_eq!(&got[..], &[7u8; 1024][..]);
    assert_eq!(served.load(Ordering::SeqCst), 2);
}
