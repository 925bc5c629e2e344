// SPDX-License-Identifier: MPL-2.0

//! NVRTC, CUDA's run-time compiler, which builds the kernels on the host they run on.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Whether NVRTC (CUDA's run-time compiler, which builds the GPU kernels) can be loaded.
/// A copy in `EDGEMASK_CUDA_LIBS` (installed hosts), else the one `scripts/setup.sh` links
/// into `.deps/nvrtc/lib`, is loaded first, so the library-name lookup finds it without
/// `LD_LIBRARY_PATH`.
pub fn nvrtc_present() -> Result<(), String> {
    // Kept once loaded; a copy that is not there yet is looked for again next time, so that a
    // library installed or pointed at later is used without a restart.
    static PRELOAD: OnceLock<libloading::os::unix::Library> = OnceLock::new();
    let _ = once_ok(&PRELOAD, || {
        let installed =
            std::env::var_os("EDGEMASK_CUDA_LIBS").map(|d| PathBuf::from(d).join("libnvrtc.so.12"));
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/nvrtc/lib/libnvrtc.so.12");
        let path = installed
            .into_iter()
            .chain([local])
            .find(|p| p.exists())
            .ok_or(())?;
        // SAFETY: loads NVRTC, whose initialisers have no preconditions; global, so that a
        // later dlopen by its soname (cudarc's) resolves to this copy.
        unsafe {
            libloading::os::unix::Library::open(
                Some(&path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .map_err(|_| ())
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

/// `src` compiled by NVRTC to a CUBIN for compute capability `major.minor`: machine code
/// the driver loads as it is, where PTX is compiled again by the driver's JIT in every
/// process that loads it. NVRTC needs no GPU for this, only the architecture's name.
pub(crate) fn compile_cubin(src: &str, (major, minor): (i32, i32)) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    nvrtc_present()?;
    let arch = format!("sm_{major}{minor}");
    let fail = |what: &str, e: result::NvrtcError| format!("NVRTC ({what} for {arch}): {e:?}");
    let src = std::ffi::CString::new(src).map_err(|e| e.to_string())?;
    /// Destroys the program whatever happens after it is created.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created by create_program and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let prog = Program(result::create_program(&src, None).map_err(|e| fail("creating the program", e))?);
    // SAFETY: `prog` is a live program; the option is a NUL-free string.
    if let Err(e) = unsafe { result::compile_program(prog.0, &[format!("--gpu-architecture={arch}")]) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog.0) }
            .map(|l| {
                l.iter()
                    .map(|&c| c as u8 as char)
                    .take_while(|&c| c != '\0')
                    .collect::<String>()
            })
            .unwrap_or_default();
        return Err(format!("{}: {log}", fail("compiling", e)));
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled; `size` is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| fail("sizing the CUBIN", e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds the `size` bytes NVRTC said it writes.
    unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| fail("reading the CUBIN", e))?;
    Ok(cubin)
}

/// `cell`'s value, made by `make` the first time it succeeds. A failure is returned and not
/// kept: a process whose first try failed (no NVRTC yet, a library path fixed since) gets
/// the kernels on a later try instead of the first error for the rest of its life.
pub(crate) fn once_ok<T, E>(cell: &OnceLock<T>, make: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels build as machine code for the GPU generations a host may have (Turing,
    /// Ampere, Hopper), with no GPU here: an ELF image each; a source that is not CUDA says
    /// so with NVRTC's log.
    #[test]
    fn kernels_compile_to_cubin_for_each_gpu_generation() {
        use crate::unetmask::gpu::params::{BLUR_CU, COMPOSITE_CU, POSTPROCESS_CU, PREPROCESS_CU};
        if let Err(e) = nvrtc_present() {
            assert!(
                std::env::var("EDGEMASK_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "{e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
        let sources = [
            PREPROCESS_CU.to_string(),
            POSTPROCESS_CU.to_string(),
            format!("{COMPOSITE_CU}\n{BLUR_CU}"),
        ];
        for cc in [(7, 5), (8, 6), (9, 0)] {
            for src in &sources {
                let cubin = compile_cubin(src, cc).unwrap_or_else(|e| panic!("{cc:?}: {e}"));
                assert!(
                    cubin.starts_with(b"\x7fELF") && cubin.len() > 1024,
                    "{cc:?}: not a CUBIN"
                );
            }
        }
        let e = compile_cubin("this is not CUDA", (9, 0)).unwrap_err();
        assert!(e.contains("compiling for sm_90") && e.contains("error"), "{e}");
    }

    #[test]
    fn a_failure_is_not_kept() {
        let cell = OnceLock::new();
        assert_eq!(
            once_ok(&cell, || Err::<u32, _>("no NVRTC yet")),
            Err("no NVRTC yet")
        );
        assert_eq!(once_ok(&cell, || Ok::<u32, &str>(5)), Ok(&5), "tried again");
        assert_eq!(once_ok(&cell, || Ok::<u32, &str>(7)), Ok(&5), "kept once made");
        assert_eq!(once_ok(&cell, || Err::<u32, _>("later")), Ok(&5));
    }

    /// Installed as the README says (`scripts/install-gpu-libs.sh`), NVRTC compiles a
    /// kernel with nothing but that directory: a child process without `LD_LIBRARY_PATH`
    /// (which the test command sets) and with `EDGEMASK_CUDA_LIBS` pointing there. NVRTC
    /// dlopens its builtins library when it compiles; the README's copy of
    /// `libnvrtc.so.12` alone failed there (NVRTC_ERROR_BUILTIN_OPERATION_FAILURE).
    #[test]
    fn nvrtc_compiles_from_the_installed_directory_alone() {
        if std::env::var_os("EDGEMASK_NVRTC_CHILD").is_some() {
            nvrtc_present().expect("NVRTC loads from EDGEMASK_CUDA_LIBS");
            let ptx = cudarc::nvrtc::compile_ptx(crate::unetmask::gpu::params::PREPROCESS_CU)
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
}
