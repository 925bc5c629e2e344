//! Bad configurations give the documented message and exit code (README, "Exit codes").

mod common;

use std::time::Duration;

use common::*;

fn base(out: &str, model: &str, camera: &str) -> String {
    format!(
        "[runner]\noutput_dir = \"{out}\"\n[model]\npath = \"{model}\"\ndevice = \"cpu\"\n[cameras.cam]\n{camera}\n"
    )
}

fn run(args: &[&str]) -> (i32, String) {
    let mut child = spawn(args);
    wait_bounded(&mut child, Duration::from_secs(60))
}

#[test]
fn bad_configs_give_documented_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let model = model();
    let model = model.to_str().unwrap();
    let pattern = "source = \"testpattern\"\nnum_frames = 5";
    let file_dir = dir.path().join("a-file");
    std::fs::write(&file_dir, b"not a directory").unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode;
    for (name, m) in [("open.login", 0o644), ("good.login", 0o600)] {
        let p = dir.path().join(name);
        std::fs::write(&p, "admin:hunter2\n").unwrap();
        std::fs::set_permissions(&p, mode(m)).unwrap();
    }
    let cases: Vec<(&str, String, i32, Vec<&str>)> = vec![
        (
            "unknown key",
            base(out, model, &format!("{pattern}\nfps_max = 30")),
            3,
            vec![
                "unknown key `cameras.cam.fps_max`",
                "30",
                "allowed keys here",
                "num_frames",
            ],
        ),
        (
            "wrong type",
            base(out, model, "source = \"testpattern\"\nnum_frames = \"five\""),
            3,
            vec!["num_frames"],
        ),
        (
            "bad value",
            base(out, model, "source = \"testpattern\"\nfps = 0"),
            3,
            vec!["cameras.cam.fps", "0"],
        ),
        (
            "syntax",
            "[runner\noutput_dir = 1".to_string(),
            3,
            vec!["configuration"],
        ),
        (
            "missing model",
            base(out, "/nonexistent/model.onnx", pattern),
            4,
            vec!["/nonexistent/model.onnx", "does not exist"],
        ),
        (
            "model is not ONNX",
            base(out, file_dir.to_str().unwrap(), pattern),
            4,
            vec!["not a valid ONNX model"],
        ),
        (
            "unreachable camera",
            base(
                out,
                model,
                "source = \"rtsp\"\nurl = \"rtsp://user:hunter2@127.0.0.1:1/cam\"",
            ),
            5,
            vec!["unreachable", "rtsp://127.0.0.1:1/cam"],
        ),
        (
            "credentials file readable by others",
            base(
                out,
                model,
                "source = \"rtsp\"\nurl = \"rtsp://127.0.0.1:1/cam\"\ncredentials_file = \"open.login\"",
            ),
            3,
            vec!["cameras.cam.credentials_file", "open.login", "0644", "chmod 600"],
        ),
        (
            "credentials file missing",
            base(
                out,
                model,
                "source = \"rtsp\"\nurl = \"rtsp://127.0.0.1:1/cam\"\ncredentials_file = \"absent.login\"",
            ),
            3,
            vec!["cameras.cam.credentials_file", "absent.login", "LoadCredential="],
        ),
        (
            "a login in the URL and a credentials file",
            base(
                out,
                model,
                "source = \"rtsp\"\nurl = \"rtsp://a:hunter2@127.0.0.1:1/cam\"\ncredentials_file = \"good.login\"",
            ),
            3,
            vec!["cameras.cam.url", "keep one"],
        ),
        (
            // A misspelt key: its value used to be echoed, password and all.
            "unknown key holding a URL with credentials",
            base(
                out,
                model,
                "source = \"rtsp\"\nuri = \"rtsp://admin:hunter2@127.0.0.1:1/cam\"",
            ),
            3,
            vec!["unknown key `cameras.cam.uri`", "rtsp://***@127.0.0.1:1/cam"],
        ),
        (
            "query-string credentials",
            base(
                out,
                model,
                "source = \"rtsp\"\nurl = \"rtsp://127.0.0.1:1/cam?user=admin&password=hunter2\"",
            ),
            5,
            vec!["unreachable", "password=***"],
        ),
        (
            // Byte 60 of the shown value falls inside a two-byte character: a panic.
            "unknown key with a multi-byte value",
            base(out, model, &format!("{pattern}\nnote = \"{}\"", "é".repeat(40))),
            3,
            vec!["unknown key `cameras.cam.note`", "…"],
        ),
        (
            "absent v4l2 device",
            base(
                out,
                model,
                "source = \"v4l2\"\ndevice = \"/dev/video-edgemask-absent\"",
            ),
            5,
            vec!["/dev/video-edgemask-absent", "does not exist"],
        ),
        (
            "missing file",
            base(out, model, "source = \"file\"\npath = \"/nonexistent.mp4\""),
            5,
            vec!["/nonexistent.mp4"],
        ),
        (
            "unwritable output dir",
            base(&format!("{}/sub", file_dir.display()), model, pattern),
            6,
            vec!["output directory", "cannot create"],
        ),
    ];
    for (what, toml, code, needles) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, &toml).unwrap();
        let (got, err) = run(&["check", cfg.to_str().unwrap()]);
        assert_eq!(got, code, "{what}: exit code; stderr:\n{err}");
        for n in needles {
            assert!(err.contains(n), "{what}: stderr lacks {n:?}:\n{err}");
        }
        assert!(!err.contains("hunter2"), "{what}: credentials logged:\n{err}");
    }
    // `run` stops at the same checks with the same codes.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, base(out, "/nonexistent/model.onnx", pattern)).unwrap();
    assert_eq!(run(&["run", cfg.to_str().unwrap()]).0, 4);
    // Environment overrides are checked too.
    std::fs::write(&cfg, base(out, model, pattern)).unwrap();
    let mut child = edgemask()
        .args(["check", cfg.to_str().unwrap()])
        .env("EDGEMASK__MODEL__THRESHOLD", "7")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (got, err) = wait_bounded(&mut child, Duration::from_secs(60));
    assert_eq!(got, 3, "{err}");
    assert!(err.contains("model.threshold"), "{err}");
    // Usage errors.
    assert_eq!(run(&["frobnicate"]).0, 2);
    // A good config passes.
    let (got, err) = run(&["check", cfg.to_str().unwrap()]);
    assert_eq!(got, 0, "{err}");
}

/// Values the config schema accepts but the elements do not: each used to pass `check` and
/// abort the runner inside a `pad-added` handler (or, for NaN, run with garbage masks).
/// Now `check` and `run` build every camera's elements and name the key.
#[test]
fn values_outside_the_elements_ranges_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let model = model();
    let model = model.to_str().unwrap();
    let pattern = "source = \"testpattern\"\nnum_frames = 5";
    let cam_model = |line: &str| base(out, model, &format!("{pattern}\n[cameras.cam.model]\n{line}"));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            cam_model("threads = 300"),
            vec!["cameras.cam.model.threads", "300", "0..=256"],
        ),
        (
            cam_model("threshold = -5.0"),
            vec!["cameras.cam.model.threshold", "-1..=1"],
        ),
        (
            cam_model("inference_interval = 5000"),
            vec!["cameras.cam.model.inference_interval", "1..=1000"],
        ),
        (cam_model("scale = 2.0"), vec!["cameras.cam.model.scale", "..=1"]),
        (
            cam_model("person_class = 5000"),
            vec!["cameras.cam.model.person_class", "-1..=1023"],
        ),
        (
            cam_model("mean = \"nan,0,0\""),
            vec!["cameras.cam.model.mean", "finite"],
        ),
        (
            cam_model("std = \"1,inf,1\""),
            vec!["cameras.cam.model.std", "finite"],
        ),
        (
            cam_model("std = \"1,0,1\""),
            vec!["cameras.cam.model.std", "non-zero"],
        ),
        (
            cam_model("resize = \"cubic\""),
            vec!["cameras.cam.model.resize", "antialias", "bilinear"],
        ),
        (
            cam_model("spin = \"sometimes\""),
            vec!["cameras.cam.model.spin", "in-run", "never"],
        ),
        (
            cam_model("layout = \"chw\""),
            vec!["cameras.cam.model.layout", "nchw"],
        ),
        (
            cam_model("activation = \"relu\""),
            vec!["cameras.cam.model.activation", "sigmoid"],
        ),
        (
            cam_model("device = \"gpu\""),
            vec!["cameras.cam.model.device", "cuda:N"],
        ),
        (
            cam_model("input_size = \"big\""),
            vec!["cameras.cam.model.input_size", "WIDTHxHEIGHT"],
        ),
        (
            base(out, model, "source = \"testpattern\"\npattern = \"plaid\""),
            vec!["cameras.cam.pattern", "plaid", "smpte", "ball"],
        ),
        (
            base(
                out,
                model,
                &format!("{pattern}\n[cameras.cam.recording]\nclip_max_mb = 9223372036854775807"),
            ),
            vec!["cameras.cam.recording.clip_max_mb"],
        ),
        (
            base(out, model, pattern)
                .replace("[runner]\n", "[runner]\ndisk_floor_mb = 9223372036854775807\n"),
            vec!["runner.disk_floor_mb"],
        ),
    ];
    for (toml, needles) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, &toml).unwrap();
        let (got, err) = run(&["check", cfg.to_str().unwrap()]);
        assert_eq!(got, 3, "{needles:?}: exit code; stderr:\n{err}");
        for n in &needles {
            assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    // `run` stops there too, before any pipeline starts.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, cam_model("threshold = -5.0")).unwrap();
    let (got, err) = run(&["run", cfg.to_str().unwrap()]);
    assert_eq!(got, 3, "{err}");
    // Values inside the ranges still pass.
    std::fs::write(
        &cfg,
        cam_model("threads = 256\nthreshold = -1.0\nmean = \"0.5,0.5,0.5\""),
    )
    .unwrap();
    let (got, err) = run(&["check", cfg.to_str().unwrap()]);
    assert_eq!(got, 0, "{err}");
}

#[test]
fn probe_model_prints_the_contract() {
    let out = edgemask()
        .args(["probe-model", model().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("input size:     256x256"), "{s}");
    assert!(s.contains("'input_1:0' Nhwc"), "{s}");
    assert!(
        s.contains("1511ab5564cb0ae179cba9bcad6ad931003ccc71656f11fd270967023678c6a5"),
        "{s}"
    );
    assert!(s.contains("activation:     none"), "{s}");
    let bad = edgemask()
        .args(["probe-model", "/nonexistent.onnx"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(4));
}
