// SPDX-License-Identifier: MPL-2.0

//! GPU discovery for the `cuda` feature. cudarc loads the NVIDIA driver dynamically, so
//! this builds on machines without the CUDA toolkit and fails softly without a driver.

use std::path::{Path, PathBuf};

/// Number of CUDA devices, or why there are none.
pub fn device_count() -> Result<u32, String> {
    // SAFETY: probes for the driver library with dlopen; no driver call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no NVIDIA driver: libcuda.so.1 was not found on the library path".to_string());
    }
    cudarc::driver::result::init().map_err(|e| format!("the CUDA driver failed to initialise: {e}"))?;
    let n =
        cudarc::driver::result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
    if n <= 0 {
        return Err("the NVIDIA driver reports no CUDA device".to_string());
    }
    Ok(n as u32)
}

/// Logs why `device=auto` runs on the CPU.
pub fn log_fallback(reason: &str) {
    gst::warning!(
        super::imp::CAT,
        "device=auto: no usable GPU ({reason}); running on the CPU"
    );
}

/// Where TensorRT keeps built engines for `model`, so restarts do not rebuild them.
pub fn engine_cache_dir(model: &Path) -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set for the TensorRT engine cache")?;
    let meta = std::fs::metadata(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let dir = base
        .join("edgemask/tensorrt")
        .join(format!("{stem}-{}", meta.len()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
