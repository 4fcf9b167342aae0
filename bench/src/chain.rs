//! Chain benchmark: S bytes put on N nodes by one `warm --all-nodes` (a chain per block, one
//! origin read at its head), beside, in the same run and from the same S3 origin:
//! (a) the same S bytes warmed onto one node, and (b) N independent copies (N single nodes,
//! each warming S from the origin at once).
//!
//! The origin is an in-process S3 server (s3s-fs). With `--chain-origin-mbps R` its GET
//! bodies share an egress budget of R MB/s, a network-bound origin (an object store's egress to
//! the cluster) as the chain is built for; with 0 it is unlimited, and on a small machine every
//! setup is then bound by the CPU that the origin and all nodes share.
//!
//! Every warm starts on fresh caches; only the warm is timed (from the request to its last
//! progress report). After each chain warm the origin bytes read are checked (= S) and every
//! node must report S bytes placed. The times go to a CSV beside the table, for the plot
//! (`bench/plot_chain.py`).

use std::time::{Duration, Instant};

use shardcache_client::ControlClient;
use shardcache_client::control_proto::WarmRequest;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

use crate::Args;
use crate::report::{Report, Row};

pub struct ChainPoint {
    /// The origin's egress limit in MB/s (0: none, bound by this machine's CPU).
    pub origin_mbps: u64,
    pub nodes: usize,
    pub one_node: f64,
    pub independent: f64,
    pub chain: f64,
    pub origin_ratio: f64,
}

pub struct ChainResult {
    pub rows: Vec<Row>,
    pub points: Vec<ChainPoint>,
}

/// `n` fresh nodes over the chain dataset; one cluster when `clustered`, else each alone.
async fn nodes(
    origin: &S3Origin,
    n: usize,
    ram: u64,
    chunk: u64,
    clustered: bool,
) -> anyhow::Result<Vec<TestServer>> {
    crate::cluster::nodes(origin, "chain", n, clustered, |c| {
        c.ram_cache = ram;
        c.chain_chunk = chunk;
        // With the origin's egress shared by many block reads, one read takes seconds: the
        // deadline covers it, as it would for a slow object store.
        c.origin_timeout = Duration::from_secs(120);
    })
    .await
}

/// Warm `ds/` through `server`'s control plane; seconds, and the bytes placed on each node.
async fn warm(server: &TestServer, all_nodes: bool) -> anyhow::Result<(f64, Vec<u64>)> {
    let control = server.control.expect("control plane").to_string();
    let ctl = ControlClient::connect(&control, None, None).await?;
    let started = Instant::now();
    let mut stream = ctl
        .warm(WarmRequest {
            path: "ds/".into(),
            all_nodes,
            ..WarmRequest::default()
        })
        .await?;
    let mut last = None;
    while let Some(p) = stream.message().await? {
        anyhow::ensure!(p.failures.is_empty(), "warm failures: {:?}", p.failures);
        let done = p.done;
        last = Some(p);
        if done {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let last = last.ok_or_else(|| anyhow::anyhow!("no progress report"))?;
    anyhow::ensure!(last.done, "the warm did not finish");
    Ok((secs, last.nodes.iter().map(|n| n.bytes).collect()))
}

/// The median of some times; NaN when there are none.
fn median(times: &mut [f64]) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

async fn stop(servers: Vec<TestServer>) {
    for s in servers {
        s.stop().await;
    }
}

pub async fn chain(origin: &S3Origin, args: &Args) -> anyhow::Result<ChainResult> {
    let objects = args.chain_objects;
    let size = (args.chain_mib << 20) / objects;
    for i in 0..objects {
        origin
            .put(
                "bench",
                &format!("chain/obj-{i:04}"),
                bytes_for(7000 + i as u64, size),
            )
            .await;
    }
    let dataset = (objects * size) as u64;
    let ram = dataset + dataset / 2;
    let chunk = args.chain_chunk_kib << 10;
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for &mbps in &args.chain_origin_mbps {
        origin.limit_egress(mbps * 1_000_000);
        let limit = if mbps == 0 {
            "origin unlimited".to_string()
        } else {
            format!("origin {mbps} MB/s")
        };
        for &n in &args.chain_nodes {
            // The three setups take turns `reps` times; each time is the median, so a slow
            // moment of the machine does not land on one side only.
            let (mut ones, mut indeps, mut chains) = (Vec::new(), Vec::new(), Vec::new());
            let mut origin_bytes = 0;
            for _ in 0..args.chain_reps.max(1) {
                if !args.chain_skip_baselines {
                    // (a) one node.
                    let one = nodes(origin, 1, ram, chunk, false).await?;
                    let (secs, placed) = warm(&one[0], false).await?;
                    anyhow::ensure!(placed == [dataset], "one node placed {placed:?} bytes");
                    ones.push(secs);
                    stop(one).await;

                    // (b) N independent copies from the origin, at once.
                    let alone = nodes(origin, n, ram, chunk, false).await?;
                    let started = Instant::now();
                    let runs: Vec<_> = alone.iter().map(|s| warm(s, false)).collect();
                    for r in futures::future::join_all(runs).await {
                        let (_, placed) = r?;
                        anyhow::ensure!(
                            placed == [dataset],
                            "a single node placed {placed:?} bytes"
                        );
                    }
                    indeps.push(started.elapsed().as_secs_f64());
                    stop(alone).await;
                }

                // (c) one chain warm to all N.
                let cluster = nodes(origin, n, ram, chunk, true).await?;
                let before = origin.total().get_bytes;
                let (secs, placed) = warm(&cluster[0], true).await?;
                origin_bytes = origin_bytes.max(origin.total().get_bytes - before);
                anyhow::ensure!(
                    placed.len() == n && placed.iter().all(|&b| b == dataset),
                    "the chain placed {placed:?} bytes on {n} nodes"
                );
                chains.push(secs);
                stop(cluster).await;
            }
            let (one_secs, indep_secs, chain_secs) =
                (median(&mut ones), median(&mut indeps), median(&mut chains));
            println!(
                "{limit}, N={n}: one node {ones:.2?} s, {n} independent copies {indeps:.2?} s, chain {chains:.2?} s; chain origin bytes {origin_bytes} of {dataset} (most of any run)"
            );
            rows.push(Row {
                name: format!("{limit}, N={n}: one node, warm of S"),
                bytes: dataset,
                secs: one_secs,
            });
            rows.push(Row {
                name: format!("{limit}, N={n}: {n} independent copies from the origin"),
                bytes: n as u64 * dataset,
                secs: indep_secs,
            });
            rows.push(Row {
                name: format!("{limit}, N={n}: chain to {n} nodes (warm --all-nodes)"),
                bytes: n as u64 * dataset,
                secs: chain_secs,
            });
            points.push(ChainPoint {
                origin_mbps: mbps,
                nodes: n,
                one_node: one_secs,
                independent: indep_secs,
                chain: chain_secs,
                origin_ratio: origin_bytes as f64 / dataset as f64,
            });
        }
    }
    origin.limit_egress(0);
    if let Some(path) = &args.chain_csv {
        let mut csv =
            String::from("origin_mbps,nodes,one_node_s,independent_s,chain_s,origin_ratio\n");
        for p in &points {
            csv.push_str(&format!(
                "{},{},{:.3},{:.3},{:.3},{:.3}\n",
                p.origin_mbps, p.nodes, p.one_node, p.independent, p.chain, p.origin_ratio
            ));
        }
        std::fs::write(path, csv)?;
        println!("wrote {}", path.display());
    }
    Ok(ChainResult { rows, points })
}

/// The chain runs and their ratios.
pub(crate) async fn run(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let c = chain(origin, args).await?;
    for p in &c.points {
        let n = p.nodes;
        let limit = if p.origin_mbps == 0 {
            "origin unlimited".to_string()
        } else {
            format!("origin {} MB/s", p.origin_mbps)
        };
        report.ratios.push((
            format!("{limit}, N={n}: chain / one node, time"),
            p.chain / p.one_node,
            if n == 4 { 1.3 } else { 0.0 },
            false,
        ));
        report.ratios.push((
            format!("{limit}, N={n}: independent copies / one node, time"),
            p.independent / p.one_node,
            0.0,
            false,
        ));
        report.ratios.push((
            format!("{limit}, N={n}: chain origin bytes / S"),
            p.origin_ratio,
            1.0,
            false,
        ));
    }
    report.rows.extend(c.rows);
    Ok(())
}
