//! `shardcache-bench`: throughput of the cache beside baselines measured in the same run.
//!
//! - hot TCP: R readers each read a cached object of S bytes through the cache over TCP, beside
//!   raw loopback TCP (a server writing S bytes from memory on each of R connections);
//! - hot QUIC: the same over QUIC, beside raw quinn streams carrying S bytes;
//! - cold: one object read through a fresh (empty) cache from a real S3 server, beside a direct
//!   object_store GET of the same object from the same server (and, for reference, a direct
//!   read with parallel ranged GETs).
//!
//! - cluster: one epoch of a dataset read by readers spread over N nodes, beside the same epoch
//!   through one node (see `cluster.rs`).
//!
//! Every measured byte is checked or at least lands in a caller-owned buffer, as a data loader's
//! would. Results print as a Markdown table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use shardcache_client::{Client, ClientOptions};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Clone)]
#[command(about = "shardcache throughput against same-run baselines")]
pub(crate) struct Args {
    /// Concurrent readers in the hot runs.
    #[arg(long, default_value_t = 8)]
    readers: usize,
    /// Object size in MiB.
    #[arg(long, default_value_t = 64)]
    object_mib: usize,
    /// Rounds each hot reader reads its object.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Repetitions of each hot measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Cold-read repetitions (each on a fresh cache).
    #[arg(long, default_value_t = 3)]
    cold_reps: usize,
    /// Cold-read object size in MiB.
    #[arg(long, default_value_t = 256)]
    cold_mib: usize,
    /// The cache server's readahead (blocks in flight per read) in the cold run.
    #[arg(long, default_value_t = shardcache_server::config::Config::default().readahead_blocks)]
    readahead: usize,
    /// Blocks in the index-rebuild benchmark.
    #[arg(long, default_value_t = 100_000)]
    rebuild_blocks: u64,
    /// Directory for the disk-tier benchmarks (a temporary directory under it is used).
    #[arg(long, default_value = "target/bench-disk")]
    disk_dir: std::path::PathBuf,
    /// Nodes in the cluster benchmark.
    #[arg(long, default_value_t = 3)]
    cluster_nodes: usize,
    /// Readers in the cluster benchmark, spread over the nodes.
    #[arg(long, default_value_t = 16)]
    cluster_readers: usize,
    /// Dataset size of the cluster benchmark in MiB.
    #[arg(long, default_value_t = 2048)]
    cluster_mib: usize,
    /// Objects the cluster benchmark's dataset is split into.
    #[arg(long, default_value_t = 64)]
    cluster_objects: usize,
    /// Cluster sizes of the chain benchmark.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    chain_nodes: Vec<usize>,
    /// Data size S of the chain benchmark in MiB.
    #[arg(long, default_value_t = 1024)]
    chain_mib: usize,
    /// Objects S is split into.
    #[arg(long, default_value_t = 16)]
    chain_objects: usize,
    /// Origin egress limits (MB/s) the chain benchmark runs under, in turn; 0: unlimited.
    #[arg(long, value_delimiter = ',', default_value = "100,0")]
    chain_origin_mbps: Vec<u64>,
    /// Repetitions of each chain-benchmark setup (medians reported).
    #[arg(long, default_value_t = 3)]
    chain_reps: usize,
    /// Measure only the chains (no one-node and independent-copy runs): for exploring settings.
    #[arg(long)]
    chain_skip_baselines: bool,
    /// Chain chunk size in KiB.
    #[arg(long, default_value_t = 1024)]
    chain_chunk_kib: u64,
    /// Shard size of the GPU benchmark in MiB (feature `cuda`).
    #[arg(long, default_value_t = 256)]
    gpu_mib: usize,
    /// Write the chain benchmark's times to this CSV (for bench/plot_chain.py).
    #[arg(long)]
    chain_csv: Option<std::path::PathBuf>,
    /// Only these parts (hot-tcp, hot-quic, cold, disk-hot, disk-rebuild, local, cluster,
    /// chain, gpu); all when empty (gpu only with the `cuda` feature and a GPU).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

mod chain;
mod cluster;
#[cfg(feature = "cuda")]
mod gpu;

pub(crate) struct Row {
    name: String,
    bytes: u64,
    secs: f64,
}

impl Row {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e9
    }
}

/// The run with the median throughput.
fn median(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.gbps().total_cmp(&b.gbps()));
    runs.swap_remove(runs.len() / 2)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    shardcache_testsuite::init();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn wants(args: &Args, part: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|p| p == part)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let size = args.object_mib << 20;
    let origin = S3Origin::start(&["bench"]).await;
    let mut rows = Vec::new();
    let mut ratios: Vec<(String, f64, f64, bool)> = Vec::new();

    if wants(&args, "hot-tcp") || wants(&args, "hot-quic") {
        for r in 0..args.readers {
            origin
                .put("bench", &format!("hot/obj-{r}"), bytes_for(r as u64, size))
                .await;
        }
        let ram = (args.readers * size) as u64 * 2;
        let server = TestServer::builder()
            .dataset(origin.dataset("ds", "bench", "hot"))
            .config(|c| c.ram_cache = ram)
            .start()
            .await;
        // Warm: every object read once.
        let warm = Client::connect(&server.tcp_endpoint()).await?;
        for r in 0..args.readers {
            let got = warm.read(&format!("ds/obj-{r}"), ..).await?;
            anyhow::ensure!(
                got[..] == bytes_for(r as u64, size)[..],
                "warm read of obj-{r} differs"
            );
        }
        let origin_gets = server.stats.snapshot().origin_get_requests;

        // Baseline and cache alternate `reps` times; the medians are compared, so a slow
        // moment of the machine does not land on one side only.
        if wants(&args, "hot-tcp") {
            let (mut raws, mut streams, mut intos) = (Vec::new(), Vec::new(), Vec::new());
            let ep = server.tcp_endpoint();
            for _ in 0..args.reps {
                raws.push(raw_tcp(args.readers, size, args.rounds).await?);
                streams.push(
                    hot_reads(&ep, ClientOptions::default(), &args, size, Api::Stream, 0).await?,
                );
                intos.push(
                    hot_reads(&ep, ClientOptions::default(), &args, size, Api::Into, 0).await?,
                );
            }
            let (raw, stream, into) = (median(raws), median(streams), median(intos));
            ratios.push((
                "hot TCP (read_stream) / raw loopback TCP".to_string(),
                stream.gbps() / raw.gbps(),
                0.80,
                true,
            ));
            ratios.push((
                "hot TCP (read_into) / raw loopback TCP".to_string(),
                into.gbps() / raw.gbps(),
                0.0,
                true,
            ));
            rows.push(raw);
            rows.push(Row {
                name: "shardcache hot, TCP, read_stream (verified chunks)".into(),
                ..stream
            });
            rows.push(Row {
                name: "shardcache hot, TCP, read_into (copied to caller's buffer)".into(),
                ..into
            });
        }
        if wants(&args, "hot-quic") {
            let (mut raws, mut caches) = (Vec::new(), Vec::new());
            let options = ClientOptions {
                insecure_skip_verify: true,
                ..ClientOptions::default()
            };
            for _ in 0..args.reps {
                raws.push(raw_quic(args.readers, size, args.rounds).await?);
                caches.push(
                    hot_reads(
                        &server.quic_endpoint(),
                        options.clone(),
                        &args,
                        size,
                        Api::Stream,
                        0,
                    )
                    .await?,
                );
            }
            let (raw, cache) = (median(raws), median(caches));
            ratios.push((
                "hot QUIC / raw QUIC".to_string(),
                cache.gbps() / raw.gbps(),
                0.0,
                true,
            ));
            rows.push(raw);
            rows.push(Row {
                name: "shardcache hot, QUIC, read_stream".into(),
                ..cache
            });
        }
        anyhow::ensure!(
            server.stats.snapshot().origin_get_requests == origin_gets,
            "hot reads went to the origin"
        );
    }

    if wants(&args, "cold") {
        let (direct, ranged, cache) = cold(&origin, &args).await?;
        ratios.push((
            "cold cache time / direct GET time".to_string(),
            direct.gbps() / cache.gbps(),
            1.15,
            false,
        ));
        ratios.push((
            "cold cache time / direct get_ranges time".to_string(),
            ranged.gbps() / cache.gbps(),
            0.0,
            false,
        ));
        rows.push(direct);
        rows.push(ranged);
        rows.push(cache);
    }

    if wants(&args, "disk-hot") {
        let (raw, cache) = disk_hot(&origin, &args).await?;
        ratios.push((
            "hot disk tier / raw sequential file reads".to_string(),
            cache.gbps() / raw.gbps(),
            0.70,
            true,
        ));
        rows.push(raw);
        rows.push(cache);
    }
    if wants(&args, "local") {
        let (memcpy, local, tcp) = local_path(&origin, &args).await?;
        ratios.push((
            "local path / memcpy".to_string(),
            local.gbps() / memcpy.gbps(),
            0.50,
            true,
        ));
        ratios.push((
            "local path / TCP path".to_string(),
            local.gbps() / tcp.gbps(),
            2.0,
            true,
        ));
        rows.push(memcpy);
        rows.push(local);
        rows.push(tcp);
    }
    if wants(&args, "cluster") {
        let c = cluster::cluster(&origin, &args).await?;
        ratios.push((
            "cluster cold epoch: origin bytes / dataset bytes".to_string(),
            c.origin_ratio,
            1.0,
            false,
        ));
        ratios.push((
            "cluster / one node, cold epoch throughput".to_string(),
            c.cold_ratio,
            0.0,
            true,
        ));
        ratios.push((
            "cluster / one node, warm epoch throughput".to_string(),
            c.warm_ratio,
            0.0,
            true,
        ));
        rows.extend(c.rows);
    }
    #[cfg(feature = "cuda")]
    if wants(&args, "gpu") {
        if shardcache_client::cuda_driver_available() {
            let (gpu_rows, pinned_over_pageable, end_over_pinned) =
                gpu::gpu(&origin, &args).await?;
            ratios.push((
                "H2D from registered pinned / from pageable memory".to_string(),
                pinned_over_pageable,
                0.0,
                true,
            ));
            ratios.push((
                "cache read + H2D / H2D alone (pinned)".to_string(),
                end_over_pinned,
                0.0,
                true,
            ));
            rows.extend(gpu_rows);
        } else {
            println!("gpu: skipped, no CUDA driver (libcuda) on this machine");
        }
    }
    if wants(&args, "chain") {
        let c = chain::chain(&origin, &args).await?;
        for p in &c.points {
            let n = p.nodes;
            let limit = if p.origin_mbps == 0 {
                "origin unlimited".to_string()
            } else {
                format!("origin {} MB/s", p.origin_mbps)
            };
            ratios.push((
                format!("{limit}, N={n}: chain / one node, time"),
                p.chain / p.one_node,
                if n == 4 { 1.3 } else { 0.0 },
                false,
            ));
            ratios.push((
                format!("{limit}, N={n}: independent copies / one node, time"),
                p.independent / p.one_node,
                0.0,
                false,
            ));
            ratios.push((
                format!("{limit}, N={n}: chain origin bytes / S"),
                p.origin_ratio,
                1.0,
                false,
            ));
        }
        rows.extend(c.rows);
    }
    if wants(&args, "disk-rebuild") {
        let (blocks, secs) = disk_rebuild(&args)?;
        println!("disk index rebuild: {blocks} block files indexed in {secs:.3} s");
        ratios.push(("disk index rebuild, seconds".to_string(), secs, 10.0, false));
    }

    println!(
        "hot: {} readers x {} MiB x {} rounds, median of {}; cold: {} MiB x {} fresh caches",
        args.readers, args.object_mib, args.rounds, args.reps, args.cold_mib, args.cold_reps
    );
    println!();
    println!("| run | bytes | seconds | GB/s |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} | {:.2} |",
            r.name,
            r.bytes,
            r.secs,
            r.gbps()
        );
    }
    println!();
    println!("| ratio | value | target |");
    println!("|---|---:|---|");
    for (name, value, target, at_least) in ratios {
        let target = match (target, at_least) {
            (0.0, _) => "(reference)".to_string(),
            (t, true) => format!(">= {t:.2}"),
            (t, false) => format!("<= {t:.2}"),
        };
        println!("| {name} | {value:.2} | {target} |");
    }
    Ok(())
}

/// How a hot reader takes the bytes.
#[derive(Clone, Copy)]
enum Api {
    /// `read_stream`: checksum-verified chunks in the client's receive buffers, no further copy.
    Stream,
    /// `read_into`: copied into a buffer the reader owns.
    Into,
}

/// `readers` tasks, each reading its own cached object `rounds` times.
async fn hot_reads(
    endpoint: &str,
    options: ClientOptions,
    args: &Args,
    size: usize,
    api: Api,
    seed_base: u64,
) -> anyhow::Result<Row> {
    let mut clients = Vec::new();
    for _ in 0..args.readers {
        let options = ClientOptions {
            connections: 1,
            ..options.clone()
        };
        clients.push(Client::connect_with(endpoint, options).await?);
    }
    // Expected tails, computed before the clock starts.
    let tails: Vec<Vec<u8>> = (0..args.readers)
        .map(|r| bytes_for(seed_base + r as u64, size)[size - 64..].to_vec())
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((r, client), tail) in clients.into_iter().enumerate().zip(tails) {
        let rounds = args.rounds;
        tasks.push(tokio::spawn(async move {
            let path = format!("ds/obj-{r}");
            let mut buf = vec![0u8; size];
            for _ in 0..rounds {
                match api {
                    Api::Into => {
                        let n = client.read_into(&path, 0, &mut buf).await?;
                        anyhow::ensure!(n == size, "short read");
                    }
                    Api::Stream => {
                        let mut stream = client.read_stream(&path, 0, None, None).await?;
                        let mut n = 0;
                        while let Some(chunk) = stream.next_chunk().await? {
                            n += chunk.data.len();
                            if n == size {
                                buf[size - 64..]
                                    .copy_from_slice(&chunk.data[chunk.data.len() - 64..]);
                            }
                        }
                        anyhow::ensure!(n == size, "short read");
                    }
                }
            }
            // Spot-check that the bytes are the object's.
            anyhow::ensure!(buf[size - 64..] == tail[..], "wrong bytes");
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Row {
        name: String::new(),
        bytes: (args.readers * args.rounds * size) as u64,
        secs,
    })
}

/// Raw loopback TCP: a server writes `size` bytes from memory per request byte; `readers`
/// clients read them into their own buffers, `rounds` times.
async fn raw_tcp(readers: usize, size: usize, rounds: usize) -> anyhow::Result<Row> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let payload = bytes::Bytes::from(bytes_for(99, size));
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let payload = payload.clone();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut req = [0u8; 1];
                while s.read_exact(&mut req).await.is_ok() {
                    if s.write_all(&payload).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; size];
            for _ in 0..rounds {
                s.write_all(&[1]).await?;
                s.read_exact(&mut buf).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    Ok(Row {
        name: "raw loopback TCP".into(),
        bytes: (readers * rounds * size) as u64,
        secs,
    })
}

/// Raw QUIC: quinn streams carrying `size` bytes from memory, one stream per read, `readers`
/// connections, with the same TLS and windows as the cache's QUIC transport.
async fn raw_quic(readers: usize, size: usize, rounds: usize) -> anyhow::Result<Row> {
    let id = shardcache_server::transport::tls::Identity::self_signed()?;
    let server_config = shardcache_server::transport::tls::quic_server_config(id, None)?;
    let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = endpoint.local_addr()?;
    let payload = bytes::Bytes::from(bytes_for(99, size));
    let server_ep = endpoint.clone();
    let server = tokio::spawn(async move {
        while let Some(incoming) = server_ep.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        let _ = recv.read_to_end(16).await;
                        let _ = send.write_chunk(payload).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    let options = ClientOptions {
        insecure_skip_verify: true,
        ..ClientOptions::default()
    };
    let mut conns = Vec::new();
    for _ in 0..readers {
        let ep = shardcache_client_quic_endpoint(&options, addr)?;
        let conn = ep
            .connect(addr, "localhost")?
            .await
            .context("raw quic connect")?;
        conns.push((ep, conn));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (ep, conn) in conns {
        tasks.push(tokio::spawn(async move {
            let _ep = ep;
            let mut buf = vec![0u8; size];
            for _ in 0..rounds {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&[1]).await?;
                send.finish()?;
                recv.read_exact(&mut buf).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    endpoint.close(0u32.into(), b"done");
    Ok(Row {
        name: "raw QUIC".into(),
        bytes: (readers * rounds * size) as u64,
        secs,
    })
}

/// The client's QUIC endpoint setup, reused so raw QUIC runs with the same TLS and windows.
fn shardcache_client_quic_endpoint(
    options: &ClientOptions,
    remote: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    Ok(shardcache_client::quic_endpoint(options, remote)?)
}

/// Hot reads served by the disk tier (RAM tier of one block) beside raw sequential reads of
/// files of the same size in the same directory. Both sides drop the files' pages from the page
/// cache first, so both read the device.
async fn disk_hot(origin: &S3Origin, args: &Args) -> anyhow::Result<(Row, Row)> {
    let size = args.object_mib << 20;
    std::fs::create_dir_all(&args.disk_dir)?;
    let dir = tempfile::tempdir_in(&args.disk_dir)?;
    for r in 0..args.readers {
        origin
            .put(
                "bench",
                &format!("disk/obj-{r}"),
                bytes_for(r as u64 + 500, size),
            )
            .await;
    }
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "disk"))
        .config(|c| {
            c.ram_cache = 4 << 20;
            c.disk_cache = Some(dir.path().join("cache"));
            c.disk_cache_size = Some((args.readers * size * 2) as u64);
        })
        .start()
        .await;
    let warm = Client::connect(&server.tcp_endpoint()).await?;
    for r in 0..args.readers {
        warm.read(&format!("ds/obj-{r}"), ..).await?;
    }
    server
        .wait_disk_blocks((args.readers * size / (4 << 20)) as u64)
        .await;
    // Raw files of the same size beside the block files.
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    for r in 0..args.readers {
        std::fs::write(raw_dir.join(format!("f{r}")), bytes_for(r as u64, size))?;
    }
    let drop_pages = |path: &std::path::Path| -> anyhow::Result<()> {
        let f = std::fs::File::open(path)?;
        rustix::fs::fdatasync(&f)?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    };
    let rounds = 2;
    let (mut raws, mut caches) = (Vec::new(), Vec::new());
    for _ in 0..args.reps {
        for r in 0..args.readers {
            drop_pages(&raw_dir.join(format!("f{r}")))?;
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for r in 0..args.readers {
            let path = raw_dir.join(format!("f{r}"));
            tasks.push(tokio::task::spawn_blocking(
                move || -> anyhow::Result<u64> {
                    use std::io::Read;
                    let mut total = 0;
                    for _ in 0..rounds {
                        let mut f = std::fs::File::open(&path)?;
                        let mut buf = vec![0u8; 4 << 20];
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
                    }
                    Ok(total)
                },
            ));
        }
        let mut bytes = 0;
        for t in tasks {
            bytes += t.await??;
        }
        raws.push(Row {
            name: "raw sequential file reads (same directory)".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let mut row = hot_reads(
            &server.tcp_endpoint(),
            ClientOptions::default(),
            &Args {
                rounds,
                ..args.clone()
            },
            size,
            Api::Stream,
            500,
        )
        .await?;
        row.name = "shardcache hot from disk tier, TCP, read_stream".into();
        caches.push(row);
    }
    let stats = server.stats.snapshot();
    anyhow::ensure!(stats.served_bytes_disk > 0, "nothing was served from disk");
    Ok((median(raws), median(caches)))
}

/// One reader reading a cached 64 MiB object into a pinned buffer over the local path, beside a
/// plain memcpy of the same size and the same `read_into_buffer` over TCP, in one run.
async fn local_path(origin: &S3Origin, args: &Args) -> anyhow::Result<(Row, Row, Row)> {
    use shardcache_client::{PinnedBuffer, Pinning};
    let size = args.object_mib << 20;
    let rounds = args.rounds * 2;
    origin.put("bench", "local/obj", bytes_for(777, size)).await;
    let dir = tempfile::tempdir()?;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "local"))
        .config(|c| {
            c.ram_cache = (size as u64) * 2;
            c.local_socket = Some(dir.path().join("bench.sock"));
        })
        .start()
        .await;
    let socket = dir.path().join("bench.sock").display().to_string();
    let local = Client::connect(&socket).await?;
    let tcp = Client::connect(&server.tcp_endpoint()).await?;
    let mut buf = PinnedBuffer::with_pinning(size, Pinning::Preferred)?;
    if !buf.is_pinned() {
        eprintln!("note: buffer not page-locked here (RLIMIT_MEMLOCK)");
    }
    local.read_into_buffer("ds/obj", .., &mut buf).await?; // warm RAM and register
    let want = bytes_for(777, size);
    anyhow::ensure!(buf.as_slice() == &want[..], "local read differs");
    let src = want.clone();
    let mut dst = vec![1u8; size];
    let (mut copies, mut locals, mut tcps) = (Vec::new(), Vec::new(), Vec::new());
    let bytes = (rounds * size) as u64;
    for _ in 0..args.reps {
        let started = Instant::now();
        for i in 0..rounds {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst[i % size]);
        }
        copies.push(Row {
            name: "memcpy 64 MiB (same process)".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let started = Instant::now();
        for _ in 0..rounds {
            let n = local.read_into_buffer("ds/obj", .., &mut buf).await?;
            anyhow::ensure!(n == size, "short local read");
        }
        locals.push(Row {
            name: "shardcache local path into PinnedBuffer".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let started = Instant::now();
        for _ in 0..rounds {
            let n = tcp.read_into_buffer("ds/obj", .., &mut buf).await?;
            anyhow::ensure!(n == size, "short tcp read");
        }
        tcps.push(Row {
            name: "shardcache TCP path into the same buffer".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
    }
    anyhow::ensure!(
        buf.as_slice()[size - 4096..] == want[size - 4096..],
        "bytes differ"
    );
    Ok((median(copies), median(locals), median(tcps)))
}

/// Time to open a disk tier of `rebuild_blocks` block files (listing the directory, rebuilding
/// the index), with the dentry and inode caches warm.
fn disk_rebuild(args: &Args) -> anyhow::Result<(u64, f64)> {
    use shardcache_server::cache::disk::file::write_block_opts;
    use shardcache_server::cache::policy::PolicyKind;
    use shardcache_server::cache::{Block, BlockKey, DiskConfig, DiskTier, ObjectId};
    std::fs::create_dir_all(&args.disk_dir)?;
    let dir = tempfile::tempdir_in(&args.disk_dir)?;
    let block = Block::new(bytes::Bytes::from(vec![7u8; 4096]));
    for i in 0..args.rebuild_blocks {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i / 64).to_be_bytes());
        id[8] = (i % 251) as u8;
        write_block_opts(
            dir.path(),
            &BlockKey {
                object: ObjectId(id),
                index: i % 64,
            },
            &block,
            false,
        )?;
    }
    let config = DiskConfig {
        root: dir.path().to_path_buf(),
        budget: 1 << 40,
        policy: PolicyKind::EpochAware,
        block_size: 4 << 20,
        write_queue: 16,
    };
    // Cold caches where the kernel lets us (root): the worst case after a node reboot.
    let cold = std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    println!(
        "disk index rebuild: dentry/inode caches {}",
        if cold {
            "dropped first"
        } else {
            "warm (cannot drop them here)"
        }
    );
    let started = Instant::now();
    let tier = DiskTier::open(&config, Arc::new(shardcache_server::stats::Stats::new()))?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        tier.len() as u64 == args.rebuild_blocks,
        "index holds {} blocks",
        tier.len()
    );
    Ok((args.rebuild_blocks, secs))
}

/// Cold reads: direct single GET, direct parallel ranged GETs, and through a fresh cache.
async fn cold(origin: &S3Origin, args: &Args) -> anyhow::Result<(Row, Row, Row)> {
    let size = args.cold_mib << 20;
    let data = bytes_for(1234, size);
    origin.put("bench", "cold/obj", data.clone()).await;
    let store: Arc<dyn ObjectStore> = Arc::new(origin.store("bench"));
    let path = Path::from("cold/obj");
    let (mut t_direct, mut t_ranged, mut t_cache) = (0.0, 0.0, 0.0);
    for rep in 0..args.cold_reps {
        // Alternate the order so neither side always runs first.
        for step in 0..3 {
            let which = (step + rep) % 3;
            let started = Instant::now();
            match which {
                0 => {
                    let got = store.get(&path).await?.bytes().await?;
                    anyhow::ensure!(got.len() == size, "direct read size");
                    t_direct += started.elapsed().as_secs_f64();
                }
                1 => {
                    let block = 4u64 << 20;
                    let ranges: Vec<_> = (0..size as u64)
                        .step_by(block as usize)
                        .map(|s| s..(s + block).min(size as u64))
                        .collect();
                    let parts = futures::future::try_join_all(
                        ranges.chunks(8).map(|c| store.get_ranges(&path, c)),
                    )
                    .await?;
                    let n: usize = parts.iter().flatten().map(|b| b.len()).sum();
                    anyhow::ensure!(n == size, "ranged read size");
                    t_ranged += started.elapsed().as_secs_f64();
                }
                _ => {
                    let server = TestServer::builder()
                        .dataset(origin.dataset("ds", "bench", "cold"))
                        .config(|c| {
                            c.ram_cache = (size as u64) * 2;
                            c.readahead_blocks = args.readahead;
                        })
                        .start()
                        .await;
                    let client = Client::connect(&server.tcp_endpoint()).await?;
                    let started = Instant::now();
                    let got = client.read("ds/obj", ..).await?;
                    t_cache += started.elapsed().as_secs_f64();
                    anyhow::ensure!(got[..] == data[..], "cold read differs");
                    drop(client);
                    server.stop().await;
                }
            }
        }
    }
    let bytes = (args.cold_reps * size) as u64;
    Ok((
        Row {
            name: "direct object_store GET (S3)".into(),
            bytes,
            secs: t_direct,
        },
        Row {
            name: "direct get_ranges, 8 calls of 8 x 4MiB at once (S3)".into(),
            bytes,
            secs: t_ranged,
        },
        Row {
            name: "shardcache cold, TCP (S3 origin)".into(),
            bytes,
            secs: t_cache,
        },
    ))
}
