//! `cachectl` against a real server on a loopback port.

use std::process::Command;

use shardcache_server::config::{Config, DatasetConfig};
use shardcache_server::{Listeners, Server};

async fn server(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        local_socket: Some(dir.join("shardcache.sock")),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        datasets: vec![DatasetConfig::new(
            "ds",
            format!("file://{}", dir.display()),
        )],
        ..Config::default()
    };
    let listeners = Listeners::bind(&config).await.unwrap();
    let addr = listeners.tcp_addr().unwrap().to_string();
    let server = Server::build(config).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(listeners, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn cachectl(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachectl"));
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// `cachectl cat` of the whole object and of 10 bytes at `at`, through `data`.
async fn assert_cat(data: &str, payload: &[u8], at: usize) {
    let out = cachectl(&["--data", data, "cat", "ds/shard.tar"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == payload);
    let (offset, length) = (at.to_string(), "10".to_string());
    let args = [
        "--data",
        data,
        "cat",
        "ds/shard.tar",
        "--offset",
        &offset,
        "--length",
        &length,
    ];
    let out = cachectl(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, payload[at..at + 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_writes_bytes_and_ranges_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(dir.path().join("shard.tar"), &payload).unwrap();
    let (addr, _stop) = server(dir.path()).await;

    assert_cat(&addr, &payload, 4_194_300).await;

    let out = cachectl(&["--data", &addr, "-o", "json", "stat", "ds/shard.tar"]).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"size\":9000000"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_failures_exit_nonzero_with_the_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    let (addr, _stop) = server(dir.path()).await;
    for (path, expect) in [
        ("ds/missing", "not found"),
        ("other/a", "unknown dataset"),
        ("ds/../a", "'..'"),
    ] {
        let out = cachectl(&["--data", &addr, "cat", path]).await;
        assert!(!out.status.success(), "{path}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{path}: {err}");
    }
    let out = cachectl(&["--data", &addr, "cat", "ds/a", "--offset", "5"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("past the end"));

    let out = cachectl(&["--data", "127.0.0.1:1", "cat", "ds/a"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_selects_the_local_shared_memory_path() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..20_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
    std::fs::write(dir.path().join("shard.tar"), &payload).unwrap();
    let (_addr, _stop) = server(dir.path()).await;
    let socket = dir.path().join("shardcache.sock").display().to_string();
    assert_cat(&socket, &payload, 17_000_000).await;
}
