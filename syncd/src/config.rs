//! Configuration: one TOML file plus environment overrides
//! (`EDGEMASK_SYNCD__<SECTION>__<KEY>=value`, e.g. `EDGEMASK_SYNCD__S3__ENDPOINT_URL`).
//! Unknown keys are errors; every error names the key, the value and what is allowed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, SyncError};
use crate::keys;
pub use crate::listing::ExistenceCheck;
use crate::ready::NameRules;
use crate::retry::RetryPolicy;

pub const ENV_PREFIX: &str = "EDGEMASK_SYNCD__";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directories to watch, recursively.
    pub watch: Vec<PathBuf>,
    /// `s3://bucket/prefix` or `file:///dir`.
    pub destination: String,
    /// The journal database.
    #[serde(default = "default_journal")]
    pub journal: PathBuf,
    /// Object key template.
    #[serde(default = "default_template")]
    pub key_template: String,
    /// `{host}` when the manifest has none; defaults to the machine's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// What to do with a local file after a verified upload.
    #[serde(default)]
    pub after_upload: AfterUpload,
    #[serde(default)]
    pub readiness: Readiness,
    #[serde(default)]
    pub files: Files,
    #[serde(default)]
    pub upload: Upload,
    #[serde(default)]
    pub retain: Retain,
    #[serde(default)]
    pub s3: S3,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub metrics: Metrics,
}

fn default_journal() -> PathBuf {
    PathBuf::from("/var/lib/edgemask-syncd/journal.sqlite")
}
fn default_template() -> String {
    "{host}/{camera}/{date}/{file}".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AfterUpload {
    #[default]
    Delete,
    Retain,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Readiness {
    /// Seconds without a change in size or mtime before a file that is not part of a
    /// runner clip counts as finished.
    pub settle_secs: f64,
    /// Full rescan period, seconds (besides the rescan at start and on watcher overflow).
    pub rescan_secs: f64,
    pub manifest_suffix: String,
    pub temp_suffixes: Vec<String>,
    pub temp_prefixes: Vec<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        let n = NameRules::default();
        Readiness {
            settle_secs: 10.0,
            rescan_secs: 300.0,
            manifest_suffix: n.manifest_suffix,
            temp_suffixes: n.temp_suffixes,
            temp_prefixes: n.temp_prefixes,
        }
    }
}

/// Which files under the watched directories may be read at all (`[files]`). Symlinks are
/// never followed, whatever these say.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    /// Upload files that have more than one name. Off by default: a hard link in the
    /// output directory can name any file of the same file system the daemon may read
    /// (`~/.aws/credentials`), and nothing in the link tells.
    pub allow_hard_links: bool,
    /// Upload files owned by another user than the daemon's or the runner's. Off by
    /// default: another owner's file was put there by someone else.
    pub allow_other_owners: bool,
    /// The user the runner runs as (a name or a uid) when it is not the daemon's: the
    /// shipped units run them as `edgemask` and `edgemask-syncd`, sharing a group, so that
    /// a compromised runner cannot read the daemon's cloud keys. Its files are accepted.
    pub runner_user: Option<String>,
}

/// The uid of `user`: a number, or a name from the user database.
fn user_id(user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Some(uid);
    }
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Upload {
    /// Files whose data is in transfer at the same time.
    pub max_files: usize,
    /// Metadata requests (existence check before, verification after a transfer) in
    /// flight besides the transfers, like rclone's checkers: small files are bound by
    /// round trips, which must not hold a transfer slot.
    pub max_checks: usize,
    /// Files above this size go multipart (bytes).
    pub multipart_threshold: u64,
    /// Multipart part size (bytes, ≥ 5 MiB for S3).
    pub part_size: u64,
    /// Parts of one file in flight at once.
    pub part_concurrency: usize,
    /// Shared byte-rate cap for all uploads, bytes/s; 0 = none.
    pub rate_limit_bytes_per_sec: u64,
    /// Per-request timeout, seconds.
    pub request_timeout_secs: f64,
    /// Graceful-shutdown deadline, seconds.
    pub shutdown_timeout_secs: f64,
    /// Copy top-level scalar fields of the clip manifest into object metadata.
    pub metadata_from_manifest: bool,
    /// Bytes of file data held in memory for requests in flight, all uploads together
    /// (part and single-PUT buffers); at least `part_size` and `multipart_threshold`.
    pub memory_limit_bytes: u64,
    /// How an object is looked for before it is written, on endpoints without
    /// create-only writes: `auto` (HeadObject; one listing for a directory with many
    /// checks at once), `head` (always HeadObject; no `s3:ListBucket` needed), `listing`.
    pub existence_check: ExistenceCheck,
    /// How long a listing answers existence checks, seconds.
    pub listing_max_age_secs: f64,
    /// Threads running the daemon's asynchronous work (requests, the journal, the
    /// dispatcher); checksums of large files run on the blocking pool besides. One keeps the
    /// cores for the runner on an edge box and spares cross-thread wake-ups; more for
    /// multi-Gbit/s uplinks over TLS.
    pub io_threads: usize,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            max_files: 4,
            max_checks: 8,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            part_concurrency: 2,
            rate_limit_bytes_per_sec: 0,
            request_timeout_secs: 120.0,
            shutdown_timeout_secs: 20.0,
            metadata_from_manifest: true,
            memory_limit_bytes: 32 << 20,
            existence_check: ExistenceCheck::Auto,
            listing_max_age_secs: 2.0,
            io_threads: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retain {
    /// Delete retained files older than this (seconds since upload); 0 = no limit.
    pub max_age_secs: u64,
    /// Keep at most this many bytes of retained files; 0 = no limit.
    pub max_bytes: u64,
    /// When the watched file system is fuller than this percentage, delete the oldest
    /// retained (already uploaded) files first; 0 = off. Files not uploaded are never
    /// deleted — unless `drop_not_uploaded` allows it.
    pub high_water_percent: f64,
    /// Above the high-water mark, once no uploaded file is left to delete, delete the
    /// oldest clips that are not uploaded yet (each one logged and counted as `dropped`).
    /// Off by default: data is lost.
    pub drop_not_uploaded: bool,
    /// The journal forgets files that are gone (deleted after upload, vanished, dropped)
    /// this many days after their last change; 0 = never. Keeps the journal, and the
    /// daemon's per-tick work, from growing with every file ever uploaded.
    pub forget_after_days: f64,
}

impl Default for Retain {
    fn default() -> Self {
        Retain {
            max_age_secs: 0,
            max_bytes: 0,
            high_water_percent: 0.0,
            drop_not_uploaded: false,
            forget_after_days: 30.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3 {
    /// Endpoint URL for S3-compatible stores (Garage, MinIO…); none = AWS.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (most S3-compatible stores).
    pub force_path_style: bool,
    /// `STANDARD`, `STANDARD_IA`, `GLACIER_IR`…
    pub storage_class: Option<String>,
    /// `AES256` (SSE-S3) or `aws:kms` (SSE-KMS).
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// AWS profile name (else the standard chain's default).
    pub profile: Option<String>,
    /// Probe the endpoint at start for conditional writes and checksum support.
    pub probe: bool,
    /// How uploads are protected and verified: `auto` (probe: CRC32C where the store takes
    /// and reports `x-amz-checksum-crc32c`, else Content-MD5), `crc32c`, or `content-md5`.
    pub integrity: IntegritySetting,
    /// SigV4 payload signing of PutObject/UploadPart bodies: `auto` (only over plain HTTP
    /// to a host that is not loopback: elsewhere TLS, or the absence of a network, already
    /// protects the body, and the signed checksum header catches corruption), `always`,
    /// or `never`. Signing costs a SHA-256 pass over every byte, client and store side.
    pub sign_payload: SignPayload,
    /// Allow `http://` endpoints on hosts other than loopback (credentials are signed,
    /// not sent, but requests, object names and metadata travel in clear text).
    pub allow_insecure_http: bool,
}

/// `s3.sign_payload`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SignPayload {
    #[default]
    Auto,
    Always,
    Never,
}

impl SignPayload {
    /// Whether bodies sent to `endpoint_url` (none: AWS over HTTPS) are signed (pure).
    pub fn signs(self, endpoint_url: Option<&str>) -> bool {
        match self {
            SignPayload::Always => true,
            SignPayload::Never => false,
            SignPayload::Auto => endpoint_url.is_some_and(insecure_http),
        }
    }
}

/// Whether `url` is plain `http://` to a host other than loopback (pure).
pub fn insecure_http(url: &str) -> bool {
    let Some(rest) = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
    else {
        return false; // https:// (or a scheme the SDK will refuse)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// A duration setting in seconds: finite, within `min..=max` (one check for every one,
/// so none can reach `Duration::from_secs_f64` as NaN, infinite or negative).
fn check_secs(key: &str, v: f64, min: f64, max: f64) -> Result<()> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(SyncError::Config(format!(
            "{key} = {v:?}: allowed {min} to {max} seconds"
        )))
    }
}

/// The machine's host name from gethostname(2) — not /proc/sys/kernel/hostname, which the
/// unit's `ProcSubset=pid` hides.
fn system_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates what fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// `s3.integrity`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IntegritySetting {
    #[default]
    Auto,
    Crc32c,
    ContentMd5,
}

impl Default for S3 {
    fn default() -> Self {
        S3 {
            endpoint_url: None,
            region: None,
            force_path_style: false,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            profile: None,
            probe: true,
            integrity: IntegritySetting::Auto,
            sign_payload: SignPayload::Auto,
            allow_insecure_http: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `host:port` for the Prometheus endpoint; none = off.
    pub listen: Option<String>,
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    S3 { bucket: String, prefix: String },
    File { dir: PathBuf },
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination> {
        let bad = |why: &str| {
            SyncError::Config(format!(
                "destination = {s:?}: {why}; allowed: s3://bucket[/prefix] or file:///absolute/dir"
            ))
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            Ok(Destination::S3 {
                bucket: bucket.to_string(),
                prefix: keys::sanitize_key(prefix),
            })
        } else if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("the directory must be absolute"));
            }
            Ok(Destination::File {
                dir: PathBuf::from(rest),
            })
        } else {
            Err(bad("unknown scheme"))
        }
    }

    /// Key prefix inside the destination.
    pub fn prefix(&self) -> &str {
        match self {
            Destination::S3 { prefix, .. } => prefix,
            Destination::File { .. } => "",
        }
    }
}

impl Config {
    /// Parse TOML text, apply `EDGEMASK_SYNCD__…` overrides from `env`, validate.
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        let mut value: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| SyncError::Config(e.to_string()))?;
        for (k, v) in env {
            let Some(path) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
            apply_override(&mut value, &parts, &v, &k)?;
        }
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| SyncError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| SyncError::io(path, e))?;
        Config::from_toml(&text, std::env::vars())
            .map_err(|e| SyncError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<()> {
        let err = |key: &str, val: &dyn std::fmt::Debug, allowed: &str| {
            Err(SyncError::Config(format!("{key} = {val:?}: allowed {allowed}")))
        };
        if self.watch.is_empty() {
            return err("watch", &self.watch, "at least one directory");
        }
        if let Some(u) = &self.files.runner_user
            && user_id(u).is_none()
        {
            return Err(SyncError::Config(format!(
                "files.runner_user = {u:?}: no such user on this host: create it \
                 (configs/systemd/edgemask.sysusers) or give its uid"
            )));
        }
        for w in &self.watch {
            if !w.is_absolute() {
                return err("watch", w, "absolute paths");
            }
            // Files are opened relative to their root and must stay beneath it: a root
            // spelled with `..` or `.` would make "beneath" mean something else.
            if w.components()
                .any(|c| !matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)))
            {
                return err("watch", w, "absolute paths without `.` or `..` components");
            }
            if w.to_str().is_none() {
                return err("watch", w, "UTF-8 paths (the journal and the keys are UTF-8)");
            }
        }
        Destination::parse(&self.destination)?;
        keys::validate_template(&self.key_template)?;
        let r = &self.readiness;
        const DAY: f64 = 86_400.0;
        check_secs("readiness.settle_secs", r.settle_secs, 0.0, DAY)?;
        check_secs("readiness.rescan_secs", r.rescan_secs, 1.0, DAY)?;
        if r.manifest_suffix.is_empty() {
            return err(
                "readiness.manifest_suffix",
                &r.manifest_suffix,
                "a non-empty suffix",
            );
        }
        let u = &self.upload;
        if u.max_files == 0 || u.max_files > 64 {
            return err("upload.max_files", &u.max_files, "1 to 64");
        }
        if u.max_checks == 0 || u.max_checks > 64 {
            return err("upload.max_checks", &u.max_checks, "1 to 64");
        }
        if u.memory_limit_bytes < u.part_size.max(u.multipart_threshold) {
            return err(
                "upload.memory_limit_bytes",
                &u.memory_limit_bytes,
                "at least upload.part_size and upload.multipart_threshold (one buffer of each must fit)",
            );
        }
        if u.part_concurrency == 0 || u.part_concurrency > 64 {
            return err("upload.part_concurrency", &u.part_concurrency, "1 to 64");
        }
        if u.part_size < (5 << 20) || u.part_size > (5u64 << 30) {
            return err("upload.part_size", &u.part_size, "5 MiB to 5 GiB (S3 limits)");
        }
        if u.multipart_threshold < u.part_size.min(5 << 20) || u.multipart_threshold > (5u64 << 30) {
            return err(
                "upload.multipart_threshold",
                &u.multipart_threshold,
                "5 MiB to 5 GiB",
            );
        }
        check_secs("upload.request_timeout_secs", u.request_timeout_secs, 0.001, DAY)?;
        if u.io_threads == 0 || u.io_threads > 64 {
            return err("upload.io_threads", &u.io_threads, "1 to 64");
        }
        check_secs("upload.listing_max_age_secs", u.listing_max_age_secs, 0.001, 60.0)?;
        check_secs("upload.shutdown_timeout_secs", u.shutdown_timeout_secs, 0.0, DAY)?;
        // Ages are compared in nanoseconds as i64: at most 100 years.
        const CENTURY: u64 = 100 * 365 * 86_400;
        if self.retain.max_age_secs > CENTURY {
            return err(
                "retain.max_age_secs",
                &self.retain.max_age_secs,
                "0 (no limit) to 3153600000 (100 years)",
            );
        }
        check_secs(
            "retain.forget_after_days",
            self.retain.forget_after_days,
            0.0,
            36_500.0,
        )?;
        if !(0.0..100.0).contains(&self.retain.high_water_percent) {
            return err(
                "retain.high_water_percent",
                &self.retain.high_water_percent,
                "0 (off) to < 100",
            );
        }
        if self.retain.drop_not_uploaded && self.retain.high_water_percent <= 0.0 {
            return err(
                "retain.drop_not_uploaded",
                &true,
                "only with retain.high_water_percent > 0 (the mark it acts above)",
            );
        }
        if let Some(sse) = &self.s3.sse
            && sse != "AES256"
            && sse != "aws:kms"
        {
            return err("s3.sse", sse, "\"AES256\" or \"aws:kms\"");
        }
        if self.s3.sse_kms_key_id.is_some() && self.s3.sse.as_deref() != Some("aws:kms") {
            return err("s3.sse_kms_key_id", &"(set)", "only with s3.sse = \"aws:kms\"");
        }
        if self.retry.base_ms == 0 || self.retry.cap_ms < self.retry.base_ms || self.retry.cap_ms > 3_600_000
        {
            return err(
                "retry",
                &(self.retry.base_ms, self.retry.cap_ms),
                "base_ms > 0 and base_ms <= cap_ms <= 3600000 (an hour)",
            );
        }
        if let Some(url) = &self.s3.endpoint_url
            && insecure_http(url)
            && !self.s3.allow_insecure_http
        {
            return err(
                "s3.endpoint_url",
                url,
                "https://, or http:// to a loopback address; set s3.allow_insecure_http = true to send requests, keys and metadata in clear text anyway",
            );
        }
        if let Some(l) = &self.metrics.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return err("metrics.listen", l, "host:port, e.g. 127.0.0.1:9464");
        }
        Ok(())
    }

    pub fn destination(&self) -> Destination {
        Destination::parse(&self.destination).expect("validated")
    }

    pub fn name_rules(&self) -> NameRules {
        NameRules {
            manifest_suffix: self.readiness.manifest_suffix.clone(),
            temp_suffixes: self.readiness.temp_suffixes.clone(),
            temp_prefixes: self.readiness.temp_prefixes.clone(),
        }
    }

    /// What `[files]` lets through (`validate` has checked that `runner_user` exists).
    pub fn file_policy(&self) -> crate::tree::Policy {
        crate::tree::Policy {
            allow_hard_links: self.files.allow_hard_links,
            allow_other_owners: self.files.allow_other_owners,
            runner_uid: self.files.runner_user.as_deref().and_then(user_id),
        }
    }

    pub fn settle(&self) -> Duration {
        Duration::from_secs_f64(self.readiness.settle_secs)
    }

    pub fn host_name(&self) -> String {
        if let Some(h) = &self.host {
            return h.clone();
        }
        system_host_name().unwrap_or_else(|| "localhost".into())
    }
}

fn apply_override(table: &mut toml::Table, path: &[String], raw: &str, var: &str) -> Result<()> {
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| SyncError::Config(format!("{var}: empty key")))?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| SyncError::Config(format!("{var}: {p} is not a section")))?;
    }
    // A TOML literal when it parses as one (numbers, booleans, arrays), else a string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
watch = ["/out"]
destination = "s3://clips/retrain"
"#;

    #[test]
    fn defaults_and_destination() {
        let c = Config::from_toml(BASE, []).unwrap();
        assert_eq!(c.after_upload, AfterUpload::Delete);
        assert_eq!(
            c.destination(),
            Destination::S3 {
                bucket: "clips".into(),
                prefix: "retrain".into()
            }
        );
        assert_eq!(
            Destination::parse("file:///srv/clips").unwrap(),
            Destination::File {
                dir: "/srv/clips".into()
            }
        );
        assert!(Destination::parse("file://rel").is_err());
        assert!(Destination::parse("http://x").is_err());
        assert!(Destination::parse("s3://").is_err());
    }

    #[test]
    fn env_overrides() {
        let env = vec![
            (
                "EDGEMASK_SYNCD__S3__ENDPOINT_URL".to_string(),
                "http://127.0.0.1:3900".to_string(),
            ),
            (
                "EDGEMASK_SYNCD__S3__FORCE_PATH_STYLE".to_string(),
                "true".to_string(),
            ),
            ("EDGEMASK_SYNCD__UPLOAD__MAX_FILES".to_string(), "7".to_string()),
            (
                "EDGEMASK_SYNCD__DESTINATION".to_string(),
                "file:///tmp/x".to_string(),
            ),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let c = Config::from_toml(BASE, env).unwrap();
        assert_eq!(c.s3.endpoint_url.as_deref(), Some("http://127.0.0.1:3900"));
        assert!(c.s3.force_path_style);
        assert_eq!(c.upload.max_files, 7);
        assert_eq!(c.destination, "file:///tmp/x");
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = Config::from_toml(&format!("{BASE}\nbogus = 1\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml(&format!("{BASE}\n[upload]\npart_size = 1000\n"), [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upload.part_size") && e.contains("1000") && e.contains("5 MiB"),
            "{e}"
        );
        let e = Config::from_toml(&format!("{BASE}\nkey_template = \"{{nope}}\"\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("{nope}") && e.contains("{host}"), "{e}");
        let e = Config::from_toml("watch = [\"rel\"]\ndestination = \"s3://b\"\n", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch"), "{e}");
        let e = Config::from_toml(&format!("{BASE}\n[s3]\nsse = \"rot13\"\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3.sse") && e.contains("AES256"), "{e}");
        let e = Config::from_toml(&format!("{BASE}\n[s3]\nintegrity = \"sha1\"\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha1") && e.contains("content-md5"), "{e}");
        let e = Config::from_toml(&format!("{BASE}\n[retain]\ndrop_not_uploaded = true\n"), [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retain.drop_not_uploaded") && e.contains("high_water_percent"),
            "{e}"
        );
    }

    #[test]
    fn no_number_can_reach_a_panicking_conversion() {
        // TOML has inf and nan; each used to panic in Duration::from_secs_f64 (or, for
        // max_age_secs, wrap negative and evict every retained file).
        for (section, key) in [
            ("readiness", "settle_secs"),
            ("readiness", "rescan_secs"),
            ("upload", "request_timeout_secs"),
            ("upload", "shutdown_timeout_secs"),
            ("upload", "listing_max_age_secs"),
            ("retain", "forget_after_days"),
        ] {
            for bad in ["inf", "-inf", "nan", "-1.0", "1e300"] {
                let e = Config::from_toml(&format!("{BASE}\n[{section}]\n{key} = {bad}\n"), [])
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(&format!("{section}.{key}")), "{key} = {bad}: {e}");
            }
        }
        let e = Config::from_toml(
            &format!("{BASE}\n[retain]\nmax_age_secs = 9223372036854775807\n"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("retain.max_age_secs"), "{e}");
        let e = Config::from_toml(&format!("{BASE}\n[retry]\ncap_ms = 9223372036854775807\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry"), "{e}");
        // Through the environment too.
        let e = Config::from_toml(
            BASE,
            [(
                "EDGEMASK_SYNCD__UPLOAD__REQUEST_TIMEOUT_SECS".to_string(),
                "inf".to_string(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upload.request_timeout_secs"), "{e}");
        let ok = Config::from_toml(BASE, []).unwrap();
        assert_eq!(ok.retain.forget_after_days, 30.0);
    }

    #[test]
    fn clear_text_endpoints_only_on_loopback_unless_allowed() {
        for url in [
            "http://minio.lan:9000",
            "HTTP://10.0.0.5",
            "http://[fd00::1]:3900/",
            "http://user@s3.example:80",
        ] {
            let e = Config::from_toml(&format!("{BASE}\n[s3]\nendpoint_url = \"{url}\"\n"), [])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("s3.endpoint_url") && e.contains("allow_insecure_http"),
                "{url}: {e}"
            );
            Config::from_toml(
                &format!("{BASE}\n[s3]\nendpoint_url = \"{url}\"\nallow_insecure_http = true\n"),
                [],
            )
            .unwrap();
        }
        for url in [
            "https://s3.example",
            "http://127.0.0.1:3900",
            "http://localhost:3900",
            "http://[::1]:3900",
        ] {
            Config::from_toml(&format!("{BASE}\n[s3]\nendpoint_url = \"{url}\"\n"), []).unwrap();
        }
    }

    #[test]
    fn payload_signing_only_where_nothing_else_protects_the_body() {
        let auto = SignPayload::Auto;
        assert!(!auto.signs(None), "AWS: HTTPS");
        assert!(!auto.signs(Some("https://s3.example.com")));
        assert!(!auto.signs(Some("http://127.0.0.1:3900")));
        assert!(!auto.signs(Some("http://localhost:3900/")));
        assert!(!auto.signs(Some("http://[::1]:3900")));
        assert!(auto.signs(Some("http://10.0.0.5:3900")));
        assert!(auto.signs(Some("http://minio.lan")));
        assert!(SignPayload::Always.signs(Some("https://s3.example.com")));
        assert!(!SignPayload::Never.signs(Some("http://minio.lan")));
    }

    #[test]
    fn integrity_and_dropping_settings() {
        let c = Config::from_toml(BASE, []).unwrap();
        assert_eq!(c.s3.integrity, IntegritySetting::Auto);
        assert!(
            !c.retain.drop_not_uploaded,
            "dropping files not uploaded is off by default"
        );
        let env = [(
            "EDGEMASK_SYNCD__S3__INTEGRITY".to_string(),
            "content-md5".to_string(),
        )];
        let c = Config::from_toml(
            &format!("{BASE}\n[retain]\nhigh_water_percent = 90\ndrop_not_uploaded = true\n"),
            env,
        )
        .unwrap();
        assert_eq!(c.s3.integrity, IntegritySetting::ContentMd5);
        assert!(c.retain.drop_not_uploaded);
    }

    #[test]
    fn file_policy_is_strict_by_default() {
        let c = Config::from_toml(BASE, []).unwrap();
        assert_eq!(c.file_policy(), crate::tree::Policy::default());
        assert!(!c.files.allow_hard_links && !c.files.allow_other_owners);
        let c = Config::from_toml(
            &format!("{BASE}\n[files]\nallow_hard_links = true\nallow_other_owners = true\n"),
            [],
        )
        .unwrap();
        assert!(c.file_policy().allow_hard_links && c.file_policy().allow_other_owners);
        let c = Config::from_toml(&format!("{BASE}\n[files]\nrunner_user = \"root\"\n"), []).unwrap();
        assert_eq!(c.file_policy().runner_uid, Some(0));
        let c = Config::from_toml(&format!("{BASE}\n[files]\nrunner_user = \"61001\"\n"), []).unwrap();
        assert_eq!(c.file_policy().runner_uid, Some(61001));
        let e = Config::from_toml(
            &format!("{BASE}\n[files]\nrunner_user = \"no-such-user-x\"\n"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("runner_user") && e.contains("no such user"), "{e}");
        let e = Config::from_toml(&format!("{BASE}\n[files]\nfollow_symlinks = true\n"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("follow_symlinks"), "{e}");
        let e = Config::from_toml("watch = [\"/out/../etc\"]\ndestination = \"s3://b\"\n", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch") && e.contains(".."), "{e}");
    }
}
