//! Faults the field produces and a test cannot otherwise: a source whose read never
//! returns, and pipelines that cannot stop. Built only with the `fault-injection` feature
//! (`cargo test -p edgemask --features fault-injection --test faults`, in the test command).
#![cfg(feature = "fault-injection")]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn run_with_fault(dir: &std::path::Path, camera: &str, after: u32) -> (i32, String, Duration) {
    let cfg = write_config(
        dir,
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
stall_timeout_s = 0.5
backoff_initial_s = 0.5
backoff_max_s = 0.5
[model]
path = "{}"
device = "cpu"
threads = 1
[cameras.cam]
{camera}
"#,
            dir.join("out").display(),
            model().display()
        ),
    );
    let t = Instant::now();
    let mut child = edgemask()
        .args(["run", cfg.to_str().unwrap()])
        .env("EDGEMASK_FAULT_BLOCK_SOURCE_AFTER", after.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(90));
    (code, err, t.elapsed())
}

/// A file whose read never returns (a hung NFS mount): the camera fails after the margin
/// instead of hanging for ever, its pipeline (which cannot stop) is left behind and said
/// so, and the exit code says failure.
#[test]
fn a_file_source_whose_read_never_returns_fails_and_is_reported() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("in.mp4");
    make_video(&video, &[(60, true)]);
    let (code, err, took) = run_with_fault(
        dir.path(),
        &format!("source = \"file\"\npath = \"{}\"", video.display()),
        3,
    );
    assert_eq!(
        code, 1,
        "exit 1 (runtime failure), not a hang or a success:\n{err}"
    );
    assert!(
        err.contains("no frame from the file source"),
        "the hung read is named:\n{err}"
    );
    assert!(
        err.contains("left behind"),
        "the stuck pipeline is reported:\n{err}"
    );
    assert!(took < Duration::from_secs(60), "detected in {took:?}");
}

/// A live camera whose pipelines stall and cannot stop: each restart leaves one behind;
/// at the third the runner stops itself (exit 1) so that systemd starts a clean process,
/// instead of leaking threads and sockets for months.
#[test]
fn pipelines_that_cannot_stop_end_the_process_at_the_third() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (code, err, _) = run_with_fault(dir.path(), "source = \"testpattern\"\nlive = true\nfps = 15", 5);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.matches("pipeline did not stop in time").count(),
        3,
        "three pipelines left behind, then the stop:\n{err}"
    );
    assert!(
        err.contains("stopping so that a fresh process takes over"),
        "{err}"
    );
}

/// A display that cannot keep up (300 ms a frame, a synced sink that sends QoS upstream)
/// costs preview frames only: every recorded frame has a fresh mask.
#[test]
fn a_slow_display_never_costs_recorded_masks() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
[model]
path = "{}"
device = "cpu"
threads = 1
[cameras.cam]
source = "testpattern"
pattern = "ball"
live = true
fps = 15
display = "fakevideosink"
"#,
            dir.path().join("out").display(),
            model().display()
        ),
    );
    let mut child = edgemask()
        .args(["run", cfg.to_str().unwrap()])
        .env("EDGEMASK_FAULT_SLOW_DISPLAY_MS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(10));
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    let clips = clips(&dir.path().join("out").join("cam"));
    let (mut frames, mut fresh) = (0u64, 0u64);
    for c in &clips {
        let (_, csv) = read_masks(&c.masks);
        for line in csv.lines().skip(1) {
            frames += 1;
            fresh += u64::from(line.split(',').nth(2) == Some("1"));
        }
    }
    assert!(frames >= 60, "{frames} frames recorded in 10 s at 15 fps:\n{err}");
    assert_eq!(fresh, frames, "every recorded frame has a fresh mask:\n{err}");
    assert!(!err.contains("CRITICAL"), "{err}");
}
