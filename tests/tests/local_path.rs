//! The local shared-memory path over a real Unix socket: bytes land in the client's region, only
//! small notices cross the socket, and clients that lie or vanish hurt nobody else.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use shardcache_client::{
    Client, ClientError, ErrorCode, PinnedBuffer, PinnedBufferPool, Pinning, Transport,
};
use shardcache_proto::frame::{MAX_RESPONSE_PAYLOAD, encode};
use shardcache_proto::{Frame, FrameCodec, Framed, ReadInto, ReadRequest, Register};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

const SIZE: usize = 10 * 1024 * 1024 + 333;

async fn setup(max_clients: usize) -> (S3Origin, TestServer, tempfile::TempDir) {
    let origin = S3Origin::start(&["bucket"]).await;
    origin.put("bucket", "obj", bytes_for(4, SIZE)).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .config(|c| {
            c.local_socket = Some(dir.path().join("shardcache.sock"));
            c.local_max_clients = max_clients;
            c.local_max_region = 64 << 20;
        })
        .start()
        .await;
    (origin, server, dir)
}

fn socket(server: &TestServer) -> String {
    server.local_socket.as_ref().unwrap().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_land_in_pinned_buffers() {
    let (_origin, server, _dir) = setup(16).await;
    let client = Client::connect(&socket(&server)).await.unwrap();
    assert_eq!(client.endpoint().transport, Transport::Local);
    let want = bytes_for(4, SIZE);

    // Whole object into a pinned buffer; a range into a pooled one.
    let mut buf = match PinnedBuffer::new(16 << 20) {
        Ok(b) => {
            assert!(b.is_pinned());
            b
        }
        Err(e) => {
            assert!(
                e.to_string().contains("RLIMIT_MEMLOCK") && e.to_string().contains("CAP_IPC_LOCK"),
                "{e}"
            );
            PinnedBuffer::unpinned(16 << 20).unwrap()
        }
    };
    let n = client
        .read_into_buffer("ds/obj", .., &mut buf)
        .await
        .unwrap();
    assert_eq!(n, SIZE);
    assert!(buf.as_slice()[..SIZE] == want[..]);
    // The registration is reused for the next read.
    let n = client
        .read_into_buffer("ds/obj", 5_000_000..5_000_100, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf.as_slice()[..n], &want[5_000_000..5_000_100]);

    let pool = PinnedBufferPool::new(2, 1 << 20, Pinning::Preferred).unwrap();
    let mut pooled = pool.acquire().await;
    let n = client
        .read_into_buffer("ds/obj", 4_194_000.., &mut pooled)
        .await
        .unwrap();
    assert_eq!(n, 1 << 20, "clipped to the buffer");
    assert!(pooled.as_slice()[..n] == want[4_194_000..4_194_000 + n]);

    // The plain API works over the local socket too (through a registered scratch buffer).
    assert!(client.read("ds/obj", ..).await.unwrap()[..] == want[..]);
    assert_eq!(client.stat("ds/obj").await.unwrap().size, SIZE as u64);
    let mut small = vec![0u8; 1000];
    assert_eq!(
        client.read_into("ds/obj", 77, &mut small).await.unwrap(),
        1000
    );
    assert_eq!(&small[..], &want[77..1077]);
    let e = client
        .read_stream("ds/obj", 0, None, None)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::Unsupported { .. }), "{e}");
    let e = client
        .read_into_buffer("ds/missing", .., &mut buf)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));

    // The same call over TCP copies into the buffer instead.
    let tcp = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let mut other = PinnedBuffer::unpinned(16 << 20).unwrap();
    assert_eq!(
        tcp.read_into_buffer("ds/obj", .., &mut other)
            .await
            .unwrap(),
        SIZE
    );
    assert!(other.as_slice()[..SIZE] == want[..]);
}

fn sealed_memfd(size: u64, seal: bool) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    if seal {
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    }
    fd
}

/// Connect and send `frame`, with `fd` attached if given.
async fn raw_register(server: &TestServer, frame: Frame, fd: Option<&OwnedFd>) -> UnixStream {
    let stream = UnixStream::connect(server.local_socket.as_ref().unwrap())
        .await
        .unwrap();
    let bytes = encode(&Framed {
        request_id: 0,
        frame,
    })
    .to_vec();
    stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds;
            if let Some(fd) = fd {
                fds = [fd.as_fd()];
                control.push(SendAncillaryMessage::ScmRights(&fds));
            }
            Ok(rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::DONTWAIT,
            )?)
        })
        .await
        .unwrap();
    stream
}

/// Read frames until `done` says stop or the server closes; returns them and the bytes read.
async fn read_frames(
    stream: &mut UnixStream,
    mut done: impl FnMut(&Frame) -> bool,
) -> (Vec<Frame>, usize) {
    let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
    let (mut frames, mut total) = (Vec::new(), 0);
    loop {
        while let Some(f) = codec.next_frame().unwrap() {
            let stop = done(&f.frame);
            frames.push(f.frame);
            if stop {
                return (frames, total);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(codec.buffer_mut()))
            .await
            .expect("server answers")
            .unwrap_or(0);
        if n == 0 {
            return (frames, total);
        }
        total += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_notices_cross_the_socket() {
    let (_origin, server, _dir) = setup(16).await;
    let fd = sealed_memfd(16 << 20, true);
    let mut s = raw_register(
        &server,
        Frame::Register(Register { size: 16 << 20 }),
        Some(&fd),
    )
    .await;
    let (frames, _) = read_frames(&mut s, |_| true).await;
    assert!(matches!(frames[0], Frame::Registered(r) if r.size == 16 << 20));
    send_read_into(&mut s, 1, 0, None).await;
    let mut placed = 0u64;
    let (frames, socket_bytes) = read_frames(&mut s, |f| {
        if let Frame::Placed(p) = f {
            placed += p.len;
        }
        placed == SIZE as u64 || matches!(f, Frame::Error(_))
    })
    .await;
    assert_eq!(placed, SIZE as u64, "{frames:?}");
    assert!(
        socket_bytes < 4096,
        "{socket_bytes} bytes crossed the socket for a {SIZE}-byte read"
    );
    // The bytes are in the memfd.
    let mut got = vec![0u8; SIZE];
    rustix::io::pread(&fd, &mut got, 0).unwrap();
    assert!(got[..] == bytes_for(4, SIZE)[..]);
}

/// Send a `ReadInto` of `ds/obj` placing `length` bytes (all when None) at `region_offset`.
async fn send_read_into(s: &mut UnixStream, id: u32, region_offset: u64, length: Option<u64>) {
    let read = ReadRequest {
        path: "ds/obj".into(),
        offset: 0,
        length,
        if_match: None,
    };
    let frame = Frame::ReadInto(ReadInto {
        read,
        region_offset,
    });
    s.write_all(
        &encode(&Framed {
            request_id: id,
            frame,
        })
        .to_vec(),
    )
    .await
    .unwrap();
}

fn region_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:t"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_and_vanishing_clients_hurt_nobody_else() {
    let (_origin, server, _dir) = setup(16).await;
    let client = Client::connect(&socket(&server)).await.unwrap();
    let expect_refused = |frames: Vec<Frame>, what: &str| match frames.first() {
        Some(Frame::Error(e)) => assert!(e.message.contains(what), "{}", e.message),
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };

    // No fd, an unsealed memfd, a region over the limit, a region larger than its file.
    let mut s = raw_register(&server, Frame::Register(Register { size: 4096 }), None).await;
    expect_refused(read_frames(&mut s, |_| true).await.0, "SCM_RIGHTS");
    let fd = sealed_memfd(4096, false);
    let mut s = raw_register(&server, Frame::Register(Register { size: 4096 }), Some(&fd)).await;
    expect_refused(read_frames(&mut s, |_| true).await.0, "F_SEAL_SHRINK");
    let fd = sealed_memfd(4096, true);
    let mut s = raw_register(
        &server,
        Frame::Register(Register { size: 1 << 40 }),
        Some(&fd),
    )
    .await;
    expect_refused(read_frames(&mut s, |_| true).await.0, "local_max_region");
    let mut s = raw_register(&server, Frame::Register(Register { size: 8192 }), Some(&fd)).await;
    expect_refused(read_frames(&mut s, |_| true).await.0, "fewer");
    // A first frame that is not a registration.
    let stat = Frame::Stat(shardcache_proto::StatRequest {
        path: "ds/obj".into(),
    });
    let mut s = raw_register(&server, stat, None).await;
    expect_refused(read_frames(&mut s, |_| true).await.0, "register");

    // Offsets outside the region.
    let fd = sealed_memfd(1 << 20, true);
    let mut s = raw_register(
        &server,
        Frame::Register(Register { size: 1 << 20 }),
        Some(&fd),
    )
    .await;
    read_frames(&mut s, |_| true).await;
    for (id, region_offset, length) in [
        (1u32, 2 << 20, Some(10)),
        (2, 0, Some(2 << 20)),
        (3, u64::MAX - 4, Some(10)),
    ] {
        send_read_into(&mut s, id, region_offset, length).await;
        let (frames, _) = read_frames(&mut s, |f| matches!(f, Frame::Error(_))).await;
        expect_refused(frames, "do not fit the region");
    }

    // A client that asks for a large read and vanishes: its mapping is released.
    let before = region_mappings();
    {
        let fd = sealed_memfd(16 << 20, true);
        let mut s = raw_register(
            &server,
            Frame::Register(Register { size: 16 << 20 }),
            Some(&fd),
        )
        .await;
        read_frames(&mut s, |_| true).await;
        assert_eq!(
            region_mappings(),
            before + 1,
            "the server mapped the region"
        );
        send_read_into(&mut s, 1, 0, None).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while region_mappings() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "the region of a vanished client stays mapped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everyone else is still served.
    assert!(client.read("ds/obj", ..).await.unwrap()[..] == bytes_for(4, SIZE)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_are_bounded() {
    let (_origin, server, _dir) = setup(1).await;
    let first = Client::connect(&socket(&server)).await.unwrap();
    let second = Client::connect(&socket(&server)).await;
    let err = second.err().expect("over local_max_clients");
    assert_eq!(err.code(), Some(ErrorCode::Busy), "{err}");
    assert!(first.read("ds/obj", 0..10).await.is_ok());
}

async fn setup_with(
    configure: impl FnOnce(&mut shardcache_server::config::Config),
) -> (S3Origin, TestServer, tempfile::TempDir) {
    let origin = S3Origin::start(&["bucket"]).await;
    origin.put("bucket", "obj", bytes_for(4, SIZE)).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("shardcache.sock");
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .config(|c| {
            c.local_socket = Some(socket);
            configure(c);
        })
        .start()
        .await;
    (origin, server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0660_and_only_listed_uids_may_connect() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = rustix::process::getuid().as_raw();
    let group = rustix::process::getgid().as_raw();
    let (_origin, server, _dir) = setup_with(|c| {
        c.local_socket_group = Some(group.to_string());
        c.local_allowed_uids = vec![me + 4242];
    })
    .await;
    let meta = std::fs::metadata(server.local_socket.as_ref().unwrap()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), group);
    let e = Client::connect(&socket(&server))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "uid {me} is not in the server's --local-allowed-uids"
        )),
        "{e}"
    );
    drop(server);
    let (_origin, server, _dir) = setup_with(|c| c.local_allowed_uids = vec![me]).await;
    let client = Client::connect(&socket(&server)).await.unwrap();
    assert_eq!(client.read("ds/obj", ..).await.unwrap().len(), SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_share_one_budget() {
    // Room for one client's 16 MiB scratch region: a second client's does not fit until the
    // first is gone.
    let (_origin, server, _dir) = setup_with(|c| {
        c.local_regions_budget = 24 << 20;
        c.local_max_region = 64 << 20;
    })
    .await;
    let first = Client::connect(&socket(&server)).await.unwrap();
    let used = server.stats.transport.local_region_bytes.get();
    assert!(used > 0 && used <= 24 << 20, "{used}");
    let e = Client::connect(&socket(&server))
        .await
        .err()
        .expect("over budget");
    assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
    assert!(e.to_string().contains("local_regions_budget"), "{e}");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats.transport.local_region_bytes.get() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the region was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = Client::connect(&socket(&server)).await.unwrap();
    assert_eq!(second.read("ds/obj", ..).await.unwrap().len(), SIZE);
}

/// Run by [`a_client_killed_with_sigkill_releases_its_region`] in a child process: register a
/// region with the server at `SHARDCACHE_TEST_SOCKET`, say so, and wait to be killed.
#[tokio::test]
#[ignore = "a child process of another test"]
async fn child_registers_and_waits() {
    let Ok(socket) = std::env::var("SHARDCACHE_TEST_SOCKET") else {
        return;
    };
    let client = Client::connect(&socket).await.unwrap();
    let mut buf = PinnedBuffer::unpinned(4 << 20).unwrap();
    client
        .read_into_buffer("ds/obj", ..4 << 20, &mut buf)
        .await
        .unwrap();
    println!("registered");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_with_sigkill_releases_its_region() {
    use std::io::BufRead;
    let (_origin, server, _dir) = setup(16).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_registers_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env("SHARDCACHE_TEST_SOCKET", socket(&server))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let registered = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("registered"))
    });
    let registered = tokio::time::timeout(Duration::from_secs(30), registered)
        .await
        .expect("the child registers within 30 s")
        .unwrap();
    assert!(registered, "the child did not register");
    let t = &server.stats.transport;
    assert!(t.local_region_bytes.get() >= 4 << 20);
    assert!(t.open_connections.get() >= 1);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.local_region_bytes.get() != 0 || t.open_connections.get() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "still {} region bytes, {} connections",
            t.local_region_bytes.get(),
            t.open_connections.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Others are served as before.
    let client = Client::connect(&socket(&server)).await.unwrap();
    assert_eq!(client.read("ds/obj", ..).await.unwrap().len(), SIZE);
}
