//! The `shardcache` binary: parse flags, load the configuration, bind, serve until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shardcache_server::config::{Config, LogFormat, Overrides, ProcessEnv};
use shardcache_server::{Listeners, Server};

#[derive(Parser)]
#[command(
    name = "shardcache",
    version,
    about = "A read-through cache for training data in object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured datasets (the default command).
    Serve(ServeArgs),
    /// Check each configured origin with its effective settings: LIST, HEAD and a one-byte
    /// read, printing what works and what does not (secrets redacted).
    CheckOrigin(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// Check only this dataset.
    #[arg(value_name = "DATASET", id = "only")]
    only: Option<String>,
    /// The same settings as `serve` takes.
    #[command(flatten)]
    serve: ServeArgs,
}

/// Every flag is also `SHARDCACHE_<FLAG>` in the environment and a key of the `--config` file;
/// precedence is flag > environment > file > default.
#[derive(Args, Default, Clone)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// TCP data plane address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// QUIC data plane address (needs --tls-cert/--tls-key or --insecure-dev-tls).
    #[arg(long, value_name = "ADDR")]
    quic_listen: Option<String>,
    /// Admin endpoint: /metrics, /healthz, /readyz [default: 127.0.0.1:7073].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Unix socket for co-located clients (shared-memory transfers) [default: off].
    #[arg(long, value_name = "PATH")]
    local_socket: Option<PathBuf>,
    /// Local clients at once [default: 256].
    #[arg(long, value_name = "N")]
    local_max_clients: Option<String>,
    /// Largest shared-memory region per local client [default: 4GiB].
    #[arg(long, value_name = "SIZE")]
    local_max_region: Option<String>,
    /// A dataset, NAME=URL (repeatable); URL is file:///…, s3://…, gs://…, az://… or memory://
    /// [default: local=./data].
    #[arg(long, value_name = "NAME=URL")]
    dataset: Vec<String>,
    /// RAM tier budget, e.g. 8GiB [default: 1GiB].
    #[arg(long, value_name = "SIZE")]
    ram_cache: Option<String>,
    /// Disk tier directory [default: off].
    #[arg(long, value_name = "DIR")]
    disk_cache: Option<PathBuf>,
    /// Disk tier budget, e.g. 500GiB (required with --disk-cache).
    #[arg(long, value_name = "SIZE")]
    disk_cache_size: Option<String>,
    /// Disk tier policy: epoch-aware or lru [default: epoch-aware].
    #[arg(long, value_name = "POLICY")]
    disk_eviction: Option<String>,
    /// Background disk writes in flight [default: 16].
    #[arg(long, value_name = "N")]
    disk_write_queue: Option<String>,
    /// Default block size [default: 4MiB].
    #[arg(long, value_name = "SIZE")]
    block_size: Option<String>,
    /// Default revalidation interval of object versions [default: 30s].
    #[arg(long, value_name = "DURATION")]
    metadata_ttl: Option<String>,
    /// Most object versions remembered [default: 262144].
    #[arg(long, value_name = "N")]
    metadata_cache_entries: Option<String>,
    /// gRPC control plane [default: 127.0.0.1:7072].
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<String>,
    /// A file holding the bearer token every control call must carry.
    #[arg(long, value_name = "FILE")]
    control_token_file: Option<PathBuf>,
    /// Node identity [default: hostname].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// This node's share of the cluster's blocks [default: 1].
    #[arg(long, value_name = "N")]
    weight: Option<String>,
    /// Cluster members' data-plane addresses, comma-separated (this node's own may be listed).
    #[arg(long, value_name = "ADDR,...")]
    peers: Option<String>,
    /// A file of member addresses, one `host:port` a line, re-read every --peer-refresh.
    #[arg(long, value_name = "FILE")]
    peers_file: Option<PathBuf>,
    /// Members from DNS (a Kubernetes headless Service), re-resolved every --peer-refresh.
    #[arg(long, value_name = "NAME:PORT")]
    peer_dns: Option<String>,
    /// How often peer sources are re-read and re-resolved [default: 5s].
    #[arg(long, value_name = "DURATION")]
    peer_refresh: Option<String>,
    /// How often each peer is pinged [default: 500ms].
    #[arg(long, value_name = "DURATION")]
    peer_probe_interval: Option<String>,
    /// Deadline of a ping, connection or probe; a silent peer is marked down [default: 1s].
    #[arg(long, value_name = "DURATION")]
    peer_timeout: Option<String>,
    /// Neighbours asked for a block before the origin [default: 2].
    #[arg(long, value_name = "N")]
    read_neighbours: Option<String>,
    /// Keep blocks read from peers in RAM: true or false [default: true].
    #[arg(long, value_name = "BOOL")]
    peer_keep_copies: Option<String>,
    /// Chunk size of chain distribution (warms to several nodes) [default: 1MiB].
    #[arg(long, value_name = "SIZE")]
    chain_chunk: Option<String>,
    /// PEM CA that signed the members' certificates.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// PEM certificate chain for QUIC.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for QUIC.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate (local trials only).
    #[arg(long)]
    insecure_dev_tls: bool,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Deadline of one whole origin request attempt [default: 30s].
    #[arg(long, value_name = "DURATION")]
    origin_timeout: Option<String>,
    /// Deadline of the first byte of an origin answer, and of each silence in a body [default: 5s].
    #[arg(long, value_name = "DURATION")]
    origin_first_byte_timeout: Option<String>,
    /// Serve the last known version this long past its TTL while the origin is unreachable [default: off].
    #[arg(long, value_name = "DURATION")]
    stale_if_error: Option<String>,
    /// Retries of a failed origin request [default: 3].
    #[arg(long, value_name = "N")]
    origin_retries: Option<String>,
    /// Origin block fetches in flight, server-wide [default: 64].
    #[arg(long, value_name = "N")]
    origin_concurrency: Option<String>,
    /// Blocks of one read fetched ahead [default: 8].
    #[arg(long, value_name = "N")]
    readahead_blocks: Option<String>,
    /// Open data-plane connections [default: 4096].
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Requests in flight per connection [default: 256].
    #[arg(long, value_name = "N")]
    max_requests_per_connection: Option<String>,
}

impl ServeArgs {
    fn overrides(self) -> Overrides {
        let mut scalars = std::collections::BTreeMap::new();
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
        let pairs = [
            ("listen", self.listen),
            ("quic_listen", self.quic_listen),
            ("admin_listen", self.admin_listen),
            ("control_listen", self.control_listen),
            ("control_token_file", path(self.control_token_file)),
            ("local_socket", path(self.local_socket)),
            ("local_max_clients", self.local_max_clients),
            ("local_max_region", self.local_max_region),
            ("ram_cache", self.ram_cache),
            ("block_size", self.block_size),
            ("disk_cache", path(self.disk_cache)),
            ("disk_cache_size", self.disk_cache_size),
            ("disk_eviction", self.disk_eviction),
            ("disk_write_queue", self.disk_write_queue),
            ("metadata_ttl", self.metadata_ttl),
            ("metadata_cache_entries", self.metadata_cache_entries),
            ("node_id", self.node_id),
            ("weight", self.weight),
            ("peers", self.peers),
            ("peers_file", path(self.peers_file)),
            ("peer_dns", self.peer_dns),
            ("peer_refresh", self.peer_refresh),
            ("peer_probe_interval", self.peer_probe_interval),
            ("peer_timeout", self.peer_timeout),
            ("read_neighbours", self.read_neighbours),
            ("peer_keep_copies", self.peer_keep_copies),
            ("chain_chunk", self.chain_chunk),
            ("tls_ca", path(self.tls_ca)),
            ("tls_cert", path(self.tls_cert)),
            ("tls_key", path(self.tls_key)),
            (
                "insecure_dev_tls",
                self.insecure_dev_tls.then(|| "true".to_string()),
            ),
            ("log_format", self.log_format),
            ("origin_timeout", self.origin_timeout),
            ("origin_first_byte_timeout", self.origin_first_byte_timeout),
            ("stale_if_error", self.stale_if_error),
            ("origin_retries", self.origin_retries),
            ("origin_concurrency", self.origin_concurrency),
            ("readahead_blocks", self.readahead_blocks),
            ("max_connections", self.max_connections),
            (
                "max_requests_per_connection",
                self.max_requests_per_connection,
            ),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                scalars.insert(key.to_string(), value);
            }
        }
        Overrides {
            config_file: self.config,
            scalars,
            datasets: self.dataset,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => run_serve(args),
        None => run_serve(ServeArgs::default()),
        Some(Command::CheckOrigin(args)) => run_check(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line that says what is wrong; no backtrace for a configuration error.
            eprintln!("shardcache: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<(tokio::runtime::Runtime, usize)> {
    // Pods have CPU limits: std reads the cgroup quota, so the runtime fits the pod, not the host.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    Ok((runtime, workers))
}

fn run_serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.overrides(), &ProcessEnv)?;
    init_logging(config.log_format);
    let server = Server::build(config)?;
    let (runtime, workers) = runtime()?;
    runtime.block_on(serve(server, workers))?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn run_check(args: CheckArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.serve.overrides(), &ProcessEnv)?;
    if let Some(name) = &args.only
        && !config.datasets.iter().any(|d| &d.name == name)
    {
        let known: Vec<&str> = config.datasets.iter().map(|d| d.name.as_str()).collect();
        anyhow::bail!("unknown dataset {name:?}; configured: {}", known.join(", "));
    }
    init_check_logging();
    let server = Server::build(config)?;
    let (runtime, _) = runtime()?;
    let reports = runtime.block_on(async {
        let origins: Vec<_> = server
            .service()
            .origins()
            .filter(|o| args.only.as_ref().is_none_or(|n| n == o.dataset()))
            .cloned()
            .collect();
        let checks = origins
            .iter()
            .map(|o| shardcache_server::origin::check::check(o));
        futures::future::join_all(checks).await
    });
    let mut reports = reports;
    reports.sort_by(|a, b| a.dataset.cmp(&b.dataset));
    let failed = reports.iter().filter(|r| !r.ok()).count();
    for r in &reports {
        println!("{r}");
    }
    if failed > 0 {
        println!("{failed} of {} origin(s) FAILED", reports.len());
        return Ok(std::process::ExitCode::from(1));
    }
    println!("all {} origin(s) ok", reports.len());
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve(server: Server, workers: usize) -> anyhow::Result<()> {
    let config = server.config().clone();
    let listeners = Listeners::bind(&config).await?;
    // Each origin is asked once, at the same time, before serving: the log says which answer
    // and how each signs its requests. One that does not answer yet does not stop the server
    // (cached data and other datasets still serve; /readyz reports it).
    let origins: Vec<_> = server.service().origins().cloned().collect();
    let checks = origins.iter().map(|o| async move {
        (
            o.clone(),
            shardcache_server::origin::check::reachable(o).await,
        )
    });
    for (o, result) in futures::future::join_all(checks).await {
        let d = config.datasets.iter().find(|d| d.name == o.dataset());
        let origin = d.map(|d| d.origin.as_str()).unwrap_or_default();
        let credentials = o
            .described()
            .map(|s| s.credentials.to_string())
            .unwrap_or_default();
        let immutable = d.is_some_and(|d| d.immutable);
        match result {
            Ok(what) => {
                tracing::info!(dataset = %o.dataset(), origin, immutable, credentials, "origin {what}")
            }
            Err(e) => {
                let no_credentials = o.described().is_some_and(|s| {
                    matches!(
                        s.credentials,
                        shardcache_server::origin::settings::Credentials::Instance { .. }
                    )
                });
                let hint = if no_credentials {
                    "no credentials are configured, so instance metadata was asked: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE; "
                } else {
                    ""
                };
                tracing::warn!(
                    dataset = %o.dataset(), origin, credentials, error = %e,
                    "origin not reachable at start: {hint}serving what is cached; `shardcache check-origin {}` shows the settings in effect",
                    o.dataset()
                )
            }
        }
    }
    tracing::info!(
        node_id = config.node_id.as_deref().unwrap_or_default(),
        tcp = %listeners.tcp_addr()?,
        quic = ?listeners.quic_addr(),
        control = ?listeners.control_addr(),
        admin = ?listeners.admin_addr(),
        local = ?config.local_socket,
        ram_cache = config.ram_cache,
        workers,
        "shardcache serving"
    );
    server.run(listeners, shutdown_signal()).await?;
    Ok(())
}

/// Origin request warnings would repeat what the check prints; only errors go to stderr.
fn init_check_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
