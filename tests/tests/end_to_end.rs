//! The whole product on real components: a real RTSP server on loopback serves a person;
//! the `edgemask` runner records clips, masks and manifests; `edgemask-syncd` ships them to
//! a real Garage S3 store on loopback. Along the way the RTSP server is cut and restored
//! and the daemon is killed (-9) and restarted. At the end every recorded file is in the
//! bucket exactly once with the same bytes, the manifest's fields are on each object, the
//! manifest object is the clip's last, and the masks downloaded from the bucket are the
//! masks the element computes on the video downloaded from the bucket.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgemask_tests::garage::{self, BUCKET, Garage, REGION};
use edgemask_tests::rtsp::{self, Server};
use edgemask_tests::{bin, free_port, onnxruntime, shared, signal, wait_exit, wait_for};
use nix::sys::signal::Signal;

fn model() -> PathBuf {
    shared().join("models/selfie_segmentation_256x256.onnx")
}

fn runner(config: &Path, log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    Command::new(bin("edgemask"))
        .arg("run")
        .arg(config)
        .env("EDGEMASK_LOG", "info")
        .env("ORT_DYLIB_PATH", onnxruntime())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap()
}

fn syncd(config: &Path, g: &Garage, log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(bin("edgemask-syncd"));
    c.arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .envs(g.env())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    c.spawn().unwrap()
}

/// Final (non-temporary) files of the camera directory: name → bytes.
fn local_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    (!n.starts_with('.') && !n.ends_with(".part"))
                        .then(|| (n, std::fs::read(e.path()).unwrap()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn manifests(dir: &Path) -> usize {
    local_files(dir)
        .keys()
        .filter(|n| n.ends_with(".manifest.json"))
        .count()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The element's model-resolution masks for every frame of the video file `video`.
fn element_masks(video: &Path) -> Vec<Vec<u8>> {
    edgemask_tests::element::masks_of_video(video, &model())
        .into_iter()
        .map(|(model_res, _)| model_res)
        .collect()
}

/// The masks (PNG, GRAY8, model resolution) in a mask archive, in frame order.
fn archive_masks(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if name.ends_with(".png") {
            out.push(image::load_from_memory(&data).unwrap().to_luma8().into_raw());
        }
    }
    out
}

#[test]
fn rtsp_camera_to_bucket_exactly_once_through_cuts_and_kills() {
    gst::init().unwrap();
    gstunetmask::plugin_register_static().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = Garage::start();
    let client = rt.block_on(g.client());
    let mut server = Server::new(
        free_port(),
        &rtsp::still(&shared().join("testdata/person_400x600.png")),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cam = out.join("door");
    let runner_cfg = dir.path().join("edgemask.toml");
    std::fs::write(
        &runner_cfg,
        format!(
            r#"[runner]
output_dir = "{}"
host = "e2e-host"
disk_floor_mb = 0
stall_timeout_s = 1.5
backoff_initial_s = 0.5
backoff_max_s = 2
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 2
[cameras.door]
source = "rtsp"
url = "{}"
transport = "tcp"
"#,
            out.display(),
            model().display(),
            server.url()
        ),
    )
    .unwrap();
    let syncd_cfg = dir.path().join("syncd.toml");
    std::fs::write(
        &syncd_cfg,
        format!(
            r#"watch = ["{}"]
destination = "s3://{BUCKET}/retrain"
journal = "{}"
host = "e2e-host"
after_upload = "retain"
[readiness]
settle_secs = 1.0
[s3]
endpoint_url = "{}"
region = "{REGION}"
force_path_style = true
[retry]
base_ms = 100
cap_ms = 2000
"#,
            out.display(),
            dir.path().join("journal.sqlite").display(),
            g.endpoint
        ),
    )
    .unwrap();
    let (rlog, slog) = (dir.path().join("runner.log"), dir.path().join("syncd.log"));
    let mut run = runner(&runner_cfg, &rlog);
    let mut daemon = syncd(&syncd_cfg, &g, &slog);
    let need = |n: usize, what: &str| {
        assert!(
            wait_for(Duration::from_secs(60), || manifests(&cam) >= n),
            "{what}: {n} clips within 60 s\nrunner:\n{}",
            read(&rlog)
        );
    };

    // 1. Clean recording.
    need(2, "recording");
    // 2. The camera's server cut and restored: the runner reconnects, records again.
    server.stop();
    std::thread::sleep(Duration::from_secs(3));
    server.start();
    let n = manifests(&cam);
    need(n + 2, "after the RTSP server came back");
    // 3. The daemon killed mid-flight (a clip just finished) and restarted.
    let n = manifests(&cam);
    assert!(wait_for(Duration::from_secs(30), || manifests(&cam) > n));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut daemon = syncd(&syncd_cfg, &g, &slog);
    let n = manifests(&cam);
    need(n + 1, "while the daemon restarts");

    signal(&run, Signal::SIGTERM);
    assert_eq!(
        wait_exit(&mut run, Duration::from_secs(40)),
        Some(0),
        "runner exits 0 on SIGTERM\n{}",
        read(&rlog)
    );
    let local = local_files(&cam);
    assert!(
        local.keys().all(|n| !n.ends_with(".part")),
        "no temporary file: {:?}",
        local.keys()
    );
    let t0 = Instant::now();
    let mut objects = BTreeMap::new();
    while t0.elapsed() < Duration::from_secs(120) {
        objects = rt.block_on(garage::list(&client));
        if objects.len() >= local.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    signal(&daemon, Signal::SIGTERM);
    assert_eq!(
        wait_exit(&mut daemon, Duration::from_secs(45)),
        Some(0),
        "syncd exits 0 on SIGTERM\n{}",
        read(&slog)
    );
    let clips = local.keys().filter(|n| n.ends_with(".manifest.json")).count();
    eprintln!(
        "end to end: {clips} clips, {} files, {} bytes recorded; {} objects in the bucket",
        local.len(),
        local.values().map(Vec::len).sum::<usize>(),
        objects.len()
    );
    assert!(clips >= 5, "{clips} clips");

    // Exactly once: one object per local file, nothing else, under the key template
    // {host}/{camera}/{date}/{file} below the prefix.
    assert_eq!(
        objects.len(),
        local.len(),
        "one object per recorded file\nobjects: {:?}\nlocal: {:?}\nsyncd:\n{}",
        objects.keys(),
        local.keys(),
        read(&slog)
    );
    let mut key_of = BTreeMap::new();
    for key in objects.keys() {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 5, "{key}");
        assert_eq!(&parts[..3], &["retrain", "e2e-host", "door"], "{key}");
        assert!(
            key_of.insert(parts[4].to_string(), key.clone()).is_none(),
            "{} uploaded twice",
            parts[4]
        );
    }
    for (name, bytes) in &local {
        let key = key_of
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the bucket"));
        let got = rt.block_on(garage::get(&client, key));
        assert_eq!(
            crc32c::crc32c(&got),
            crc32c::crc32c(bytes),
            "{name}: the object's bytes are the recorded bytes"
        );
        assert_eq!(got.len(), bytes.len(), "{name}");
    }

    // Per clip: manifest fields on every object; manifest newest; masks = element masks.
    let work = dir.path().join("downloaded");
    std::fs::create_dir_all(&work).unwrap();
    let mut frames = 0;
    for (name, bytes) in local.iter().filter(|(n, _)| n.ends_with(".manifest.json")) {
        let m: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let video = m["video"].as_str().unwrap().to_string();
        let masks = m["masks"]["file"].as_str().unwrap().to_string();
        let mut modified = Vec::new();
        for f in [&video, &masks, name] {
            let meta = rt.block_on(garage::metadata(&client, &key_of[f]));
            assert_eq!(
                meta.get("edgemask-camera").map(String::as_str),
                Some("door"),
                "{f}: {meta:?}"
            );
            assert_eq!(
                meta.get("edgemask-host").map(String::as_str),
                Some("e2e-host"),
                "{f}"
            );
            assert_eq!(
                meta.get("edgemask-frame-count"),
                Some(&m["frame_count"].to_string()),
                "{f}: {meta:?}"
            );
            let head = rt
                .block_on(client.head_object().bucket(BUCKET).key(&key_of[f]).send())
                .unwrap();
            modified.push(head.last_modified().unwrap().as_nanos());
        }
        assert!(
            modified[2] >= modified[0] && modified[2] >= modified[1],
            "{name}: the manifest is the clip's last object ({modified:?})"
        );
        let v = work.join(&video);
        std::fs::write(&v, rt.block_on(garage::get(&client, &key_of[&video]))).unwrap();
        let from_bucket = archive_masks(&rt.block_on(garage::get(&client, &key_of[&masks])));
        let element = element_masks(&v);
        let n = m["frame_count"].as_u64().unwrap() as usize;
        assert_eq!(from_bucket.len(), n, "{masks}: one mask per frame");
        assert_eq!(
            element.len(),
            n,
            "{video}: frames decoded from the bucket's video"
        );
        for (i, (a, b)) in from_bucket.iter().zip(&element).enumerate() {
            assert_eq!(a.len(), b.len(), "{masks} frame {i}");
            let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ, 0,
                "{masks} frame {i}: the bucket's mask is the element's mask"
            );
        }
        let person = from_bucket
            .iter()
            .map(|f| f.iter().filter(|&&p| p > 127).count() as f64 / f.len() as f64)
            .sum::<f64>()
            / n as f64;
        assert!(person > 0.05, "{masks}: the person is found ({person:.3})");
        frames += n;
    }
    eprintln!("end to end: {frames} frames' masks compared with the element's");
    drop(server);
}
