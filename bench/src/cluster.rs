//! Cluster benchmark: one epoch of a dataset read by R readers spread over N nodes, beside the
//! same epoch through one node, in the same run and from the same S3 origin.
//!
//! Each reader takes every R-th object, so an epoch reads every object exactly once. The first
//! epoch is cold (every block comes from the origin, once, through its owner); the second is
//! warm; in a third epoch on the cluster every reader moves to another node, so its blocks
//! come over the peer path. Reported: origin bytes / dataset bytes for the cluster's cold epoch (target 1.00) and
//! the throughput of both setups. Every object's CRC32C is checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcache_client::Client;
use shardcache_server::config::Config;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for, free_port};

use crate::Args;
use crate::report::{Report, Row};

pub struct ClusterResult {
    pub rows: Vec<Row>,
    /// Origin bytes / dataset bytes in the cluster's cold epoch.
    pub origin_ratio: f64,
    /// Cluster throughput / one node's, cold and warm.
    pub cold_ratio: f64,
    pub warm_ratio: f64,
}

/// Start `n` in-process nodes over the dataset `ds` = `bench/PREFIX`; members of one cluster
/// when `clustered` (then wait until each sees the others up), else each alone. `set` adjusts
/// each node's settings.
pub(crate) async fn nodes(
    origin: &S3Origin,
    prefix: &str,
    n: usize,
    clustered: bool,
    set: impl Fn(&mut Config),
) -> anyhow::Result<Vec<TestServer>> {
    let clustered = clustered && n > 1;
    let addrs: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut servers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let addr = addr.parse()?;
        let peers = if clustered { addrs.clone() } else { Vec::new() };
        servers.push(
            TestServer::builder()
                .dataset(origin.dataset("ds", "bench", prefix))
                .config(|c| {
                    c.listen = addr;
                    c.quic_listen = None;
                    c.node_id = Some(format!("node-{i}"));
                    c.peers = peers;
                    c.peer_refresh = Duration::from_millis(200);
                    c.peer_probe_interval = Duration::from_millis(100);
                    set(c);
                })
                .start()
                .await,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while clustered
        && servers
            .iter()
            .any(|s| s.stats.cluster.peers.with_label_values(&["up"]).get() != (n - 1) as i64)
    {
        anyhow::ensure!(Instant::now() < deadline, "cluster never converged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(servers)
}

/// One epoch: reader `r` reads objects `r, r + R, ...` through node `(r + shift) % N`.
async fn epoch(
    servers: &[TestServer],
    readers: usize,
    shift: usize,
    crcs: &Arc<Vec<u32>>,
) -> anyhow::Result<(u64, f64)> {
    let mut clients = Vec::new();
    for s in servers {
        clients.push(Client::connect(&s.tcp_endpoint()).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..readers {
        let client = clients[(r + shift) % clients.len()].clone();
        let crcs = crcs.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            for i in (r..crcs.len()).step_by(readers) {
                let got = client.read(&format!("ds/obj-{i:04}"), ..).await?;
                anyhow::ensure!(crc32c::crc32c(&got) == crcs[i], "obj-{i} differs");
                bytes += got.len() as u64;
            }
            Ok(bytes)
        }));
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await??;
    }
    Ok((bytes, started.elapsed().as_secs_f64()))
}

pub async fn cluster(origin: &S3Origin, args: &Args) -> anyhow::Result<ClusterResult> {
    let objects = args.cluster_objects;
    let size = (args.cluster_mib << 20) / objects;
    let mut crcs = Vec::new();
    for i in 0..objects {
        let data = bytes_for(5000 + i as u64, size);
        crcs.push(crc32c::crc32c(&data));
        origin
            .put("bench", &format!("epoch/obj-{i:04}"), data)
            .await;
    }
    let crcs = Arc::new(crcs);
    let dataset = (objects * size) as u64;
    let n = args.cluster_nodes;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    // One node first, then the cluster; each on fresh caches.
    for (label, count) in [("1 node", 1), ("cluster", n)] {
        let ram = if count == 1 { dataset * 2 } else { dataset };
        let servers = nodes(origin, "epoch", count, true, |c| c.ram_cache = ram).await?;
        let before = origin.total();
        let (bytes, cold) = epoch(&servers, args.cluster_readers, 0, &crcs).await?;
        let origin_bytes = origin.total().get_bytes - before.get_bytes;
        println!(
            "{label}: cold epoch of {dataset} bytes read {origin_bytes} bytes from the origin"
        );
        let (_, warm) = epoch(&servers, args.cluster_readers, 0, &crcs).await?;
        let name = if count == 1 {
            label.to_string()
        } else {
            format!("{count} nodes")
        };
        rows.push(Row {
            name: format!("{name}, cold epoch ({} readers)", args.cluster_readers),
            bytes,
            secs: cold,
        });
        rows.push(Row {
            name: format!("{name}, warm epoch ({} readers)", args.cluster_readers),
            bytes,
            secs: warm,
        });
        if count > 1 {
            // Each reader moves to the next node: the blocks it reads now come from their
            // owners (or the copies the first epoch left) over the peer path.
            let (_, moved) = epoch(&servers, args.cluster_readers, 1, &crcs).await?;
            rows.push(Row {
                name: format!("{name}, warm epoch, readers moved to another node"),
                bytes,
                secs: moved,
            });
        }
        results.push((cold, warm, origin_bytes));
        for s in servers {
            s.stop().await;
        }
    }
    let (one, many) = (results[0], results[1]);
    Ok(ClusterResult {
        rows,
        origin_ratio: many.2 as f64 / dataset as f64,
        cold_ratio: one.0 / many.0,
        warm_ratio: one.1 / many.1,
    })
}

/// The cluster runs and their ratios.
pub(crate) async fn run(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let c = cluster(origin, args).await?;
    report.ratios.push((
        "cluster cold epoch: origin bytes / dataset bytes".to_string(),
        c.origin_ratio,
        1.0,
        false,
    ));
    report.ratios.push((
        "cluster / one node, cold epoch throughput".to_string(),
        c.cold_ratio,
        0.0,
        true,
    ));
    report.ratios.push((
        "cluster / one node, warm epoch throughput".to_string(),
        c.warm_ratio,
        0.0,
        true,
    ));
    report.rows.extend(c.rows);
    Ok(())
}
