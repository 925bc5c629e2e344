//! RTSP: a real gst-rtsp-server on loopback serves H.264 (x264enc); the runner records it,
//! survives the server being stopped and restarted several times without a process
//! restart, and finalises every clip on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgemask_tests::free_port;
use edgemask_tests::rtsp::{BALL, Server};

/// `edgemask_frames_total` for `camera` from the metrics endpoint.
fn frames_total(port: u16, camera: &str) -> Option<u64> {
    metric(port, &format!("edgemask_frames_total{{camera=\"{camera}\"}}")).map(|v| v as u64)
}

#[test]
fn rtsp_records_survives_server_restarts_and_finalises_on_sigterm() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    // The server demands the login of the URL: it reaches rtspsrc as user-id/user-pw.
    let mut server = Server::with_login(port, BALL, "viewer", "s3cret");
    let out = dir.path().join("out");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
stall_timeout_s = 1.5
backoff_initial_s = 0.5
backoff_max_s = 2
metrics_listen = "127.0.0.1:{metrics_port}"
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 2
[cameras.door]
source = "rtsp"
url = "rtsp://viewer:s3cret@127.0.0.1:{port}/cam"
transport = "tcp"
"#,
            out.display(),
            model().display()
        ),
    );
    // The element that logs its URI at debug level, written to a file: it may not see
    // the password.
    let gst_log = dir.path().join("gst-debug.log");
    let mut child = edgemask()
        .args(["run", cfg.to_str().unwrap()])
        .env("GST_DEBUG", "rtspsrc:6,parsebin:6")
        .env("GST_DEBUG_FILE", &gst_log)
        .env("GST_DEBUG_NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cam = out.join("door");
    assert!(
        wait_for(Duration::from_secs(40), || !clips(&cam).is_empty()),
        "a first clip from the RTSP camera within 40 s"
    );

    let mut reconnects = Vec::new();
    for round in 0..3 {
        server.stop();
        std::thread::sleep(Duration::from_secs(3));
        let before = frames_total(metrics_port, "door").expect("metrics endpoint answers");
        std::thread::sleep(Duration::from_millis(500));
        let still = frames_total(metrics_port, "door").unwrap();
        assert!(
            still - before <= 8,
            "round {round}: frames stop while the server is down ({before} → {still})"
        );
        server.start();
        let t = Instant::now();
        let back = wait_for(Duration::from_secs(20), || {
            frames_total(metrics_port, "door").is_some_and(|n| n > still + 15)
        });
        assert!(
            back,
            "round {round}: frames flow again within 20 s of the server restart"
        );
        reconnects.push(t.elapsed());
    }
    eprintln!("reconnect times after server restart: {reconnects:?}");
    for r in &reconnects {
        assert!(
            *r < Duration::from_secs(10),
            "reconnected within a few seconds: {reconnects:?}"
        );
    }
    // Records again after the last restart.
    let n_before = clips(&cam).len();
    assert!(
        wait_for(Duration::from_secs(20), || clips(&cam).len() > n_before),
        "records again after reconnecting"
    );

    std::thread::sleep(Duration::from_millis(700));
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(40));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("s3cret"),
        "credentials must never be logged:\n{err}"
    );
    assert!(
        err.contains(&format!("rtsp://127.0.0.1:{port}/cam")),
        "the URL is logged without its login:\n{err}"
    );
    let gst_text = String::from_utf8_lossy(&std::fs::read(&gst_log).unwrap()).into_owned();
    assert!(
        gst_text.contains(&format!("127.0.0.1:{port}/cam")),
        "the debug log shows the elements' URIs (else this check proves nothing)"
    );
    for (i, line) in gst_text.lines().enumerate() {
        assert!(
            !line.contains("s3cret") && !line.contains("viewer:"),
            "GStreamer debug line {i} shows the login: {line}"
        );
    }
    assert!(temp_files(&cam).is_empty(), "{:?}", temp_files(&cam));
    let clips = clips(&cam);
    let files = std::fs::read_dir(&cam).unwrap().count();
    assert_eq!(files, clips.len() * 3, "every video has its masks and manifest");
    let mut total = 0;
    for c in &clips {
        assert!(playable(&c.video), "{} playable", c.video.display());
        let n = c.manifest["frame_count"].as_u64().unwrap();
        assert_eq!(count_frames(&c.video), n, "{}", c.video.display());
        let (masks, _) = read_masks(&c.masks);
        assert_eq!(masks.len() as u64, n);
        total += n;
    }
    let counted = frames_total_from(&err);
    assert_eq!(Some(total), counted, "frames in clips = frames the runner saw");
    drop(server);
}

/// The `frames` of the runner's final "camera summary" log line.
fn frames_total_from(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("camera summary"))?;
    let i = line.find("frames=")? + 7;
    line[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn rtsp_camera_with_a_policy_records_through_the_memory_ring() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::with_login(port, BALL, "rec", "pa:ss/wörd");
    let out = dir.path().join("out");
    // The login from a credentials file (mode 0600), not from the URL.
    let login = dir.path().join("door.login");
    std::fs::write(&login, "rec:pa:ss/wörd\n").unwrap();
    std::fs::set_permissions(
        &login,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    // min_coverage 0: every frame counts, the policy records from its first decision on,
    // through the in-memory path (parsebin → parser → ring → per-clip writer).
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
[recording]
clip_seconds = 2
[cameras.door]
source = "rtsp"
url = "rtsp://127.0.0.1:{port}/cam"
credentials_file = "door.login"
[cameras.door.policy]
kind = "person"
min_coverage = 0.0
min_duration_s = 0.5
preroll_s = 1.0
"#,
            out.display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    let cam = out.join("door");
    assert!(
        wait_for(Duration::from_secs(40), || clips(&cam).len() >= 2),
        "clips from the RTSP camera within 40 s"
    );
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(40));
    assert_eq!(code, 0, "{err}");
    assert!(temp_files(&cam).is_empty(), "{:?}", temp_files(&cam));
    let clips = clips(&cam);
    assert_eq!(std::fs::read_dir(&cam).unwrap().count(), clips.len() * 3);
    for c in &clips {
        let n = c.manifest["frame_count"].as_u64().unwrap();
        assert!(n > 0);
        assert!(playable(&c.video), "{} playable", c.video.display());
        assert_eq!(count_frames(&c.video), n, "{}", c.video.display());
        assert_eq!(read_masks(&c.masks).0.len() as u64, n);
        assert!(c.manifest["policy"].as_str().unwrap().starts_with("person("));
    }
    assert!(err.contains("preroll_overflows=0"), "{err}");
    drop(server);
}

/// Every camera offline (a night with the cameras powered down): the supervisor loop
/// still feeds the systemd watchdog while it reconnects them, instead of a SIGABRT per
/// WatchdogSec, and keeps trying to reconnect them.
#[test]
fn with_every_camera_offline_the_watchdog_is_fed_and_the_runner_reconnects() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    let metrics_port = free_port();
    let out = dir.path().join("out");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
stall_timeout_s = 0.5
backoff_initial_s = 0.5
backoff_max_s = 1
metrics_listen = "127.0.0.1:{metrics_port}"
[model]
path = "{}"
device = "cpu"
threads = 1
[cameras.door]
source = "rtsp"
url = "rtsp://127.0.0.1:{port}/cam"
"#,
            out.display(),
            model().display()
        ),
    );
    let mut notify = edgemask_tests::notify::NotifySocket::bind(dir.path());
    let mut child = edgemask()
        .args(["run", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "60000000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        notify.wait_for("WATCHDOG=1", Duration::from_secs(20)),
        "WATCHDOG=1 with no camera flowing: {:?}",
        notify.messages
    );
    // Pings go on (one per supervisor tick), not a single one at start.
    let _ = notify.wait_for("(collect for 6 s)", Duration::from_secs(6));
    let pings = notify
        .messages
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 4, "{pings} pings in 6 s: {:?}", notify.messages);
    // The camera's state and the age of its last frame are exported.
    let body = metrics_text(metrics_port).expect("the metrics endpoint answers");
    let value = |key: &str| metric_in(&body, key);
    let age = value("edgemask_last_frame_age_seconds{camera=\"door\"}").expect("last frame age exported");
    assert!(age >= 5.0, "no frame for 6 s, age {age}:\n{body}");
    assert_eq!(
        value("edgemask_camera_state{camera=\"door\",state=\"running\"}"),
        Some(0.0),
        "{body}"
    );
    let waiting = value("edgemask_camera_state{camera=\"door\",state=\"starting\"}").unwrap_or(0.0)
        + value("edgemask_camera_state{camera=\"door\",state=\"reconnecting\"}").unwrap_or(0.0);
    assert_eq!(waiting, 1.0, "{body}");
    // Reconnection attempts go on, with a capped backoff, until the process is stopped.
    let restarts = value("edgemask_restarts_total{camera=\"door\"}").unwrap_or(0.0);
    assert!(
        restarts >= 3.0,
        "{restarts} reconnection attempts in 6 s:\n{body}"
    );
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(40));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("restarting the camera pipeline"), "{err}");
}

/// Every frame sent before a stream ends (EOS) or is cut (the connection drops, no EOS)
/// is in a finalised clip with its mask: frames sent by the server = frames recorded,
/// exactly, on moving content with B-frames and 2 s GOPs. The stream ends in the middle of
/// a GOP, where a reordering decoder and the muxer hold frames back. No GStreamer-CRITICAL.
#[test]
fn every_frame_sent_before_a_stream_ends_or_is_cut_is_recorded() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("moving.mp4");
    // 3.5 s: the second GOP is cut short by the end of the stream.
    const FRAMES: u64 = 105;
    edgemask_tests::rtsp::moving_h264(&video, FRAMES as u32);
    let port = free_port();
    let mut server = Server::per_client(port, &edgemask_tests::rtsp::file(&video));
    let out = dir.path().join("out");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
stall_timeout_s = 1.5
backoff_initial_s = 0.3
backoff_max_s = 1
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 2
[cameras.door]
source = "rtsp"
url = "rtsp://127.0.0.1:{port}/cam"
transport = "tcp"
"#,
            out.display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    // The first session ends with the file (EOS); the runner reconnects and a second one
    // starts, which is cut in its second GOP.
    assert!(
        wait_for(Duration::from_secs(60), || server.sent() >= FRAMES + 70),
        "a second session after the first one's end: {} frames sent",
        server.sent()
    );
    server.cut();
    let sent = server.sent();
    assert!(sent > FRAMES + 70 && sent < 2 * FRAMES, "cut mid-stream: {sent}");
    // The runner sees the cut and finalises; then SIGTERM.
    std::thread::sleep(Duration::from_secs(4));
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(40));
    assert_eq!(code, 0, "{err}");
    let cam = out.join("door");
    let clips = clips(&cam);
    let video_frames: u64 = clips.iter().map(|c| count_frames(&c.video)).sum();
    let masks: u64 = clips.iter().map(|c| read_masks(&c.masks).0.len() as u64).sum();
    let manifests: u64 = clips
        .iter()
        .map(|c| c.manifest["frame_count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        (video_frames, masks, manifests),
        (sent, sent, sent),
        "frames sent = frames recorded (video, masks, manifests); clips: {:?}\n{err}",
        clips
            .iter()
            .map(|c| c.manifest["frame_count"].clone())
            .collect::<Vec<_>>()
    );
    assert!(!err.contains("CRITICAL"), "{err}");
    drop(server);
}
