//! SIGKILL while the disk tier is filling, then a restart: only correct bytes are served, no
//! damaged or half-written block file survives, and the kept blocks are used.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardcache_client::BlockingClient;

mod common;
use common::{free_port, http_get, wait_ready};

const OBJECTS: usize = 24;
const SIZE: usize = 3 << 20;

fn object(i: usize) -> Vec<u8> {
    (0..SIZE).map(|b| ((b * 31 + i * 7) % 251) as u8).collect()
}

fn start(cwd: &Path, port: u16, admin: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args(["serve", "--config", "c.toml"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--control-listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shardcache")
}

fn metric(admin: u16, series: &str) -> f64 {
    let text = http_get(&format!("127.0.0.1:{admin}"), "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}

fn block_files(root: &Path) -> (usize, usize) {
    let (mut blocks, mut temps) = (0, 0);
    for shard in std::fs::read_dir(root.join("blocks")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.contains(".tmp.") {
                temps += 1;
            } else if name.ends_with(".blk") {
                blocks += 1;
            }
        }
    }
    (blocks, temps)
}

#[test]
fn sigkill_during_heavy_filling_then_restart_serves_only_correct_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("origin")).unwrap();
    for i in 0..OBJECTS {
        std::fs::write(dir.path().join(format!("origin/obj-{i}")), object(i)).unwrap();
    }
    let toml = format!(
        "ram_cache = \"1MiB\"\ndisk_cache = \"{0}/cache\"\ndisk_cache_size = \"1GiB\"\ndisk_write_queue = 64\n\n[[datasets]]\nname = \"ds\"\norigin = \"file://{0}/origin\"\nblock_size = \"256KiB\"\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("c.toml"), toml).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut child = start(dir.path(), port, admin);
    wait_ready(&format!("127.0.0.1:{port}"));

    // Eight readers fill the disk tier as fast as they can; the server dies under them.
    let readers: Vec<_> = (0..8)
        .map(|r| {
            std::thread::spawn(move || {
                let Ok(client) = BlockingClient::connect(&format!("127.0.0.1:{port}")) else {
                    return;
                };
                for i in (0..OBJECTS).map(|i| (i + r * 3) % OBJECTS) {
                    if client.read(&format!("ds/obj-{i}"), ..).is_err() {
                        return; // the server was killed
                    }
                }
            })
        })
        .collect();
    let cache = dir.path().join("cache");
    let deadline = Instant::now() + Duration::from_secs(20);
    while block_files(&cache).0 < 40 {
        assert!(Instant::now() < deadline, "the disk tier never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    let (kept, _) = block_files(&cache);
    assert!(kept >= 40);

    let (port, admin) = (free_port(), free_port());
    let mut child = start(dir.path(), port, admin);
    let client = wait_ready(&format!("127.0.0.1:{port}"));
    let (_, temps) = block_files(&cache);
    assert_eq!(temps, 0, "half-written files are removed at start");
    for i in 0..OBJECTS {
        let got = client.read(&format!("ds/obj-{i}"), ..).unwrap();
        assert!(
            got[..] == object(i)[..],
            "object {i} differs after the restart"
        );
    }
    assert_eq!(metric(admin, "shardcache_checksum_failures_total"), 0.0);
    let from_disk = metric(admin, "shardcache_served_bytes_total{source=\"disk\"}");
    assert!(
        from_disk >= (kept as f64 - 8.0) * 256.0 * 1024.0,
        "kept blocks served from disk: {from_disk}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
