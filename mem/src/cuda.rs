//! The CUDA driver (feature `cuda`): registering a [`PinnedMemfd`] as page-locked host memory,
//! and [`DeviceBuffer`], a device allocation with bounds-checked synchronous copies.
//!
//! `cuMemHostRegister` tells the driver the buffer is page-locked host memory, so device copies
//! from it run as DMA at full PCIe rate instead of being staged through the driver's own bounce
//! buffers. libcuda is loaded at run time (cudarc's dynamic loading): a binary built with the
//! feature starts on machines without a GPU and reports [`CudaError::NoDriver`] when asked to
//! use one.

use cudarc::driver::{DriverError, result, sys};

use crate::PinnedMemfd;

/// A failed driver call, or no driver at all.
#[derive(Debug)]
pub enum CudaError {
    /// No CUDA driver library (libcuda) could be loaded.
    NoDriver,
    /// A driver call (`what`) failed.
    Driver {
        what: &'static str,
        error: DriverError,
    },
    /// A copy of `len` bytes to or from a device allocation of `capacity` bytes.
    TooLarge { len: usize, capacity: usize },
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaError::NoDriver => write!(f, "no CUDA driver (libcuda) on this machine"),
            CudaError::Driver { what, error } => write!(f, "{what}: {error}"),
            CudaError::TooLarge { len, capacity } => write!(
                f,
                "a copy of {len} bytes does not fit the device allocation of {capacity} bytes"
            ),
        }
    }
}

impl std::error::Error for CudaError {}

fn err(what: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |error| CudaError::Driver { what, error }
}

/// Whether a CUDA driver library can be loaded on this machine.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open libcuda (cudarc keeps it loaded once opened); no driver call
    // is made.
    unsafe { sys::is_culib_present() }
}

/// Initialise the driver and make `device`'s primary context current on this thread.
fn primary_context(device: i32) -> Result<sys::CUcontext, CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    result::init().map_err(err("cuInit"))?;
    let dev = result::device::get(device).map_err(err("cuDeviceGet"))?;
    // SAFETY: retaining the device's primary context, which the driver API requires before
    // allocating or registering memory; it is never released, so it outlives every allocation
    // and registration made in it.
    let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(err("retain context"))?;
    make_current(ctx)?;
    Ok(ctx)
}

fn make_current(ctx: sys::CUcontext) -> Result<(), CudaError> {
    // SAFETY: `ctx` is a primary context retained in `primary_context` and never released.
    unsafe { result::ctx::set_current(ctx) }.map_err(err("cuCtxSetCurrent"))
}

/// The name of `device`.
pub fn device_name(device: i32) -> Result<String, CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    result::init().map_err(err("cuInit"))?;
    let dev = result::device::get(device).map_err(err("cuDeviceGet"))?;
    result::device::get_name(dev).map_err(err("cuDeviceGetName"))
}

impl PinnedMemfd {
    /// Register the memory with the CUDA driver on `device` (its primary context), so device
    /// copies from and to it run at pinned speed. Unregistered when the buffer is dropped,
    /// before it is unlocked and unmapped. Nothing when it is registered already.
    pub fn register_cuda(&mut self, device: i32) -> Result<(), CudaError> {
        if self.cuda_registered {
            return Ok(());
        }
        primary_context(device)?;
        // SAFETY: the pointer and length are this buffer's own mapping, which stays mapped
        // until `Drop`, where `unregister_cuda` runs before the memory is unlocked and unmapped.
        unsafe {
            sys::cuMemHostRegister_v2(
                self.as_ptr() as *mut _,
                self.len(),
                sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        }
        .result()
        .map_err(err("cuMemHostRegister"))?;
        self.cuda_registered = true;
        Ok(())
    }

    /// Whether the memory is registered with the CUDA driver.
    pub fn is_cuda_registered(&self) -> bool {
        self.cuda_registered
    }

    pub(crate) fn unregister_cuda(&mut self) {
        if self.cuda_registered {
            // SAFETY: unregistering the range registered in `register_cuda`, once, while it is
            // still mapped.
            let _ = unsafe { sys::cuMemHostUnregister(self.as_ptr() as *mut _) };
            self.cuda_registered = false;
        }
    }
}

/// `len` bytes of device memory in `device`'s primary context, which is made current on the
/// calling thread before every copy; freed when dropped. Not `Send`: it stays on the thread
/// that made it.
pub struct DeviceBuffer {
    ctx: sys::CUcontext,
    dptr: sys::CUdeviceptr,
    len: usize,
}

impl DeviceBuffer {
    /// Allocate `len` bytes on `device`.
    pub fn new(device: i32, len: usize) -> Result<DeviceBuffer, CudaError> {
        let ctx = primary_context(device)?;
        // SAFETY: a plain device allocation in the context made current above; freed once, in
        // `Drop`.
        let dptr = unsafe { result::malloc_sync(len) }.map_err(err("cuMemAlloc"))?;
        Ok(DeviceBuffer { ctx, dptr, len })
    }

    /// Bytes allocated.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, len: usize) -> Result<(), CudaError> {
        if len > self.len {
            return Err(CudaError::TooLarge {
                len,
                capacity: self.len,
            });
        }
        make_current(self.ctx)
    }

    /// Copy `src` (at most [`DeviceBuffer::len`] bytes) to the start of the allocation; returns
    /// when the bytes are on the device.
    pub fn upload(&self, src: &[u8]) -> Result<(), CudaError> {
        self.check(src.len())?;
        // SAFETY: `dptr` holds `self.len >= src.len()` bytes (checked) in the context made
        // current by `check`; the copy is synchronous, so `src` is not used after it returns.
        unsafe { result::memcpy_htod_sync(self.dptr, src) }.map_err(err("cuMemcpyHtoD"))
    }

    /// The first `n` bytes of the allocation (at most [`DeviceBuffer::len`]), on the host.
    pub fn download(&self, n: usize) -> Result<Vec<u8>, CudaError> {
        self.check(n)?;
        let mut out = vec![0u8; n];
        // SAFETY: `dptr` holds `self.len >= n` bytes (checked) and `out` holds `n`; the copy is
        // synchronous.
        unsafe { result::memcpy_dtoh_sync(&mut out, self.dptr) }.map_err(err("cuMemcpyDtoH"))?;
        Ok(out)
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if make_current(self.ctx).is_ok() {
            // SAFETY: freeing the allocation made in `new`, once, in its own context.
            let _ = unsafe { result::free_sync(self.dptr) };
        }
    }
}
