//! A real Garage S3 server on loopback: single node, replication factor 1, one bucket
//! and one key per instance, torn down on drop. Garage checks checksums and supports
//! ListParts but ignores `If-None-Match`, so the daemon's fallback path is what runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::free_port;

pub const REGION: &str = "garage";
pub const BUCKET: &str = "clips";

/// The Garage binary: `$EDGEMASK_GARAGE`, else the cache `scripts/setup.sh` fills.
pub fn garage_bin() -> PathBuf {
    let p = std::env::var_os("EDGEMASK_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            std::env::var_os("EDGEMASK_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/edgemask"))
                .join("garage/bin/garage")
        });
    assert!(
        p.is_file(),
        "Garage (the S3 server these tests need) is not at {}: run \
         `EDGEMASK_WITH_GARAGE=1 scripts/setup.sh` (or set EDGEMASK_GARAGE). \
         These tests talk to a real S3 store and do not pass without one.",
        p.display()
    );
    p
}

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
        let out = g.ok(&["json-api", "CreateKey", r#"{"name":"edgemask-test"}"#]);
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

    /// A client of our own (the test's side) to inspect the bucket.
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

    /// Environment for a daemon: these credentials and nothing from the host.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
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

/// An object's bytes.
pub async fn get(c: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    let r = c
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    r.body.collect().await.unwrap().into_bytes().to_vec()
}

/// An object's user metadata (`x-amz-meta-*`, without the prefix).
pub async fn metadata(c: &aws_sdk_s3::Client, key: &str) -> BTreeMap<String, String> {
    let r = c
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
    r.metadata()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}
