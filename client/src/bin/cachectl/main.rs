//! `cachectl`: the operator's command-line client.
//!
//! The data plane (`--data`) and the control plane (`--control`) are two ports of one server.
//! Without `--control`, cachectl asks the data plane where that server's control plane listens;
//! with both given, it checks they reach the same server process and refuses otherwise.

mod commands;
mod copy;
mod human;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shardcache_client::{
    Client, ClientError, ClientOptions, ControlClient, ErrorCode, Transport, control_endpoint_for,
};

/// Where a server's data plane listens unless told otherwise.
const DEFAULT_DATA: &str = "127.0.0.1:7070";
/// Where its control plane listens unless the data plane says otherwise.
const DEFAULT_CONTROL: &str = "127.0.0.1:7072";

#[derive(Parser)]
#[command(
    name = "cachectl",
    version,
    about = "Operate and read from shardcache servers",
    after_help = "Without --control, cachectl asks the server at --data where its control plane listens."
)]
struct Cli {
    /// Data-plane endpoint: host:port (TCP), quic://host:port, or a Unix socket path (the local
    /// shared-memory path) [default: 127.0.0.1:7070].
    #[arg(long, global = true, env = "SHARDCACHE_DATA", value_name = "ADDR")]
    data: Option<String>,
    /// Control-plane endpoint (gRPC): host:port [default: the one the data plane names].
    #[arg(long, global = true, env = "SHARDCACHE_CONTROL", value_name = "ADDR")]
    control: Option<String>,
    /// A file holding the bearer token: sent on the data plane (servers with --access-tokens)
    /// and the control plane (servers with --control-token-file).
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
    /// Output format: text for people (sizes like 1.2 GiB, dates in RFC 3339), json for
    /// scripts (exact bytes, milliseconds).
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
        /// First byte to write (0 is the start of the object).
        #[arg(long, default_value_t = 0, value_name = "BYTES")]
        offset: u64,
        /// Bytes to write from --offset [default: to the end of the object].
        #[arg(long, value_name = "BYTES")]
        length: Option<u64>,
    },
    /// Copy an object to a file, or every object under DATASET/PREFIX/ into a directory; each
    /// file appears only once it holds every byte of one version of its object.
    Cp {
        /// DATASET/KEY, or DATASET/PREFIX/ (DATASET/ for the whole dataset)
        path: String,
        /// The file to write (an existing directory puts the object in it under its name); for
        /// a prefix, the directory the objects go to at their paths below the prefix
        dest: PathBuf,
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
            eprintln!("cachectl: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `error: cause: cause`, as `{:#}` writes them, less any cause whose
/// words the line already holds: the client's errors say in their own message what their cause
/// said, and keep that cause as their source too.
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let words = cause.to_string();
        if line.contains(&words) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&words);
    }
    line
}

impl Cli {
    fn data(&self) -> &str {
        self.data.as_deref().unwrap_or(DEFAULT_DATA)
    }
}

async fn data_client(cli: &Cli) -> anyhow::Result<Client> {
    let options = ClientOptions {
        token: token(cli)?,
        connections: 1,
        tls_ca: cli.tls_ca.clone(),
        insecure_skip_verify: cli.insecure,
        ..ClientOptions::default()
    };
    Ok(Client::connect_with(cli.data(), options).await?)
}

/// Whether the server is too old to answer `Hello` (it answers with a bad-request error).
fn no_hello(e: &ClientError) -> bool {
    matches!(e.code(), Some(ErrorCode::BadRequest))
}

/// The control plane of the server at `--data`, or `--control` once it is known to be the same
/// server.
async fn control_endpoint(cli: &Cli) -> anyhow::Result<String> {
    if let Some(control) = &cli.control {
        if cli.data.is_some() {
            same_server(cli, control).await?;
        }
        return Ok(control.clone());
    }
    let explicit = cli.data.is_some();
    let client = match data_client(cli).await {
        Ok(c) => c,
        Err(e) if explicit => anyhow::bail!(
            "cannot ask the server at --data {} where its control plane is ({e}); pass --control HOST:PORT",
            cli.data()
        ),
        // Nothing named: the defaults of a server on this machine.
        Err(_) => return Ok(DEFAULT_CONTROL.into()),
    };
    match client.server_info().await {
        Ok(info) => match control_endpoint_for(&info.control, client.endpoint()) {
            Some(c) => Ok(c),
            None => anyhow::bail!(
                "the server at {} (node {}) has no control plane: it runs without --control-listen",
                cli.data(),
                info.node_id
            ),
        },
        Err(e) if no_hello(&e) => Ok(DEFAULT_CONTROL.into()),
        Err(e) => anyhow::bail!(
            "cannot ask the server at {} where its control plane is ({e}); pass --control HOST:PORT",
            cli.data()
        ),
    }
}

/// `--data` and `--control` named two server processes.
#[derive(Debug)]
struct TwoServers(String);

impl std::fmt::Display for TwoServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TwoServers {}

/// `--data` and `--control` must be two planes of one server process.
async fn same_server(cli: &Cli, control: &str) -> anyhow::Result<()> {
    let Ok(client) = data_client(cli).await else {
        // The data plane is not needed by every command; its own errors come where it is.
        return Ok(());
    };
    let info = match client.server_info().await {
        Ok(i) => i,
        Err(e) if no_hello(&e) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let health = connect_control(cli, control).await?.health().await?;
    if health.instance != 0 && health.instance != info.instance {
        let hint = control_endpoint_for(&info.control, client.endpoint())
            .map(|c| format!(" (its control plane is at {c})"))
            .unwrap_or_default();
        return Err(TwoServers(format!(
            "--data {} and --control {control} are two different servers: node {} answers the data plane{hint}, node {} the control plane; point both at one server, or leave --control out and cachectl asks the data plane",
            cli.data(),
            info.node_id,
            health.node_id
        ))
        .into());
    }
    Ok(())
}

/// The token of `--token-file` (surrounding whitespace ignored).
fn token(cli: &Cli) -> anyhow::Result<Option<String>> {
    let Some(path) = &cli.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(Some(token.to_string()))
}

async fn connect_control(cli: &Cli, endpoint: &str) -> anyhow::Result<ControlClient> {
    Ok(ControlClient::connect(endpoint, token(cli)?, cli.tls_ca.as_deref()).await?)
}

/// The control plane of the server cachectl talks to.
async fn control(cli: &Cli) -> anyhow::Result<ControlClient> {
    let endpoint = control_endpoint(cli).await?;
    connect_control(cli, &endpoint).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Cat {
            path,
            offset,
            length,
        } => cat(&cli, path, *offset, *length).await,
        Command::Cp { path, dest } => copy::cp(&cli, path, dest).await,
        Command::Stat { path } => commands::stat(&cli, path).await,
        Command::Warm {
            path,
            replicas,
            all_nodes,
            wait,
            manifest,
        } => {
            commands::warm(
                &cli,
                path,
                *replicas,
                *all_nodes,
                *wait,
                manifest.as_deref(),
            )
            .await
        }
        Command::Broadcast { path, manifest } => {
            commands::warm(&cli, path, 1, true, true, manifest.as_deref()).await
        }
        Command::Ls { path } => commands::ls(&cli, path).await,
        Command::Evict { path } => commands::evict(&cli, path).await,
        Command::Members => commands::members(&cli).await,
    }
}

async fn cat(cli: &Cli, path: &str, offset: u64, length: Option<u64>) -> anyhow::Result<()> {
    if path.ends_with('/') {
        anyhow::bail!(
            "{path} names a prefix, not an object: name one object (DATASET/KEY), or list them with `cachectl ls {path}`"
        );
    }
    let client = data_client(cli).await?;
    let mut out = std::io::stdout().lock();
    write_object(&client, path, offset, length, &mut out).await?;
    out.flush()?;
    Ok(())
}

/// Writes `path`'s bytes from `offset` (`length` of them, or to the end) to `out`; returns how
/// many.
async fn write_object(
    client: &Client,
    path: &str,
    offset: u64,
    length: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    if client.endpoint().transport == Transport::Local {
        // The local path places bytes in shared memory: a window at a time, every window of
        // the version the first one read.
        const WINDOW: u64 = 64 << 20;
        let end = length.map(|l| offset.saturating_add(l));
        let (mut at, mut version) = (offset, None);
        loop {
            let want = end.map_or(WINDOW, |e| (e - at).min(WINDOW));
            let (info, bytes) = client
                .read_pinned(path, at, Some(want), version.clone())
                .await?;
            out.write_all(&bytes)?;
            at += bytes.len() as u64;
            version.get_or_insert(info.etag);
            if (bytes.len() as u64) < want || at >= info.size || end.is_some_and(|e| at >= e) {
                return Ok(at - offset);
            }
        }
    }
    // Chunks are written as they arrive: memory stays at one block whatever the size.
    let mut stream = client.read_stream(path, offset, length, None).await?;
    let mut written = 0;
    while let Some(chunk) = stream.next_chunk().await? {
        out.write_all(&chunk.data)?;
        written += chunk.data.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn reports_name_each_cause_once() {
        use anyhow::Context;
        // A client error whose message already says what its source says.
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = refused.local_addr().unwrap().to_string();
        drop(refused);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = runtime
            .block_on(shardcache_client::Client::connect(&addr))
            .err()
            .expect("nothing listens");
        assert!(std::error::Error::source(&e).is_some());
        let message = e.to_string();
        let e = anyhow::Error::new(e);
        assert_eq!(super::report(&e), message);
        // A context over an I/O error keeps both, as `{:#}` writes them.
        let io = std::fs::read("/nonexistent/token")
            .context("cannot read token file /nonexistent/token")
            .unwrap_err();
        assert_eq!(super::report(&io), format!("{io:#}"));
        assert!(super::report(&io).starts_with("cannot read token file /nonexistent/token: "));
    }
}
