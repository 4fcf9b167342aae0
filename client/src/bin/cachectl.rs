//! `cachectl`: the operator's command-line client.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use shardcache_client::{Client, ClientOptions, Transport};

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
    /// CA certificate (PEM) that signed the server's QUIC certificate.
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
    /// Show an object's size and version.
    Stat {
        /// DATASET/KEY
        path: String,
    },
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let options = ClientOptions {
        connections: 1,
        tls_ca: cli.tls_ca,
        insecure_skip_verify: cli.insecure,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&cli.data, options).await?;
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
        Command::Stat { path } => {
            let info = client.stat(&path).await?;
            match cli.output {
                Output::Text => {
                    println!("path:          {path}");
                    println!("size:          {}", info.size);
                    println!("etag:          {}", info.etag);
                    println!("last_modified: {} ms", info.last_modified_ms);
                    println!("block_size:    {}", info.block_size);
                }
                Output::Json => println!(
                    "{{\"path\":{},\"size\":{},\"etag\":{},\"last_modified_ms\":{},\"block_size\":{}}}",
                    json_str(&path),
                    info.size,
                    json_str(&info.etag),
                    info.last_modified_ms,
                    info.block_size
                ),
            }
        }
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
