//! Registering [`PinnedBuffer`]s with the CUDA driver (feature `cuda`).
//!
//! `cuMemHostRegister` tells the driver the buffer is page-locked host memory, so
//! `cudaMemcpyAsync` from it runs as DMA at full PCIe rate instead of being staged through the
//! driver's own bounce buffers. libcuda is loaded at run time (cudarc's dynamic loading): a
//! binary built with the feature starts on machines without a GPU and reports that no driver is
//! present when asked to register. The driver calls are in shardcache-mem (`shardcache_mem::cuda`).

use crate::error::ClientError;
use crate::pinned::PinnedBuffer;

/// Whether a CUDA driver library can be loaded on this machine.
pub fn cuda_driver_available() -> bool {
    shardcache_mem::cuda::driver_available()
}

impl PinnedBuffer {
    /// Register the buffer with the CUDA driver on `device` (its primary context), so device
    /// copies from and to it run at pinned speed. Unregistered when the buffer is dropped.
    pub fn register_cuda(&mut self, device: i32) -> Result<(), ClientError> {
        self.mem_mut()
            .register_cuda(device)
            .map_err(|e| ClientError::buffer(format!("cuda: {e}")).caused_by(e))
    }

    /// Whether the buffer is registered with the CUDA driver.
    pub fn is_cuda_registered(&self) -> bool {
        self.mem().is_cuda_registered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcache_mem::cuda::DeviceBuffer;

    /// Needs a GPU: `.ci/run` runs it by name where a CUDA driver is present
    /// (`cargo test -p shardcache-client --features cuda -- --ignored registers_and_copies`).
    #[test]
    #[ignore = "needs a GPU and its CUDA driver"]
    fn registers_and_copies_where_a_gpu_exists() {
        assert!(
            cuda_driver_available(),
            "no CUDA driver (libcuda) on this machine; run this test where a GPU is"
        );
        let mut buf = PinnedBuffer::with_pinning(8 << 20, crate::Pinning::Preferred).unwrap();
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        buf.register_cuda(0).expect("register with the CUDA driver");
        assert!(buf.is_cuda_registered());
        // A device round trip through the registered buffer.
        let device = DeviceBuffer::new(0, buf.len()).unwrap();
        device.upload(buf.as_slice()).unwrap();
        let back = device.download(buf.len()).unwrap();
        drop(device);
        assert!(back[..] == buf.as_slice()[..]);
    }
}
