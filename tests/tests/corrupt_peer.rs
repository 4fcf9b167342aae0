//! The client never returns bytes whose checksum does not match: a server that corrupts a chunk
//! (here a deliberately broken peer on a real loopback socket) gets a checksum error, after the
//! client's retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use shardcache_client::{Client, ClientError, ClientOptions};
use shardcache_proto::frame::{MAX_REQUEST_PAYLOAD, encode};
use shardcache_proto::{DataChunk, Frame, FrameCodec, Framed, ObjectInfo, ReadStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every read of 1 KiB with one chunk whose first `bad_answers` copies are corrupted.
async fn broken_server(bad_answers: u32) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut codec = FrameCodec::new(MAX_REQUEST_PAYLOAD);
                loop {
                    while let Ok(Some(req)) = codec.next_frame() {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let data = Bytes::from(vec![7u8; 1024]);
                        let mut chunk = DataChunk::new(0, data);
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
                        for frame in [
                            Frame::ReadStart(ReadStart {
                                info,
                                offset: 0,
                                length: 1024,
                            }),
                            Frame::Data(chunk),
                        ] {
                            let enc = encode(&Framed {
                                request_id: req.request_id,
                                frame,
                            });
                            if s.write_all(&enc.to_vec()).await.is_err() {
                                return;
                            }
                        }
                    }
                    match s.read_buf(codec.buffer_mut()).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, served)
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
