//! Tests that need no S3 store: the embedded `file:///dir` destination, `--dry-run`,
//! `status`, config errors, retention and disk pressure.

mod common;

use std::time::Duration;

use common::*;

fn file_config(
    out: &std::path::Path,
    dest: &std::path::Path,
    journal: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        "watch = [\"{}\"]\ndestination = \"file://{}\"\njournal = \"{}\"\nhost = \"h\"\n{extra}",
        out.display(),
        dest.display(),
        journal.display()
    )
}

/// `file:///dir`: clips copied, verified, manifest last, sources deleted; `--dry-run`
/// first prints the plan and changes nothing.
#[test]
fn file_destination_once_and_dry_run() {
    let work = tempfile::tempdir().unwrap();
    let (out, dest, journal) = (
        work.path().join("out"),
        work.path().join("dest"),
        work.path().join("j.sqlite"),
    );
    let m = serde_json::json!({"camera": "gate", "start": "2026-01-02T03:04:05Z"});
    write_clip(
        &out.join("gate"),
        "gate-1",
        &content(1, 70_000),
        &content(2, 900),
        &m,
    );
    std::fs::write(out.join("gate/notyet.mkv.tmp"), b"partial").unwrap();
    let cfg = write_config(
        work.path(),
        &file_config(&out, &dest, &journal, "[readiness]\nsettle_secs = 0\n"),
    );

    let (code, so, se) = run(&cfg, &[], &["--dry-run"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");
    assert!(
        so.contains("gate-1.mkv -> file://") && so.contains("/h/gate/2026-01-02/gate-1.mkv"),
        "{so}"
    );
    assert!(so.contains("3 file(s) would be uploaded"), "{so}");
    assert!(!so.contains("notyet"), "{so}");
    assert!(
        !dest.exists() && !journal.exists(),
        "dry run must not touch anything"
    );

    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");
    let base = dest.join("h/gate/2026-01-02");
    assert_eq!(
        std::fs::read(base.join("gate-1.mkv")).unwrap(),
        content(1, 70_000)
    );
    assert_eq!(
        std::fs::read(base.join("gate-1.mask.mkv")).unwrap(),
        content(2, 900)
    );
    assert_eq!(
        std::fs::read(base.join("gate-1.manifest.json")).unwrap(),
        m.to_string().into_bytes()
    );
    assert!(!out.join("gate/gate-1.mkv").exists());
    assert!(out.join("gate/notyet.mkv.tmp").exists());
    let db = rusqlite::Connection::open(&journal).unwrap();
    let seqs: Vec<(String, i64)> = db
        .prepare("SELECT path, uploaded_seq FROM files ORDER BY uploaded_seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        seqs.last().unwrap().0.ends_with("gate-1.manifest.json"),
        "{seqs:?}"
    );

    let (code, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(30));
    assert_eq!(code, 0);
    assert!(
        so.contains("removed: 3") && so.contains("destination: ok"),
        "{so}"
    );
}

/// Bad configs exit 2 and name the key, the value and what is allowed.
#[test]
fn config_errors_are_clear() {
    let work = tempfile::tempdir().unwrap();
    let cases = [
        ("watch = [\"/tmp/x\"]\ndestination = \"ftp://x\"\n", "destination"),
        (
            "watch = [\"/tmp/x\"]\ndestination = \"s3://b\"\nunknown_key = 1\n",
            "unknown_key",
        ),
        (
            "watch = [\"/tmp/x\"]\ndestination = \"s3://b\"\n[upload]\npart_size = 10\n",
            "upload.part_size",
        ),
        (
            "watch = [\"/tmp/x\"]\ndestination = \"s3://b\"\nkey_template = \"{bogus}\"\n",
            "{bogus}",
        ),
    ];
    for (body, needle) in cases {
        let cfg = write_config(work.path(), body);
        let (code, _, se) = run(&cfg, &[], &["check"], Duration::from_secs(30));
        assert_eq!(code, 2, "{body}: {se}");
        assert!(se.contains(needle), "{body}: {se}");
    }
    let cfg = write_config(work.path(), "watch = [\"/tmp/x\"]\ndestination = \"s3://b\"\n");
    let env = vec![("EDGEMASK_SYNCD__UPLOAD__MAX_FILES".to_string(), "0".to_string())];
    let (code, _, se) = run(&cfg, &env, &["check"], Duration::from_secs(30));
    assert_eq!(code, 2);
    assert!(se.contains("upload.max_files"), "{se}");
}

/// Retain mode with a disk high-water mark that is always exceeded: uploaded files are
/// evicted; a file that is not uploaded (a conflict) is never deleted.
#[test]
fn disk_pressure_evicts_only_uploaded_files() {
    let work = tempfile::tempdir().unwrap();
    let (out, dest, journal) = (
        work.path().join("out"),
        work.path().join("dest"),
        work.path().join("j.sqlite"),
    );
    for i in 0..4 {
        write_final(&out.join("c"), &format!("k{i}.bin"), &content(i, 10_000));
    }
    // A different file already at k3's destination: conflict, kept.
    std::fs::create_dir_all(dest.join("c")).unwrap();
    std::fs::write(dest.join("c/k3.bin"), b"other").unwrap();
    let extra = "key_template = \"{rel}\"\nafter_upload = \"retain\"\n[readiness]\nsettle_secs = 0\n";
    let cfg = write_config(work.path(), &file_config(&out, &dest, &journal, extra));
    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");
    for i in 0..4 {
        assert!(out.join(format!("c/k{i}.bin")).exists(), "retained");
    }
    // Now under disk pressure (high water 0.001 %: any used disk is above it).
    let cfg = write_config(
        work.path(),
        &file_config(
            &out,
            &dest,
            &journal,
            &format!("{extra}[retain]\nhigh_water_percent = 0.001\n"),
        ),
    );
    let log = work.path().join("d.log");
    let mut d = spawn(&cfg, &[], &[], &log);
    let t0 = std::time::Instant::now();
    while (0..3).any(|i| out.join(format!("c/k{i}.bin")).exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&d);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(20)), Some(0));
    assert!(
        out.join("c/k3.bin").exists(),
        "a file that is not uploaded is never deleted"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("reason=\"high_water\"") || text.contains("reason=high_water"),
        "{text}"
    );
}

/// Retention by bytes: only the newest uploads are kept.
#[test]
fn retain_max_bytes_keeps_newest() {
    let work = tempfile::tempdir().unwrap();
    let (out, dest, journal) = (
        work.path().join("out"),
        work.path().join("dest"),
        work.path().join("j.sqlite"),
    );
    for i in 0..5 {
        write_final(&out.join("c"), &format!("r{i}.bin"), &content(i, 1000));
    }
    let extra = "key_template = \"{rel}\"\nafter_upload = \"retain\"\n[readiness]\nsettle_secs = 0\n[retain]\nmax_bytes = 2500\n[upload]\nmax_files = 1\n";
    let cfg = write_config(work.path(), &file_config(&out, &dest, &journal, extra));
    let log = work.path().join("d.log");
    let mut d = spawn(&cfg, &[], &[], &log);
    let t0 = std::time::Instant::now();
    loop {
        let left = std::fs::read_dir(out.join("c")).unwrap().count();
        let copied = std::fs::read_dir(dest.join("c")).map(|r| r.count()).unwrap_or(0);
        if copied == 5 && left == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "left {left}, copied {copied}: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&d);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(20)), Some(0));
}

fn metrics_text(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("edgemask_syncd_{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Disk pressure with `retain.drop_not_uploaded`: off (the default), files not uploaded
/// stay whatever the disk; on, they are dropped only once no uploaded file is left, the
/// clip with the oldest file first, each one logged, counted, and `dropped` in the journal.
#[test]
fn disk_pressure_drops_not_uploaded_clips_only_when_allowed() {
    let work = tempfile::tempdir().unwrap();
    let (out, journal) = (work.path().join("out"), work.path().join("j.sqlite"));
    let dest = work.path().join("dest");
    // Two files uploaded and retained.
    for i in 0..2 {
        write_final(&out.join("c"), &format!("up{i}.bin"), &content(i, 5_000));
    }
    let extra = "key_template = \"{rel}\"\nafter_upload = \"retain\"\n[readiness]\nsettle_secs = 0\n";
    let cfg = write_config(work.path(), &file_config(&out, &dest, &journal, extra));
    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");
    // Three clips that cannot be uploaded (the destination is unusable: its parent is a
    // file), with their newest-named clip holding the oldest file.
    std::fs::write(work.path().join("blocker"), b"x").unwrap();
    let dead = work.path().join("blocker/dest");
    let now = std::time::SystemTime::now();
    let mut clip_files = Vec::new();
    for (stem, age) in [("c-new", 100u64), ("c-mid", 200), ("c-zzz-oldest", 300)] {
        let m = serde_json::json!({"camera": "c"});
        for name in write_clip(
            &out.join("c"),
            stem,
            &content(age, 20_000),
            &content(age + 1, 3_000),
            &m,
        ) {
            let p = out.join("c").join(&name);
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - Duration::from_secs(age)).unwrap();
            clip_files.push(p);
        }
    }
    let port = free_port();
    let pressure = |drop: bool| {
        format!(
            "{extra}[retain]\nhigh_water_percent = 0.001\ndrop_not_uploaded = {drop}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        )
    };
    let log = work.path().join("d.log");

    // Off: uploaded files are evicted; the clips not uploaded stay.
    let cfg = write_config(work.path(), &file_config(&out, &dead, &journal, &pressure(false)));
    let mut d = spawn(&cfg, &[], &[], &log);
    let t0 = std::time::Instant::now();
    while (0..2).any(|i| out.join(format!("c/up{i}.bin")).exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3)); // more retention rounds
    let m = metrics_text(port);
    sigterm(&d);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(20)), Some(0));
    assert!(
        clip_files.iter().all(|p| p.exists()),
        "dropped although not allowed"
    );
    assert_eq!(metric(&m, "evicted_total"), Some(2), "{m}");
    assert_eq!(metric(&m, "dropped_total"), Some(0), "{m}");
    let off_log = std::fs::read_to_string(&log).unwrap();
    assert!(!off_log.contains("DROPPED"), "{off_log}");

    // On: the clips go, oldest file first, every one logged and counted.
    let cfg = write_config(work.path(), &file_config(&out, &dead, &journal, &pressure(true)));
    let log2 = work.path().join("d2.log");
    let mut d = spawn(&cfg, &[], &[], &log2);
    let t0 = std::time::Instant::now();
    while clip_files.iter().any(|p| p.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&log2).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = metrics_text(port);
    sigterm(&d);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(20)), Some(0));
    assert_eq!(metric(&m, "dropped_total"), Some(clip_files.len() as u64), "{m}");
    let text = std::fs::read_to_string(&log2).unwrap();
    let dropped: Vec<&str> = text.lines().filter(|l| l.contains("DROPPED")).collect();
    assert_eq!(dropped.len(), 3, "one line per clip: {text}");
    for (line, stem) in dropped.iter().zip(["c-zzz-oldest", "c-mid", "c-new"]) {
        assert!(
            line.contains(&format!("{stem}.mkv"))
                && line.contains(&format!("{stem}.mask.mkv"))
                && line.contains(&format!("{stem}.manifest.json")),
            "oldest clip first: {dropped:#?}"
        );
    }
    let db = rusqlite::Connection::open(&journal).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM files WHERE state = 'dropped'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n as usize, clip_files.len());
    let (code, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(30));
    assert_eq!(code, 0);
    assert!(so.contains("dropped: 9") && so.contains("c-new.mkv"), "{so}");
}
