//! The `shardcache` binary: parse flags, load the configuration, bind, serve until SIGINT/SIGTERM.

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
    Serve(#[command(flatten)] ServeArgs),
    /// Check each configured origin with its effective settings: LIST, HEAD and a one-byte
    /// read, printing what works and what does not (secrets redacted).
    CheckOrigin(CheckArgs),
    /// Make a directory the server's own before it starts (a Kubernetes init container, run as
    /// root with only CAP_CHOWN, does this for a disk tier on a node's hostPath, which the
    /// pod's fsGroup does not reach): created if missing, then given to OWNER with mode 0750.
    /// What is inside is left as it is (the server wrote it).
    PrepareDisk(PrepareArgs),
}

#[derive(Args)]
struct PrepareArgs {
    /// The disk tier's directory.
    #[arg(value_name = "DIR")]
    dir: std::path::PathBuf,
    /// The user and group the server runs as.
    #[arg(long, value_name = "UID:GID", default_value = "65532:65532")]
    owner: String,
}

#[derive(Args)]
struct CheckArgs {
    /// Check only this dataset.
    #[arg(value_name = "DATASET", id = "only")]
    only: Option<String>,
    /// The same settings as `serve` takes.
    #[command(flatten)]
    serve: Overrides,
}

/// Every flag is also `SHARDCACHE_<FLAG>` in the environment and a key of the `--config` file;
/// precedence is flag > environment > file > default. The flags come from the one table of
/// settings (`shardcache_server::config::table`).
type ServeArgs = Overrides;

fn main() -> std::process::ExitCode {
    // Blocks freed by the tiers go back to the system, so RSS stays within the budgets.
    shardcache_mem::malloc::return_large_buffers();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => run_serve(args),
        None => run_serve(ServeArgs::default()),
        Some(Command::CheckOrigin(args)) => run_check(args),
        Some(Command::PrepareDisk(args)) => run_prepare(&args),
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
    let config = Config::load(&args, &ProcessEnv)?;
    init_logging(config.log_format);
    let server = Server::build(config)?;
    let (runtime, workers) = runtime()?;
    runtime.block_on(serve(server, workers))?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn run_prepare(args: &PrepareArgs) -> anyhow::Result<std::process::ExitCode> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = args
        .owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .with_context(|| {
            format!(
                "--owner {:?}: expected UID:GID in numbers, e.g. 65532:65532",
                args.owner
            )
        })?;
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", dir.display());
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).with_context(|| {
            format!(
                "cannot give {} to {uid}:{gid} (this needs root, or CAP_CHOWN)",
                dir.display()
            )
        })?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    println!("{} belongs to {uid}:{gid}, mode 0750", dir.display());
    Ok(std::process::ExitCode::SUCCESS)
}

fn run_check(args: CheckArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.serve, &ProcessEnv)?;
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
