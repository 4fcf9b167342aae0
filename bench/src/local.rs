//! The local path: a cached object read over the Unix socket into a pinned buffer the server
//! writes directly, beside a plain memcpy and the same read over TCP.

use std::time::Instant;

use shardcache_client::Client;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

use crate::Args;
use crate::report::{Report, Row, median};

/// The local-path runs and their ratios.
pub(crate) async fn run(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (memcpy, local, tcp) = local_path(origin, args).await?;
    report.ratios.push((
        "local path / memcpy".to_string(),
        local.gbps() / memcpy.gbps(),
        0.50,
        true,
    ));
    report.ratios.push((
        "local path / TCP path".to_string(),
        local.gbps() / tcp.gbps(),
        2.0,
        true,
    ));
    report.rows.push(memcpy);
    report.rows.push(local);
    report.rows.push(tcp);
    Ok(())
}

/// One reader reading a cached 64 MiB object into a pinned buffer over the local path, beside a
/// plain memcpy of the same size and the same `read_into_buffer` over TCP, in one run.
async fn local_path(origin: &S3Origin, args: &Args) -> anyhow::Result<(Row, Row, Row)> {
    use shardcache_client::{PinnedBuffer, Pinning};
    let size = args.object_mib << 20;
    let rounds = args.rounds * 2;
    origin.put("bench", "local/obj", bytes_for(777, size)).await;
    let dir = tempfile::tempdir()?;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "local"))
        .config(|c| {
            c.ram_cache = (size as u64) * 2;
            c.local_socket = Some(dir.path().join("bench.sock"));
        })
        .start()
        .await;
    let socket = dir.path().join("bench.sock").display().to_string();
    let local = Client::connect(&socket).await?;
    let tcp = Client::connect(&server.tcp_endpoint()).await?;
    let mut buf = PinnedBuffer::with_pinning(size, Pinning::Preferred)?;
    if !buf.is_pinned() {
        eprintln!("note: buffer not page-locked here (RLIMIT_MEMLOCK)");
    }
    local.read_into_buffer("ds/obj", .., &mut buf).await?; // warm RAM and register
    let want = bytes_for(777, size);
    anyhow::ensure!(buf.as_slice() == &want[..], "local read differs");
    let src = want.clone();
    let mut dst = vec![1u8; size];
    let (mut copies, mut locals, mut tcps) = (Vec::new(), Vec::new(), Vec::new());
    let bytes = (rounds * size) as u64;
    for _ in 0..args.reps {
        let started = Instant::now();
        for i in 0..rounds {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst[i % size]);
        }
        copies.push(Row {
            name: "memcpy 64 MiB (same process)".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let started = Instant::now();
        for _ in 0..rounds {
            let n = local.read_into_buffer("ds/obj", .., &mut buf).await?;
            anyhow::ensure!(n == size, "short local read");
        }
        locals.push(Row {
            name: "shardcache local path into PinnedBuffer".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let started = Instant::now();
        for _ in 0..rounds {
            let n = tcp.read_into_buffer("ds/obj", .., &mut buf).await?;
            anyhow::ensure!(n == size, "short tcp read");
        }
        tcps.push(Row {
            name: "shardcache TCP path into the same buffer".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
    }
    anyhow::ensure!(
        buf.as_slice()[size - 4096..] == want[size - 4096..],
        "bytes differ"
    );
    Ok((median(copies), median(locals), median(tcps)))
}
