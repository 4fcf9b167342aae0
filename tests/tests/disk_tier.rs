//! The disk tier against a real S3 origin: restarts keep the cache, damaged files are caught,
//! the budget holds, and a broken disk degrades to RAM + origin without failing a read.

use std::path::Path;
use std::time::Duration;

use shardcache_client::Client;
use shardcache_server::config::DatasetConfig;
use shardcache_testsuite::{S3Origin, TestServer, block_files, bytes_for};

const BLOCK: u64 = 256 * 1024;
const OBJECTS: u64 = 4;
const SIZE: usize = (3 * BLOCK + 1000) as usize;
const BLOCKS_PER_OBJECT: u64 = 4;

async fn origin() -> S3Origin {
    let origin = S3Origin::start(&["bucket"]).await;
    for i in 0..OBJECTS {
        origin
            .put("bucket", &format!("shards/{i}"), bytes_for(i, SIZE))
            .await;
    }
    origin
}

fn dataset(origin: &S3Origin, immutable: bool) -> DatasetConfig {
    let mut d = origin.dataset("ds", "bucket", "shards");
    d.block_size = Some(BLOCK);
    d.immutable = immutable;
    d
}

async fn server(d: DatasetConfig, dir: &Path, budget: u64) -> TestServer {
    TestServer::builder()
        .dataset(d)
        .config(|c| {
            c.disk_cache = Some(dir.to_path_buf());
            c.disk_cache_size = Some(budget);
            // A RAM tier smaller than one object, so reads reach the disk tier.
            c.ram_cache = BLOCK;
        })
        .start()
        .await
}

async fn read_all(server: &TestServer) {
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    for i in 0..OBJECTS {
        let got = client.read(&format!("ds/{i}"), ..).await.unwrap();
        assert!(got[..] == bytes_for(i, SIZE)[..], "object {i} differs");
    }
}

/// A first server life: read every object, wait until every block (and, for an immutable
/// dataset, every version record) is on disk, then stop.
async fn fill_then_stop(d: DatasetConfig, dir: &Path) {
    let immutable = d.immutable;
    let first = server(d, dir, 1 << 30).await;
    read_all(&first).await;
    first.wait_disk_blocks(OBJECTS * BLOCKS_PER_OBJECT).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while immutable && version_records(dir) < OBJECTS as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "version records were not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.stop().await;
}

fn version_records(dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(dir.join("versions")) else {
        return 0;
    };
    shards
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "ver"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_cache() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    fill_then_stop(dataset(&origin, false), dir.path()).await;
    let gets = origin.total().gets;

    let second = server(dataset(&origin, false), dir.path(), 1 << 30).await;
    read_all(&second).await;
    assert_eq!(origin.total().gets, gets, "no block was fetched again");
    let s = second.stats.snapshot();
    assert_eq!(
        s.served_bytes_disk + s.served_bytes_ram,
        OBJECTS * SIZE as u64
    );
    assert!(s.disk_hits >= OBJECTS * BLOCKS_PER_OBJECT - 1, "{s:?}");
}

/// The block size is part of a block's identity: after a dataset's block size changes over a
/// kept disk tier, the old blocks (cut at other boundaries) are never served as new ones, and
/// every byte read is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_block_size_over_a_kept_disk_tier_serves_the_right_bytes() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    fill_then_stop(dataset(&origin, true), dir.path()).await;
    let gets = origin.total().gets;
    let mut bigger = dataset(&origin, true);
    bigger.block_size = Some(2 * BLOCK);
    let second = server(bigger, dir.path(), 1 << 30).await;
    read_all(&second).await;
    let client = Client::connect(&second.tcp_endpoint()).await.unwrap();
    for i in 0..OBJECTS {
        let at = BLOCK + 17;
        let got = client
            .read(&format!("ds/{i}"), at..at + BLOCK)
            .await
            .unwrap();
        assert!(got[..] == bytes_for(i, SIZE)[at as usize..(at + BLOCK) as usize]);
    }
    // Every block of the new size (two per object) came from the origin once; none was
    // mistaken for an old one.
    assert!(
        origin.total().gets >= gets + OBJECTS * 2,
        "the blocks of the new size came from the origin"
    );
    assert_eq!(second.stats.read.damaged_blocks.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_dataset_is_served_with_the_origin_gone() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dataset(&origin, true);
    fill_then_stop(d.clone(), dir.path()).await;
    let heads = origin.total().heads;
    drop(origin);

    let second = server(d, dir.path(), 1 << 30).await;
    read_all(&second).await;
    let s = second.stats.snapshot();
    assert_eq!(
        s.origin_head_requests, 0,
        "no HEAD for an immutable dataset"
    );
    assert_eq!(s.origin_get_requests, 0);
    assert!(heads > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_caught_and_refetched() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    fill_then_stop(dataset(&origin, false), dir.path()).await;

    let files = block_files(dir.path());
    let victim = &files[files.len() / 2];
    let mut raw = std::fs::read(victim).unwrap();
    let at = raw.len() - 10;
    raw[at] ^= 0x08;
    std::fs::write(victim, raw).unwrap();
    let gets = origin.total().gets;

    let second = server(dataset(&origin, false), dir.path(), 1 << 30).await;
    read_all(&second).await;
    let s = second.stats.snapshot();
    assert_eq!(s.checksum_failures, 1);
    assert_eq!(
        origin.total().gets,
        gets + 1,
        "the damaged block, and only it, is refetched"
    );
    let (_, m) = second.admin_get("/metrics").await;
    assert!(m.contains("shardcache_checksum_failures_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_never_exceeds_the_budget() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    // Room for 5 blocks (with their headers) of a 16-block working set.
    let budget = 5 * (BLOCK + 32);
    let s = server(dataset(&origin, false), dir.path(), budget).await;
    for _ in 0..3 {
        read_all(&s).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let on_disk: u64 = block_files(dir.path())
            .iter()
            .map(|f| f.metadata().unwrap().len())
            .sum();
        assert!(
            on_disk <= budget,
            "{on_disk} bytes on disk, budget {budget}"
        );
    }
    assert!(s.disk_files() > 0);
}

/// Run `cmd`, returning whether it succeeded (for environment set-up that may be unavailable).
fn try_cmd(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command when dropped: undoes `chattr +i` or a mount even when an assertion fails.
struct Undo(&'static str, Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let args: Vec<&str> = self.1.iter().map(String::as_str).collect();
        try_cmd(self.0, &args);
    }
}

async fn degraded_but_serving(dir: &Path) {
    let origin = origin().await;
    let s = server(dataset(&origin, false), dir, 1 << 30).await;
    read_all(&s).await;
    read_all(&s).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, m) = s.admin_get("/metrics").await;
    assert!(
        m.contains("shardcache_tier_degraded{tier=\"disk\"} 1"),
        "{m}"
    );
    let errors = m
        .lines()
        .find_map(|l| l.strip_prefix("shardcache_tier_errors_total{tier=\"disk\"} "))
        .unwrap();
    assert!(errors.trim().parse::<f64>().unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_cache_directory_degrades_to_ram_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("blocks")).unwrap();
    std::fs::create_dir_all(dir.path().join("versions")).unwrap();
    // Immutable directories refuse new entries even to root, where plain modes do not.
    let blocks = dir.path().join("blocks").display().to_string();
    if !try_cmd("chattr", &["+i", &blocks]) {
        eprintln!("skipped: chattr +i is not available here (needs root and ext4/xfs)");
        return;
    }
    let _undo = Undo("chattr", vec!["-i".into(), blocks]);
    degraded_but_serving(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_degrades_to_ram_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    // A 512 KiB filesystem under a 1 GiB budget: writes fail with ENOSPC.
    let mountpoint = dir.path().display().to_string();
    if !try_cmd(
        "mount",
        &["-t", "tmpfs", "-o", "size=512k", "tmpfs", &mountpoint],
    ) {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let _undo = Undo("umount", vec![mountpoint]);
    degraded_but_serving(dir.path()).await;
}
