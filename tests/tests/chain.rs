//! Chain distribution on clusters of real processes: a 4-node chain reads the origin once, a
//! node killed mid-chain is cut out, and a damaged chunk is caught and sent again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shardcache_client::control_proto::{WarmProgress, WarmRequest};
use shardcache_client::{Client, ControlClient};
use shardcache_testsuite::{S3Origin, TestCluster, crc32c, put_objects, scripted_member};

const KIB: usize = 1 << 10;
const BLOCK: usize = 256 * KIB;
const CHUNK: &str = "64KiB";

fn blocks(objects: &[Vec<u8>]) -> u64 {
    objects.iter().map(|o| o.len().div_ceil(BLOCK) as u64).sum()
}

fn total(objects: &[Vec<u8>]) -> u64 {
    objects.iter().map(|o| o.len() as u64).sum()
}

async fn cluster(origin: &S3Origin, nodes: usize) -> TestCluster {
    TestCluster::over(origin, BLOCK)
        .nodes(nodes)
        .arg("--chain-chunk", CHUNK)
        .start_converged()
        .await
}

fn broadcast() -> WarmRequest {
    WarmRequest {
        path: "ds/".into(),
        all_nodes: true,
        ..WarmRequest::default()
    }
}

/// Run a warm to its end; every progress message.
async fn warm_all(ctl: &ControlClient, req: WarmRequest) -> Vec<WarmProgress> {
    let mut stream = ctl.warm(req).await.unwrap();
    let mut all = Vec::new();
    while let Some(p) = stream.message().await.unwrap() {
        let done = p.done;
        all.push(p);
        if done {
            break;
        }
    }
    assert!(all.last().is_some_and(|p| p.done), "the warm ended");
    all
}

/// Every block of every object is held by each of `nodes` (by node id).
async fn assert_held(ctl: &ControlClient, objects: &[Vec<u8>], nodes: &[&str]) {
    for i in 0..objects.len() {
        let stat = ctl.stat(&format!("ds/obj-{i:03}")).await.unwrap();
        for b in &stat.blocks {
            for n in nodes {
                assert!(
                    b.holders.iter().any(|h| h == n),
                    "obj-{i:03} block {}: held by {:?}, not {n}",
                    b.index,
                    b.holders
                );
            }
        }
    }
}

/// Read every object through node `n`: every byte checked, and every byte served from the
/// node's own tiers (none from a peer or the origin), so the node really holds the data.
async fn read_all(cluster: &TestCluster, n: usize, objects: &[Vec<u8>]) {
    let served = |source: &str| format!("shardcache_served_bytes_total{{source=\"{source}\"}}");
    let ram_before = cluster.metric(n, &served("ram")).await;
    let client = Client::connect(&cluster.endpoint(n)).await.unwrap();
    for (i, want) in objects.iter().enumerate() {
        let got = client.read(&format!("ds/obj-{i:03}"), ..).await.unwrap();
        assert!(got[..] == want[..], "node {n} obj-{i:03}");
    }
    let from_ram = cluster.metric(n, &served("ram")).await - ram_before;
    assert_eq!(
        from_ram,
        total(objects) as f64,
        "node {n} served every byte from its own RAM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_node_chain_reads_the_origin_once_and_spreads_the_sending() {
    let origin = S3Origin::start(&["bucket"]).await;
    // 1 to 4 blocks each, most ending inside a block.
    let objects = put_objects(&origin, "bucket", "train", 12, 900, |i| {
        BLOCK * (1 + i % 4) - (i % 3) * 7 * KIB
    })
    .await;
    let cluster = cluster(&origin, 4).await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(0), None, None)
        .await
        .unwrap();
    let progress = warm_all(&ctl, broadcast()).await;
    let last = progress.last().unwrap();
    for p in &progress {
        assert!(p.failures.is_empty(), "{:?}", p.failures);
    }
    let (bytes, n_blocks) = (total(&objects), blocks(&objects));
    assert_eq!(last.bytes_done, bytes);
    assert_eq!(last.nodes.iter().map(|n| n.bytes).sum::<u64>(), 4 * bytes);
    assert_eq!(origin.total().get_bytes, bytes, "origin bytes = the data's");
    assert_eq!(origin.total().gets, n_blocks, "one origin read per block");
    assert_held(&ctl, &objects, &["node-0", "node-1", "node-2", "node-3"]).await;

    // Each block went down a chain: three nodes took it from the node ahead, chunk by chunk.
    let upstream = cluster
        .metric_sum("shardcache_chain_bytes_total{source=\"upstream\"}")
        .await;
    let from_origin = cluster
        .metric_sum("shardcache_chain_bytes_total{source=\"origin\"}")
        .await;
    assert_eq!(upstream, 3.0 * bytes as f64);
    assert_eq!(from_origin, bytes as f64);
    assert_eq!(
        cluster
            .metric_sum("shardcache_peer_requests_served_total{mode=\"stream\"}")
            .await,
        3.0 * n_blocks as f64
    );
    // Heads are spread: every node sent some blocks on, none sent them all.
    for i in 0..4 {
        let sent = cluster
            .metric(i, "shardcache_peer_requests_served_total{mode=\"stream\"}")
            .await;
        assert!(
            sent > 0.0 && sent < n_blocks as f64,
            "node {i} sent {sent} of {n_blocks} blocks"
        );
    }

    // Every node serves every byte without the origin.
    let gets = origin.total().gets;
    for n in 0..4 {
        read_all(&cluster, n, &objects).await;
    }
    assert_eq!(origin.total().gets, gets);

    // Warming again moves nothing.
    let again = warm_all(&ctl, broadcast()).await;
    assert_eq!(again.last().unwrap().bytes_skipped, bytes);
    assert_eq!(origin.total().gets, gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_chain_is_cut_out_and_the_warm_completes() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = put_objects(&origin, "bucket", "train", 24, 950, |i| {
        16 * BLOCK + i * 3 * KIB
    })
    .await;
    let mut cluster = cluster(&origin, 4).await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(0), None, None)
        .await
        .unwrap();
    let mut stream = ctl.warm(broadcast()).await.unwrap();
    let bytes = total(&objects);
    let mut killed_at = None;
    let mut failures = Vec::new();
    let mut last = None;
    while let Some(p) = stream.message().await.unwrap() {
        failures.extend(p.failures.clone());
        if killed_at.is_none() && p.bytes_done > 0 {
            assert!(
                p.bytes_done < bytes && !p.done,
                "the warm must still be running when the node dies"
            );
            cluster.kill(2);
            killed_at = Some(p.bytes_done);
        }
        let done = p.done;
        last = Some(p);
        if done {
            break;
        }
    }
    let last = last.unwrap();
    assert!(killed_at.is_some());
    assert!(last.done);
    assert_eq!(last.bytes_done, bytes, "every block made it");
    // The dead node shows in the progress stream, and only it.
    assert!(
        !failures.is_empty(),
        "the dead node appears in the progress stream"
    );
    for f in &failures {
        assert_eq!(f.node, "node-2", "{f:?}");
    }
    // Every surviving node holds every block, with the right bytes.
    assert_held(&ctl, &objects, &["node-0", "node-1", "node-3"]).await;
    let gets = origin.total().gets;
    for n in [0, 1, 3] {
        read_all(&cluster, n, &objects).await;
    }
    assert_eq!(origin.total().gets, gets, "no survivor lacked a block");
    assert!(
        cluster.metric_sum("shardcache_chain_cutovers_total").await > 0.0,
        "some chain went around the dead node"
    );
}

/// A member that holds every object (the test gives it the bytes) and, the first time it sends
/// each block, damages one chunk on the way (the checksum is the good bytes').
async fn damaging_member(
    objects: Arc<Vec<Vec<u8>>>,
    damaged: Arc<AtomicU64>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use shardcache_proto::{BlockState, DataChunk, ErrorCode, ErrorFrame, Frame, PeerMode, Pong};
    let seen = Mutex::new(HashSet::new());
    scripted_member("damager", move |frame| match frame {
        Frame::Ping(_) => vec![Frame::Pong(Pong {
            node_id: "damager".into(),
            instance: 77,
            weight: 1,
            ..Pong::default()
        })],
        Frame::PeerBlock(b) => {
            let i: usize = b.path.rsplit("obj-").next().unwrap().parse().unwrap();
            let data = &objects[i];
            let start = b.index as usize * BLOCK;
            let end = (start + BLOCK).min(data.len());
            match b.mode {
                PeerMode::Chain => vec![Frame::BlockState(BlockState {
                    was_present: true,
                    present: true,
                    len: (end - start) as u64,
                    crc32c: crc32c(&data[start..end]),
                })],
                PeerMode::Stream => {
                    let first = seen.lock().unwrap().insert((i, b.index));
                    let mut out = Vec::new();
                    let mut at = start + b.offset as usize;
                    while at < end {
                        let to = (at + b.chunk_size as usize).min(end);
                        let good = bytes::Bytes::copy_from_slice(&data[at..to]);
                        let crc = crc32c(&good);
                        let mut sent = good.to_vec();
                        if first && out.is_empty() {
                            sent[0] ^= 0x40;
                            damaged.fetch_add(1, Ordering::SeqCst);
                        }
                        out.push(Frame::Data(DataChunk {
                            offset: at as u64,
                            crc32c: crc,
                            data: sent.into(),
                        }));
                        at = to;
                    }
                    out
                }
                _ => vec![Frame::Error(ErrorFrame {
                    code: ErrorCode::NotCached,
                    message: "not cached".into(),
                })],
            }
        }
        _ => Vec::new(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_is_caught_and_sent_again() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = put_objects(&origin, "bucket", "train", 10, 990, |i| {
        BLOCK * (1 + i % 3) + i * KIB
    })
    .await;
    let damaged = Arc::new(AtomicU64::new(0));
    let (fake, _task) = damaging_member(objects.clone(), damaged.clone()).await;
    let cluster = TestCluster::over(&origin, BLOCK)
        .arg("--chain-chunk", CHUNK)
        .extra_member(fake)
        .start_converged()
        .await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(0), None, None)
        .await
        .unwrap();
    let progress = warm_all(&ctl, broadcast()).await;
    for p in &progress {
        assert!(p.failures.is_empty(), "{:?}", p.failures);
    }
    let damaged = damaged.load(Ordering::SeqCst);
    assert!(damaged > 0, "some chain ran through the damaging member");
    // Every damaged chunk was caught on arrival and asked for again, once.
    assert_eq!(
        cluster.metric_sum("shardcache_chain_resends_total").await,
        damaged as f64
    );
    assert!(
        cluster
            .metric_sum("shardcache_checksum_failures_total")
            .await
            >= damaged as f64
    );
    assert_eq!(
        cluster.metric_sum("shardcache_chain_cutovers_total").await,
        0.0,
        "a resend is enough; nobody was cut out"
    );
    assert_held(&ctl, &objects, &["node-0", "node-1", "node-2"]).await;
    let gets = origin.total().gets;
    for n in 0..3 {
        read_all(&cluster, n, &objects).await;
    }
    assert_eq!(origin.total().gets, gets, "the real nodes hold every block");
}
