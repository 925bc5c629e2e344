//! Deployment: the systemd units in `configs/systemd/` pass `systemd-analyze verify` and
//! keep `systemd-analyze security` exposure at or under 2.0, and both daemons, started the
//! way their units start them (same arguments, environment, directories and modes, umask
//! and — when the test runs as root — the units' two users sharing one group), come up,
//! report READY=1 (and WATCHDOG=1 while working) through a notify socket, hand clips from
//! one user to the other, and stop cleanly on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgemask_tests::notify::NotifySocket;
use edgemask_tests::units::{self, Ids, PathMap, Unit};
use edgemask_tests::{bin, onnxruntime, root, signal, wait_exit, wait_for};

/// The ids the test gives the users and groups of `edgemask.sysusers`: the runner and the
/// upload daemon apart, sharing the `edgemask` group.
const RUNNER_UID: u32 = 61001;
const SYNCD_UID: u32 = 61002;

fn ids() -> Ids {
    Ids::default()
        .user("edgemask", RUNNER_UID)
        .group("edgemask", RUNNER_UID)
        .user("edgemask-syncd", SYNCD_UID)
        .group("edgemask-syncd", SYNCD_UID)
}

fn unit_path(name: &str) -> PathBuf {
    root().join("configs/systemd").join(name)
}

/// A scratch directory that any user can traverse, beside the build (same file system,
/// so the binaries can be hard-linked into it).
fn scratch() -> tempfile::TempDir {
    let base = root().join("target/tmp");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new()
        .prefix("deploy-")
        .tempdir_in(&base)
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn link_or_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Ok(v) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        panic!("systemd-analyze not found: scripts/setup.sh installs the `systemd` package");
    };
    assert!(v.status.success());
    // A root directory with the system's own units (the targets ours refer to), our units
    // and our binaries where the units expect them.
    let dir = scratch();
    let r = dir.path();
    let sys = Path::new("/usr/lib/systemd/system");
    let dest = r.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(sys).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            std::fs::copy(&p, dest.join(e.file_name())).unwrap();
        }
    }
    link_or_copy(&bin("edgemask"), &r.join("usr/local/bin/edgemask"));
    link_or_copy(&bin("edgemask-syncd"), &r.join("usr/local/bin/edgemask-syncd"));
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(root().join("configs/systemd"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".service") {
            std::fs::copy(e.path(), etc.join(&name)).unwrap();
            // A template is verified through an instance of it.
            names.push(name.replace("@.service", "@demo.service"));
        }
    }
    assert!(names.len() >= 2, "units found: {names:?}");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("--man=no")
        .args(&names)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify {names:?} failed:\n{text}"
    );
    // Warnings (unknown keys, bad values) do not fail `verify`; they fail this test.
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify {names:?} warned:\n{text}"
    );
}

/// `systemd-analyze security` rates both units at an exposure of 2.0 or less (0 is best,
/// 10 worst): the runner parses untrusted network media, the daemon holds cloud keys.
#[test]
fn units_expose_little_by_systemd_analyze_security() {
    let dir = scratch();
    for (file, as_name) in [
        ("edgemask@.service", "edgemask@demo.service"),
        ("edgemask-syncd.service", "edgemask-syncd.service"),
    ] {
        let unit = dir.path().join(as_name);
        std::fs::copy(unit_path(file), &unit).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .expect("systemd-analyze (scripts/setup.sh installs the `systemd` package)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level in:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("{as_name}: exposure {level}");
        assert!(level <= 2.0, "{as_name}: exposure {level} > 2.0:\n{text}");
    }
}

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    paths: PathMap,
}

/// The unit's absolute paths mapped into a scratch directory; binaries and ONNX Runtime
/// from this build.
fn world() -> World {
    let dir = scratch();
    let r = dir.path().to_path_buf();
    let paths = PathMap::default()
        .map("/usr/local/bin/edgemask", bin("edgemask"))
        .map("/usr/local/bin/edgemask-syncd", bin("edgemask-syncd"))
        .map("/usr/local/lib/edgemask/libonnxruntime.so", onnxruntime())
        .map("/etc/edgemask", r.join("etc/edgemask"))
        .map("/var/lib/", r.join("var/lib/"))
        .map("/var/cache/", r.join("var/cache/"));
    std::fs::create_dir_all(r.join("etc/edgemask")).unwrap();
    World {
        _dir: dir,
        root: r,
        paths,
    }
}

fn run_pre(cmds: &mut [std::process::Command]) {
    let n = cmds.len();
    for c in &mut cmds[..n - 1] {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "ExecStartPre {c:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Starts `unit` (instance `instance`) as systemd would: its `ExecStartPre=` commands to
/// completion, then its `ExecStart=` with a notify socket of its own, logging to
/// `<name>.log`.
fn start(w: &World, unit: &Unit, instance: &str, name: &str) -> (std::process::Child, NotifySocket, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(&w.root)
        .unwrap()
        .keep();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = NotifySocket::bind(&dir);
    let mut cmds = units::commands(unit, instance, &w.paths, &ids(), &notify.path);
    run_pre(&mut cmds);
    let log = w.root.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = cmds
        .last_mut()
        .unwrap()
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    (child, notify, log)
}

fn stop_timeout(unit: &Unit) -> Duration {
    Duration::from_secs(
        unit.get("Service", "TimeoutStopSec")
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or(90),
    )
}

#[test]
fn both_daemons_start_notify_and_stop_as_their_units_say() {
    let w = world();
    let model = root().join("models/selfie_segmentation_256x256.onnx");
    // The runner: a live test pattern through the bundled model.
    std::fs::write(
        w.root.join("etc/edgemask/demo.toml"),
        format!(
            r#"[runner]
output_dir = "/nonexistent/overridden/by/the/unit"
disk_floor_mb = 0
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 1
[cameras.front]
source = "testpattern"
pattern = "ball"
width = 160
height = 120
fps = 15
live = true
"#,
            model.display()
        ),
    )
    .unwrap();
    let runner_unit = Unit::read(&unit_path("edgemask@.service"));
    let syncd_unit = Unit::read(&unit_path("edgemask-syncd.service"));
    // The TensorRT engine cache goes where the unit lets the runner write: its
    // CacheDirectory= (ProtectSystem=strict leaves ~/.cache read-only).
    {
        let cmds = units::commands(&runner_unit, "demo", &w.paths, &ids(), Path::new("/dev/null"));
        let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmds
            .last()
            .unwrap()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
            .collect();
        let cache = gstunetmask::unetmask::probe::cache_base(|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .expect("a cache directory under the unit");
        assert_eq!(cache, w.root.join("var/cache/edgemask/demo"));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&cache).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            assert_eq!(
                (m.uid(), m.mode() & 0o700),
                (RUNNER_UID, 0o700),
                "{}",
                cache.display()
            );
        }
    }
    assert_eq!(runner_unit.get("Service", "Type").as_deref(), Some("notify"));
    assert_eq!(syncd_unit.get("Service", "Type").as_deref(), Some("notify"));
    let out_dir = w.root.join("var/lib/edgemask/out");

    let (mut runner, mut runner_notify, log) = start(&w, &runner_unit, "demo", "runner");
    let read_log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        runner_notify.wait_for("READY=1", Duration::from_secs(60)),
        "runner READY=1 within 60 s; got {:?}\n{}",
        runner_notify.messages,
        read_log(&log)
    );
    assert!(
        runner_notify.wait_for("WATCHDOG=1", Duration::from_secs(30)),
        "runner WATCHDOG=1 while frames flow; got {:?}\n{}",
        runner_notify.messages,
        read_log(&log)
    );
    assert!(
        runner_notify
            .messages
            .iter()
            .flat_map(|m| m.lines())
            .any(|l| l.starts_with("STATUS=") && l.contains("front")),
        "STATUS= names the camera: {:?}",
        runner_notify.messages
    );
    let cam = out_dir.join("demo/front");
    assert!(
        wait_for(Duration::from_secs(30), || manifests(&cam) >= 1),
        "the runner records into the unit's StateDirectory {}\n{}",
        cam.display(),
        read_log(&log)
    );

    // The upload daemon, to a file:// destination, watching the runner's output.
    let dest = w.root.join("var/lib/edgemask-syncd/uploaded");
    std::fs::write(
        w.root.join("etc/edgemask/syncd.toml"),
        format!(
            "watch = [\"{}\"]\ndestination = \"file://{}\"\njournal = \"{}\"\nhost = \"test\"\n\
             key_template = \"{{camera}}/{{file}}\"\n[readiness]\nsettle_secs = 1.0\n\
             [files]\nrunner_user = \"{RUNNER_UID}\"\n",
            out_dir.display(),
            dest.display(),
            w.root.join("var/lib/edgemask-syncd/journal.sqlite").display()
        ),
    )
    .unwrap();
    let (mut syncd, mut syncd_notify, slog) = start(&w, &syncd_unit, "", "syncd");
    assert!(
        syncd_notify.wait_for("READY=1", Duration::from_secs(30)),
        "syncd READY=1 within 30 s; got {:?}\n{}",
        syncd_notify.messages,
        read_log(&slog)
    );
    // It uploads as its unit's user and deletes what it uploaded (after_upload = delete):
    // the runner's files are another user's, shared through the group.
    assert!(
        wait_for(Duration::from_secs(60), || manifests(&dest.join("front")) >= 1),
        "clips arrive at the destination\n{}",
        read_log(&slog)
    );

    // SIGTERM (KillSignal) → clean exit within TimeoutStopSec.
    signal(&runner, nix::sys::signal::Signal::SIGTERM);
    let code = wait_exit(&mut runner, stop_timeout(&runner_unit));
    assert_eq!(code, Some(0), "runner exits 0 on SIGTERM\n{}", read_log(&log));
    assert!(
        wait_for(Duration::from_secs(60), || manifests(&cam) == 0),
        "every clip the runner finalised is uploaded and removed\n{}",
        read_log(&slog)
    );
    signal(&syncd, nix::sys::signal::Signal::SIGTERM);
    let code = wait_exit(&mut syncd, stop_timeout(&syncd_unit));
    assert_eq!(code, Some(0), "syncd exits 0 on SIGTERM\n{}", read_log(&slog));

    if nix::unistd::Uid::effective().is_root() {
        use std::os::unix::fs::MetadataExt;
        for f in files(&dest.join("front")) {
            assert_eq!(
                std::fs::metadata(&f).unwrap().uid(),
                SYNCD_UID,
                "{} written by the daemon's own user",
                f.display()
            );
        }
        // The runner's output: its user, the shared group, setgid, nothing for others.
        let m = std::fs::metadata(out_dir.join("demo")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (RUNNER_UID, RUNNER_UID, 0o2770)
        );
        let m = std::fs::metadata(&cam).unwrap();
        assert_eq!(
            (m.gid(), m.mode() & 0o7777),
            (RUNNER_UID, 0o2770),
            "{}",
            cam.display()
        );
        // The daemon's state (journal; its keys would be beside it): nothing for the
        // runner's user or group.
        let state = w.root.join("var/lib/edgemask-syncd");
        let m = std::fs::metadata(&state).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o077), (SYNCD_UID, 0), "{}", state.display());
        for f in files(&state).iter().filter(|f| f.is_file()) {
            let m = std::fs::metadata(f).unwrap();
            assert_eq!(m.mode() & 0o077, 0, "{} private to the daemon", f.display());
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn manifests(dir: &Path) -> usize {
    files(dir)
        .iter()
        .filter(|p| {
            p.to_string_lossy().ends_with(".manifest.json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .count()
}
