//! [`serve_connection`] over an in-memory duplex pipe: the protocol as a client sees it, with no
//! socket in between.

use std::time::Duration;

use bytes::BytesMut;
use shardcache_proto::frame::MAX_RESPONSE_PAYLOAD;
use shardcache_proto::{Hello, PeerMode, Ping, StatRequest};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::cluster::{Cluster, ClusterMetrics, ClusterSettings, PeerTransport};
use crate::peer::testing::{Counters, FakeMembers, origin, service};
use crate::peer::{Chains, PeerServer};

const BS: u64 = 64 * 1024;

fn body() -> Vec<u8> {
    (0..3 * BS as usize + 100)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// The client's end of one served connection.
struct Conn {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    codec: FrameCodec,
    _drain: tokio::sync::watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
}

async fn node(stats: &Counters) -> Arc<Node> {
    let origin = origin(&body(), BS, stats).await;
    let service = service(origin, stats);
    let cluster = Cluster::new(
        ClusterSettings {
            node_id: "node-a".into(),
            weight: 1,
            own_addr: None,
            peers: Vec::new(),
            peers_file: None,
            peer_dns: None,
            refresh: Duration::from_secs(60),
            probe_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(1),
            fill_timeout: Duration::from_secs(5),
            read_neighbours: 2,
            chain_chunk: 64 * 1024,
            transport: PeerTransport::Tcp,
            secret: None,
        },
        ClusterMetrics::new(&stats.registry),
    );
    // No member addresses: every block request is a stranger's.
    let peers = Arc::new(PeerServer::new(
        service.clone(),
        FakeMembers::new(Vec::new()),
        Arc::new(Chains::new(2)),
        stats.peer.clone(),
        false,
    ));
    Node::new(service, cluster, peers)
}

/// The metrics a connection test looks at.
struct Seen {
    parts: Arc<Counters>,
    transport: Arc<TransportMetrics>,
}

async fn connect(max_requests: usize) -> (Conn, Seen) {
    connect_with(max_requests, Policy::Anonymous).await
}

async fn connect_with(max_requests: usize, policy: Policy) -> (Conn, Seen) {
    connect_full(max_requests, policy, None).await
}

async fn connect_full(
    max_requests: usize,
    policy: Policy,
    secret: Option<Arc<ClusterSecret>>,
) -> (Conn, Seen) {
    connect_slot(max_requests, policy, secret, false).await
}

async fn connect_slot(
    max_requests: usize,
    policy: Policy,
    secret: Option<Arc<ClusterSecret>>,
    members_only: bool,
) -> (Conn, Seen) {
    let parts = Counters::new();
    let node = node(&parts).await;
    let transport = Arc::new(TransportMetrics::new(&parts.registry));
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (srd, swr) = tokio::io::split(server);
    let (drain, draining) = tokio::sync::watch::channel(false);
    let caller = Caller::addr("192.0.2.7:40000".parse().unwrap());
    let served = tokio::spawn(serve_connection(
        srd,
        swr,
        Serving {
            node,
            limits: ConnLimits::with_requests(max_requests),
            metrics: transport.clone(),
            policy: policy.clone(),
            secret: secret.clone(),
            responses: ResponseBudget::new(1 << 30),
        },
        caller,
        PerConnection {
            access: Access::new(&policy, secret.as_ref()),
            inflight: Arc::new(Semaphore::new(max_requests)),
            buffer: Arc::new(Semaphore::new(8 << 20)),
            members_only,
            open: Arc::new(tokio::sync::watch::Sender::new(())),
        },
        draining,
        None,
    ));
    let (rd, wr) = tokio::io::split(client);
    let conn = Conn {
        rd,
        wr,
        codec: FrameCodec::new(MAX_RESPONSE_PAYLOAD),
        _drain: drain,
        served,
    };
    (conn, Seen { parts, transport })
}

impl Conn {
    async fn send(&mut self, request_id: u32, frame: Frame) {
        let bytes = encode(&Framed { request_id, frame }).to_vec();
        self.wr.write_all(&bytes).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Framed> {
        loop {
            if let Some(framed) = self.codec.next_frame().expect("server frames decode") {
                return Some(framed);
            }
            let n = tokio::time::timeout(
                Duration::from_secs(10),
                self.rd.read_buf(self.codec.buffer_mut()),
            )
            .await
            .expect("the server answers within 10 s")
            .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    async fn expect(&mut self) -> Framed {
        self.next().await.expect("a frame, not the end")
    }
}

fn read(path: &str, offset: u64, length: Option<u64>) -> Frame {
    Frame::Read(ReadRequest {
        path: path.into(),
        offset,
        length,
        if_match: None,
    })
}

fn error_code(framed: &Framed) -> ErrorCode {
    match &framed.frame {
        Frame::Error(e) => e.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_and_ping_say_who_answers() {
    let (mut c, _) = connect(8).await;
    c.send(
        1,
        Frame::Hello(Hello {
            client: "test".into(),
        }),
    )
    .await;
    let Frame::ServerInfo(info) = c.expect().await.frame else {
        panic!("hello is answered with server info");
    };
    assert_eq!(info.node_id, "node-a");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    // A stranger's ping learns that the node is alive, and nothing about it.
    c.send(2, Frame::Ping(Ping { from: "x".into() })).await;
    let answer = c.expect().await;
    assert_eq!(answer.request_id, 2);
    let Frame::Pong(pong) = answer.frame else {
        panic!("ping is answered with pong");
    };
    assert_ne!(pong.instance, 0);
    assert_eq!((pong.node_id.as_str(), pong.weight), ("", 0));
    assert_eq!((pong.ram_used, pong.ram_capacity), (0, 0));
}

fn peer_auth(node_id: &str, nonce: &[u8], proof: &[u8]) -> Frame {
    Frame::PeerAuth(shardcache_proto::PeerAuth {
        node_id: node_id.into(),
        nonce: nonce.to_vec(),
        proof: proof.to_vec(),
    })
}

/// Prove the cluster secret on `c` as member "node-b" to "node-a", with request ids `id` and
/// `id + 1`.
async fn prove_member(c: &mut Conn, secret: &ClusterSecret, id: u32) {
    let mine = ClusterSecret::nonce();
    c.send(id, peer_auth("node-b", &mine, &[])).await;
    let Frame::PeerChallenge(ch) = c.expect().await.frame else {
        panic!("a challenge");
    };
    let proof = secret.asker_proof(&mine, &ch.nonce, ["node-b", "node-a"]);
    c.send(id + 1, peer_auth("node-b", &[], &proof)).await;
    assert!(matches!(c.expect().await.frame, Frame::AuthOk(_)));
}

#[tokio::test]
async fn a_member_proves_the_cluster_secret_and_is_then_answered_as_one() {
    let secret = Arc::new(ClusterSecret::new(b"test-cluster-secret-0123"));
    let (mut c, _) = connect_full(8, Policy::Anonymous, Some(secret.clone())).await;
    // Before the proof: block requests are refused.
    let block = Frame::PeerBlock(shardcache_proto::PeerBlock {
        path: "ds/shard".into(),
        etag: "e".into(),
        size: 3 * BS + 100,
        last_modified_ms: 0,
        block_size: BS as u32,
        index: 0,
        mode: PeerMode::Check,
        chunk_size: 0,
        offset: 0,
        upstream: Vec::new(),
    });
    c.send(1, block.clone()).await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::Forbidden);
    let mine = ClusterSecret::nonce();
    c.send(2, peer_auth("node-b", &mine, &[])).await;
    let Frame::PeerChallenge(ch) = c.expect().await.frame else {
        panic!("a challenge");
    };
    assert_eq!(ch.node_id, "node-a");
    let ids = ["node-b", "node-a"];
    assert!(secret.verify(true, [&mine, &ch.nonce], ids, &ch.proof));
    let proof = secret.asker_proof(&mine, &ch.nonce, ids);
    c.send(3, peer_auth("node-b", &[], &proof)).await;
    assert!(matches!(c.expect().await.frame, Frame::AuthOk(_)));
    c.send(
        4,
        Frame::Ping(Ping {
            from: "node-b".into(),
        }),
    )
    .await;
    let Frame::Pong(pong) = c.expect().await.frame else {
        panic!("pong");
    };
    assert_eq!((pong.node_id.as_str(), pong.weight), ("node-a", 1));
    c.send(5, block).await;
    assert!(matches!(c.expect().await.frame, Frame::BlockState(_)));
}

#[tokio::test]
async fn a_wrong_secret_closes_the_connection() {
    let secret = Arc::new(ClusterSecret::new(b"test-cluster-secret-0123"));
    let (mut c, stats) = connect_full(8, Policy::Anonymous, Some(secret)).await;
    let mine = ClusterSecret::nonce();
    c.send(1, peer_auth("node-b", &mine, &[])).await;
    let Frame::PeerChallenge(ch) = c.expect().await.frame else {
        panic!("a challenge");
    };
    let wrong = ClusterSecret::new(b"not-the-cluster-secret!!");
    let proof = wrong.asker_proof(&mine, &ch.nonce, ["node-b", "node-a"]);
    c.send(2, peer_auth("node-b", &[], &proof)).await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::Unauthenticated);
    assert!(c.next().await.is_none(), "closed");
    assert_eq!(stats.transport.auth_failures.get(), 1);
}

#[tokio::test]
async fn a_read_streams_verified_chunks_in_order() {
    let (mut c, stats) = connect(8).await;
    let want = body();
    c.send(7, read("ds/shard", 1000, Some(2 * BS))).await;
    let start = c.expect().await;
    assert_eq!(start.request_id, 7);
    let Frame::ReadStart(start) = start.frame else {
        panic!("a read starts with ReadStart");
    };
    assert_eq!((start.offset, start.length), (1000, 2 * BS));
    assert_eq!(start.info.size, want.len() as u64);
    let mut got = Vec::new();
    while (got.len() as u64) < start.length {
        let Frame::Data(chunk) = c.expect().await.frame else {
            panic!("data chunks follow");
        };
        assert!(chunk.verify());
        assert_eq!(chunk.offset, 1000 + got.len() as u64);
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, want[1000..1000 + 2 * BS as usize]);
    assert_eq!(stats.transport.requests.get(), 1);
}

#[tokio::test]
async fn concurrent_requests_interleave_whole_frames_by_id() {
    let (mut c, _) = connect(8).await;
    c.send(1, read("ds/shard", 0, None)).await;
    c.send(
        2,
        Frame::Stat(StatRequest {
            path: "ds/shard".into(),
        }),
    )
    .await;
    c.send(3, read("ds/shard", 5, Some(10))).await;
    let mut bytes = [0u64; 4];
    let mut stat = false;
    let mut starts = 0;
    while !(stat && starts == 2 && bytes[1] == body().len() as u64 && bytes[3] == 10) {
        let f = c.expect().await;
        match f.frame {
            Frame::StatOk(info) => {
                assert_eq!(f.request_id, 2);
                assert_eq!(info.block_size as u64, BS);
                stat = true;
            }
            Frame::ReadStart(_) => starts += 1,
            Frame::Data(chunk) => {
                assert!(chunk.verify());
                bytes[f.request_id as usize] += chunk.data.len() as u64;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_connection_serves_on() {
    let (mut c, stats) = connect(8).await;
    c.send(1, read("nope/shard", 0, None)).await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::UnknownDataset);
    c.send(2, read("ds/../etc/passwd", 0, None)).await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::InvalidKey);
    c.send(3, read("ds/shard", body().len() as u64 + 1, None))
        .await;
    assert_eq!(
        error_code(&c.expect().await),
        ErrorCode::RangeNotSatisfiable
    );
    // A request only the local socket takes.
    c.send(
        4,
        Frame::ReadInto(ReadInto {
            read: ReadRequest {
                path: "ds/shard".into(),
                offset: 0,
                length: Some(1),
                if_match: None,
            },
            region_offset: 0,
        }),
    )
    .await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::BadRequest);
    // Still serving.
    c.send(5, read("ds/shard", 0, Some(3))).await;
    assert!(matches!(c.expect().await.frame, Frame::ReadStart(_)));
    assert_eq!(stats.transport.failed_requests.get(), 4);
}

#[tokio::test]
async fn block_requests_from_a_stranger_are_forbidden() {
    let (mut c, stats) = connect(8).await;
    c.send(
        9,
        Frame::PeerBlock(shardcache_proto::PeerBlock {
            path: "ds/shard".into(),
            etag: String::new(),
            size: body().len() as u64,
            last_modified_ms: 0,
            block_size: BS as u32,
            index: 0,
            mode: PeerMode::Fill,
            chunk_size: 0,
            offset: 0,
            upstream: Vec::new(),
        }),
    )
    .await;
    let f = c.expect().await;
    assert_eq!((f.request_id, error_code(&f)), (9, ErrorCode::Forbidden));
    assert_eq!(stats.parts.peer.refused.get(), 1);
    assert_eq!(stats.parts.origin.get_requests.get(), 0);
}

#[tokio::test]
async fn requests_past_the_connections_limit_are_busy() {
    let (mut c, stats) = connect(1).await;
    // Both frames arrive together: the second is decoded while the first still runs.
    let mut both = encode(&Framed {
        request_id: 1,
        frame: read("ds/shard", 0, None),
    })
    .to_vec();
    both.extend(
        encode(&Framed {
            request_id: 2,
            frame: read("ds/shard", 0, None),
        })
        .to_vec(),
    );
    c.send_raw(&both).await;
    let mut busy = false;
    let mut read_bytes = 0;
    while !(busy && read_bytes == body().len()) {
        let f = c.expect().await;
        match (f.request_id, f.frame) {
            (2, Frame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Busy);
                assert!(e.code.is_retryable());
                busy = true;
            }
            (1, Frame::Data(chunk)) => read_bytes += chunk.data.len(),
            (1, Frame::ReadStart(_)) => {}
            (id, other) => panic!("request {id}: unexpected {other:?}"),
        }
    }
    assert_eq!(stats.transport.rejected_requests.get(), 1);
}

#[tokio::test]
async fn a_malformed_frame_closes_only_that_connection() {
    let (mut c, _) = connect(8).await;
    let mut bad = BytesMut::new();
    // A header with an unknown protocol version.
    bad.extend_from_slice(&[0xEE; 12]);
    c.send_raw(&bad).await;
    let f = c.expect().await;
    assert_eq!((f.request_id, error_code(&f)), (0, ErrorCode::BadRequest));
    assert!(c.next().await.is_none(), "the server closes the connection");
    c.served.await.unwrap();

    // Another connection is unaffected.
    let (mut other, _) = connect(8).await;
    other.send(1, read("ds/shard", 0, Some(1))).await;
    assert!(matches!(other.expect().await.frame, Frame::ReadStart(_)));
}

#[tokio::test]
async fn a_response_frame_from_a_client_closes_the_connection() {
    let (mut c, _) = connect(8).await;
    c.send(4, Frame::Pong(shardcache_proto::Pong::default()))
        .await;
    let f = c.expect().await;
    assert_eq!((f.request_id, error_code(&f)), (4, ErrorCode::BadRequest));
    assert!(c.next().await.is_none());
}

#[tokio::test]
async fn draining_finishes_the_request_in_flight_then_closes() {
    let (mut c, _) = connect(8).await;
    c.send(1, read("ds/shard", 0, None)).await;
    assert!(matches!(c.expect().await.frame, Frame::ReadStart(_)));
    c._drain.send_replace(true);
    let mut got = 0;
    while let Some(f) = c.next().await {
        if let Frame::Data(chunk) = f.frame {
            got += chunk.data.len();
        }
    }
    assert_eq!(got, body().len(), "the read in flight was finished");
    c.served.await.unwrap();
}

const TOKEN: &str = "reader-token-0123456789";

fn tokens() -> Policy {
    let known = vec!["ds".to_string(), "other".to_string()];
    let text = format!("{TOKEN} ds\n");
    Policy::Tokens(Arc::new(
        crate::access::AccessTokens::parse(&text, "tokens", &known).unwrap(),
    ))
}

fn auth(token: &str) -> Frame {
    Frame::Auth(shardcache_proto::Auth {
        token: token.into(),
    })
}

#[tokio::test]
async fn with_tokens_nothing_is_read_before_auth_and_only_granted_datasets_after() {
    let (mut c, stats) = connect_with(8, tokens()).await;
    // Who the server is, and liveness, need no token.
    c.send(1, Frame::Hello(Hello::default())).await;
    assert!(matches!(c.expect().await.frame, Frame::ServerInfo(_)));
    c.send(2, read("ds/shard", 0, Some(10))).await;
    let refused = c.expect().await;
    assert_eq!(refused.request_id, 2);
    assert_eq!(error_code(&refused), ErrorCode::Unauthenticated);
    c.send(
        3,
        Frame::Stat(StatRequest {
            path: "ds/shard".into(),
        }),
    )
    .await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::Unauthenticated);
    c.send(4, auth(TOKEN)).await;
    let ok = c.expect().await;
    assert_eq!(ok.request_id, 4);
    assert_eq!(
        ok.frame,
        Frame::AuthOk(shardcache_proto::AuthOk {
            datasets: vec!["ds".into()]
        })
    );
    c.send(
        5,
        Frame::Stat(StatRequest {
            path: "ds/shard".into(),
        }),
    )
    .await;
    assert!(matches!(c.expect().await.frame, Frame::StatOk(_)));
    c.send(6, read("other/shard", 0, Some(10))).await;
    let forbidden = c.expect().await;
    assert_eq!(error_code(&forbidden), ErrorCode::Forbidden);
    let Frame::Error(e) = forbidden.frame else {
        unreachable!()
    };
    assert!(e.message.contains("\"other\""), "{}", e.message);
    // A prefetch naming one dataset the token lacks is refused whole.
    c.send(
        7,
        Frame::Prefetch(shardcache_proto::Prefetch {
            paths: vec!["ds/shard".into(), "other/shard".into()],
        }),
    )
    .await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::Forbidden);
    assert_eq!(stats.transport.denied_requests.get(), 4);
    // Nothing was fetched for the refused requests: the one stat is the only origin request.
    assert_eq!(stats.parts.origin.head_requests.get(), 1);
    assert_eq!(stats.parts.origin.get_requests.get(), 0);
}

#[tokio::test]
async fn an_unknown_token_closes_the_connection() {
    let (mut c, stats) = connect_with(8, tokens()).await;
    c.send(1, auth("reader-token-0123456788")).await;
    let refused = c.expect().await;
    assert_eq!(error_code(&refused), ErrorCode::Unauthenticated);
    let Frame::Error(e) = refused.frame else {
        unreachable!()
    };
    assert!(!e.message.contains("reader-token"), "{}", e.message);
    assert!(c.next().await.is_none(), "the server closed the connection");
    assert_eq!(stats.transport.auth_failures.get(), 1);
}

#[tokio::test]
async fn a_server_without_tokens_takes_any_token() {
    let (mut c, _) = connect(8).await;
    c.send(1, auth("whatever-token-12345")).await;
    assert_eq!(
        c.expect().await.frame,
        Frame::AuthOk(shardcache_proto::AuthOk {
            datasets: vec!["*".into()]
        })
    );
    c.send(
        2,
        Frame::Stat(StatRequest {
            path: "ds/shard".into(),
        }),
    )
    .await;
    assert!(matches!(c.expect().await.frame, Frame::StatOk(_)));
}

#[tokio::test]
async fn a_members_slot_serves_members_only() {
    let secret = Arc::new(ClusterSecret::new(b"test-cluster-secret-0123"));
    // A client on a member's slot: who the server is, then refused and closed.
    let (mut c, _) = connect_slot(8, Policy::Anonymous, Some(secret.clone()), true).await;
    c.send(1, Frame::Hello(Hello::default())).await;
    assert!(matches!(c.expect().await.frame, Frame::ServerInfo(_)));
    c.send(2, read("ds/shard", 0, Some(10))).await;
    assert_eq!(error_code(&c.expect().await), ErrorCode::Busy);
    assert!(c.next().await.is_none(), "closed");
    // A member proves itself and is served.
    let (mut c, _) = connect_slot(8, Policy::Anonymous, Some(secret.clone()), true).await;
    prove_member(&mut c, &secret, 1).await;
    c.send(
        3,
        Frame::Stat(StatRequest {
            path: "ds/shard".into(),
        }),
    )
    .await;
    assert!(matches!(c.expect().await.frame, Frame::StatOk(_)));
}

#[tokio::test(start_paused = true)]
async fn with_tokens_a_connection_that_never_authenticates_is_closed() {
    let (mut c, stats) = connect_with(8, tokens()).await;
    // Who the server is may be asked; then nothing, for longer than the proof deadline.
    c.send(1, Frame::Hello(Hello::default())).await;
    assert!(matches!(c.expect().await.frame, Frame::ServerInfo(_)));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(c.next().await.is_none(), "closed without a token");
    assert_eq!(stats.transport.idle_closed.get(), 1);
}
