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

/// Where TensorRT keeps built engines for `model` on GPU `device`, so restarts do not
/// rebuild them: keyed by the model's content (SHA-256) and the GPU's compute capability,
/// so a changed model or another GPU generation never picks up a stale engine.
pub fn engine_cache_dir(model: &Path, device: u32) -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set for the TensorRT engine cache")?;
    let dir = base
        .join("edgemask/tensorrt")
        .join(engine_cache_key(model, compute_capability(device)?)?);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `<model stem>-<first 16 hex digits of its SHA-256>-sm<major><minor>`.
pub fn engine_cache_key(model: &Path, (major, minor): (i32, i32)) -> Result<String, String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut f, &mut hash).map_err(|e| format!("{}: {e}", model.display()))?;
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    Ok(format!("{stem}-{hex}-sm{major}{minor}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_cache_keys_follow_content_and_gpu_generation() {
        let dir = std::env::temp_dir().join(format!("edgemask-trt-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("unet.onnx"), dir.join("other/unet.onnx"));
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&a, b"model one").unwrap();
        std::fs::write(&b, b"model two").unwrap(); // same name and size, other content
        let ka = engine_cache_key(&a, (8, 6)).unwrap();
        assert!(ka.starts_with("unet-") && ka.ends_with("-sm86"), "{ka}");
        assert_eq!(ka, engine_cache_key(&a, (8, 6)).unwrap(), "stable");
        assert_ne!(ka, engine_cache_key(&b, (8, 6)).unwrap(), "content decides");
        assert_ne!(
            ka,
            engine_cache_key(&a, (9, 0)).unwrap(),
            "GPU generation decides"
        );
        assert!(engine_cache_key(&dir.join("missing.onnx"), (8, 6)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
