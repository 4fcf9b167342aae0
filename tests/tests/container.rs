//! The container image as it really runs: `podman run` of the image `scripts/image.sh` builds
//! (`SHARDCACHE_IMAGE`, default `localhost/shardcache:dev`), with a read-only root file system,
//! every capability dropped and the image's unprivileged user. The zero-configuration server
//! serves a mounted directory; a read in flight when SIGTERM arrives completes, and the server
//! (PID 1 of the container) drains and exits 0.
//!
//! Run by `scripts/test.sh` after building the image:
//! `cargo test -p shardcache-testsuite --test container -- --ignored`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shardcache_client::Client;
use shardcache_testsuite::{bytes_for, free_port, http_get};

fn image() -> String {
    std::env::var("SHARDCACHE_IMAGE").unwrap_or_else(|_| "localhost/shardcache:dev".into())
}

fn podman(args: &[&str]) -> Output {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/containers.conf");
    Command::new("podman")
        .env(
            "CONTAINERS_CONF",
            std::env::var("CONTAINERS_CONF").unwrap_or_else(|_| conf.into()),
        )
        .args(args)
        .output()
        .expect("podman runs (apt install podman runc)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

/// A podman volume, removed when dropped (after the container that used it).
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = podman(&["volume", "rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the image: scripts/image.sh, then run by name"]
async fn the_image_serves_as_an_unprivileged_user_and_drains_on_sigterm() {
    let inspect = podman(&["image", "inspect", &image(), "--format", "{{.Size}}"]);
    assert!(
        inspect.status.success(),
        "no image {} (scripts/image.sh builds it): {}",
        image(),
        text(&inspect)
    );
    let size: u64 = text(&inspect).trim().parse().unwrap();
    println!("image {}: {} MiB", image(), size >> 20);
    assert!(size < 64 << 20, "the image is {} MiB", size >> 20);

    // The zero-configuration dataset `local` is ./data in the working directory.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let size = 48 << 20;
    std::fs::write(data.join("shard-0.tar"), bytes_for(5, size)).unwrap();
    let world_readable = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    world_readable(dir.path(), 0o755);
    world_readable(&data, 0o755);
    world_readable(&data.join("shard-0.tar"), 0o644);

    let (port, admin) = (free_port(), free_port());
    let name = format!("shardcache-test-{}", std::process::id());
    let mount = format!("{}:/var/lib/shardcache/data:ro", data.display());
    // A fresh volume for the disk tier: it takes the owner of the image's directory.
    let volume = format!("{name}-disk");
    let disk_mount = format!("{volume}:/var/cache/shardcache");
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let run = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &mount,
        "-v",
        &disk_mount,
        &image(),
        "serve",
        "--disk-cache",
        "/var/cache/shardcache",
        "--disk-cache-size",
        "256MiB",
        "--listen",
        &listen,
        "--admin-listen",
        &admin_listen,
        "--control-listen",
        "off",
    ]);
    assert!(run.status.success(), "podman run: {}", text(&run));
    let container = Container(name.clone());
    let _volume = Volume(volume.clone());

    let admin_addr = admin_listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && http_get(admin_addr, "/healthz").await.0 == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not healthy: {}",
            text(&podman(&["logs", &name]))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 200);
    // The disk tier is up on the volume, which the unprivileged user can write.
    let (_, metrics) = http_get(admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"shardcache_tier_capacity_bytes{tier="disk"} 268435456"#),
        "no disk tier: {}",
        text(&podman(&["logs", &name]))
    );

    // It runs as the image's user, not root.
    let pid = text(&podman(&["inspect", &name, "--format", "{{.State.Pid}}"]));
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "{uid}"
    );

    // A read, then a second one in flight when SIGTERM arrives: it completes.
    let client = Client::connect(&listen).await.unwrap();
    let got = client.read("local/shard-0.tar", ..).await.unwrap();
    assert!(got[..] == bytes_for(5, size)[..]);
    let mut stream = client
        .read_stream("local/shard-0.tar", 0, None, None)
        .await
        .unwrap();
    let mut read = Vec::with_capacity(size);
    let first = stream.next_chunk().await.unwrap().unwrap();
    read.extend_from_slice(&first.data);
    let kill = podman(&["kill", "--signal", "TERM", &name]);
    assert!(kill.status.success(), "{}", text(&kill));
    while let Some(chunk) = stream.next_chunk().await.unwrap() {
        read.extend_from_slice(&chunk.data);
    }
    assert!(
        read[..] == bytes_for(5, size)[..],
        "the read in flight completed"
    );

    let wait = tokio::task::spawn_blocking({
        let name = name.clone();
        move || podman(&["wait", &name])
    });
    let waited = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert_eq!(text(&waited).trim(), "0", "exit code");
    let logs = text(&podman(&["logs", &name]));
    assert!(logs.contains("shutting down"), "{logs}");
    drop(container);
}
