//! Cold reads: one object read through a fresh (empty) cache from a real S3 server, beside a
//! direct object_store GET of the same object from the same server (and, for reference, a
//! direct read with parallel ranged GETs).

use std::sync::Arc;
use std::time::Instant;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use shardcache_client::Client;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

use crate::Args;
use crate::report::{Report, Row};

/// The cold runs and their ratios.
pub(crate) async fn run(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (direct, ranged, cache) = cold(origin, args).await?;
    report.ratios.push((
        "cold cache time / direct GET time".to_string(),
        direct.gbps() / cache.gbps(),
        1.15,
        false,
    ));
    report.ratios.push((
        "cold cache time / direct get_ranges time".to_string(),
        ranged.gbps() / cache.gbps(),
        0.0,
        false,
    ));
    report.rows.push(direct);
    report.rows.push(ranged);
    report.rows.push(cache);
    Ok(())
}

/// Cold reads: direct single GET, direct parallel ranged GETs, and through a fresh cache.
async fn cold(origin: &S3Origin, args: &Args) -> anyhow::Result<(Row, Row, Row)> {
    let size = args.cold_mib << 20;
    let data = bytes_for(1234, size);
    origin.put("bench", "cold/obj", data.clone()).await;
    let store: Arc<dyn ObjectStore> = Arc::new(origin.store("bench"));
    let path = Path::from("cold/obj");
    let (mut t_direct, mut t_ranged, mut t_cache) = (0.0, 0.0, 0.0);
    for rep in 0..args.cold_reps {
        // Alternate the order so neither side always runs first.
        for step in 0..3 {
            let which = (step + rep) % 3;
            let started = Instant::now();
            match which {
                0 => {
                    let got = store.get(&path).await?.bytes().await?;
                    anyhow::ensure!(got.len() == size, "direct read size");
                    t_direct += started.elapsed().as_secs_f64();
                }
                1 => {
                    let block = 4u64 << 20;
                    let ranges: Vec<_> = (0..size as u64)
                        .step_by(block as usize)
                        .map(|s| s..(s + block).min(size as u64))
                        .collect();
                    let parts = futures::future::try_join_all(
                        ranges.chunks(8).map(|c| store.get_ranges(&path, c)),
                    )
                    .await?;
                    let n: usize = parts.iter().flatten().map(|b| b.len()).sum();
                    anyhow::ensure!(n == size, "ranged read size");
                    t_ranged += started.elapsed().as_secs_f64();
                }
                _ => {
                    let server = TestServer::builder()
                        .dataset(origin.dataset("ds", "bench", "cold"))
                        .config(|c| {
                            c.ram_cache = (size as u64) * 2;
                            c.readahead_blocks = args.readahead;
                        })
                        .start()
                        .await;
                    let client = Client::connect(&server.tcp_endpoint()).await?;
                    let started = Instant::now();
                    let got = client.read("ds/obj", ..).await?;
                    t_cache += started.elapsed().as_secs_f64();
                    anyhow::ensure!(got[..] == data[..], "cold read differs");
                    drop(client);
                    server.stop().await;
                }
            }
        }
    }
    let bytes = (args.cold_reps * size) as u64;
    Ok((
        Row {
            name: "direct object_store GET (S3)".into(),
            bytes,
            secs: t_direct,
        },
        Row {
            name: "direct get_ranges, 8 calls of 8 x 4MiB at once (S3)".into(),
            bytes,
            secs: t_ranged,
        },
        Row {
            name: "shardcache cold, TCP (S3 origin)".into(),
            bytes,
            secs: t_cache,
        },
    ))
}
