//! Bad input gets a clear error and the server keeps serving everyone else.

use std::time::Duration;

use bytes::BufMut;
use shardcache_client::{Client, ClientOptions, ErrorCode};
use shardcache_proto::frame::{self, HEADER_LEN, MAX_RESPONSE_PAYLOAD};
use shardcache_proto::{Frame, FrameCodec, Framed, ReadRequest};
use shardcache_testsuite::{
    S3Origin, TestServer, black_hole, bytes_for, closed_port, s3_dataset_at,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup() -> (S3Origin, TestServer, Client) {
    let origin = S3Origin::start(&["bucket"]).await;
    origin
        .put("bucket", "data/good", bytes_for(3, 100_000))
        .await;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "data"))
        .start()
        .await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    (origin, server, client)
}

async fn still_serves(client: &Client) {
    let got = client
        .read("ds/good", ..)
        .await
        .expect("server still serves");
    assert_eq!(&got[..], &bytes_for(3, 100_000)[..]);
}

#[tokio::test]
async fn unknown_dataset_missing_object_and_bad_ranges() {
    let (_origin, _server, client) = setup().await;
    let e = client.read("nope/good", ..).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownDataset));
    assert!(e.to_string().contains("unknown dataset \"nope\""), "{e}");

    let e = client.read("ds/missing", ..).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert!(e.to_string().contains("ds/missing"), "{e}");
    let e = client.stat("ds/missing").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));

    let e = client.read("ds/good", 100_001..100_002).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RangeNotSatisfiable));
    assert!(e.to_string().contains("100000 bytes"), "{e}");
    // Reading from exactly the end is an empty read, and lengths are clipped at the end.
    assert!(client.read("ds/good", 100_000..).await.unwrap().is_empty());
    assert_eq!(
        client.read("ds/good", 99_990..200_000).await.unwrap().len(),
        10
    );

    let e = client
        .read_pinned("ds/good", 0, None, Some("\"not-the-etag\"".into()))
        .await;
    assert_eq!(e.unwrap_err().code(), Some(ErrorCode::PreconditionFailed));
    still_serves(&client).await;
}

#[tokio::test]
async fn keys_that_escape_or_smuggle_are_refused() {
    let (origin, _server, client) = setup().await;
    // Something outside the dataset's prefix that an escape would reach.
    origin
        .put("bucket", "secret", b"do not serve".to_vec())
        .await;
    for bad in [
        "ds/../secret",
        "ds/a/../../secret",
        "ds//secret",
        "ds/./good",
        "ds/good/",
        "ds/ok\0nul",
        "ds/new\nline",
        "ds/back\\slash",
        "ds/",
        "/ds/good",
        "ds",
        "",
        "../ds/good",
    ] {
        let e = client.read(bad, ..).await.expect_err(bad);
        let code = e.code().expect("server error");
        assert!(
            matches!(
                code,
                ErrorCode::InvalidKey | ErrorCode::BadRequest | ErrorCode::UnknownDataset
            ),
            "{bad:?}: {code:?} {e}"
        );
        assert!(!e.to_string().is_empty());
    }
    let long = format!("ds/{}", "k".repeat(2000));
    assert_eq!(
        client.read(&long, ..).await.unwrap_err().code(),
        Some(ErrorCode::InvalidKey)
    );
    still_serves(&client).await;
}

/// Send raw bytes on a fresh connection; return what the server sent before closing.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<Frame> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
    let mut frames = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(codec.buffer_mut()))
            .await
            .expect("server closes a broken connection")
            .unwrap_or(0);
        while let Some(f) = codec.next_frame().unwrap() {
            frames.push(f.frame);
        }
        if n == 0 {
            return frames;
        }
    }
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_that_connection() {
    let (_origin, server, client) = setup().await;
    // An open read on another connection must not notice.
    let mut reader = client.read_stream("ds/good", 0, None, None).await.unwrap();

    // Garbage.
    let frames = raw_exchange(server.tcp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(matches!(frames.last(), Some(Frame::Error(e)) if e.code == ErrorCode::BadRequest));
    // A header announcing a 4 GiB request.
    let mut huge = vec![frame::VERSION, 0x01, 0, 0, 0, 0, 0, 1];
    huge.put_u32(u32::MAX);
    let frames = raw_exchange(server.tcp, &huge).await;
    match frames.last() {
        Some(Frame::Error(e)) => assert!(e.message.contains("exceeds"), "{}", e.message),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // A valid header with a truncated body, then the peer goes away.
    let mut ok = frame::encode(&Framed {
        request_id: 9,
        frame: Frame::Stat(shardcache_proto::StatRequest {
            path: "ds/good".into(),
        }),
    })
    .to_vec();
    ok.truncate(HEADER_LEN + 1);
    let mut s = TcpStream::connect(server.tcp).await.unwrap();
    s.write_all(&ok).await.unwrap();
    drop(s);
    // A response frame sent by a client.
    let bogus = frame::encode(&Framed {
        request_id: 1,
        frame: Frame::Data(shardcache_proto::DataChunk::new(
            0,
            bytes::Bytes::from_static(b"x"),
        )),
    });
    let frames = raw_exchange(server.tcp, &bogus.to_vec()).await;
    assert!(matches!(frames.last(), Some(Frame::Error(e)) if e.code == ErrorCode::BadRequest));
    // Random bytes, many times.
    for seed in 0..50u64 {
        let junk = bytes_for(seed, 1 + (seed as usize * 37) % 300);
        let mut s = TcpStream::connect(server.tcp).await.unwrap();
        let _ = s.write_all(&junk).await;
    }

    let mut n = 0;
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        n += chunk.data.len();
    }
    assert_eq!(n, 100_000);
    still_serves(&client).await;
}

#[tokio::test]
async fn requests_over_the_per_connection_limit_are_told_to_retry() {
    // A black-hole origin keeps requests in flight.
    let (hole, _hole) = black_hole().await;
    let server = TestServer::builder()
        .dataset(s3_dataset_at("slow", hole))
        .config(|c| {
            c.max_requests_per_connection = 2;
            c.origin_timeout = Duration::from_secs(3);
            c.origin_retries = 0;
        })
        .start()
        .await;
    let mut wire = Vec::new();
    for id in 1..=3u32 {
        let req = ReadRequest {
            path: format!("slow/k{id}"),
            offset: 0,
            length: None,
            if_match: None,
        };
        wire.extend(
            frame::encode(&Framed {
                request_id: id,
                frame: Frame::Read(req),
            })
            .to_vec(),
        );
    }
    let mut s = TcpStream::connect(server.tcp).await.unwrap();
    s.write_all(&wire).await.unwrap();
    let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
    let first = loop {
        s.read_buf(codec.buffer_mut()).await.unwrap();
        if let Some(f) = codec.next_frame().unwrap() {
            break f;
        }
    };
    assert_eq!(first.request_id, 3);
    match first.frame {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Busy);
            assert!(e.code.is_retryable());
            assert!(e.message.contains("retry"), "{}", e.message);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(server.stats.snapshot().rejected_requests, 1);
}

#[tokio::test]
async fn origin_that_times_out_or_refuses_gives_a_clear_error() {
    let (hole, _hole) = black_hole().await;
    let closed = closed_port().await;
    let origin = S3Origin::start(&["bucket"]).await;
    origin
        .put("bucket", "data/good", bytes_for(3, 100_000))
        .await;
    let server = TestServer::builder()
        .dataset(s3_dataset_at("stalled", hole))
        .dataset(s3_dataset_at("refused", closed))
        .dataset(origin.dataset("ds", "bucket", "data"))
        .config(|c| {
            c.origin_timeout = Duration::from_millis(300);
            c.origin_retries = 2;
        })
        .start()
        .await;
    let options = ClientOptions {
        retries: 0,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&server.tcp_endpoint(), options)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let e = client.read("stalled/x", ..).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OriginUnavailable));
    assert!(
        e.to_string()
            .contains("timed out for x: no first byte within 300ms, 3 attempt(s)"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );

    let e = client.stat("refused/x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OriginUnavailable));
    assert!(
        e.to_string().contains("origin of dataset refused failed"),
        "{e}"
    );
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(server.stats.snapshot().origin_retries >= 4);

    // Everyone else is still served.
    still_serves(&client).await;
}
