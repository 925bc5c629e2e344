// SPDX-License-Identifier: MPL-2.0

//! GPU discovery for the `cuda` feature: which devices, their compute capability, which
//! TensorRT. cudarc loads the NVIDIA driver dynamically, so this builds on machines without
//! the CUDA toolkit and fails softly without a driver.

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
        crate::unetmask::debug::CAT,
        "device=auto: no usable GPU ({reason}); running on the CPU"
    );
}

/// The TensorRT library ONNX Runtime's provider will load: `getInferLibVersion()` of
/// `libnvinfer.so.10` (or `libnvinfer.so`), e.g. 100800 for 10.8.0; `None` when it cannot
/// be loaded (ONNX Runtime then reports the missing library itself).
pub fn tensorrt_version() -> Option<i32> {
    ["libnvinfer.so.10", "libnvinfer.so"]
        .into_iter()
        .find_map(|name| {
            // SAFETY: loading TensorRT runs its initialisers, which the provider would run
            // anyway; the symbol is `extern "C" int32_t getInferLibVersion() noexcept`.
            unsafe {
                let lib = libloading::Library::new(name).ok()?;
                let f = lib
                    .get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion\0")
                    .ok()?;
                Some(f())
            }
        })
}

/// The compute capability of GPU `device` (e.g. `(9, 0)` for an H100/H200).
pub fn compute_capability(device: u32) -> Result<(i32, i32), String> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    cudarc::driver::result::init().map_err(|e| format!("the CUDA driver failed to initialise: {e}"))?;
    let dev = cudarc::driver::result::device::get(device as i32)
        .map_err(|e| format!("no CUDA device {device}: {e}"))?;
    // SAFETY: `dev` is a valid device handle from the initialised driver.
    let attr = |a| unsafe { cudarc::driver::result::device::get_attribute(dev, a) };
    let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(|e| e.to_string())?;
    let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(|e| e.to_string())?;
    Ok((major, minor))
}
