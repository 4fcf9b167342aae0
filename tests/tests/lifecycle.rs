//! Shutdown: in-flight requests finish, idle connections close, and it does not wait out the
//! grace period because a client keeps a connection open.

use std::time::{Duration, Instant};

use shardcache_client::Client;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_reads_and_closes_idle_connections() {
    let origin = S3Origin::start(&["bucket"]).await;
    origin.put("bucket", "obj", bytes_for(5, 20 << 20)).await;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .start()
        .await;
    let idle = Client::connect(&server.tcp_endpoint()).await.unwrap();
    idle.stat("ds/obj").await.unwrap();
    let busy = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let mut stream = busy.read_stream("ds/obj", 0, None, None).await.unwrap();

    let started = Instant::now();
    let stop = tokio::spawn(server.stop());
    let mut n = 0;
    while let Some(chunk) = stream.next_chunk().await.expect("in-flight read completes") {
        n += chunk.data.len();
    }
    assert_eq!(n, 20 << 20);
    stop.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The idle client sees the connection gone, not a hang.
    let err = idle.stat("ds/obj").await.unwrap_err();
    assert!(
        err.is_retryable() || err.to_string().contains("connect"),
        "{err}"
    );
}

/// `shardcache prepare-disk`, as the DaemonSet's init container runs it on a node's hostPath:
/// the directory created or taken over, given to the server's user, contents left alone.
#[test]
fn prepare_disk_gives_a_directory_to_the_servers_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("node/shardcache");
    let run = |args: &[&str]| {
        std::process::Command::new(shardcache_testsuite::server_binary())
            .arg("prepare-disk")
            .args(args)
            .output()
            .unwrap()
    };
    let path = disk.display().to_string();
    let root = rustix::process::geteuid().is_root();
    let out = run(&[&path, "--owner", "4242:4343"]);
    if !root {
        // Only root (or CAP_CHOWN) may give a directory away, and the error says so.
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_CHOWN"));
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (4242, 4343, 0o750)
    );
    // Again, over a directory with the server's files in it: those stay as they are.
    std::fs::write(disk.join("block"), b"cached").unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run(&[&path, "--owner", "4242:4343"]);
    assert!(out.status.success());
    assert_eq!(std::fs::metadata(&disk).unwrap().mode() & 0o777, 0o750);
    assert_eq!(std::fs::metadata(disk.join("block")).unwrap().uid(), 0);
    // A file where the directory should be, and a malformed owner: refused, saying why.
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = run(&[&file.display().to_string()]);
    assert!(!out.status.success());
    let out = run(&[&path, "--owner", "shardcache"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected UID:GID"));
}
