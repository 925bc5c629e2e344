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

pub mod element;
pub mod garage;
pub mod media;
pub mod notify;
pub mod rtsp;
pub mod units;

/// A binary of the workspace (`edgemask`, `edgemask-syncd`) from the same build as the
/// running test: `cargo test --workspace` builds every binary before it runs any test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run the workspace's tests (`cargo test --workspace`, as scripts/test.sh \
         does) or `cargo build -p edgemask -p edgemask-syncd` first",
        p.display()
    );
    p
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until `f` returns true, at most `limit`.
pub fn wait_for(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Waits for `child` at most `limit`: its exit code, or `None` (then it is killed).
pub fn wait_exit(child: &mut std::process::Child, limit: std::time::Duration) -> Option<i32> {
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    signal(child, nix::sys::signal::Signal::SIGTERM);
}

/// Sends `sig` to `child`.
pub fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// The rows of the markdown table in `docs/clip-contract.md` whose header line starts with
/// `header`, cells trimmed of white space and backticks: the runner's and the daemon's
/// tests both check their code against that one page.
pub fn contract_table(header: &str) -> Vec<Vec<String>> {
    let path = root().join("docs/clip-contract.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(header));
    assert!(
        lines.next().is_some(),
        "no table {header:?} in {}",
        path.display()
    );
    lines.next().expect("table rule");
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}
