//! End-to-end tests against a real Garage S3 server on loopback, through the real
//! `aws-sdk-s3` client and the real daemon binary.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_s3::types::ChecksumMode;
use common::*;

fn manifest(camera: &str, host: &str) -> serde_json::Value {
    serde_json::json!({
        "camera": camera, "host": host, "start": "2026-11-20T10:00:00Z",
        "end": "2026-11-20T10:01:00Z", "frames": 1500, "model": "unet.onnx",
        "coverage_per_second": [0.1, 0.2]
    })
}

/// Clips from a simulated runner arrive complete, under the templated (and sanitised)
/// keys, with manifest metadata and verified checksums, the manifest after its media;
/// a file written slowly over seconds and files under temporary names never arrive early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_clips_arrive_complete_and_nothing_early() {
    let g = Garage::start();
    let client = g.client().await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let door = out.join("door");
    std::fs::create_dir_all(&door).unwrap();
    let journal = work.path().join("journal.sqlite");
    let cfg = write_config(
        work.path(),
        &s3_config(
            &g,
            &out,
            &journal,
            "[readiness]\nsettle_secs = 2.0\nrescan_secs = 30\n[upload]\nmultipart_threshold = 6291456\npart_size = 5242880\npart_concurrency = 2\n",
        ),
    );
    let log = work.path().join("syncd.log");
    let mut daemon = spawn(&cfg, &g.env(), &[], &log);

    // Temporary names that exist all along: never uploaded.
    std::fs::write(door.join(".hidden.mkv"), b"hidden").unwrap();
    std::fs::write(door.join("upload.mkv.tmp"), content(1, 1000)).unwrap();
    std::fs::write(door.join("other.part"), content(2, 1000)).unwrap();

    // A foreign file written slowly (no manifest): 12 appends over ~3.6 s.
    let slow_path = out.join("slow.bin");
    let writer = {
        let p = slow_path.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&p).unwrap();
            let mut all = Vec::new();
            for i in 0..12 {
                let chunk = content(100 + i, 64 * 1024);
                f.write_all(&chunk).unwrap();
                f.sync_all().unwrap();
                all.extend_from_slice(&chunk);
                std::thread::sleep(Duration::from_millis(300));
            }
            all
        })
    };

    // Runner clips: one multipart (13 MiB media), two small; one with a hostile camera name.
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let t_clip = Instant::now();
    let clips = [
        ("door-0001", 13 << 20, "door", "cam-host"),
        ("door-0002", 300 << 10, "door", "cam-host"),
        ("door-0003", 10 << 10, "../evil\u{7}cam", "/cam-host"),
    ];
    for (i, (stem, size, camera, host)) in clips.iter().enumerate() {
        let m = manifest(camera, host);
        let media = content(10 + i as u64, *size);
        let mask = content(20 + i as u64, size / 8 + 1);
        write_clip(&door, stem, &media, &mask, &m);
        // `{host}` is always the daemon's own: a manifest cannot steer a clip into
        // another host's prefix.
        let (cam_key, host_key) = if camera.starts_with("..") {
            ("__/evil_cam", "test-host")
        } else {
            (*camera, "test-host")
        };
        let base = format!("retrain/{host_key}/{cam_key}/2026-11-20");
        expected.insert(format!("{base}/{stem}.mkv"), media);
        expected.insert(format!("{base}/{stem}.mask.mkv"), mask);
        expected.insert(format!("{base}/{stem}.manifest.json"), m.to_string().into_bytes());
    }
    let slow_key_prefix = "retrain/test-host/unknown/";

    // Poll the bucket: the slow file must not appear while it is written, temp files never.
    let t0 = Instant::now();
    let mut first_manifest_secs = None;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "timed out; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        let objs = list(&client).await;
        for k in objs.keys() {
            assert!(
                !k.contains(".tmp") && !k.contains(".part") && !k.contains(".hidden"),
                "temporary file uploaded: {k}"
            );
        }
        let slow_in_bucket = objs
            .keys()
            .any(|k| k.starts_with(slow_key_prefix) && k.ends_with("slow.bin"));
        if !writer.is_finished() {
            assert!(!slow_in_bucket, "slow file uploaded while still being written");
        }
        if first_manifest_secs.is_none() && objs.keys().any(|k| k.ends_with("door-0002.manifest.json")) {
            first_manifest_secs = Some(t_clip.elapsed().as_secs_f64());
        }
        if expected.keys().all(|k| objs.contains_key(k)) && slow_in_bucket {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let slow_bytes = writer.join().unwrap();
    eprintln!(
        "small clip complete in the bucket {:.2} s after it was written",
        first_manifest_secs.unwrap_or(-1.0)
    );

    // Content, checksums, metadata.
    let objs = list(&client).await;
    for (k, data) in &expected {
        assert_eq!(&get(&client, k).await, data, "{k}");
        let h = client
            .head_object()
            .bucket(BUCKET)
            .key(k)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        let crc = h
            .checksum_crc32_c()
            .unwrap_or_else(|| panic!("{k}: no checksum stored"));
        if data.len() > 6 << 20 {
            assert!(
                crc.ends_with("-3"),
                "{k}: multipart composite checksum expected, got {crc}"
            );
        } else {
            assert_eq!(crc, edgemask_syncd::checksum::b64(crc32c::crc32c(data)), "{k}");
        }
        let md = h.metadata().cloned().unwrap_or_default();
        assert_eq!(
            md.get("edgemask-frames").map(String::as_str),
            Some("1500"),
            "{k}: {md:?}"
        );
    }
    let slow_key = objs.keys().find(|k| k.ends_with("slow.bin")).unwrap().clone();
    assert_eq!(get(&client, &slow_key).await, slow_bytes);
    assert_eq!(objs.len(), expected.len() + 1, "{objs:?}");

    // Manifest after its media (the journal's upload order).
    let db = rusqlite::Connection::open(&journal).unwrap();
    for (stem, ..) in clips {
        let seq = |name: String| -> i64 {
            db.query_row(
                "SELECT uploaded_seq FROM files WHERE path = ?1",
                [door.join(name).to_str().unwrap()],
                |r| r.get(0),
            )
            .unwrap()
        };
        let m = seq(format!("{stem}.manifest.json"));
        assert!(
            m > seq(format!("{stem}.mkv")) && m > seq(format!("{stem}.mask.mkv")),
            "{stem}: manifest not last"
        );
    }
    // Uploaded files are deleted; temporary ones are left alone.
    assert!(!door.join("door-0001.mkv").exists());
    assert!(!slow_path.exists());
    assert!(door.join("upload.mkv.tmp").exists() && door.join(".hidden.mkv").exists());

    // SIGTERM: clean exit.
    sigterm(&daemon);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&g.secret), "secret key in the log");
    assert!(text.contains("endpoint probed"), "{text}");

    // `status` reads the journal.
    let (code, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(20));
    assert_eq!(code, 0);
    assert!(so.contains("removed: 10"), "{so}");
}

/// kill -9 at random moments during a backlog of small and multipart files: at every
/// kill, no file is gone locally unless the bucket holds it intact; at the end every file
/// is in the bucket exactly once with its checksum and no multipart upload is left.
///
/// Knobs: `SYNCD_CRASH_KILLS` (default 20), `SYNCD_CRASH_FILES` (default 244, one in 30
/// multipart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_then_resume() {
    let knob = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let kills = knob("SYNCD_CRASH_KILLS", 20);
    let n_files = knob("SYNCD_CRASH_FILES", 244) as u64;
    let g = Garage::start();
    let client = g.client().await;
    // Real AWS semantics under the shipped policy: a missing key's HEAD answers 403, and
    // create-only writes of existing keys 412; and a few SlowDowns.
    let proxy = common::proxy::Proxy::start(g.port);
    proxy.aws(3, 0);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let journal = work.path().join("journal.sqlite");
    // Backlog: small files and, one in 30, multipart ones (3 parts), over three cameras.
    let mut files: HashMap<String, (u32, usize)> = HashMap::new();
    let mut multipart = 0;
    for i in 0..n_files {
        let cam = ["a", "b", "c"][i as usize % 3];
        let len = if i % 30 == 0 {
            multipart += 1;
            (10 << 20) + 12345 + (i as usize * 4099) % (4 << 20)
        } else {
            1024 + (i as usize * 7919) % (256 << 10)
        };
        let data = content(1000 + i, len);
        let name = format!("f{i:04}.bin");
        write_final(&out.join(cam), &name, &data);
        files.insert(format!("{cam}/{name}"), (crc32c::crc32c(&data), len));
    }
    let total: usize = files.values().map(|v| v.1).sum();
    // The rate cap (4 MB/s, ~32 s for the whole backlog) makes the kill rounds hit uploads
    // in every phase; the final drain then runs uncapped.
    let body = s3_config(
        &g,
        &out,
        &journal,
        "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n[upload]\nmax_files = 3\npart_size = 5242880\nmultipart_threshold = 5242880\npart_concurrency = 2\nrate_limit_bytes_per_sec = 4000000\n[retry]\nbase_ms = 50\ncap_ms = 1000\n",
    )
    .replace(&g.endpoint, &proxy.endpoint());
    let cfg = write_config(work.path(), &body);
    let log = work.path().join("syncd.log");
    let mut verified: HashMap<String, bool> = HashMap::new();
    let mut rng_state = 0x1234_5678u64;
    let mut rnd = move |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    let (mut kills_done, mut mid_multipart) = (0, 0);
    let t_kills = Instant::now();
    for round in 0..kills {
        let mut d = spawn(&cfg, &g.env(), &[], &log);
        let ms = rnd(100, 1000);
        std::thread::sleep(Duration::from_millis(ms));
        d.kill().unwrap(); // SIGKILL
        d.wait().unwrap();
        kills_done += 1;
        // Was a multipart upload interrupted (an UploadId in the journal)?
        let open_uploads: i64 = rusqlite::Connection::open(&journal)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM files WHERE upload_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if open_uploads > 0 {
            mid_multipart += 1;
        }
        // Invariant: a file missing locally is in the bucket, intact.
        let objs = list(&client).await;
        let mut gone = 0;
        for (rel, (crc, len)) in &files {
            if out.join(rel).exists() {
                continue;
            }
            gone += 1;
            if verified.contains_key(rel) {
                continue;
            }
            let key = format!("retrain/{rel}");
            assert_eq!(
                objs.get(&key).copied(),
                Some(*len as u64),
                "round {round}: {rel} deleted locally but not in the bucket"
            );
            assert_eq!(
                crc32c::crc32c(&get(&client, &key).await),
                *crc,
                "round {round}: {rel} corrupt in bucket"
            );
            verified.insert(rel.clone(), true);
        }
        eprintln!(
            "kill {round}: after {ms} ms; {gone}/{} files delivered so far; {open_uploads} multipart upload(s) interrupted",
            files.len()
        );
        if gone == files.len() {
            break;
        }
    }
    let kill_secs = t_kills.elapsed().as_secs_f64();
    let left = files.keys().filter(|rel| out.join(rel.as_str()).exists()).count();
    // Resume and drain.
    let t_drain = Instant::now();
    // Without the rate cap: the drain after many crashes runs at full speed.
    let mut env = g.env();
    env.push((
        "EDGEMASK_SYNCD__UPLOAD__RATE_LIMIT_BYTES_PER_SEC".into(),
        "0".into(),
    ));
    let (code, _, err) = run(&cfg, &env, &["--once"], Duration::from_secs(120));
    let drain_secs = t_drain.elapsed().as_secs_f64();
    assert_eq!(code, 0, "final --once failed:\n{err}");
    let objs = list(&client).await;
    assert_eq!(objs.len(), files.len(), "exactly one object per file");
    for (rel, (crc, len)) in &files {
        let key = format!("retrain/{rel}");
        assert_eq!(objs.get(&key).copied(), Some(*len as u64), "{rel}");
        if !verified.contains_key(rel) {
            assert_eq!(crc32c::crc32c(&get(&client, &key).await), *crc, "{rel}");
        }
        assert!(!out.join(rel).exists(), "{rel} not deleted after upload");
    }
    let ups = client
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(
        ups.uploads().is_empty(),
        "multipart uploads left behind: {:?}",
        ups.uploads()
    );
    let text = std::fs::read_to_string(&log).unwrap() + &err;
    let resumed = text.matches("resuming multipart upload").count();
    let reused = text.matches("reused parts already on the store").count();
    let already = text
        .matches("already in the bucket with the same checksum")
        .count();
    let aborted = text.matches("aborted stale multipart upload").count();
    eprintln!(
        "crash test: {kills_done} kill -9 in {kill_secs:.1} s ({mid_multipart} during a multipart upload), {} files ({multipart} multipart, {} MiB); \
         final --once drained {left} files in {drain_secs:.1} s; {resumed} multipart resumes ({reused} reusing parts), \
         {already} found already uploaded, {aborted} stale uploads aborted",
        files.len(),
        total >> 20
    );
    assert!(
        kills_done >= kills.min(5),
        "the backlog drained before the kills could test anything"
    );
    assert!(
        mid_multipart == 0 || resumed > 0,
        "multipart uploads were interrupted but none was resumed"
    );
    assert_exactly_once(&proxy, files.len());
    assert!(
        !text.contains("destination refuses uploads"),
        "a 403 for a missing key stopped the destination"
    );
    assert!(!text.contains(&g.secret));
}

/// Every data object was written once through the proxy: retries after a crash found it
/// by a refused create-only write, never wrote it again. (The probe object is no file.)
fn assert_exactly_once(proxy: &common::proxy::Proxy, files: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let twice: Vec<_> = proxy
        .written_twice()
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".edgemask-syncd-probe"))
        .collect();
    assert!(twice.is_empty(), "objects written more than once: {twice:?}");
    let written = proxy
        .counts
        .writes
        .lock()
        .unwrap()
        .keys()
        .filter(|k| !k.ends_with(".edgemask-syncd-probe"))
        .count();
    assert_eq!(written, files, "one successful write per file");
    let c = &proxy.counts;
    eprintln!(
        "through the AWS-semantics proxy: {} HeadObject, {} answered 403 for a missing key, {} create-only writes, {} refused with 412, {} SlowDown",
        c.heads.load(Relaxed),
        c.forbidden_lookups.load(Relaxed),
        c.create_only_writes.load(Relaxed),
        c.precondition_failed.load(Relaxed),
        c.slow_down.load(Relaxed)
    );
}

/// The Content-MD5 fallback (forced by `s3.integrity`, as the probe chooses it for stores
/// that do not take or report `x-amz-checksum-crc32c`): single and multipart uploads carry
/// Content-MD5, are verified by ETag, an interrupted multipart upload resumes with its
/// parts matched by ETag, and an identical object already there is recognised by its ETag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_md5_fallback_uploads_and_verifies() {
    let g = Garage::start();
    let client = g.client().await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let journal = work.path().join("journal.sqlite");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..12u64 {
        let len = if i < 2 {
            (11 << 20) + 4321 * (i as usize + 1)
        } else {
            1000 + (i as usize * 37_813) % (300 << 10)
        };
        files.insert(format!("cam/m{i:02}.bin"), content(9000 + i, len));
    }
    for (rel, data) in &files {
        let (dir, name) = rel.split_once('/').unwrap();
        write_final(&out.join(dir), name, data);
    }
    // One of them is already in the bucket (a plain PUT: an MD5 ETag, no CRC32C).
    client
        .put_object()
        .bucket(BUCKET)
        .key("retrain/cam/m05.bin")
        .body(files["cam/m05.bin"].clone().into())
        .send()
        .await
        .unwrap();
    let cfg = write_config(
        work.path(),
        &s3_config(
            &g,
            &out,
            &journal,
            "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n[upload]\nmax_files = 2\npart_size = 5242880\nmultipart_threshold = 5242880\npart_concurrency = 1\nrate_limit_bytes_per_sec = 6000000\n",
        )
        .replace("[s3]\n", "[s3]\nintegrity = \"content-md5\"\n"),
    );
    // Interrupt the multipart uploads after their first part, then drain.
    let log = work.path().join("syncd.log");
    let mut d = spawn(&cfg, &g.env(), &[], &log);
    std::thread::sleep(Duration::from_millis(1500));
    d.kill().unwrap();
    d.wait().unwrap();
    let (code, _, err) = run(&cfg, &g.env(), &["--once"], Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&log).unwrap() + &err;
    assert!(
        text.contains("Content-MD5 instead of x-amz-checksum-crc32c"),
        "{text}"
    );
    let objs = list(&client).await;
    assert_eq!(objs.len(), files.len(), "{objs:?}");
    for (rel, data) in &files {
        let key = format!("retrain/{rel}");
        assert_eq!(&get(&client, &key).await, data, "{rel}");
        let h = client
            .head_object()
            .bucket(BUCKET)
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        assert!(
            h.checksum_crc32_c().is_none(),
            "{rel}: sent with a CRC32C header, not Content-MD5"
        );
        let etag = h.e_tag().unwrap().trim_matches('"').to_string();
        let md5 = edgemask_syncd::checksum::md5(data);
        let expected = if data.len() > 5 << 20 {
            let parts: Vec<[u8; 16]> = data.chunks(5 << 20).map(edgemask_syncd::checksum::md5).collect();
            edgemask_syncd::checksum::multipart_etag(&parts)
        } else {
            edgemask_syncd::checksum::md5_etag(&md5)
        };
        assert_eq!(etag, expected, "{rel}");
        assert!(!out.join(rel).exists(), "{rel} kept after upload");
    }
    // The journal records what was verified: the MD5 ETags.
    let db = rusqlite::Connection::open(&journal).unwrap();
    let md5_rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM files WHERE checksum LIKE 'md5:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(md5_rows as usize, files.len());
    assert!(
        text.contains("already in the bucket with the same checksum"),
        "{text}"
    );
    eprintln!(
        "content-md5: {} files, {} multipart resumes, {} reusing parts",
        files.len(),
        text.matches("resuming multipart upload").count(),
        text.matches("reused parts already on the store").count()
    );
}

/// Wrong credentials and a missing bucket stop the destination with a clear error; every
/// file is kept; no credential appears in any output, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_keep_files_and_say_why() {
    let g = Garage::start();
    let _ = g.client().await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    for i in 0..5 {
        write_final(&out.join("cam"), &format!("x{i}.bin"), &content(i, 5000));
    }
    let count = || std::fs::read_dir(out.join("cam")).unwrap().count();
    let journal = work.path().join("journal.sqlite");
    let debug = vec![("RUST_LOG".to_string(), "debug".to_string())];

    // Wrong secret.
    let cfg = write_config(
        work.path(),
        &s3_config(&g, &out, &journal, "[readiness]\nsettle_secs = 0\n"),
    );
    let wrong_secret = "wR0ngS3cretKeyThatMustNeverBeLogged0000000";
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), g.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), wrong_secret.to_string()),
    ];
    env.extend(debug.clone());
    let (code, so, se) = run(&cfg, &env, &["--once"], Duration::from_secs(60));
    assert_eq!(code, 3, "stdout {so}\nstderr {se}");
    assert!(se.contains("destination refused"), "{se}");
    assert!(
        se.contains("SignatureDoesNotMatch")
            || se.contains("AccessDenied")
            || se.contains("InvalidAccessKeyId")
            || se.contains("Forbidden"),
        "{se}"
    );
    assert!(
        !se.contains(wrong_secret) && !so.contains(wrong_secret),
        "secret in output"
    );
    assert_eq!(count(), 5);
    let (code, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(20));
    assert_eq!(code, 0);
    assert!(so.contains("destination: DOWN"), "{so}");

    // Unknown key id.
    let mut env = vec![
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            "GK0000000000000000000000ff".to_string(),
        ),
        ("AWS_SECRET_ACCESS_KEY".to_string(), g.secret.clone()),
    ];
    env.extend(debug.clone());
    let (code, so, se) = run(&cfg, &env, &["--once"], Duration::from_secs(60));
    assert_eq!(code, 3, "{se}");
    assert!(
        !se.contains(&g.secret) && !so.contains(&g.secret),
        "secret in output"
    );
    assert_eq!(count(), 5);

    // Missing bucket.
    let body = s3_config(&g, &out, &journal, "[readiness]\nsettle_secs = 0\n")
        .replace("s3://clips/", "s3://no-such-bucket/");
    let cfg = write_config(work.path(), &body);
    let mut env = g.env();
    env.extend(debug.clone());
    let (code, so, se) = run(&cfg, &env, &["--once"], Duration::from_secs(60));
    assert_eq!(code, 3, "{se}");
    assert!(
        se.contains("NoSuchBucket") || se.contains("does not exist"),
        "{se}"
    );
    assert!(
        !se.contains(&g.secret) && !so.contains(&g.secret),
        "secret in output"
    );
    assert_eq!(count(), 5);

    // And with the right settings everything goes up (the journal carried no damage).
    let cfg = write_config(
        work.path(),
        &s3_config(&g, &out, &journal, "[readiness]\nsettle_secs = 0\n"),
    );
    let (code, _, se) = run(&cfg, &g.env(), &["--once"], Duration::from_secs(60));
    assert_eq!(code, 0, "{se}");
    assert_eq!(count(), 0);
}

/// A counter from the daemon's last log line (`edgemask-syncd stopped ... name=N`).
fn stopped_field(stderr: &str, name: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("edgemask-syncd stopped"))
        .unwrap_or_else(|| panic!("no stop line in:\n{stderr}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Different content already under a key is never clobbered: the file is kept and the
/// conflict reported; identical content counts as uploaded. Garage ignores
/// `If-None-Match`, so the daemon looks first — by HeadObject per file, by one listing
/// per directory, and (`auto`) by HeadObject until a backlog makes the directory worth
/// listing: the same outcome every way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_objects_are_never_clobbered() {
    let g = Garage::start();
    let client = g.client().await;
    for (mode, fillers) in [("head", 0), ("listing", 0), ("auto", 40)] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        let dir = out.join(mode);
        let same = content(7, 4000);
        write_final(&dir, "same.bin", &same);
        write_final(&dir, "diff.bin", &content(8, 4000));
        for i in 0..fillers {
            write_final(&dir, &format!("f{i:03}.bin"), &content(100 + i, 3000));
        }
        // Someone else's object in the directory, not among ours: listed, never touched.
        for (k, data) in [
            (format!("retrain/{mode}/same.bin"), same.clone()),
            (format!("retrain/{mode}/diff.bin"), b"someone else's".to_vec()),
            (format!("retrain/{mode}/other.bin"), b"not ours".to_vec()),
        ] {
            client
                .put_object()
                .bucket(BUCKET)
                .key(k)
                .body(data.into())
                .send()
                .await
                .unwrap();
        }
        let journal = work.path().join("journal.sqlite");
        let cfg = write_config(
            work.path(),
            &s3_config(
                &g,
                &out,
                &journal,
                &format!(
                    "key_template = \"{{rel}}\"\n[readiness]\nsettle_secs = 0\n\
                     [upload]\nexistence_check = \"{mode}\"\nlisting_max_age_secs = 30\n"
                ),
            ),
        );
        let (code, _, se) = run(&cfg, &g.env(), &["--once"], Duration::from_secs(60));
        assert_eq!(code, 0, "{mode}: {se}");
        assert!(
            !dir.join("same.bin").exists(),
            "{mode}: identical object counts as uploaded"
        );
        assert!(
            dir.join("diff.bin").exists(),
            "{mode}: conflicting file must be kept"
        );
        assert_eq!(
            get(&client, &format!("retrain/{mode}/diff.bin")).await,
            b"someone else's"
        );
        assert_eq!(
            get(&client, &format!("retrain/{mode}/other.bin")).await,
            b"not ours"
        );
        for i in 0..fillers {
            assert_eq!(
                get(&client, &format!("retrain/{mode}/f{i:03}.bin")).await,
                content(100 + i, 3000),
                "{mode}: f{i:03}"
            );
        }
        assert!(se.contains("conflict"), "{mode}: {se}");
        let files = 2 + fillers;
        let (by_head, by_listing, lists) = (
            stopped_field(&se, "checks_by_head"),
            stopped_field(&se, "checks_by_listing"),
            stopped_field(&se, "list_requests"),
        );
        assert_eq!(by_head + by_listing, files, "{mode}: one check per file: {se}");
        match mode {
            "head" => assert_eq!((by_listing, lists), (0, 0), "{mode}"),
            "listing" => assert_eq!((by_head, lists), (0, 1), "{mode}: one listing answers all"),
            _ => {
                // The first checks go by HeadObject; once the directory is hot, one
                // listing (30 s fresh here) answers the rest.
                assert_eq!(lists, 1, "{mode}: {se}");
                assert!(
                    by_head >= listing_min_checks() - 1 && by_listing >= files - 16,
                    "{mode}: {by_head} {by_listing}"
                );
            }
        }
        let (_, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(20));
        assert!(
            so.contains("conflict: 1") && so.contains("diff.bin"),
            "{mode}: {so}"
        );
    }
}

fn listing_min_checks() -> u64 {
    edgemask_syncd::listing::MIN_CHECKS as u64
}

/// Uploads under way, then the endpoint goes down, then answers 503 SlowDown to a fifth
/// of the requests, then resets connections in the middle of request bodies, and the
/// daemon is killed in the middle of that: everything is delivered intact, memory stays
/// bounded, the backlog survives the restart.
///
/// Knobs: `SYNCD_OUTAGE_DOWN_SECS` (default 60, the "a minute"),
/// `SYNCD_OUTAGE_PHASE_SECS` (default 8: each of the 503 and reset phases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_503s_and_resets_are_survived() {
    use common::proxy::{Mode, Proxy};
    use std::sync::atomic::Ordering::Relaxed;
    let secs = |name: &str, default: u64| {
        Duration::from_secs(
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    let down = secs("SYNCD_OUTAGE_DOWN_SECS", 60);
    let phase = secs("SYNCD_OUTAGE_PHASE_SECS", 8);
    let g = Garage::start();
    let client = g.client().await;
    let proxy = Proxy::start(g.port);
    // AWS semantics throughout (403 for missing keys, 412 for create-only rewrites), and a
    // shared 8 MB/s link.
    proxy.aws(0, 8_000_000);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let journal = work.path().join("journal.sqlite");
    let mut files = HashMap::new();
    for i in 0..100u64 {
        let len = if i % 33 == 0 {
            (12 << 20) + 777
        } else {
            2000 + (i as usize * 4099) % (200 << 10)
        };
        let data = content(5000 + i, len);
        write_final(&out.join("cam"), &format!("o{i:03}.bin"), &data);
        files.insert(format!("cam/o{i:03}.bin"), (crc32c::crc32c(&data), len));
    }
    let total: usize = files.values().map(|v| v.1).sum();
    // Part buffers in memory at most: max_files × part_concurrency × part_size = 20 MiB.
    let body = s3_config(
        &g,
        &out,
        &journal,
        "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n[upload]\nmax_files = 2\npart_size = 5242880\nmultipart_threshold = 5242880\npart_concurrency = 2\nrate_limit_bytes_per_sec = 2000000\nrequest_timeout_secs = 10\n[retry]\nbase_ms = 100\ncap_ms = 1000\n",
    )
    .replace(&g.endpoint, &format!("http://127.0.0.1:{}", proxy.port));
    let cfg = write_config(work.path(), &body);
    let log = work.path().join("syncd.log");
    let t0 = Instant::now();
    // Local files gone must be in the bucket, intact.
    let check_gone = |objs: &BTreeMap<String, u64>, when: &str| -> usize {
        let mut gone = 0;
        for (rel, (_, len)) in &files {
            if !out.join(rel.as_str()).exists() {
                gone += 1;
                assert_eq!(
                    objs.get(&format!("retrain/{rel}")).copied(),
                    Some(*len as u64),
                    "{when}: {rel} deleted locally but not in the bucket"
                );
            }
        }
        gone
    };

    // Uploads under way.
    proxy.set(Mode::Pass);
    let mut d = spawn(&cfg, &g.env(), &[], &log);
    std::thread::sleep(Duration::from_secs(2));
    // Down: nothing arrives, nothing is deleted locally.
    proxy.set(Mode::Down);
    std::thread::sleep(Duration::from_millis(500)); // a request in flight may still finish
    let before = list(&client).await;
    let gone_before = check_gone(&before, "before the outage");
    std::thread::sleep(down);
    let during = list(&client).await;
    assert_eq!(during, before, "objects arrived while the endpoint was down");
    assert_eq!(
        check_gone(&during, "during the outage"),
        gone_before,
        "files deleted locally while the endpoint was down"
    );
    // 503s, then resets mid-body; kill -9 and restart in the middle of the resets.
    proxy.set(Mode::Some503);
    std::thread::sleep(phase);
    check_gone(&list(&client).await, "after the 503 phase");
    proxy.set(Mode::ResetMidBody);
    std::thread::sleep(phase / 2);
    let rss1 = peak_rss_kib(d.id()).unwrap_or(0);
    d.kill().unwrap();
    d.wait().unwrap();
    let gone_at_kill = check_gone(&list(&client).await, "at the kill");
    let mut d = spawn(&cfg, &g.env(), &[], &log);
    std::thread::sleep(phase / 2);
    proxy.set(Mode::Pass);
    let t_pass = Instant::now();
    loop {
        let left = files.keys().filter(|rel| out.join(rel.as_str()).exists()).count();
        if left == 0 {
            break;
        }
        assert!(
            t_pass.elapsed() < Duration::from_secs(120),
            "{left} files left; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let total_secs = t0.elapsed().as_secs_f64();
    let rss2 = peak_rss_kib(d.id()).unwrap_or(0);
    sigterm(&d);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
    let objs = list(&client).await;
    assert_eq!(objs.len(), files.len());
    for (rel, (crc, len)) in &files {
        let key = format!("retrain/{rel}");
        assert_eq!(objs.get(&key).copied(), Some(*len as u64), "{rel}");
        assert_eq!(crc32c::crc32c(&get(&client, &key).await), *crc, "{rel}");
    }
    let ups = client
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(ups.uploads().is_empty(), "{:?}", ups.uploads());
    let text = std::fs::read_to_string(&log).unwrap();
    let retries = text.matches("transient failure, retrying").count();
    let c = &proxy.counts;
    eprintln!(
        "outage test: {} files ({} MiB, 4 multipart); {:.0} s down, {:.0} s of 20 % 503s, {:.0} s of resets with a kill -9 in the middle; \
         {gone_before} delivered before the outage, {gone_at_kill} at the kill; {} requests through the proxy, {} refused, {} answered 503, {} reset mid-body; \
         {retries} retries logged; all delivered {total_secs:.1} s after the start; peak RSS {} MiB before the kill, {} MiB after",
        files.len(),
        total >> 20,
        down.as_secs_f64(),
        phase.as_secs_f64(),
        phase.as_secs_f64(),
        c.requests.load(Relaxed),
        c.refused.load(Relaxed),
        c.slow_down.load(Relaxed),
        c.resets.load(Relaxed),
        rss1 / 1024,
        rss2 / 1024
    );
    assert!(c.refused.load(Relaxed) > 0, "the outage phase injected nothing");
    assert!(c.slow_down.load(Relaxed) > 0, "the 503 phase injected nothing");
    assert!(c.resets.load(Relaxed) > 0, "the reset phase injected nothing");
    assert!(retries > 0);
    assert_exactly_once(&proxy, files.len());
    // Bounded: 20 MiB of part buffers plus the runtime, SDK and SQLite.
    assert!(
        rss1 > 0 && rss2 > 0 && rss1 < 64 * 1024 && rss2 < 64 * 1024,
        "memory not bounded: {rss1} / {rss2} KiB"
    );
    assert!(!text.contains(&g.secret));
}

/// A store that ignores `If-None-Match` (no create-only writes), behind AWS's answers for a
/// least-privilege key: HeadObject of a missing key is 403 and listing is refused. The
/// daemon cannot tell whether a key exists, so it must not write (it could clobber), but
/// the 403 is about those keys, not the destination: the files wait, named with the
/// permission that would settle it, and the destination is never marked down. (It used to
/// classify the 403 as "destination refused": exit 3, and in daemon mode a livelock of
/// stop, passing probe, same file refused again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_for_a_missing_key_never_stops_the_destination() {
    let g = Garage::start();
    let client = g.client().await;
    let proxy = common::proxy::Proxy::start(g.port);
    proxy.aws_without_conditional_writes();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let journal = work.path().join("journal.sqlite");
    for i in 0..3u64 {
        write_final(&out.join("cam"), &format!("u{i}.bin"), &content(900 + i, 4000));
    }
    let config_through = |p: &common::proxy::Proxy| {
        let body = s3_config(
            &g,
            &out,
            &journal,
            "key_template = \"{rel}\"\n[readiness]\nsettle_secs = 0\n[retry]\nbase_ms = 50\ncap_ms = 200\n",
        )
        .replace(&g.endpoint, &p.endpoint());
        write_config(work.path(), &body)
    };
    let cfg = config_through(&proxy);
    let (code, so, se) = run(&cfg, &g.env(), &["--once"], Duration::from_secs(60));
    assert_eq!(
        code, 4,
        "files kept and queued, not a refused destination:\n{so}\n{se}"
    );
    assert!(!se.contains("destination refused"), "{se}");
    assert!(se.contains("s3:ListBucket"), "the error names the fix: {se}");
    assert_eq!(std::fs::read_dir(out.join("cam")).unwrap().count(), 3);
    assert!(
        list(&client)
            .await
            .keys()
            .all(|k| k.ends_with(".edgemask-syncd-probe")),
        "nothing written without knowing"
    );
    let (code, so, _) = run(&cfg, &[], &["status"], Duration::from_secs(20));
    assert_eq!(code, 0);
    assert!(so.contains("destination: ok"), "{so}");

    // With create-only writes honoured, the same files go up without a single HEAD before
    // writing (only the verification HEADs after).
    let proxy = common::proxy::Proxy::start(g.port);
    proxy.aws(0, 0);
    let cfg = config_through(&proxy);
    let (code, so, se) = run(&cfg, &g.env(), &["--once"], Duration::from_secs(60));
    assert_eq!(code, 0, "{so}\n{se}");
    assert_exactly_once(&proxy, 3);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        proxy.counts.forbidden_lookups.load(Relaxed),
        0,
        "a HEAD of a missing key before writing"
    );
}
