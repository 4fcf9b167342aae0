//! Registering [`PinnedBuffer`]s with the CUDA driver (feature `cuda`).
//!
//! `cuMemHostRegister` tells the driver the buffer is page-locked host memory, so
//! `cudaMemcpyAsync` from it runs as DMA at full PCIe rate instead of being staged through the
//! driver's own bounce buffers. libcuda is loaded at run time (cudarc's dynamic loading): a
//! binary built with the feature starts on machines without a GPU and reports that no driver is
//! present when asked to register.

use cudarc::driver::{result, sys};

use crate::error::ClientError;
use crate::pinned::PinnedBuffer;

/// Whether a CUDA driver library can be loaded on this machine.
pub fn cuda_driver_available() -> bool {
    // SAFETY: only tries to open libcuda; no driver call is made.
    unsafe { sys::is_culib_present() }
}

fn err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Buffer {
        reason: format!("cuda: {what}: {e}"),
    }
}

impl PinnedBuffer {
    /// Register the buffer with the CUDA driver on `device` (its primary context), so device
    /// copies from and to it run at pinned speed. Unregistered when the buffer is dropped.
    pub fn register_cuda(&mut self, device: i32) -> Result<(), ClientError> {
        if self.cuda_registered {
            return Ok(());
        }
        if !cuda_driver_available() {
            return Err(ClientError::Buffer {
                reason: "cuda: no CUDA driver (libcuda) on this machine".into(),
            });
        }
        result::init().map_err(|e| err("cuInit", e))?;
        let dev = result::device::get(device).map_err(|e| err("cuDeviceGet", e))?;
        // SAFETY: retaining the device's primary context and making it current on this thread,
        // as the driver API requires before registering memory; the context outlives the
        // registration (primary contexts live until released, which this code never does).
        let ctx =
            unsafe { result::primary_ctx::retain(dev) }.map_err(|e| err("retain context", e))?;
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| err("cuCtxSetCurrent", e))?;
        // SAFETY: the pointer and length are this buffer's own mapping, which stays mapped until
        // `Drop`, where it is unregistered before being unmapped.
        unsafe {
            sys::cuMemHostRegister_v2(
                self.as_ptr() as *mut _,
                self.len(),
                sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        }
        .result()
        .map_err(|e| err("cuMemHostRegister", e))?;
        self.cuda_registered = true;
        Ok(())
    }

    /// Whether the buffer is registered with the CUDA driver.
    pub fn is_cuda_registered(&self) -> bool {
        self.cuda_registered
    }

    pub(crate) fn unregister_cuda(&mut self) {
        if self.cuda_registered {
            // SAFETY: unregistering the range registered in `register_cuda`, once.
            let _ = unsafe { sys::cuMemHostUnregister(self.as_ptr() as *mut _) };
            self.cuda_registered = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // SAFETY: a device allocation of the buffer's size, copied to and from, then freed.
        unsafe {
            let dptr = result::malloc_sync(buf.len()).unwrap();
            result::memcpy_htod_sync(dptr, buf.as_slice()).unwrap();
            let mut back = vec![0u8; buf.len()];
            result::memcpy_dtoh_sync(&mut back, dptr).unwrap();
            result::free_sync(dptr).unwrap();
            assert!(back[..] == buf.as_slice()[..]);
        }
    }
}
