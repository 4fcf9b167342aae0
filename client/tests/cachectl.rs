//! `cachectl` against a real server on a loopback port.

use std::process::Command;

use shardcache_server::config::{Config, DatasetConfig};
use shardcache_server::{Listeners, Server};

async fn server(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    server_with(dir, None).await
}

async fn server_with(
    dir: &std::path::Path,
    access_tokens: Option<std::path::PathBuf>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        access_tokens,
        local_socket: Some(dir.join("shardcache.sock")),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        control_listen: None,
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
    cachectl_env(args, &[]).await
}

async fn cachectl_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachectl"));
    // Only what the test names: no endpoint of the machine's own server.
    for var in [
        "SHARDCACHE_DATA",
        "SHARDCACHE_CONTROL",
        "SHARDCACHE_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args);
    cmd.envs(env.iter().copied());
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

/// A server with its control plane on a loopback port and a bearer token; `(data, control)`.
async fn server_with_control(
    dir: &std::path::Path,
    token: &std::path::Path,
) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        control_listen: Some("127.0.0.1:0".parse().unwrap()),
        control_token_file: Some(token.to_path_buf()),
        block_size: 64 * 1024,
        datasets: vec![DatasetConfig::new(
            "ds",
            format!("file://{}", dir.display()),
        )],
        ..Config::default()
    };
    let listeners = Listeners::bind(&config).await.unwrap();
    let data = listeners.tcp_addr().unwrap().to_string();
    let control = listeners.control_addr().unwrap().to_string();
    let server = Server::build(config).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(listeners, async {
        let _ = rx.await;
    }));
    (data, control, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ls_members_evict_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(data_dir.join("train")).unwrap();
    for i in 0..5u32 {
        let payload: Vec<u8> = (0..200_000u32).map(|b| ((b + i) % 253) as u8).collect();
        std::fs::write(data_dir.join(format!("train/s-{i}.tar")), payload).unwrap();
    }
    let good = dir.path().join("token");
    std::fs::write(&good, "opensesame\n").unwrap();
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "guess\n").unwrap();
    let (_data, control, _stop) = server_with_control(&data_dir, &good).await;
    let ctl = |token: &std::path::Path, args: &[&str]| {
        let mut all = vec![
            "--control".to_string(),
            control.clone(),
            "--token-file".to_string(),
            token.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            cachectl(&refs).await
        }
    };

    let out = ctl(&bad, &["warm", "ds/train/", "--wait"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong bearer token"), "{err}");

    let manifest = dir.path().join("manifest.json");
    let manifest_arg = manifest.display().to_string();
    let out = ctl(
        &good,
        &[
            "-o",
            "json",
            "warm",
            "ds/train/",
            "--manifest",
            &manifest_arg,
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["objects_done"], 5);
    assert_eq!(report["bytes_done"], 1_000_000);
    assert_eq!(report["done"], true);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(saved["objects"].as_array().unwrap().len(), 5);

    // A broadcast is a warm to every node that waits; everything is here already.
    let out = ctl(&good, &["-o", "json", "broadcast", "ds/train/"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["done"], true);
    assert_eq!(report["bytes_skipped"], 1_000_000);

    let out = ctl(&good, &["ls", "ds/train/"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.lines().filter(|l| l.contains("100.0%")).count(),
        5,
        "{text}"
    );

    let out = ctl(&good, &["-o", "json", "members"]).await;
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(members["members"][0]["state"], "self");

    let out = ctl(&good, &["evict", "ds/train/s-1"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 objects, 4 blocks dropped"));

    let out = ctl(&good, &["warm", "ds/nothing-here", "--wait"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no objects under ds/nothing-here"));
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_is_found_from_the_data_plane_and_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir_all(d.join("train")).unwrap();
        std::fs::write(d.join("train/x.bin"), vec![7u8; 300_000]).unwrap();
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let (a_data, _a_control, _a) = server_with_control(&a_dir, &token).await;
    let (_b_data, b_control, _b) = server_with_control(&b_dir, &token).await;
    let token = token.display().to_string();

    // --data alone: cachectl asks that server for its control plane.
    let out = cachectl(&["--data", &a_data, "--token-file", &token, "ls", "ds/train/"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.trim_start().starts_with("SIZE"),
        "a header: {stdout}"
    );
    assert!(
        stdout.contains("293.0 KiB") && stdout.contains("train/x.bin"),
        "{stdout}"
    );

    // --data of one server and --control of another: refused, saying so.
    let out = cachectl(&[
        "--data",
        &a_data,
        "--control",
        &b_control,
        "--token-file",
        &token,
        "stat",
        "ds/train/x.bin",
    ])
    .await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("two different servers"), "{stderr}");
    assert!(stderr.contains("leave --control out"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_for_people_and_messages_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("train")).unwrap();
    std::fs::write(dir.path().join("train/x.bin"), vec![1u8; 5_000_000]).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let (data, _control, _stop) = server_with_control(dir.path(), &token).await;
    let token = token.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec![
            "--data".to_string(),
            data.clone(),
            "--token-file".into(),
            token.clone(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            cachectl(&refs).await
        }
    };

    let out = run(&["stat", "ds/train/x.bin"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("size:           4.8 MiB (5000000 bytes)"),
        "{stdout}"
    );
    assert!(stdout.contains("block size:     64.0 KiB"), "{stdout}");
    let modified = stdout
        .lines()
        .find(|l| l.starts_with("last modified:"))
        .unwrap_or_default();
    assert!(
        modified.contains('T') && modified.ends_with('Z'),
        "an RFC 3339 date: {modified}"
    );
    assert!(
        stdout.contains("BLOCK") && stdout.contains("HELD BY"),
        "{stdout}"
    );

    let out = run(&["members"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("NODE"), "{stdout}");
    assert!(
        stdout.contains("/ 1.0 GiB"),
        "RAM in binary units: {stdout}"
    );

    // JSON is unchanged for scripts: exact numbers.
    let out = run(&["-o", "json", "stat", "ds/train/x.bin"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["size"], 5_000_000);
    assert!(v["last_modified_ms"].as_i64().unwrap() > 0);

    let out = run(&["ls", "ds/nothing/"]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("no objects under ds/nothing/"), "{stderr}");

    let out = run(&["cat", "ds/train/"]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("names a prefix, not an object") && stderr.contains("cachectl ls"),
        "{stderr}"
    );

    let out = run(&["cat", "nope/x"]).await;
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("unknown dataset \"nope\"; this server serves: ds"),
        "{stderr}"
    );

    let out = cachectl(&["cat", "--help"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("First byte to write") && stdout.contains("Bytes to write"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_opens_a_server_with_access_tokens_over_tcp_and_the_local_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("shard.tar"), b"guarded bytes").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "loader-5d1e0f2a9b8c7364 ds\n").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "loader-5d1e0f2a9b8c7364\n").unwrap();
    let (addr, _stop) = server_with(&data, Some(tokens)).await;
    let socket = data.join("shardcache.sock").display().to_string();
    let token = token_file.to_str().unwrap();
    for endpoint in [addr.as_str(), socket.as_str()] {
        let out = cachectl(&["--data", endpoint, "cat", "ds/shard.tar"]).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("requires an access token"),
            "{endpoint}: {err}"
        );
        assert!(err.contains("--token-file"), "{endpoint}: {err}");
        let out = cachectl(&[
            "--data",
            endpoint,
            "--token-file",
            token,
            "cat",
            "ds/shard.tar",
        ])
        .await;
        assert!(
            out.status.success(),
            "{endpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"guarded bytes");
        let env = [("SHARDCACHE_TOKEN_FILE", token)];
        let out = cachectl_env(&["--data", endpoint, "cat", "ds/shard.tar"], &env).await;
        assert!(
            out.status.success(),
            "{endpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"guarded bytes");
    }
    // A wrong token is refused at connect, and the token is never printed.
    std::fs::write(&token_file, "loader-5d1e0f2a9b8c7365").unwrap();
    let out = cachectl(&[
        "--data",
        &addr,
        "--token-file",
        token,
        "cat",
        "ds/shard.tar",
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not one of the server's --access-tokens"),
        "{err}"
    );
    assert!(!err.contains("loader-"), "{err}");
}

/// The files under `dir`, by path relative to it, with their bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_writes_an_object_or_a_prefix_whole_and_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut want = std::collections::BTreeMap::new();
    for (i, key) in ["a/s-0.tar", "a/b/s-1.tar", "c.tar"].iter().enumerate() {
        let payload: Vec<u8> = (0..300_000u32)
            .map(|b| ((b * 7 + i as u32) % 251) as u8)
            .collect();
        let path = data_dir.join("train").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &payload).unwrap();
        want.insert(key.to_string(), payload);
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "opensesame\n").unwrap();
    let (data, control, _stop) = server_with_control(&data_dir, &token).await;
    let out_dir = dir.path().join("out");
    let run = |args: Vec<String>| {
        let mut all: Vec<String> = ["--data", &data, "--control", &control, "--token-file"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.push(token.display().to_string());
        all.extend(args);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            cachectl(&refs).await
        }
    };
    let arg = |p: &std::path::Path| p.display().to_string();

    // One object to a named file, then into an existing directory under its own name.
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = out_dir.join("copy.tar");
    let out = run(vec!["cp".into(), "ds/train/c.tar".into(), arg(&file)]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&file).unwrap() == want["c.tar"]);
    let out = run(vec![
        "cp".into(),
        "ds/train/a/s-0.tar".into(),
        arg(&out_dir),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(out_dir.join("s-0.tar")).unwrap() == want["a/s-0.tar"]);

    // A prefix: every object at its path below it, and a summary.
    let copies = out_dir.join("tree");
    let out = run(vec!["cp".into(), "ds/train/".into(), arg(&copies)]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("copied 3 objects"), "{said}");
    assert_eq!(tree(&copies), want);
    let out = run(vec![
        "-o".into(),
        "json".into(),
        "cp".into(),
        "ds/train/a/".into(),
        arg(&out_dir.join("a")),
    ])
    .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["objects"], 2);
    assert_eq!(report["bytes"], 600_000);
    assert_eq!(tree(&out_dir.join("a")).len(), 2);

    // Failures leave nothing behind: no file under the name, no hidden partial one.
    let before = tree(&out_dir);
    let missing = out_dir.join("missing.tar");
    let out = run(vec!["cp".into(), "ds/train/nope.tar".into(), arg(&missing)]).await;
    assert!(!out.status.success());
    let out = run(vec![
        "cp".into(),
        "ds/train/none/".into(),
        arg(&out_dir.join("none")),
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no objects under ds/train/none/"));
    assert_eq!(tree(&out_dir), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_over_the_local_path_reads_window_by_window() {
    let dir = tempfile::tempdir().unwrap();
    // Larger than one 64 MiB window of the local path.
    let payload: Vec<u8> = (0..70_000_000u32).map(|i| (i * 31 % 255) as u8).collect();
    std::fs::write(dir.path().join("shard.tar"), &payload).unwrap();
    let (_addr, _stop) = server(dir.path()).await;
    let socket = dir.path().join("shardcache.sock").display().to_string();
    let dest = dir.path().join("copy.tar");
    let out = cachectl(&[
        "--data",
        &socket,
        "cp",
        "ds/shard.tar",
        &dest.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&dest).unwrap() == payload);
}
