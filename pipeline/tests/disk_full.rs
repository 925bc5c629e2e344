//! A really full disk: the output directory on a small tmpfs that another file fills up.
//! Needs a tmpfs: as root it is mounted directly; otherwise the test runs itself again
//! inside a new user and mount namespace (`unshare --user --map-root-user --mount`); where
//! neither is allowed it says so and passes without running.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use edgemask_tests::free_port;

const INNER: &str = "EDGEMASK_TEST_IN_NAMESPACE";

/// Final-named clip files and whether each has its manifest.
fn clip_sets(dir: &std::path::Path) -> (usize, Vec<String>) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let manifests = names.iter().filter(|n| n.ends_with(".manifest.json")).count();
    let orphans = names
        .iter()
        .filter(|n| !n.starts_with('.') && (n.ends_with(".mp4") || n.ends_with(".masks.tar")))
        .filter(|n| {
            let base = n.trim_end_matches(".mp4").trim_end_matches(".masks.tar");
            !names.contains(&format!("{base}.manifest.json"))
        })
        .cloned()
        .collect();
    (manifests, orphans)
}

#[test]
fn a_full_disk_pauses_recording_and_recording_resumes_when_space_returns() {
    init();
    if !nix::unistd::geteuid().is_root() && std::env::var_os(INNER).is_none() {
        // Again, as root of a user namespace with its own mounts.
        let out = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_full_disk_pauses_recording_and_recording_resumes_when_space_returns",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, "1")
            .output()
            .expect("run unshare");
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("unshare failed") {
            eprintln!("skipped: no root and no user namespaces here to mount a tmpfs ({err})");
            return;
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        // A renamed test would make the child run none, which passes.
        assert!(
            out.status.success() && stdout.contains("running 1 test"),
            "{stdout}\n{err}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    if !mount.status.success() {
        eprintln!(
            "skipped: cannot mount a tmpfs here ({})",
            String::from_utf8_lossy(&mount.stderr).trim()
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    let out = mnt.join("out");
    let metrics_port = free_port();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
metrics_listen = "127.0.0.1:{metrics_port}"
backoff_initial_s = 0.5
backoff_max_s = 1
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 2
[cameras.cam]
source = "testpattern"
pattern = "ball"
live = true
width = 640
height = 360
fps = 15
"#,
            out.display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    let cam = out.join("cam");
    assert!(
        wait_for(Duration::from_secs(40), || clip_sets(&cam).0 >= 1),
        "a first clip"
    );
    // Another file takes every byte left.
    let blob = mnt.join("blob");
    {
        let mut f = std::fs::File::create(&blob).unwrap();
        let chunk = vec![0x5au8; 256 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let restarts = |p| metric(p, "edgemask_restarts_total{camera=\"cam\"}").unwrap_or(0.0);
    let frames = |p| metric(p, "edgemask_frames_total{camera=\"cam\"}").unwrap_or(0.0);
    // The runner notices (ENOSPC), pauses recording and settles.
    std::thread::sleep(Duration::from_secs(12));
    let (r0, f0) = (restarts(metrics_port), frames(metrics_port));
    std::thread::sleep(Duration::from_secs(8));
    let (r1, f1) = (restarts(metrics_port), frames(metrics_port));
    assert!(
        f1 - f0 >= 60.0,
        "masks go on while the disk is full: {f0} → {f1} frames in 8 s"
    );
    assert_eq!(
        r1, r0,
        "no restart loop while the disk is full ({r0} → {r1} restarts)"
    );
    assert!(r1 <= 3.0, "{r1} restarts for one full disk");
    let clips_while_full = clip_sets(&cam).0;
    // Space returns: recording resumes.
    std::fs::remove_file(&blob).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || clip_sets(&cam).0 > clips_while_full),
        "a new clip once space is back"
    );
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("recording paused"), "{err}");
    assert!(err.contains("recording resumes"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (_, orphans) = clip_sets(&cam);
    assert!(
        orphans.is_empty(),
        "final-named files without a manifest: {orphans:?}\n{err}"
    );
    assert!(temp_files(&cam).is_empty(), "{:?}", temp_files(&cam));
}
