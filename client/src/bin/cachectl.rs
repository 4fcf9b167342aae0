//! `cachectl`: the operator's command-line client.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use shardcache_client::control_proto::WarmRequest;
use shardcache_client::{Client, ClientOptions, ControlClient, Manifest, Transport};

#[derive(Parser)]
#[command(
    name = "cachectl",
    version,
    about = "Operate and read from shardcache servers"
)]
struct Cli {
    /// Data-plane endpoint: host:port (TCP), quic://host:port, or a Unix socket path (the local
    /// shared-memory path).
    #[arg(
        long,
        global = true,
        env = "SHARDCACHE_DATA",
        default_value = "127.0.0.1:7070"
    )]
    data: String,
    /// Control-plane endpoint (gRPC): host:port.
    #[arg(
        long,
        global = true,
        env = "SHARDCACHE_CONTROL",
        default_value = "127.0.0.1:7072"
    )]
    control: String,
    /// A file holding the control plane's bearer token.
    #[arg(
        long,
        global = true,
        env = "SHARDCACHE_TOKEN_FILE",
        value_name = "FILE"
    )]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate (QUIC data plane; with it the
    /// control plane is reached over TLS too).
    #[arg(long, global = true, env = "SHARDCACHE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Accept any QUIC server certificate (servers run with --insecure-dev-tls).
    #[arg(long, global = true)]
    insecure: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write an object's bytes (or a range of them) to stdout.
    Cat {
        /// DATASET/KEY
        path: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long)]
        length: Option<u64>,
    },
    /// Show an object's version and blocks, and which nodes hold each block.
    Stat {
        /// DATASET/KEY
        path: String,
    },
    /// Load DATASET/PREFIX into the cluster (blocks already cached are skipped).
    Warm {
        /// DATASET/PREFIX (DATASET/ for the whole dataset)
        path: String,
        /// Copies of each block in the cluster.
        #[arg(long, default_value_t = 1, conflicts_with = "all_nodes")]
        replicas: u32,
        /// A copy on every node.
        #[arg(long)]
        all_nodes: bool,
        /// Follow the warm to its end (otherwise it goes on in the background after the first
        /// progress report).
        #[arg(long)]
        wait: bool,
        /// Write a manifest (key, size, ETag, CRC32C of every object) to FILE; implies --wait.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },
    /// Put DATASET/PREFIX on every node (a checkpoint restored everywhere, say) and wait:
    /// `warm --all-nodes --wait`. Each block is read from the origin once and passed down a
    /// chain of the nodes in pipelined chunks.
    Broadcast {
        /// DATASET/PREFIX
        path: String,
        /// Write a manifest to FILE.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },
    /// List objects under DATASET/PREFIX with their size and cached fraction.
    Ls {
        /// DATASET/PREFIX
        path: String,
    },
    /// Drop DATASET/PREFIX from every tier of every node.
    Evict {
        /// DATASET/PREFIX
        path: String,
    },
    /// The cluster's nodes: state, weight, tier usage.
    Members,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachectl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn data_client(cli: &Cli) -> anyhow::Result<Client> {
    let options = ClientOptions {
        connections: 1,
        tls_ca: cli.tls_ca.clone(),
        insecure_skip_verify: cli.insecure,
        ..ClientOptions::default()
    };
    Ok(Client::connect_with(&cli.data, options).await?)
}

async fn control(cli: &Cli) -> anyhow::Result<ControlClient> {
    let token = match &cli.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok(ControlClient::connect(&cli.control, token, cli.tls_ca.as_deref()).await?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Cat { .. } => {}
        Command::Stat { path } => return stat(&cli, path).await,
        Command::Warm {
            path,
            replicas,
            all_nodes,
            wait,
            manifest,
        } => {
            return warm(
                &cli,
                path,
                *replicas,
                *all_nodes,
                *wait,
                manifest.as_deref(),
            )
            .await;
        }
        Command::Broadcast { path, manifest } => {
            return warm(&cli, path, 1, true, true, manifest.as_deref()).await;
        }
        Command::Ls { path } => return ls(&cli, path).await,
        Command::Evict { path } => return evict(&cli, path).await,
        Command::Members => return members(&cli).await,
    }
    let client = data_client(&cli).await?;
    match cli.command {
        Command::Cat {
            path,
            offset,
            length,
        } => {
            let mut out = std::io::stdout().lock();
            if client.endpoint().transport == Transport::Local {
                // The local path places bytes in shared memory, a window at a time.
                let (_, bytes) = client.read_pinned(&path, offset, length, None).await?;
                out.write_all(&bytes)?;
            } else {
                // Chunks go to stdout as they arrive: memory stays at one block whatever the size.
                let mut stream = client.read_stream(&path, offset, length, None).await?;
                while let Some(chunk) = stream.next_chunk().await? {
                    out.write_all(&chunk.data)?;
                }
            }
            out.flush()?;
        }
        _ => unreachable!("handled above"),
    }
    Ok(())
}

/// `stat`: from the control plane (version, blocks, holders); from the data plane (version
/// only) when no control plane answers.
async fn stat(cli: &Cli, path: &str) -> anyhow::Result<()> {
    let ctl = match control(cli).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachectl: {e:#}; showing the data plane's view only");
            let client = data_client(cli).await?;
            let info = client.stat(path).await?;
            match cli.output {
                Output::Text => {
                    println!("path:          {path}");
                    println!("size:          {}", info.size);
                    println!("etag:          {}", info.etag);
                    println!("last_modified: {} ms", info.last_modified_ms);
                    println!("block_size:    {}", info.block_size);
                }
                Output::Json => println!(
                    "{}",
                    json!({"path": path, "size": info.size, "etag": info.etag,
                           "last_modified_ms": info.last_modified_ms, "block_size": info.block_size})
                ),
            }
            return Ok(());
        }
    };
    let s = ctl.stat(path).await?;
    match cli.output {
        Output::Text => {
            println!("path:          {}", s.path);
            println!("size:          {}", s.size);
            println!("etag:          {}", s.etag);
            println!("last_modified: {} ms", s.last_modified_ms);
            println!("block_size:    {}", s.block_size);
            println!("blocks:        {}", s.blocks.len());
            for b in &s.blocks {
                let holders = if b.holders.is_empty() {
                    "(not cached)".to_string()
                } else {
                    b.holders.join(",")
                };
                println!(
                    "  {:>6}  {:>10}  owner {}  held by {holders}",
                    b.index, b.length, b.owner
                );
            }
        }
        Output::Json => {
            let blocks: Vec<_> = s
                .blocks
                .iter()
                .map(|b| json!({"index": b.index, "length": b.length, "owner": b.owner, "holders": b.holders}))
                .collect();
            println!(
                "{}",
                json!({"path": s.path, "size": s.size, "etag": s.etag,
                       "last_modified_ms": s.last_modified_ms, "block_size": s.block_size,
                       "blocks": blocks})
            );
        }
    }
    Ok(())
}

async fn warm(
    cli: &Cli,
    path: &str,
    replicas: u32,
    all_nodes: bool,
    wait: bool,
    manifest: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let ctl = control(cli).await?;
    let wait = wait || manifest.is_some();
    let mut stream = ctl
        .warm(WarmRequest {
            path: path.to_string(),
            replicas,
            all_nodes,
            manifest: manifest.is_some(),
            detach: !wait,
        })
        .await?;
    let bar = (wait && std::io::stderr().is_terminal() && matches!(cli.output, Output::Text))
        .then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
    let mut failures = Vec::new();
    let mut failed_nodes = std::collections::BTreeSet::new();
    let mut last = None;
    let mut printed: Option<std::time::Instant> = None;
    while let Some(p) = stream.message().await? {
        for f in &p.failures {
            failures.push((f.path.clone(), f.message.clone(), f.node.clone()));
            // A node that fails is reported once, not once per block.
            if !f.node.is_empty() && !failed_nodes.insert(f.node.clone()) {
                continue;
            }
            let line = if f.node.is_empty() {
                format!("failed: {}: {}", f.path, f.message)
            } else {
                format!(
                    "node {} failed ({}: {}); going on without it",
                    f.node, f.path, f.message
                )
            };
            if let Some(bar) = &bar {
                bar.println(line);
            } else if matches!(cli.output, Output::Text) {
                eprintln!("{line}");
            }
        }
        if let Some(bar) = &bar {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{}/{} objects", p.objects_done, p.objects_total));
        } else if matches!(cli.output, Output::Text)
            && (p.done || printed.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)))
        {
            printed = Some(std::time::Instant::now());
            eprintln!(
                "warm {path}: {}/{} objects, {}/{} bytes ({} already cached)",
                p.objects_done, p.objects_total, p.bytes_done, p.bytes_total, p.bytes_skipped
            );
        }
        let done = p.done;
        last = Some(p);
        if done || !wait {
            break;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let Some(last) = last else {
        anyhow::bail!("the warm of {path} ended without a report");
    };
    if wait && !last.done {
        anyhow::bail!("the warm of {path} ended before it finished; run it again to finish");
    }
    if let (Some(file), true) = (manifest, last.done) {
        let dataset = path.split_once('/').map_or(path, |(d, _)| d);
        Manifest::from_warm(dataset, &last.manifest).save(file)?;
    }
    match cli.output {
        Output::Text => {
            if wait {
                println!(
                    "warmed {path}: {} objects, {} bytes ({} already cached), {} failures",
                    last.objects_done,
                    last.bytes_done,
                    last.bytes_skipped,
                    failures.len()
                );
                for n in &last.nodes {
                    println!("  {}  {} bytes", n.node_id, n.bytes);
                }
            } else {
                println!(
                    "warming {path} in the background: {} objects, {} bytes",
                    last.objects_total, last.bytes_total
                );
            }
        }
        Output::Json => {
            let nodes: serde_json::Map<String, serde_json::Value> = last
                .nodes
                .iter()
                .map(|n| (n.node_id.clone(), json!(n.bytes)))
                .collect();
            let fails: Vec<_> = failures
                .iter()
                .map(|(p, m, n)| json!({"path": p, "message": m, "node": n}))
                .collect();
            println!(
                "{}",
                json!({"path": path, "done": last.done, "objects_total": last.objects_total,
                       "objects_done": last.objects_done, "bytes_total": last.bytes_total,
                       "bytes_done": last.bytes_done, "bytes_skipped": last.bytes_skipped,
                       "nodes": nodes, "failures": fails})
            );
        }
    }
    if !failures.is_empty() {
        let nodes: Vec<&str> = failed_nodes.iter().map(String::as_str).collect();
        let list: Vec<String> = failures
            .iter()
            .filter(|f| f.2.is_empty())
            .map(|(p, m, _)| format!("  {p}: {m}"))
            .collect();
        if list.is_empty() && last.done && last.bytes_done == last.bytes_total {
            anyhow::bail!(
                "every block is on the nodes that stayed up, but node(s) {} failed during the warm",
                nodes.join(", ")
            );
        }
        anyhow::bail!(
            "{} failures{}:\n{}",
            failures.len(),
            if nodes.is_empty() {
                String::new()
            } else {
                format!(" (node(s) {} failed)", nodes.join(", "))
            },
            list.join("\n")
        );
    }
    Ok(())
}

async fn ls(cli: &Cli, path: &str) -> anyhow::Result<()> {
    let resp = control(cli).await?.list(path).await?;
    match cli.output {
        Output::Text => {
            for o in &resp.objects {
                println!(
                    "{:>14}  {:>5.1}%  {}",
                    o.size,
                    o.cached_fraction * 100.0,
                    o.key
                );
            }
        }
        Output::Json => {
            let objects: Vec<_> = resp
                .objects
                .iter()
                .map(|o| json!({"key": o.key, "size": o.size, "etag": o.etag, "cached_fraction": o.cached_fraction}))
                .collect();
            println!("{}", json!({"path": path, "objects": objects}));
        }
    }
    Ok(())
}

async fn evict(cli: &Cli, path: &str) -> anyhow::Result<()> {
    let resp = control(cli).await?.evict(path).await?;
    match cli.output {
        Output::Text => println!(
            "evicted {path}: {} objects, {} blocks dropped",
            resp.objects, resp.blocks
        ),
        Output::Json => {
            let fails: Vec<_> = resp
                .failures
                .iter()
                .map(|f| json!({"path": f.path, "message": f.message}))
                .collect();
            println!(
                "{}",
                json!({"path": path, "objects": resp.objects, "blocks": resp.blocks, "failures": fails})
            );
        }
    }
    if !resp.failures.is_empty() {
        let list: Vec<String> = resp
            .failures
            .iter()
            .map(|f| format!("  {}: {}", f.path, f.message))
            .collect();
        anyhow::bail!("{} failures:\n{}", resp.failures.len(), list.join("\n"));
    }
    Ok(())
}

async fn members(cli: &Cli) -> anyhow::Result<()> {
    let resp = control(cli).await?.members().await?;
    match cli.output {
        Output::Text => {
            println!(
                "{:<20} {:<22} {:<7} {:>6} {:>22} {:>22}",
                "NODE", "ADDRESS", "STATE", "WEIGHT", "RAM USED/CAPACITY", "DISK USED/CAPACITY"
            );
            for m in &resp.members {
                println!(
                    "{:<20} {:<22} {:<7} {:>6} {:>22} {:>22} {}",
                    m.node_id,
                    m.address,
                    m.state,
                    m.weight,
                    format!("{}/{}", m.ram_used_bytes, m.ram_capacity_bytes),
                    format!("{}/{}", m.disk_used_bytes, m.disk_capacity_bytes),
                    m.detail
                );
            }
        }
        Output::Json => {
            let members: Vec<_> = resp
                .members
                .iter()
                .map(|m| {
                    json!({"node_id": m.node_id, "address": m.address, "state": m.state,
                                "weight": m.weight, "ram_used_bytes": m.ram_used_bytes,
                                "ram_capacity_bytes": m.ram_capacity_bytes,
                                "disk_used_bytes": m.disk_used_bytes,
                                "disk_capacity_bytes": m.disk_capacity_bytes, "detail": m.detail})
                })
                .collect();
            println!("{}", json!({"members": members}));
        }
    }
    Ok(())
}
