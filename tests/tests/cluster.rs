//! A cluster of real `shardcache` processes over one S3 origin: one origin read per block
//! cluster-wide, nodes killed or stalled during reads, a node that restarts, a node that joins,
//! and peer-only requests from strangers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcache_client::Client;
use shardcache_testsuite::{
    S3Origin, TestCluster, crc32c, put_objects, scripted_member, scripted_server, test_ca,
};

const KIB: usize = 1 << 10;
const BLOCK: usize = 256 * KIB;

/// Objects of uneven sizes (some not a whole number of blocks), uploaded to `bucket`.
async fn dataset(origin: &S3Origin, objects: usize, size: usize) -> Arc<Vec<Vec<u8>>> {
    put_objects(origin, "bucket", "train", objects, 100, |i| {
        size + i * 3 * KIB
    })
    .await
}

fn total_bytes(objects: &[Vec<u8>]) -> u64 {
    objects.iter().map(|o| o.len() as u64).sum()
}

fn blocks(objects: &[Vec<u8>]) -> u64 {
    objects.iter().map(|o| o.len().div_ceil(BLOCK) as u64).sum()
}

async fn cluster(origin: &S3Origin, nodes: usize) -> TestCluster {
    TestCluster::over(origin, BLOCK).nodes(nodes).start().await
}

/// Read every object through every listed node at once; every byte checked.
async fn read_all(cluster: &TestCluster, nodes: &[usize], objects: &Arc<Vec<Vec<u8>>>) {
    let mut tasks = Vec::new();
    for &n in nodes {
        let client = Client::connect(&cluster.endpoint(n)).await.unwrap();
        for (i, want) in objects.iter().enumerate() {
            let client = client.clone();
            let want = want.len();
            let objects = objects.clone();
            tasks.push(tokio::spawn(async move {
                let got = client.read(&format!("ds/obj-{i:03}"), ..).await;
                let got = got.unwrap_or_else(|e| panic!("node {n} obj-{i:03}: {e}"));
                assert_eq!(got.len(), want);
                assert!(
                    got[..] == objects[i][..],
                    "node {n} obj-{i:03}: other bytes"
                );
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_read_each_block_from_the_origin_once() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 12, 1 << 20).await;
    let cluster = cluster(&origin, 3).await;
    cluster.wait_converged().await;

    // Every object through every node at the same time: all misses of a block, on any node,
    // meet at its owner.
    read_all(&cluster, &[0, 1, 2], &objects).await;
    let counts = origin.total();
    assert_eq!(
        counts.get_bytes,
        total_bytes(&objects),
        "origin bytes = dataset bytes: {counts:?}"
    );
    assert_eq!(counts.gets, blocks(&objects), "{counts:?}");
    let peer_bytes = cluster
        .metric_sum("shardcache_served_bytes_total{source=\"peer\"}")
        .await;
    assert!(peer_bytes > 0.0, "blocks were served from their owners");
    let fills = cluster
        .metric_sum("shardcache_peer_requests_served_total{mode=\"fill\"}")
        .await;
    assert!(fills > 0.0);

    // A second pass anywhere reads nothing from the origin, and nothing from peers either:
    // every node kept a copy of what it served (peer_keep_copies defaults to true).
    let fills_before = cluster
        .metric_sum("shardcache_peer_requests_total{mode=\"fill\",outcome=\"ok\"}")
        .await;
    read_all(&cluster, &[2, 0, 1], &objects).await;
    assert_eq!(origin.total().gets, counts.gets);
    let fills_after = cluster
        .metric_sum("shardcache_peer_requests_total{mode=\"fill\",outcome=\"ok\"}")
        .await;
    assert_eq!(
        fills_after, fills_before,
        "hot blocks were served from local copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_copies_blocks_stay_with_their_owners() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 6, 1 << 20).await;
    let cluster = TestCluster::over(&origin, BLOCK)
        .arg("--peer-keep-copies", "false")
        .start_converged()
        .await;
    let fills = "shardcache_peer_requests_total{mode=\"fill\",outcome=\"ok\"}";
    read_all(&cluster, &[0], &objects).await;
    let first = cluster.metric(0, fills).await;
    assert!(first > 0.0);
    read_all(&cluster, &[0], &objects).await;
    let second = cluster.metric(0, fills).await - first;
    assert_eq!(
        second, first,
        "every remote block is asked of its owner again"
    );
    assert_eq!(origin.total().get_bytes, total_bytes(&objects));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_reads_then_restart() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 16, 1 << 20).await;
    let mut cluster = cluster(&origin, 3).await;
    cluster.wait_converged().await;

    // 16 readers on the two surviving nodes, several passes each; node 2 dies during them.
    let mut readers = Vec::new();
    for r in 0..16usize {
        let client = Client::connect(&cluster.endpoint(r % 2)).await.unwrap();
        let objects = objects.clone();
        readers.push(tokio::spawn(async move {
            for pass in 0..3 {
                for k in 0..objects.len() {
                    let i = (k + r) % objects.len();
                    let got = client.read(&format!("ds/obj-{i:03}"), ..).await;
                    let got = got.unwrap_or_else(|e| panic!("reader {r} pass {pass} obj {i}: {e}"));
                    assert!(got[..] == objects[i][..], "reader {r}: other bytes");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "the kill lands while every reader is still reading"
    );
    cluster.kill(2);
    for r in readers {
        r.await.unwrap();
    }
    // The dead node is noticed and the rest read everything again without it.
    cluster.wait_converged().await;
    read_all(&cluster, &[0, 1], &objects).await;

    // Node 2 comes back empty and owns its blocks again: it finds them on the nodes that
    // held them meanwhile, not at the origin.
    cluster.restart(2).await;
    cluster.wait_converged().await;
    let gets = origin.total().gets;
    read_all(&cluster, &[0, 1, 2], &objects).await;
    assert_eq!(
        origin.total().gets,
        gets,
        "a restarted node reads its blocks from their interim holders"
    );
    assert!(
        cluster
            .metric(
                2,
                "shardcache_peer_requests_total{mode=\"probe\",outcome=\"hit\"}"
            )
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_reads_cached_blocks_from_their_old_owners() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 12, 1 << 20).await;
    let mut cluster = cluster(&origin, 3).await;
    cluster.wait_converged().await;
    read_all(&cluster, &[0, 1, 2], &objects).await;
    let before = origin.total();
    assert_eq!(before.get_bytes, total_bytes(&objects));

    let new = cluster.add_node().await;
    cluster.wait_converged().await;
    read_all(&cluster, &[new, 0, 1, 2], &objects).await;
    assert_eq!(
        origin.total().gets,
        before.gets,
        "no cached block is read from the origin again after a join"
    );
    // The new node owns a share of the blocks and took them from the old owners.
    let hits = cluster
        .metric(
            new,
            "shardcache_peer_requests_total{mode=\"probe\",outcome=\"hit\"}",
        )
        .await;
    assert!(
        hits > 0.0,
        "the new node found its blocks at their old owners"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_is_marked_down_and_skipped() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 8, 1 << 20).await;
    // Default probe settings, so this checks the documented detection time.
    let cluster = TestCluster::over(&origin, BLOCK)
        .arg("--peer-probe-interval", "500ms")
        .arg("--peer-timeout", "1s")
        .start_converged()
        .await;

    cluster.signal(2, rustix::process::Signal::STOP);
    let stopped = Instant::now();
    // Reads through the other nodes go on while node 2 is frozen.
    read_all(&cluster, &[0, 1], &objects).await;
    loop {
        let down = cluster.metric(0, "shardcache_peers{state=\"down\"}").await;
        if down == 1.0 {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "a frozen node is never marked down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = stopped.elapsed();
    // Probes every 500 ms with a 1 s deadline: noticed within 2 s (with room for a loaded
    // machine's scheduling).
    assert!(
        noticed < Duration::from_millis(2500),
        "marked down after {noticed:?}"
    );
    assert_eq!(origin.total().get_bytes, total_bytes(&objects));

    cluster.signal(2, rustix::process::Signal::CONT);
    cluster.wait_converged().await;
    read_all(&cluster, &[2], &objects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_from_a_stranger_are_refused() {
    use shardcache_client::raw::{BufPool, TcpConn};
    use shardcache_proto::{ErrorCode, Frame, PeerBlock, PeerMode};

    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 1, 1 << 20).await;
    let cluster = cluster(&origin, 2).await;
    cluster.wait_converged().await;
    read_all(&cluster, &[0], &objects).await;
    let info = Client::connect(&cluster.endpoint(0))
        .await
        .unwrap()
        .stat("ds/obj-000")
        .await
        .unwrap();
    let ask = |mode| {
        Frame::PeerBlock(PeerBlock {
            path: "ds/obj-000".into(),
            etag: info.etag.clone(),
            size: info.size,
            last_modified_ms: info.last_modified_ms,
            block_size: BLOCK as u32,
            index: 0,
            mode,
            chunk_size: 0,
            offset: 0,
            upstream: Vec::new(),
        })
    };
    let node0 = cluster.nodes[0].data;
    let connect_from = |ip: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
        let stream = socket.connect(node0).await.unwrap();
        let (rd, wr) = stream.into_split();
        TcpConn::from_halves(rd, wr, "node-0", BufPool::new(2))
    };

    let refused = |frame: Frame, what: &str| match frame {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden, "{what}");
            assert!(
                e.message.contains("has not proved it is a member"),
                "{what}: {}",
                e.message
            );
        }
        other => panic!("{what} got {other:?}"),
    };
    // From 127.0.0.2, which is not a member's address: refused, and said so.
    let stranger = connect_from([127, 0, 0, 2]).await;
    for mode in [PeerMode::Probe, PeerMode::Fill] {
        let mut r = stranger.request(ask(mode)).await.unwrap();
        refused(r.next().await.unwrap(), "a stranger");
    }
    // From a member's address, without the cluster secret: refused all the same (a hostNetwork
    // pod or a same-pod sidecar shares the address).
    let same_address = connect_from([127, 0, 0, 1]).await;
    let mut r = same_address.request(ask(PeerMode::Fill)).await.unwrap();
    refused(
        r.next().await.unwrap(),
        "a member's address without the secret",
    );
    // Anyone may ping, and learns only that the node is alive; the connection still serves
    // ordinary reads.
    let mut r = stranger
        .request(Frame::Ping(shardcache_proto::Ping { from: "x".into() }))
        .await
        .unwrap();
    assert!(
        matches!(r.next().await.unwrap(), Frame::Pong(p) if p.node_id.is_empty() && p.weight == 0)
    );
    assert!(
        cluster
            .metric(
                0,
                "shardcache_rejected_requests_total{reason=\"not_a_member\"}"
            )
            .await
            >= 3.0
    );

    // Having proved the secret, a connection is a member's and the request is served,
    // checksummed.
    let member = connect_from([127, 0, 0, 2]).await;
    prove_secret(&member, "node-9").await;
    let mut r = member.request(ask(PeerMode::Probe)).await.unwrap();
    match r.next().await.unwrap() {
        Frame::Data(chunk) => {
            assert!(chunk.verify());
            assert_eq!(chunk.data[..], objects[0][..BLOCK]);
        }
        Frame::Error(e) if e.code == ErrorCode::NotCached => {
            // Node 0 did not keep this block (another node owns it): a fill must serve it.
            let mut r = member.request(ask(PeerMode::Fill)).await.unwrap();
            match r.next().await.unwrap() {
                Frame::Data(chunk) => assert_eq!(chunk.data[..], objects[0][..BLOCK]),
                other => panic!("a member got {other:?}"),
            }
        }
        other => panic!("a member got {other:?}"),
    }
    let mut r = member
        .request(Frame::Ping(shardcache_proto::Ping {
            from: "node-9".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(r.next().await.unwrap(), Frame::Pong(p) if p.node_id == "node-0"));
}

/// The members' handshake with the test clusters' secret, as member `me`.
async fn prove_secret(conn: &shardcache_client::raw::TcpConn, me: &str) {
    use shardcache_proto::{Frame, PeerAuth};
    use shardcache_server::access::ClusterSecret;
    let secret = ClusterSecret::new(shardcache_testsuite::TEST_SECRET.as_bytes());
    let mine = ClusterSecret::nonce();
    let hello = Frame::PeerAuth(PeerAuth {
        node_id: me.into(),
        nonce: mine.to_vec(),
        proof: Vec::new(),
    });
    let Frame::PeerChallenge(ch) = conn.request(hello).await.unwrap().next().await.unwrap() else {
        panic!("a challenge");
    };
    let ids = [me, ch.node_id.as_str()];
    assert!(secret.verify(true, [&mine, &ch.nonce], ids, &ch.proof));
    let proof = Frame::PeerAuth(PeerAuth {
        node_id: me.into(),
        nonce: Vec::new(),
        proof: secret.asker_proof(&mine, &ch.nonce, ids),
    });
    let answer = conn.request(proof).await.unwrap().next().await.unwrap();
    assert!(matches!(answer, Frame::AuthOk(_)), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_found_through_dns() {
    use shardcache_testsuite::TestServer;
    let origin = S3Origin::start(&["bucket"]).await;
    let a = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "train"))
        .config(|c| c.node_id = Some("node-a".into()))
        .start()
        .await;
    // `localhost` resolves to 127.0.0.1 (and maybe ::1, where nothing listens).
    let dns = format!("localhost:{}", a.tcp.port());
    let b = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "train"))
        .config(|c| {
            c.node_id = Some("node-b".into());
            c.peer_dns = Some(dns);
            c.peer_probe_interval = Duration::from_millis(100);
        })
        .start()
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.stats.cluster.peers.with_label_values(&["up"]).get() != 1 {
        assert!(Instant::now() < deadline, "node-a never found through DNS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, members) = b.admin_get("/members").await;
    assert_eq!(status, 200);
    assert!(
        members.contains(&format!("{} up node-a weight=1", a.tcp)),
        "{members}"
    );
    let (status, _) = b.admin_get("/readyz").await;
    assert_eq!(status, 200, "membership known, origin up: ready");
}

/// A headless Service lists every pod, the asking one too, at an address it does not listen
/// on by name (a pod address, where it listens on 0.0.0.0): here a forwarding proxy in front
/// of the node. The members' handshake shows that address is the node itself: it is marked
/// "self" once, not "down" and probed again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_reaches_the_node_itself_is_known_as_itself() {
    use shardcache_testsuite::TestServer;
    let origin = S3Origin::start(&["bucket"]).await;
    let dir = tempfile::tempdir().unwrap();
    let peers = dir.path().join("peers");
    std::fs::write(&peers, "").unwrap();
    let a = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", "train"))
        .config(|c| {
            c.node_id = Some("node-a".into());
            c.peers_file = Some(peers.clone());
            c.peer_refresh = Duration::from_millis(100);
            c.peer_probe_interval = Duration::from_millis(100);
        })
        .start()
        .await;
    // Bytes forwarded both ways to the node's own data plane.
    let forward = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let itself = forward.local_addr().unwrap();
    let upstream = a.tcp;
    let _forwarding = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = forward.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    std::fs::write(&peers, format!("{itself}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, members) = a.admin_get("/members").await;
        if members.contains(&format!("{itself} self")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never known as itself: {members}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And stays so: no probe marks it down afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, members) = a.admin_get("/members").await;
    assert!(members.contains(&format!("{itself} self")), "{members}");
    assert_eq!(a.stats.cluster.peers.with_label_values(&["down"]).get(), 0);
    let (status, _) = a.admin_get("/readyz").await;
    assert_eq!(status, 200, "a node alone with itself is ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_authenticate_with_certificates_over_quic() {
    use shardcache_client::ClientOptions;
    use shardcache_client::raw::{BufPool, TcpConn};
    use shardcache_proto::{ErrorCode, Frame, PeerBlock, PeerMode};
    use shardcache_testsuite::TestServer;

    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 6, 1 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path(), &["shardcache-member"]);
    let udp_port = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let quic: Vec<std::net::SocketAddr> = (0..3).map(|_| udp_port()).collect();
    let peers: Vec<String> = quic.iter().map(|a| a.to_string()).collect();
    let mut nodes = Vec::new();
    for (i, addr) in quic.iter().enumerate() {
        let mut d = origin.dataset("ds", "bucket", "train");
        d.block_size = Some(BLOCK as u64);
        let (ca, cert, key, peers, addr) =
            (ca.clone(), cert.clone(), key.clone(), peers.clone(), *addr);
        nodes.push(
            TestServer::builder()
                .dataset(d)
                .config(move |c| {
                    c.node_id = Some(format!("node-{i}"));
                    c.quic_listen = Some(addr);
                    c.insecure_dev_tls = false;
                    c.tls_ca = Some(ca);
                    c.tls_cert = Some(cert);
                    c.tls_key = Some(key);
                    c.peers = peers;
                    c.peer_probe_interval = Duration::from_millis(100);
                })
                .start()
                .await,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes
        .iter()
        .any(|n| n.stats.cluster.peers.with_label_values(&["up"]).get() != 2)
    {
        assert!(
            Instant::now() < deadline,
            "members never authenticated each other"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reads through node 0 get blocks from their owners over mutually authenticated QUIC.
    let client = Client::connect(&nodes[0].tcp_endpoint()).await.unwrap();
    for (i, want) in objects.iter().enumerate() {
        let got = client.read(&format!("ds/obj-{i:03}"), ..).await.unwrap();
        assert!(got[..] == want[..]);
    }
    assert_eq!(origin.total().get_bytes, total_bytes(&objects));
    assert!(
        nodes[0].stats.peer.fill_ok.get() > 0,
        "owners served blocks"
    );

    // Without a member certificate, peer requests are refused: over TCP even from a member's
    // address, and over QUIC from an ordinary reader (which may still read).
    let ask = Frame::PeerBlock(PeerBlock {
        path: "ds/obj-000".into(),
        etag: client.stat("ds/obj-000").await.unwrap().etag,
        size: objects[0].len() as u64,
        last_modified_ms: 0,
        block_size: BLOCK as u32,
        index: 0,
        mode: PeerMode::Probe,
        chunk_size: 0,
        offset: 0,
        upstream: Vec::new(),
    });
    let tcp = TcpConn::connect(&nodes[1].tcp_endpoint(), "node-1", BufPool::new(1))
        .await
        .unwrap();
    match tcp
        .request(ask.clone())
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
    {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);
            assert!(
                e.message.contains("has not proved it is a member"),
                "{}",
                e.message
            );
        }
        other => panic!("peer request without a certificate got {other:?}"),
    }
    let reader = Client::connect_with(
        &format!("quic://{}", quic[1]),
        ClientOptions {
            tls_ca: Some(ca.clone()),
            tls_any_name: true,
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let got = reader.read("ds/obj-001", ..).await.unwrap();
    assert!(got[..] == objects[1][..]);
    let quic_conn = shardcache_client::raw::QuicConn::connect(
        &ClientOptions {
            tls_ca: Some(ca.clone()),
            tls_any_name: true,
            ..ClientOptions::default()
        },
        &quic[1].to_string(),
        "127.0.0.1",
        "node-1",
    )
    .await
    .unwrap();
    match quic_conn.request(ask).await.unwrap().next().await.unwrap() {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);
            assert!(
                e.message.contains("has not proved it is a member"),
                "{}",
                e.message
            );
        }
        other => panic!("peer request from a reader got {other:?}"),
    }
}

/// One in-process node, "honest", whose only peer is `peer`, probed every 50 ms.
async fn honest_node(
    origin: &S3Origin,
    peer: std::net::SocketAddr,
) -> shardcache_testsuite::TestServer {
    let mut d = origin.dataset("ds", "bucket", "train");
    d.block_size = Some(BLOCK as u64);
    shardcache_testsuite::TestServer::builder()
        .dataset(d)
        .config(|c| {
            c.node_id = Some("honest".into());
            c.peers = vec![peer.to_string()];
            c.peer_probe_interval = Duration::from_millis(50);
        })
        .start()
        .await
}

/// A member (it holds the cluster secret) that answers pings claiming a huge weight (so it owns
/// nearly every block) and answers every block request with damaged bytes.
async fn lying_member() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use shardcache_proto::{DataChunk, Frame, Pong};
    scripted_member("liar", |frame| match frame {
        Frame::Ping(_) => vec![Frame::Pong(Pong {
            node_id: "liar".into(),
            instance: 7,
            weight: 1000,
            ..Pong::default()
        })],
        Frame::PeerBlock(b) => {
            let start = b.index * u64::from(b.block_size);
            let len = u64::from(b.block_size).min(b.size - start);
            let data = bytes::Bytes::from(vec![0xAB; len as usize]);
            vec![Frame::Data(DataChunk {
                offset: start,
                crc32c: crc32c(&data) ^ 1,
                data,
            })]
        }
        _ => Vec::new(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_damaged_blocks_never_reaches_a_reader() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 4, 1 << 20).await;
    let (liar, _task) = lying_member().await;
    let node = honest_node(&origin, liar).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.stats.cluster.peers.with_label_values(&["up"]).get() != 1 {
        assert!(Instant::now() < deadline, "the liar never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client::connect(&node.tcp_endpoint()).await.unwrap();
    for (i, want) in objects.iter().enumerate() {
        let got = client.read(&format!("ds/obj-{i:03}"), ..).await.unwrap();
        assert!(
            got[..] == want[..],
            "obj-{i:03}: damaged bytes reached the reader"
        );
        // Let the probe bring the liar back, so every object meets it again.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let snap = node.stats.snapshot();
    assert!(
        snap.checksum_failures >= objects.len() as u64,
        "every damaged block was caught: {snap:?}"
    );
    assert_eq!(origin.total().get_bytes, total_bytes(&objects));
}

/// A process at a member's address without the cluster secret, answering pings with a huge
/// weight and block requests with wrong bytes under valid checksums (what a hostNetwork pod or
/// a reused pod address could do): it is refused, never becomes an owner, and no byte of it is
/// stored or served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_the_cluster_secret_never_becomes_a_member() {
    use shardcache_proto::{DataChunk, Frame, Pong};
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 6, 1 << 20).await;
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    let (impostor, _task) = scripted_server(move |frame| match frame {
        // It plays along with the handshake, but cannot make a proof.
        Frame::PeerAuth(_) => vec![Frame::PeerChallenge(shardcache_proto::PeerAuth {
            node_id: "impostor".into(),
            nonce: vec![7; 32],
            proof: vec![9; 32],
        })],
        Frame::Ping(_) => vec![Frame::Pong(Pong {
            node_id: "impostor".into(),
            instance: 9,
            weight: u32::MAX,
            ..Pong::default()
        })],
        Frame::PeerBlock(b) => {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let start = b.index * u64::from(b.block_size);
            let len = u64::from(b.block_size).min(b.size - start);
            vec![Frame::Data(DataChunk::new(
                start,
                vec![0x5A; len as usize].into(),
            ))]
        }
        _ => Vec::new(),
    })
    .await;
    let node = honest_node(&origin, impostor).await;
    // It is probed, found wanting (it cannot answer the handshake), and never comes up.
    let peers = &node.stats.cluster.peers;
    let deadline = Instant::now() + Duration::from_secs(10);
    while peers.with_label_values(&["down"]).get() != 1 {
        assert_eq!(
            peers.with_label_values(&["up"]).get(),
            0,
            "the impostor came up"
        );
        assert!(Instant::now() < deadline, "the impostor was never probed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peers.with_label_values(&["up"]).get(), 0);
    let client = Client::connect(&node.tcp_endpoint()).await.unwrap();
    for (i, want) in objects.iter().enumerate() {
        let got = client.read(&format!("ds/obj-{i:03}"), ..).await.unwrap();
        assert!(
            got[..] == want[..],
            "obj-{i:03}: the impostor's bytes reached a reader"
        );
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never asked for a block"
    );
    assert_eq!(origin.total().get_bytes, total_bytes(&objects));
    let members = node.admin_get("/members").await.1;
    assert!(
        members.contains("without the cluster secret")
            || members.contains("handshake")
            || members.contains("no answer"),
        "{members}"
    );
}
