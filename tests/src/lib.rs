//! Shared helpers for the integration tests across the edgemask crates: where the
//! checkout, the built plugin and the shared test data are.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// `../shared` beside the checkout (or `$EDGEMASK_SHARED`).
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("EDGEMASK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    assert!(
        dir.join("models/SOURCES.md").is_file(),
        "test data not found at {}: the tests need ../shared beside the checkout (or EDGEMASK_SHARED)",
        dir.display()
    );
    dir
}

/// The folder holding the built `libgstunetmask.so` (debug build), for `GST_PLUGIN_PATH`.
pub fn plugin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let dir = target.join("debug");
    assert!(
        dir.join("libgstunetmask.so").is_file(),
        "{}/libgstunetmask.so not found: build the plugin first (`cargo build -p gst-plugin-unetmask`; scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The project-local ONNX Runtime library that `scripts/setup.sh` installs.
pub fn onnxruntime() -> PathBuf {
    let lib = root().join(".deps/onnxruntime/lib/libonnxruntime.so");
    assert!(lib.exists(), "{} missing: run scripts/setup.sh", lib.display());
    lib
}
