//! The `shardcache` binary as an operator runs it: zero configuration, clear config errors, a
//! clean exit on SIGTERM.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardcache_client::BlockingClient;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcache"));
    cmd.args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn shardcache")
}

fn wait_ready(addr: &str) -> BlockingClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match BlockingClient::connect(addr) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("server never came up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn zero_configuration_serves_the_local_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    // No flags: only the port is moved off the default so tests can run side by side.
    let mut child = spawn(dir.path(), &[], &[("SHARDCACHE_LISTEN", addr.clone())]);
    let client = wait_ready(&addr);
    assert!(dir.path().join("data").is_dir(), "./data is created");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(dir.path().join("data/train")).unwrap();
    std::fs::write(dir.path().join("data/train/shard-000001.tar"), &payload).unwrap();
    let got = client.read("local/train/shard-000001.tar", ..).unwrap();
    assert!(got[..] == payload[..]);

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn serve_subcommand_takes_flags_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("shards")).unwrap();
    std::fs::write(dir.path().join("shards/a.bin"), b"abcdef").unwrap();
    let port = free_port();
    let toml = format!(
        "listen = \"127.0.0.1:{port}\"\nram_cache = \"64MiB\"\n\n[[datasets]]\nname = \"train\"\norigin = \"file://{}/shards\"\nblock_size = \"1MiB\"\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("shardcache.toml"), toml).unwrap();
    let mut child = spawn(dir.path(), &["serve", "--config", "shardcache.toml"], &[]);
    let client = wait_ready(&format!("127.0.0.1:{port}"));
    assert_eq!(&client.read("train/a.bin", 2..4).unwrap()[..], b"cd");
    assert_eq!(client.stat("train/a.bin").unwrap().block_size, 1 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_configuration_fails_with_a_message_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args(["serve", "--ram-cache", "plenty"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plenty") && err.contains("size"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args(["serve", "--dataset", "x=file:///no/such/dir"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dataset \"x\"") && err.contains("not a directory"),
        "{err}"
    );
}
