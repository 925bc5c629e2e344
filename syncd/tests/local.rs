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

/// Every file below `dir` (recursively, links not followed), with its content.
fn tree_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// Set a file's mtime.
fn set_mtime(p: &std::path::Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// A hostile watched tree: a symlinked directory to a secret folder (there at start, and
/// made while the daemon runs), a journaled file swapped for a symlink to a secret before
/// its upload, a hard link to an outside file, a non-UTF-8 directory holding a clip, a
/// manifest whose date has a multi-byte character at byte 10, a 100 MB manifest, a clip
/// file with an mtime in year 30000. Nothing outside the tree is uploaded or deleted, the
/// daemon neither crashes nor exits early, every good clip goes up, and each refusal is
/// listed with its reason.
#[test]
fn hostile_tree_is_refused_file_by_file() {
    use std::os::unix::ffi::OsStrExt;
    let work = tempfile::tempdir().unwrap();
    let (out, dest, journal) = (
        work.path().join("out"),
        work.path().join("dest"),
        work.path().join("j.sqlite"),
    );
    let secret = work.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let secret_bytes = b"AWS_SECRET=do-not-upload-me".to_vec();
    std::fs::write(secret.join("key"), &secret_bytes).unwrap();
    std::fs::write(secret.join("s.mkv"), &secret_bytes).unwrap();
    std::fs::write(secret.join("s.manifest.json"), b"{}").unwrap();
    let secret_before = tree_files(&secret);
    std::fs::create_dir_all(&out).unwrap();
    let extra = "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n";
    let cfg = write_config(work.path(), &file_config(&out, &dest, &journal, extra));
    // An empty first run creates the journal.
    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");

    let m = |start: &str| serde_json::json!({"camera": "cam", "start": start});
    let mut good = Vec::new();
    for name in write_clip(
        &out.join("cam"),
        "good-1",
        &content(1, 9_000),
        &content(2, 900),
        &m("2026-01-02T00:00:00Z"),
    ) {
        good.push(format!("cam/{name}"));
    }
    for name in write_clip(
        &out.join("gate"),
        "good-2",
        &content(3, 5_000),
        &content(4, 500),
        &m("2026-01-03T00:00:00Z"),
    ) {
        good.push(format!("gate/{name}"));
    }
    // Byte 10 of the date falls inside "é".
    for name in write_clip(
        &out.join("cam"),
        "d",
        &content(5, 700),
        &content(6, 70),
        &m("2026-11-2é:00:00Z"),
    ) {
        good.push(format!("cam/{name}"));
    }
    // A 100 MB (sparse) manifest: refused unread; its clip file goes up as a file
    // without a manifest.
    write_final(&out.join("cam"), "big.mkv", &content(7, 1_000));
    good.push("cam/big.mkv".into());
    std::fs::File::create(out.join("cam/big.manifest.json"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    // A clip file from year 30000 (its manifest has no date: {date} would come from it).
    write_final(&out.join("cam"), "f.mkv", &content(8, 100));
    set_mtime(
        &out.join("cam/f.mkv"),
        std::time::UNIX_EPOCH + Duration::from_secs(884_541_340_800),
    );
    write_final(&out.join("cam"), "f.manifest.json", b"{}");
    // Outside files reached through the tree.
    std::os::unix::fs::symlink(&secret, out.join("x")).unwrap();
    std::fs::hard_link(secret.join("key"), out.join("cam/h.mkv")).unwrap();
    // A clip in a directory whose name is not UTF-8.
    let bad = out.join(std::ffi::OsStr::from_bytes(b"bad\xff"));
    write_clip(
        &bad,
        "b",
        &content(9, 100),
        &content(10, 10),
        &m("2026-01-04T00:00:00Z"),
    );
    // Journaled as ready (with the size and mtime the secret has), then swapped for a
    // symlink to the secret before its upload.
    let meta = std::fs::metadata(secret.join("key")).unwrap();
    let mtime_ns = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let swapped = out.join("cam/swap.mkv");
    {
        let db = rusqlite::Connection::open(&journal).unwrap();
        db.execute(
            "INSERT INTO files (path, size, mtime_ns, clip, is_manifest, key, state, ready_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 0, 'cam/swap.mkv', 'pending', 0, 0)",
            rusqlite::params![
                swapped.to_str().unwrap(),
                meta.len() as i64,
                mtime_ns,
                format!("{}/swap", out.join("cam").display())
            ],
        )
        .unwrap();
    }
    std::os::unix::fs::symlink(secret.join("key"), &swapped).unwrap();

    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(60));
    assert!(code == 0 || code == 4, "a crash or a fatal exit ({code}): {se}");
    assert!(!se.contains("panicked"), "{se}");
    for g in &good {
        assert!(dest.join(g).is_file(), "{g} not uploaded: {se}");
        assert!(!out.join(g).exists(), "{g} not deleted after its upload");
    }
    let uploaded = tree_files(&dest);
    assert!(
        uploaded.iter().all(|(_, c)| c != &secret_bytes),
        "a secret was uploaded: {uploaded:?}"
    );
    assert!(!dest.join("x").exists() && !dest.join("cam/h.mkv").exists());
    assert!(!dest.join("cam/big.manifest.json").exists() && !dest.join("cam/f.mkv").exists());
    assert_eq!(tree_files(&secret), secret_before, "the secret folder changed");
    assert!(out.join("cam/h.mkv").exists() && bad.join("b.mkv").exists());
    assert!(
        std::fs::symlink_metadata(&swapped).is_ok(),
        "the symlink is left alone"
    );

    let (code, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(30));
    assert_eq!(code, 0, "{so}");
    for (reason, path) in [
        ("symlink", "out/x"),
        ("symlink", "cam/swap.mkv"),
        ("hard_link", "cam/h.mkv"),
        ("not_utf8", "bad"),
        ("bad_date", "cam/d.manifest.json"),
        ("manifest_too_large", "cam/big.manifest.json"),
        ("bad_mtime", "cam/f.mkv"),
        ("member_refused", "cam/f.manifest.json"),
    ] {
        assert!(
            so.lines()
                .any(|l| l.starts_with(&format!("refused ({reason}): ")) && l.contains(path)),
            "{reason} {path} not listed: {so}"
        );
    }

    // While the daemon runs: a symlink to a secret folder appears, then a good clip.
    let port = free_port();
    let cfg = write_config(
        work.path(),
        &file_config(
            &out,
            &dest,
            &journal,
            &format!("{extra}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
    );
    let log = work.path().join("d.log");
    let mut d = spawn(&cfg, &[], &[], &log);
    std::thread::sleep(Duration::from_secs(2));
    let secret2 = work.path().join("secret2");
    std::fs::create_dir_all(&secret2).unwrap();
    std::fs::write(secret2.join("t.mkv"), &secret_bytes).unwrap();
    std::fs::write(secret2.join("t.manifest.json"), b"{}").unwrap();
    std::os::unix::fs::symlink(&secret2, out.join("y")).unwrap();
    // And new files in the secret folder linked since the start (a watcher that follows
    // links would report them under out/x/).
    std::fs::write(secret.join("u.mkv"), &secret_bytes).unwrap();
    std::fs::write(secret.join("u.manifest.json"), b"{}").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    write_clip(
        &out.join("cam"),
        "good-3",
        &content(11, 800),
        &content(12, 80),
        &m("2026-01-05T00:00:00Z"),
    );
    let t0 = std::time::Instant::now();
    while !dest.join("cam/good-3.manifest.json").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let metrics = metrics_text(port);
    sigterm(&d);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(20)), Some(0));
    assert!(secret2.join("t.mkv").exists() && secret2.join("t.manifest.json").exists());
    assert!(secret.join("u.mkv").exists() && secret.join("u.manifest.json").exists());
    assert!(!dest.join("y").exists());
    assert!(
        tree_files(&dest).iter().all(|(_, c)| c != &secret_bytes),
        "a secret was uploaded"
    );
    assert!(
        metrics.contains("edgemask_syncd_files_refused_total{reason=\"symlink\"}"),
        "{metrics}"
    );
}

/// After a verified upload, the name was reused for a new file (another inode, same size
/// and mtime) before the delete: the new file is kept — also by a daemon restarted with
/// the upload already in its journal.
#[test]
fn a_file_replaced_after_its_upload_is_not_deleted() {
    use std::os::unix::fs::MetadataExt;
    let work = tempfile::tempdir().unwrap();
    let (out, dest, journal) = (
        work.path().join("out"),
        work.path().join("dest"),
        work.path().join("j.sqlite"),
    );
    write_final(&out.join("c"), "r.bin", b"first");
    let p = out.join("c/r.bin");
    let meta = std::fs::metadata(&p).unwrap();
    let mtime = meta.modified().unwrap();
    {
        use edgemask_syncd::journal::{Journal, NewFile};
        let j = Journal::open(&journal).unwrap();
        let row = j
            .upsert_ready(&NewFile {
                path: p.clone(),
                size: meta.len(),
                mtime_ns: edgemask_syncd::journal::mtime_ns(mtime),
                clip: None,
                is_manifest: false,
                key: "c/r.bin".into(),
                ident: Some((meta.dev(), meta.ino())),
            })
            .unwrap()
            .unwrap();
        j.mark_uploading(&row).unwrap();
        j.mark_uploaded(&row, None, "crc", None).unwrap();
    }
    std::fs::create_dir_all(dest.join("c")).unwrap();
    std::fs::write(dest.join("c/r.bin"), b"first").unwrap();
    // The writer reuses the name: same size, same mtime, another inode.
    write_final(&out.join("c"), "r.bin", b"secnd");
    set_mtime(&p, mtime);
    assert_ne!(std::fs::metadata(&p).unwrap().ino(), meta.ino());

    let extra = "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n";
    let cfg = write_config(work.path(), &file_config(&out, &dest, &journal, extra));
    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        b"secnd",
        "the new file was deleted: {se}"
    );
    assert!(se.contains("not deleted"), "{se}");
}

/// The clip contract (docs/clip-contract.md), as the daemon applies it: a camera named
/// `tmp1` is a camera, not a temporary file (the default `temp_prefixes = ["tmp"]` held its
/// clips back forever); the runner's files without their manifest (the runner stopped
/// between renames) are never uploaded on their own, however long they settle, while a
/// foreign file is; a manifest arriving later takes its clip up.
#[test]
fn runner_clips_go_only_with_their_manifest_and_tmp_is_a_camera() {
    let work = tempfile::tempdir().unwrap();
    let (out, dest, journal) = (
        work.path().join("out"),
        work.path().join("dest"),
        work.path().join("j.sqlite"),
    );
    let tmp1 = out.join("tmp1");
    let m = serde_json::json!({"camera": "tmp1", "start": "2026-01-02T03:04:05Z"});
    let base = "tmp1-20260102T030405000Z-000001";
    write_final(&tmp1, &format!("{base}.mp4"), &content(1, 5000));
    write_final(&tmp1, &format!("{base}.masks.tar"), &content(2, 700));
    write_final(&tmp1, &format!("{base}.manifest.json"), m.to_string().as_bytes());
    // An orphan: the runner's video and masks, no manifest.
    let orphan = "tmp1-20260102T030410000Z-000002";
    write_final(&tmp1, &format!("{orphan}.mp4"), &content(3, 4000));
    write_final(&tmp1, &format!("{orphan}.masks.tar"), &content(4, 600));
    // A foreign file, settled at once (settle_secs = 0).
    write_final(&tmp1, "seg-00001.mp4", &content(5, 300));
    let cfg = write_config(
        work.path(),
        &file_config(
            &out,
            &dest,
            &journal,
            "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n",
        ),
    );
    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 4, "the orphan is reported as not settled: {se}");
    for f in [
        format!("{base}.mp4"),
        format!("{base}.masks.tar"),
        format!("{base}.manifest.json"),
        "seg-00001.mp4".to_string(),
    ] {
        assert!(dest.join("tmp1").join(&f).exists(), "{f} not uploaded: {se}");
    }
    for f in [format!("{orphan}.mp4"), format!("{orphan}.masks.tar")] {
        assert!(
            !dest.join("tmp1").join(&f).exists(),
            "{f} uploaded without its manifest"
        );
        assert!(tmp1.join(&f).exists(), "{f} must stay");
    }
    assert!(se.contains("without its manifest"), "{se}");
    // The manifest appears: the clip goes up whole.
    write_final(
        &tmp1,
        &format!("{orphan}.manifest.json"),
        m.to_string().as_bytes(),
    );
    let (code, _, se) = run(&cfg, &[], &["--once"], Duration::from_secs(30));
    assert_eq!(code, 0, "{se}");
    assert!(dest.join("tmp1").join(format!("{orphan}.mp4")).exists());
    assert!(dest.join("tmp1").join(format!("{orphan}.manifest.json")).exists());
}
