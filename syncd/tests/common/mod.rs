//! Test helpers: a real Garage S3 server on loopback, the daemon as a subprocess, and a
//! simulated runner that writes clips the way the runner's contract says.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "garage";
pub const BUCKET: &str = "clips";

pub fn syncd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgemask-syncd"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn garage_bin() -> PathBuf {
    let p = std::env::var_os("EDGEMASK_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            let cache = std::env::var_os("EDGEMASK_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/edgemask"));
            cache.join("garage/bin/garage")
        });
    assert!(
        p.is_file(),
        "Garage (the S3 server these tests need) is not at {}: run \
         `EDGEMASK_WITH_GARAGE=1 scripts/setup.sh` (or set EDGEMASK_GARAGE). \
         The syncd tests talk to a real S3 store and do not pass without one.",
        p.display()
    );
    p
}

/// A single-node Garage with one bucket and one key, torn down on drop.
pub struct Garage {
    child: Child,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    config: PathBuf,
    pub endpoint: String,
    pub port: u16,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    pub fn start() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().unwrap();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("garage.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        let mut g = Garage {
            child,
            dir,
            bin,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            port: s3,
            key_id: String::new(),
            secret: String::new(),
        };
        let t0 = Instant::now();
        while !g.cmd(&["status"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "garage did not start: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let id = String::from_utf8(g.ok(&["node", "id", "-q"]).stdout).unwrap();
        let id = id.trim().split('@').next().unwrap().to_string();
        g.ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.ok(&["layout", "apply", "--version", "1"]);
        let out = g.ok(&["json-api", "CreateKey", r#"{"name":"syncd-test"}"#]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        g.key_id = v["accessKeyId"].as_str().unwrap().to_string();
        g.secret = v["secretAccessKey"].as_str().unwrap().to_string();
        // Layout changes take a moment to propagate: retry bucket creation.
        let t0 = Instant::now();
        while !g.cmd(&["bucket", "create", BUCKET]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bucket create failed: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let key_id = g.key_id.clone();
        g.ok(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
        ]);
        g
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// A client of our own (test side) to inspect the bucket.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(&self.key_id, &self.secret, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        let c = aws_sdk_s3::Client::from_conf(conf);
        let t0 = Instant::now();
        while c.head_bucket().bucket(BUCKET).send().await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "bucket not reachable");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c
    }

    /// Environment for the daemon: these credentials and nothing from the host.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Objects in the bucket (minus the daemon's endpoint probe): key → size.
pub async fn list(c: &aws_sdk_s3::Client) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut token = None;
    for _ in 0..1000 {
        let r = c
            .list_objects_v2()
            .bucket(BUCKET)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list objects");
        for o in r.contents() {
            let k = o.key().unwrap().to_string();
            if !k.ends_with(".edgemask-syncd-probe") {
                out.insert(k, o.size().unwrap_or(0) as u64);
            }
        }
        match r.next_continuation_token() {
            Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    out
}

pub async fn get(c: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    let r = c
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("get object");
    r.body.collect().await.unwrap().into_bytes().to_vec()
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

/// Wait (bounded) for a child to exit; kill it if it does not.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn sigterm(child: &Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

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
