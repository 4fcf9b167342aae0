//! GPU benchmark (feature `cuda`, needs a GPU): the last step of a read on a GPU node, the
//! host-to-device copy of a shard, from a [`PinnedBuffer`] registered with the CUDA driver,
//! beside the same copy from ordinary (pageable) memory, in the same run; and a shard read from
//! the cache into the registered buffer and copied to the GPU, end to end.
//!
//! Every copy goes to one device allocation; the copies are synchronous (`cuMemcpyHtoD`
//! returns when the bytes are on the device). After all variants the device bytes are copied
//! back and compared with the shard once.

use std::time::Instant;

use shardcache_client::{Client, PinnedBuffer, Pinning};
use shardcache_mem::cuda::{DeviceBuffer, device_name};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};

use crate::Args;
use crate::report::{Report, Row, median};

/// The one device allocation, in device 0's primary context (made current on whichever thread
/// runs a copy); the driver calls are shardcache-mem's.
struct Gpu(DeviceBuffer);

impl Gpu {
    fn new(len: usize) -> anyhow::Result<Gpu> {
        Ok(Gpu(DeviceBuffer::new(0, len)?))
    }

    /// Copy `src` (at most the allocation) to the device, synchronously.
    fn upload(&self, src: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(src.len() <= self.0.len(), "copy larger than the allocation");
        Ok(self.0.upload(src)?)
    }

    /// The first `n` device bytes, back on the host.
    fn download(&self, n: usize) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.download(n)?)
    }

    fn name() -> String {
        device_name(0).unwrap_or_else(|e| format!("unknown GPU ({e})"))
    }
}

pub async fn gpu(origin: &S3Origin, args: &Args) -> anyhow::Result<(Vec<Row>, f64, f64)> {
    let size = args.gpu_mib << 20;
    let rounds = args.rounds * 2;
    let want = bytes_for(4242, size);
    origin.put("bench", "gpu/shard", want.clone()).await;
    let gpu = Gpu::new(size)?;
    println!("gpu: {}", Gpu::name());

    let mut pinned = PinnedBuffer::with_pinning(size, Pinning::Preferred)?;
    pinned.register_cuda(0)?;
    anyhow::ensure!(pinned.is_cuda_registered(), "buffer not registered");
    pinned.as_mut_slice().copy_from_slice(&want);
    let pageable = want.clone();

    let dir = tempfile::tempdir()?;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "gpu"))
        .config(|c| {
            c.ram_cache = size as u64 * 2;
            c.local_socket = Some(dir.path().join("gpu.sock"));
        })
        .start()
        .await;
    let local = Client::connect(&dir.path().join("gpu.sock").display().to_string()).await?;
    local.read_into_buffer("ds/shard", .., &mut pinned).await?; // into RAM; region registered
    anyhow::ensure!(pinned.as_slice() == &want[..], "local read differs");

    let bytes = (rounds * size) as u64;
    let (mut from_pinned, mut from_pageable, mut end_to_end) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.reps {
        let started = Instant::now();
        for _ in 0..rounds {
            gpu.upload(pinned.as_slice())?;
        }
        from_pinned.push(Row {
            name: format!("H2D {} MiB from a registered PinnedBuffer", args.gpu_mib),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let started = Instant::now();
        for _ in 0..rounds {
            gpu.upload(&pageable)?;
        }
        from_pageable.push(Row {
            name: format!("H2D {} MiB from pageable memory (baseline)", args.gpu_mib),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
        let started = Instant::now();
        for _ in 0..rounds {
            let n = local.read_into_buffer("ds/shard", .., &mut pinned).await?;
            anyhow::ensure!(n == size, "short read");
            gpu.upload(pinned.as_slice())?;
        }
        end_to_end.push(Row {
            name: "cache (local path) into the registered buffer, then H2D".into(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
        });
    }
    anyhow::ensure!(
        gpu.download(size)? == want,
        "device bytes differ from the shard"
    );
    drop(server);
    let (p, g, e) = (
        median(from_pinned),
        median(from_pageable),
        median(end_to_end),
    );
    let pinned_over_pageable = p.gbps() / g.gbps();
    let end_over_pinned = e.gbps() / p.gbps();
    Ok((vec![p, g, e], pinned_over_pageable, end_over_pinned))
}

/// The GPU runs and their ratios; skipped where no CUDA driver is loaded.
pub(crate) async fn run(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    if shardcache_client::cuda_driver_available() {
        let (gpu_rows, pinned_over_pageable, end_over_pinned) = gpu(origin, args).await?;
        report.ratios.push((
            "H2D from registered pinned / from pageable memory".to_string(),
            pinned_over_pageable,
            0.0,
            true,
        ));
        report.ratios.push((
            "cache read + H2D / H2D alone (pinned)".to_string(),
            end_over_pinned,
            0.0,
            true,
        ));
        report.rows.extend(gpu_rows);
    } else {
        println!("gpu: skipped, no CUDA driver (libcuda) on this machine");
    }
    Ok(())
}
