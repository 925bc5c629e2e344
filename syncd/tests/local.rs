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
