// SPDX-License-Identifier: MPL-2.0

//! Where the element keeps what it builds once and reuses (TensorRT engines), and the key
//! that keeps a stale one from being picked up.

#[cfg(feature = "cuda")]
use std::path::Path;
use std::path::PathBuf;

/// Where the element keeps caches (built TensorRT engines): systemd's `CACHE_DIRECTORY`
/// first — the unit's `CacheDirectory=`, the one place `ProtectSystem=strict` leaves
/// writable for it (`~/.cache` is not) —, then `XDG_CACHE_HOME`, then `$HOME/.cache`.
/// `var` reads the environment (a parameter, so that it is tested without touching it).
pub fn cache_base(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty());
    // systemd joins several CacheDirectory= paths with ':'; the first is the unit's own.
    set("CACHE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .map(|s| PathBuf::from(s.split(':').next().unwrap_or(s)))
                .or(Some(PathBuf::from(v)))
        })
        .or_else(|| set("XDG_CACHE_HOME").map(PathBuf::from))
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
}

/// Where TensorRT keeps built engines for `model` on GPU `device`, so restarts do not
/// rebuild them: keyed by the model's content (SHA-256), the TensorRT library's version
/// and the GPU's compute capability, so a changed model, an upgraded TensorRT or another
/// GPU generation never picks up a stale engine.
#[cfg(feature = "cuda")]
pub fn engine_cache_dir(model: &Path, device: u32) -> Result<PathBuf, String> {
    let base = cache_base(|k| std::env::var_os(k)).ok_or(
        "none of CACHE_DIRECTORY (systemd's CacheDirectory=), XDG_CACHE_HOME and HOME is set \
         for the TensorRT engine cache",
    )?;
    let dir = base.join("edgemask/tensorrt").join(engine_cache_key(
        model,
        super::device::tensorrt_version(),
        super::device::compute_capability(device)?,
    )?);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `<model stem>-<first 16 hex digits of its SHA-256>-trt<version>-sm<major><minor>`
/// (`trtunknown` when the TensorRT library could not be asked).
#[cfg(feature = "cuda")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_go_to_the_units_cache_directory_first() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).into())
        };
        let all = env(&[
            ("CACHE_DIRECTORY", "/var/cache/edgemask/cams:/var/cache/other"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/var/lib/edgemask"),
        ]);
        assert_eq!(cache_base(all), Some(PathBuf::from("/var/cache/edgemask/cams")));
        let xdg = env(&[("CACHE_DIRECTORY", ""), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(cache_base(xdg), Some(PathBuf::from("/x")));
        assert_eq!(
            cache_base(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache"))
        );
        assert_eq!(cache_base(env(&[])), None);
    }

    #[cfg(feature = "cuda")]
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
        let v = crate::unetmask::model::device::tensorrt_version();
        assert!(v.is_none_or(|v| v >= 8000), "implausible TensorRT version {v:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
