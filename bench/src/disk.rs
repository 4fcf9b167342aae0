//! The disk tier: hot reads served from it beside raw sequential file reads in the same
//! directory, and the time to rebuild its index when it opens.

use std::time::Instant;

use shardcache_client::{Client, ClientOptions};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

use crate::Args;
use crate::hot::{Api, hot_reads};
use crate::report::{Report, Row, median};

/// `disk-hot`: the hot disk-tier runs and their ratio.
pub(crate) async fn hot(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (raw, cache) = disk_hot(origin, args).await?;
    report.ratios.push((
        "hot disk tier / raw sequential file reads".to_string(),
        cache.gbps() / raw.gbps(),
        0.70,
        true,
    ));
    report.rows.push(raw);
    report.rows.push(cache);
    Ok(())
}

/// `disk-rebuild`: the index rebuild, printed and recorded as a ratio in seconds.
pub(crate) fn rebuild(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (blocks, secs) = disk_rebuild(args)?;
    println!("disk index rebuild: {blocks} block files indexed in {secs:.3} s");
    report
        .ratios
        .push(("disk index rebuild, seconds".to_string(), secs, 10.0, false));
    Ok(())
}

/// Hot reads served by the disk tier (RAM tier of one block) beside raw sequential reads of
/// files of the same size in the same directory. Both sides drop the files' pages from the page
/// cache first, so both read the device.
async fn disk_hot(origin: &S3Origin, args: &Args) -> anyhow::Result<(Row, Row)> {
    let size = args.object_mib << 20;
    std::fs::create_dir_all(&args.disk_dir)?;
    let dir = tempfile::tempdir_in(&args.disk_dir)?;
    for r in 0..args.readers {
        origin
            .put(
                "bench",
                &format!("disk/obj-{r}"),
                bytes_for(r as u64 + 500, size),
            )
            .await;
    }
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "disk"))
        .config(|c| {
            c.ram_cache = 4 << 20;
            c.disk_cache = Some(dir.path().join("cache"));
            c.disk_cache_size = Some((args.readers * size * 2) as u64);
        })
        .start()
        .await;
    let warm = Client::connect(&server.tcp_endpoint()).await?;
    for r in 0..args.readers {
        warm.read(&format!("ds/obj-{r}"), ..).await?;
    }
    server
        .wait_disk_blocks((args.readers * size / (4 << 20)) as u64)
        .await;
    // Raw files of the same size beside the block files.
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    for r in 0..args.readers {
        std::fs::write(raw_dir.join(format!("f{r}")), bytes_for(r as u64, size))?;
    }
    let drop_pages = |path: &std::path::Path| -> anyhow::Result<()> {
        let f = std::fs::File::open(path)?;
        rustix::fs::fdatasync(&f)?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    };
    let rounds = 2;
    let (mut raws, mut caches) = (Vec::new(), Vec::new());
    for _ in 0..args.reps {
        for r in 0..args.readers {
            drop_pages(&raw_dir.join(format!("f{r}")))?;
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for r in 0..args.readers {
            let path = raw_dir.join(format!("f{r}"));
            tasks.push(tokio::task::spawn_blocking(
                move || -> anyhow::Result<u64> {
                    use std::io::Read;
                    let mut total = 0;
                    for _ in 0..rounds {
                        let mut f = std::fs::File::open(&path)?;
                        let mut buf = vec![0u8; 4 << 20];
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
                    }
                    Ok(total)
                },
            ));
        }
        let mut bytes = 0;
        for t in tasks {
            bytes += t.await??;
        }
        raws.push(Row {
            name: "raw sequential file reads (same directory)".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let mut row = hot_reads(
            &server.tcp_endpoint(),
            ClientOptions::default(),
            &Args {
                rounds,
                ..args.clone()
            },
            size,
            Api::Stream,
            500,
        )
        .await?;
        row.name = "shardcache hot from disk tier, TCP, read_stream".into();
        caches.push(row);
    }
    let stats = server.stats.snapshot();
    anyhow::ensure!(stats.served_bytes_disk > 0, "nothing was served from disk");
    Ok((median(raws), median(caches)))
}

/// Time to open a disk tier of `rebuild_blocks` block files (listing the directory, rebuilding
/// the index), with the dentry and inode caches warm.
fn disk_rebuild(args: &Args) -> anyhow::Result<(u64, f64)> {
    use shardcache_server::cache::disk::file::write_block_opts;
    use shardcache_server::cache::policy::PolicyKind;
    use shardcache_server::cache::{Block, BlockKey, DiskConfig, DiskTier, ObjectId};
    std::fs::create_dir_all(&args.disk_dir)?;
    let dir = tempfile::tempdir_in(&args.disk_dir)?;
    let block = Block::new(bytes::Bytes::from(vec![7u8; 4096]));
    for i in 0..args.rebuild_blocks {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i / 64).to_be_bytes());
        id[8] = (i % 251) as u8;
        write_block_opts(
            dir.path(),
            &BlockKey {
                object: ObjectId(id),
                index: i % 64,
            },
            &block,
            false,
        )?;
    }
    let config = DiskConfig {
        root: dir.path().to_path_buf(),
        budget: 1 << 40,
        policy: PolicyKind::EpochAware,
        block_size: 4 << 20,
        write_queue: 16,
    };
    // Cold caches where the kernel lets us (root): the worst case after a node reboot.
    let cold = std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    println!(
        "disk index rebuild: dentry/inode caches {}",
        if cold {
            "dropped first"
        } else {
            "warm (cannot drop them here)"
        }
    );
    let started = Instant::now();
    let tier = DiskTier::open(&config, shardcache_server::cache::TierMetrics::standalone())?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        tier.len() as u64 == args.rebuild_blocks,
        "index holds {} blocks",
        tier.len()
    );
    Ok((args.rebuild_blocks, secs))
}
