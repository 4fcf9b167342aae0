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

use clap::Parser;
use shardcache_testsuite::S3Origin;

use report::Report;

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
    /// Only these parts (hot-tcp, hot-quic, hot-tls, cold, disk-hot, disk-rebuild, local, cluster,
    /// chain, gpu); all when empty (gpu only with the `cuda` feature and a GPU).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

mod chain;
mod cluster;
mod cold;
mod disk;
#[cfg(feature = "cuda")]
mod gpu;
mod hot;
mod local;
mod report;

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
    let origin = S3Origin::start(&["bench"]).await;
    let mut report = Report::default();

    if wants(&args, "hot-tcp") || wants(&args, "hot-quic") || wants(&args, "hot-tls") {
        hot::run(&origin, &args, &mut report).await?;
    }

    if wants(&args, "cold") {
        cold::run(&origin, &args, &mut report).await?;
    }

    if wants(&args, "disk-hot") {
        disk::hot(&origin, &args, &mut report).await?;
    }
    if wants(&args, "local") {
        local::run(&origin, &args, &mut report).await?;
    }
    if wants(&args, "cluster") {
        cluster::run(&origin, &args, &mut report).await?;
    }
    #[cfg(feature = "cuda")]
    if wants(&args, "gpu") {
        gpu::run(&origin, &args, &mut report).await?;
    }
    if wants(&args, "chain") {
        chain::run(&origin, &args, &mut report).await?;
    }
    if wants(&args, "disk-rebuild") {
        disk::rebuild(&args, &mut report)?;
    }

    println!(
        "hot: {} readers x {} MiB x {} rounds, median of {}; cold: {} MiB x {} fresh caches",
        args.readers, args.object_mib, args.rounds, args.reps, args.cold_mib, args.cold_reps
    );
    report.print();
    Ok(())
}
