//! Test helpers: a real Garage S3 server on loopback, the daemon as a subprocess, and a
//! simulated runner that writes clips the way the runner's contract says.
#![allow(dead_code, unused_imports)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use edgemask_tests::free_port;
pub use edgemask_tests::garage::{BUCKET, Garage, REGION, get, list};

pub fn syncd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgemask-syncd"))
}

/// The daemon's config file.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("syncd.toml");
    std::fs::write(&p, body).unwrap();
    p
}

pub fn s3_config(g: &Garage, watch: &Path, journal: &Path, extra: &str) -> String {
    format!(
        r#"watch = ["{w}"]
destination = "s3://{BUCKET}/retrain"
journal = "{j}"
host = "test-host"
{extra}
[s3]
endpoint_url = "{e}"
region = "{REGION}"
force_path_style = true
"#,
        w = watch.display(),
        j = journal.display(),
        e = g.endpoint,
    )
}

fn command(config: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut c = Command::new(syncd_bin());
    c.arg("--config").arg(config).args(args);
    c.env_remove("RUST_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Run the daemon to completion (bounded): status code, stdout, stderr.
pub fn run(config: &Path, env: &[(String, String)], args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = command(config, env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut so, &mut s).ok();
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut se, &mut s).ok();
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "edgemask-syncd {args:?} ran over {limit:?}; stderr: {}",
                te.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        to.join().unwrap(),
        te.join().unwrap(),
    )
}

/// Start the daemon in the background, logging to `log`.
pub fn spawn(config: &Path, env: &[(String, String)], args: &[&str], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command(config, env, args)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

pub use edgemask_tests::{sigterm, wait_exit};

/// Deterministic pseudo-random content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Write `data` to `dir/name` the runner's way: a temporary name, then a rename.
pub fn write_final(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A runner clip: media and mask renamed into place, then the manifest last.
pub fn write_clip(
    dir: &Path,
    stem: &str,
    media: &[u8],
    mask: &[u8],
    manifest: &serde_json::Value,
) -> Vec<String> {
    write_final(dir, &format!("{stem}.mkv"), media);
    write_final(dir, &format!("{stem}.mask.mkv"), mask);
    write_final(
        dir,
        &format!("{stem}.manifest.json"),
        manifest.to_string().as_bytes(),
    );
    vec![
        format!("{stem}.mkv"),
        format!("{stem}.mask.mkv"),
        format!("{stem}.manifest.json"),
    ]
}

pub mod proxy;

/// Peak resident memory of a running process (VmHWM), KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
