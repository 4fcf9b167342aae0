//! The `shardcache` binary as an operator runs it: zero configuration, clear config errors, a
//! clean exit on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardcache_client::BlockingClient;

mod common;
use common::{free_port, http_get, wait_ready};

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

#[test]
fn zero_configuration_serves_the_local_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    // No flags: only the port is moved off the default so tests can run side by side.
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = spawn(
        dir.path(),
        &[],
        &[
            ("SHARDCACHE_LISTEN", addr.clone()),
            ("SHARDCACHE_ADMIN_LISTEN", admin.clone()),
            ("SHARDCACHE_CONTROL_LISTEN", "127.0.0.1:0".to_string()),
        ],
    );
    let client = wait_ready(&addr);
    assert!(http_get(&admin, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
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
    let mut child = spawn(
        dir.path(),
        &[
            "serve",
            "--config",
            "shardcache.toml",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
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

#[test]
fn json_logs_name_failures_and_never_show_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let port = free_port();
    let secret = "very-secret-value-123";
    let toml = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\ncontrol_listen = \"127.0.0.1:0\"\norigin_retries = 0\n\n[[datasets]]\nname = \"remote\"\norigin = \"s3://bucket/prefix\"\nendpoint = \"http://127.0.0.1:{closed}\"\nallow_http = true\nregion = \"us-east-1\"\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"{secret}\"\n"
    );
    std::fs::write(dir.path().join("c.toml"), toml).unwrap();
    let mut child = spawn(
        dir.path(),
        &["serve", "--config", "c.toml", "--log-format", "json"],
        &[("RUST_LOG", "debug".to_string())],
    );
    wait_ready(&format!("127.0.0.1:{port}"));
    let options = shardcache_client::ClientOptions {
        retries: 0,
        ..Default::default()
    };
    let client = BlockingClient::connect_with(&format!("127.0.0.1:{port}"), options).unwrap();
    let err = client.read("remote/some/shard.tar", ..).unwrap_err();
    assert!(
        err.to_string().contains("origin of dataset remote failed"),
        "{err}"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains(secret), "the secret key was logged");
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line}"
        );
    }
    let failures: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("\"message\":\"request failed\""))
        .collect();
    assert_eq!(
        failures.len(),
        1,
        "one log line per failed request: {failures:?}"
    );
    let f = failures[0];
    assert!(
        f.contains("\"dataset\":\"remote\"") && f.contains("\"key\":\"some/shard.tar\""),
        "{f}"
    );
    assert!(f.contains("OriginUnavailable"), "{f}");
}
