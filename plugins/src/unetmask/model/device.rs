// SPDX-License-Identifier: MPL-2.0

//! GPU discovery for the `cuda` feature. cudarc loads the NVIDIA driver dynamically, so
//! this builds on machines without the CUDA toolkit and fails softly without a driver.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// Whether NVRTC (CUDA's run-time compiler, which builds the GPU kernels) can be loaded.
/// A copy in `EDGEMASK_CUDA_LIBS` (installed hosts), else the one `scripts/setup.sh` links
/// into `.deps/nvrtc/lib`, is loaded first, so the library-name lookup finds it without
/// `LD_LIBRARY_PATH`.
pub fn nvrtc_present() -> Result<(), String> {
    static PRELOAD: OnceLock<Option<libloading::os::unix::Library>> = OnceLock::new();
    PRELOAD.get_or_init(|| {
        let installed =
            std::env::var_os("EDGEMASK_CUDA_LIBS").map(|d| PathBuf::from(d).join("libnvrtc.so.12"));
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/nvrtc/lib/libnvrtc.so.12");
        installed
            .into_iter()
            .chain([local])
            .find(|p| p.exists())
            .and_then(|p| {
                // SAFETY: loads NVRTC, whose initialisers have no preconditions; global, so
                // that a later dlopen by its soname (cudarc's) resolves to this copy.
                unsafe {
                    libloading::os::unix::Library::open(
                        Some(&p),
                        libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                    )
                }
                .ok()
            })
    });
    // SAFETY: probes for the library with dlopen; no NVRTC call is made.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(
            "libnvrtc.so.12 (CUDA's run-time compiler, for the GPU kernels) was not found: run \
             EDGEMASK_GPU=1 scripts/setup.sh, or put the nvidia-cuda-nvrtc-cu12 wheel's lib folder on \
             LD_LIBRARY_PATH"
                .to_string(),
        )
    }
}

/// Logs why `device=auto` runs on the CPU.
pub fn log_fallback(reason: &str) {
    gst::warning!(
        crate::unetmask::imp::CAT,
        "device=auto: no usable GPU ({reason}); running on the CPU"
    );
}

/// Where TensorRT keeps built engines for `model` on GPU `device`, so restarts do not
/// rebuild them: keyed by the model's content (SHA-256), the TensorRT library's version
/// and the GPU's compute capability, so a changed model, an upgraded TensorRT or another
/// GPU generation never picks up a stale engine.
pub fn engine_cache_dir(model: &Path, device: u32) -> Result<PathBuf, String> {
    let base = crate::unetmask::model::engine::cache_base(|k| std::env::var_os(k)).ok_or(
        "none of CACHE_DIRECTORY (systemd's CacheDirectory=), XDG_CACHE_HOME and HOME is set \
         for the TensorRT engine cache",
    )?;
    let dir = base.join("edgemask/tensorrt").join(engine_cache_key(
        model,
        tensorrt_version(),
        compute_capability(device)?,
    )?);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `<model stem>-<first 16 hex digits of its SHA-256>-trt<version>-sm<major><minor>`
/// (`trtunknown` when the TensorRT library could not be asked).
pub fn engine_cache_key(
    model: &Path,
    trt: Option<i32>,
    (major, minor): (i32, i32),
) -> Result<String, String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut f, &mut hash).map_err(|e| format!("{}: {e}", model.display()))?;
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let trt = trt.map_or("unknown".to_string(), |v| v.to_string());
    Ok(format!("{stem}-{hex}-trt{trt}-sm{major}{minor}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Installed as the README says (`scripts/install-gpu-libs.sh`), NVRTC compiles a
    /// kernel with nothing but that directory: a child process without `LD_LIBRARY_PATH`
    /// (which the test command sets) and with `EDGEMASK_CUDA_LIBS` pointing there. NVRTC
    /// dlopens its builtins library when it compiles; the README's copy of
    /// `libnvrtc.so.12` alone failed there (NVRTC_ERROR_BUILTIN_OPERATION_FAILURE).
    #[test]
    fn nvrtc_compiles_from_the_installed_directory_alone() {
        if std::env::var_os("EDGEMASK_NVRTC_CHILD").is_some() {
            nvrtc_present().expect("NVRTC loads from EDGEMASK_CUDA_LIBS");
            let ptx = cudarc::nvrtc::compile_ptx(crate::unetmask::gpu::mirror::pre::PREPROCESS_CU)
                .unwrap_or_else(|e| panic!("NVRTC: {e:?}"));
            assert!(ptx.to_src().contains(".entry"), "a kernel");
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if !root.join(".deps/nvrtc/lib/libnvrtc.so.12").exists() {
            let msg = "no NVRTC in .deps (EDGEMASK_WITH_NVRTC=1 scripts/setup.sh installs it)";
            assert!(
                std::env::var("EDGEMASK_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "{msg}"
            );
            eprintln!("skipped: {msg}");
            return;
        }
        let dest = std::env::temp_dir().join(format!("edgemask-gpu-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dest);
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/install-gpu-libs.sh"))
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // What NVRTC links against resolves without the test command's library path.
        let ldd = std::process::Command::new("ldd")
            .arg(dest.join("libnvrtc.so.12"))
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&ldd.stdout);
        assert!(!text.contains("not found"), "{text}");
        // The test's own path, so that a moved module cannot turn the child into a run of
        // no test at all (which passes).
        let name = format!(
            "{}::nvrtc_compiles_from_the_installed_directory_alone",
            module_path!().split_once("::").unwrap().1
        );
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--nocapture"])
            .env_remove("LD_LIBRARY_PATH")
            .env("EDGEMASK_CUDA_LIBS", &dest)
            .env("EDGEMASK_NVRTC_CHILD", "1")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dest);
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && stdout.contains("running 1 test"),
            "NVRTC from the installed directory alone ({name}):\n{stdout}{}",
            String::from_utf8_lossy(&child.stderr)
        );
    }

    #[test]
    fn engine_cache_keys_follow_content_and_gpu_generation() {
        let dir = std::env::temp_dir().join(format!("edgemask-trt-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("unet.onnx"), dir.join("other/unet.onnx"));
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&a, b"model one").unwrap();
        std::fs::write(&b, b"model two").unwrap(); // same name and size, other content
        let trt = Some(100800);
        let ka = engine_cache_key(&a, trt, (8, 6)).unwrap();
        assert!(ka.starts_with("unet-") && ka.ends_with("-trt100800-sm86"), "{ka}");
        assert_eq!(ka, engine_cache_key(&a, trt, (8, 6)).unwrap(), "stable");
        assert_ne!(ka, engine_cache_key(&b, trt, (8, 6)).unwrap(), "content decides");
        assert_ne!(
            ka,
            engine_cache_key(&a, trt, (9, 0)).unwrap(),
            "GPU generation decides"
        );
        assert_ne!(
            ka,
            engine_cache_key(&a, Some(100900), (8, 6)).unwrap(),
            "TensorRT version decides"
        );
        assert!(
            engine_cache_key(&a, None, (8, 6))
                .unwrap()
                .contains("-trtunknown-")
        );
        assert!(engine_cache_key(&dir.join("missing.onnx"), trt, (8, 6)).is_err());
        // The probe answers None without TensorRT (as in CI) and a plausible encoded
        // version (8.x: 8xxx, 10.x: 10xxxx) with it; it never fails the caller.
        let v = tensorrt_version();
        assert!(v.is_none_or(|v| v >= 8000), "implausible TensorRT version {v:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
