//! NVIDIA GPU discovery through cudarc's dynamic loading of the CUDA driver.
//!
//! The same binary runs where no CUDA is installed: if `libcuda` cannot be loaded, or the
//! driver reports an error, the node simply has no GPUs.
#![allow(unsafe_code)]

use cudarc::driver::{result, sys};
use shoal_protocol::{Accelerator, AcceleratorKind};
use tracing::{debug, info};

/// Lists the GPUs the CUDA driver sees. Never fails: no driver means no GPUs.
pub fn discover() -> Vec<Accelerator> {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made before this
    // confirms it is present.
    if !unsafe { sys::is_culib_present() } {
        debug!("no CUDA driver library; reporting no GPUs");
        return Vec::new();
    }
    match std::panic::catch_unwind(query) {
        Ok(Ok(gpus)) => {
            for g in &gpus {
                info!(model = %g.model, memory = g.memory_total_bytes, cc = %g.compute_capability, "found a GPU");
            }
            gpus
        }
        Ok(Err(e)) => {
            info!(error = %e, "CUDA driver present but unusable; reporting no GPUs");
            Vec::new()
        }
        Err(_) => {
            info!("CUDA driver panicked while loading; reporting no GPUs");
            Vec::new()
        }
    }
}

fn query() -> Result<Vec<Accelerator>, result::DriverError> {
    result::init()?;
    let count = result::device::get_count()?;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for ordinal in 0..count {
        let dev = result::device::get(ordinal)?;
        let model = result::device::get_name(dev)?;
        // SAFETY: `dev` came from `device::get` above.
        let total = unsafe { result::device::total_mem(dev)? } as u64;
        // SAFETY: as above; the attributes are plain integers.
        let (major, minor) = unsafe {
            (
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )?,
            )
        };
        let free = free_memory(dev).unwrap_or(total);
        out.push(Accelerator {
            kind: AcceleratorKind::Gpu,
            vendor: "nvidia".into(),
            model,
            memory_total_bytes: total,
            memory_free_bytes: free,
            compute_capability: format!("{major}.{minor}"),
            discovered: true,
        });
    }
    Ok(out)
}

/// Free memory needs a context: retain the primary one briefly.
fn free_memory(dev: sys::CUdevice) -> Result<u64, result::DriverError> {
    // SAFETY: `dev` is valid; the primary context is retained, made current for one
    // query, and released.
    unsafe {
        let ctx = result::primary_ctx::retain(dev)?;
        let r = result::ctx::set_current(ctx).and_then(|_| result::mem_get_info());
        let _ = result::primary_ctx::release(dev);
        r.map(|(free, _total)| free as u64)
    }
}
