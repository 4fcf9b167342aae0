use super::*;

use std::error::Error as _;

use shardcache_proto::frame::encode;
use shardcache_proto::{FrameCodec, Framed, Registered};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PATH: &str = "imagenet/train/0001.tar";

/// What a fake server does with a request.
#[derive(Clone, Copy)]
enum Answer {
    /// Never answers, and keeps the connection open.
    Stall,
    /// Starts the answer (a read's `ReadStart`, nothing for others), then closes.
    Close,
}

fn info() -> ObjectInfo {
    ObjectInfo {
        size: 100,
        etag: "v1".into(),
        last_modified_ms: 0,
        block_size: 1 << 20,
    }
}

/// Serve one connection: `Register` is answered, `Stat` too when `stat` is None; other
/// requests (and `Stat` otherwise) get `answer`.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    stat: Option<Answer>,
    answer: Answer,
) {
    let mut codec = FrameCodec::new(1 << 20);
    loop {
        let request = loop {
            if let Some(f) = codec.next_frame().expect("a request frame") {
                break f;
            }
            match stream.read_buf(codec.buffer_mut()).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let send = |frame| {
            encode(&Framed {
                request_id: request.request_id,
                frame,
            })
            .to_vec()
        };
        let answer = match request.frame {
            Frame::Register(r) => {
                let registered = Frame::Registered(Registered {
                    size: r.size,
                    max_region: r.size,
                });
                stream.write_all(&send(registered)).await.unwrap();
                continue;
            }
            Frame::Stat(_) if stat.is_none() => {
                stream
                    .write_all(&send(Frame::StatOk(info())))
                    .await
                    .unwrap();
                continue;
            }
            Frame::Stat(_) => stat.unwrap(),
            Frame::Read(ref r) if matches!(answer, Answer::Close) => {
                let start = Frame::ReadStart(ReadStart {
                    info: info(),
                    offset: r.offset,
                    length: r.length.unwrap_or(100).min(100 - r.offset),
                });
                stream.write_all(&send(start)).await.unwrap();
                answer
            }
            _ => answer,
        };
        match answer {
            Answer::Stall => std::future::pending::<()>().await,
            Answer::Close => return,
        }
    }
}

/// A fake server on a loopback TCP port; its address.
async fn tcp_server(stat: Option<Answer>, answer: Answer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, stat, answer));
        }
    });
    addr
}

/// One connection, no retries, one second of patience.
async fn client(endpoint: &str) -> Client {
    let options = ClientOptions {
        connections: 1,
        retries: 0,
        idle_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    Client::connect_with(endpoint, options).await.unwrap()
}

/// The client error inside an `ObjectReader`'s I/O error.
fn inner(e: &std::io::Error) -> &ClientError {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<ClientError>())
        .expect("a client error inside")
}

#[tokio::test]
async fn timeouts_name_the_object() {
    let addr = tcp_server(Some(Answer::Stall), Answer::Stall).await;
    let c = client(&addr).await;
    let want = format!("no response from tcp://{addr} within 1s while reading {PATH}");
    let e = c.read(PATH, ..).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Timeout { path: Some(p), secs: 1, .. } if p == PATH),
        "{e:?}"
    );
    assert_eq!(e.to_string(), want);
    assert_eq!(c.stat(PATH).await.unwrap_err().to_string(), want);
    let mut buf = [0u8; 10];
    let e = c.read_into(PATH, 0, &mut buf).await.unwrap_err();
    assert_eq!(e.to_string(), want);

    // Through a reader: its fetches run as tasks, and the I/O error carries the client's.
    let addr = tcp_server(None, Answer::Stall).await;
    let mut reader = client(&addr).await.open(PATH).await.unwrap();
    let e = reader.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(inner(&e).path(), Some(PATH), "{e}");
    assert!(
        e.to_string()
            .ends_with(&format!("within 1s while reading {PATH}")),
        "{e}"
    );
}

#[tokio::test]
async fn lost_connections_name_the_object() {
    let addr = tcp_server(Some(Answer::Close), Answer::Close).await;
    let c = client(&addr).await;
    let want = format!(
        "connection to tcp://{addr} lost while reading {PATH}: server closed the connection"
    );
    let e = c.stat(PATH).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::ConnectionLost { path: Some(p), .. } if p == PATH),
        "{e:?}"
    );
    assert_eq!(e.to_string(), want);
    // The read starts, then the connection goes: the next chunk's error names the object.
    assert_eq!(c.read(PATH, ..).await.unwrap_err().to_string(), want);
    let mut stream = c.read_stream(PATH, 0, None, None).await.unwrap();
    assert_eq!(stream.next_chunk().await.unwrap_err().to_string(), want);
    let mut buf = [0u8; 200];
    let e = c.read_into_all(PATH, 0, &mut buf, None).await;
    assert_eq!(e.unwrap_err().to_string(), want);

    let addr = tcp_server(None, Answer::Close).await;
    let mut reader = client(&addr).await.open(PATH).await.unwrap();
    let e = reader.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
    assert_eq!(inner(&e).path(), Some(PATH), "{e}");
}

#[tokio::test]
async fn local_socket_reads_name_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Some(Answer::Stall), Answer::Stall));
        }
    });
    let socket = socket.to_str().unwrap();
    let c = client(socket).await;
    let want = format!("no response from unix://{socket} within 1s while reading {PATH}");
    assert_eq!(c.read(PATH, ..).await.unwrap_err().to_string(), want);
    let mut buf = PinnedBuffer::unpinned(4096).unwrap();
    let e = c.read_into_buffer(PATH, .., &mut buf).await.unwrap_err();
    assert_eq!(e.to_string(), want);
}

#[tokio::test]
async fn connect_failures_keep_their_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let e = Client::connect(&addr).await.err().expect("nothing listens");
    let io = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error as the source");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    let cause = io.to_string();
    // The message is what it was: the cause in words, no object.
    assert_eq!(
        e.to_string(),
        format!("cannot connect to tcp://{addr}: {cause}")
    );
    assert_eq!(e.path(), None);
    // Clones share the cause.
    let clone = e.clone();
    let same = |a: &ClientError, b: &ClientError| {
        std::ptr::addr_eq(a.source().unwrap(), b.source().unwrap())
    };
    assert!(same(&clone, &e));
    let named = e.for_object(PATH);
    assert_eq!(
        named.to_string(),
        format!("cannot connect to tcp://{addr} while reading {PATH}: {cause}")
    );
    assert!(same(&named, &clone));
}

#[test]
fn an_object_is_named_once() {
    let e = ClientError::timeout("tcp://h:1", 5).for_object("ds/a");
    assert_eq!(
        e.for_object("ds/b").to_string(),
        "no response from tcp://h:1 within 5s while reading ds/a"
    );
    let lost = ClientError::lost("tcp://h:1", "reset");
    assert_eq!(lost.to_string(), "connection to tcp://h:1 lost: reset");
    assert_eq!(
        lost.for_object("ds/a").to_string(),
        "connection to tcp://h:1 lost while reading ds/a: reset"
    );
    assert_eq!(
        ClientError::protocol("tcp://h:1", "bad frame")
            .for_object("ds/a")
            .to_string(),
        "protocol error from tcp://h:1 while reading ds/a: bad frame"
    );
    let server = ClientError::Server {
        code: ErrorCode::NotFound,
        message: "ds/a not found".into(),
    };
    assert_eq!(server.for_object("ds/a").to_string(), "ds/a not found");
}

#[test]
fn ranges_become_offset_and_length() {
    assert_eq!(bounds(..).unwrap(), (0, None));
    assert_eq!(bounds(5..).unwrap(), (5, None));
    assert_eq!(bounds(5..10).unwrap(), (5, Some(5)));
    assert_eq!(bounds(5..=10).unwrap(), (5, Some(6)));
    assert_eq!(bounds(..0).unwrap(), (0, Some(0)));
    let (start, end) = (10, 5);
    assert!(bounds(start..end).is_err());
}
