//! Configuration: TOML file(s) plus `EDGEMASK__…` environment overrides, read with the
//! `config` crate, then checked here. The file structs deny unknown keys; such a key is an
//! error that names its dotted path, its value and the keys allowed at that place. Values
//! are checked by [`validate`], which turns the loose file structure into the typed
//! [`Settings`] the runner uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// `[runner]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunnerFile {
    pub output_dir: Option<PathBuf>,
    pub host: Option<String>,
    pub disk_floor_mb: Option<u64>,
    pub metrics_listen: Option<String>,
    pub stall_timeout_s: Option<f64>,
    pub backoff_initial_s: Option<f64>,
    pub backoff_max_s: Option<f64>,
    pub progress: Option<bool>,
    pub rtsp_listen: Option<String>,
}

/// `[cameras.NAME] display`: `true`/`false`, or the name of a video sink element.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DisplayFile {
    Flag(bool),
    Sink(String),
}

/// `[model]` (shared) or `[cameras.NAME.model]` (per-camera override of single fields).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub path: Option<PathBuf>,
    pub device: Option<String>,
    pub threads: Option<u32>,
    pub threshold: Option<f64>,
    pub inference_interval: Option<u32>,
    pub pipelined: Option<bool>,
    pub spin: Option<String>,
    pub resize: Option<String>,
    pub layout: Option<String>,
    pub channel_order: Option<String>,
    pub input_size: Option<String>,
    pub activation: Option<String>,
    pub person_class: Option<i32>,
    pub mean: Option<String>,
    pub std: Option<String>,
    pub scale: Option<f64>,
}

/// `[recording]` (shared) or `[cameras.NAME.recording]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecordingFile {
    pub enabled: Option<bool>,
    pub container: Option<String>,
    pub clip_seconds: Option<f64>,
    pub clip_max_mb: Option<u64>,
}

/// `[cameras.NAME.policy]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub kind: Option<String>,
    pub min_coverage: Option<f64>,
    pub min_uncertain: Option<f64>,
    pub min_duration_s: Option<f64>,
    pub preroll_s: Option<f64>,
    pub preroll_max_mb: Option<u64>,
}

/// `[cameras.NAME]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CameraFile {
    pub source: Option<String>,
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub transport: Option<String>,
    pub device: Option<String>,
    pub pattern: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    pub num_frames: Option<u64>,
    pub live: Option<bool>,
    pub enabled: Option<bool>,
    pub display: Option<DisplayFile>,
    pub restream: Option<bool>,
    pub model: Option<ModelFile>,
    pub recording: Option<RecordingFile>,
    pub policy: Option<PolicyFile>,
}

/// The whole file, as read.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub runner: RunnerFile,
    #[serde(default)]
    pub model: ModelFile,
    #[serde(default)]
    pub recording: RecordingFile,
    #[serde(default)]
    pub cameras: BTreeMap<String, CameraFile>,
}

/// The keys allowed beside an unknown one, read from serde's message for it: "unknown
/// field \`x\`, expected one of \`a\`, \`b\`" (or "expected \`a\` or \`b\`", "expected \`a\`").
fn allowed_keys(msg: &str) -> Option<Vec<&str>> {
    let rest = msg.strip_prefix("unknown field `")?;
    if rest.ends_with("`, there are no fields") {
        return Some(Vec::new());
    }
    let (_, expected) = rest.rsplit_once("`, expected ")?;
    Some(expected.split('`').skip(1).step_by(2).collect())
}

/// The value at `path` in the config, as an error shows it: credentials redacted, at most
/// 60 bytes (cut on a character boundary: slicing at byte 60 panicked on a multi-byte
/// character).
fn shown_value(cfg: config::Config, path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let Ok(mut v) = cfg.try_deserialize::<serde_json::Value>() else {
        return "?".into();
    };
    for segment in path {
        let next = match segment {
            Segment::Map { key } => v.get_mut(key.as_str()),
            Segment::Seq { index } => v.get_mut(*index),
            Segment::Enum { .. } | Segment::Unknown => None,
        };
        let Some(next) = next else { return "?".into() };
        v = next.take();
    }
    crate::redact::shown(&v.to_string(), 60)
}

/// The file structure of the built config. The structs deny unknown keys; serde's error for
/// one names neither the table nor the value, so it becomes [`Error::UnknownKey`] with the
/// dotted path (`cameras.door.fps_max`), the value and the keys allowed there.
fn file_structure(cfg: config::Config) -> Result<ConfigFile> {
    serde_path_to_error::deserialize(cfg.clone()).map_err(|e| {
        fn innermost(e: &config::ConfigError) -> &config::ConfigError {
            match e {
                config::ConfigError::At { error, .. } => innermost(error),
                e => e,
            }
        }
        let allowed = match innermost(e.inner()) {
            config::ConfigError::Message(m) => allowed_keys(m).map(|a| a.join(", ")),
            _ => None,
        };
        match allowed {
            Some(allowed) => Error::UnknownKey {
                key: e.path().to_string(),
                value: shown_value(cfg, e.path()),
                allowed,
            },
            None => Error::Config(e.into_inner().to_string()),
        }
    })
}

/// Reads the config files (later ones override earlier ones) and the `EDGEMASK__` environment.
pub fn load(paths: &[PathBuf]) -> Result<ConfigFile> {
    let mut builder = config::Config::builder();
    for p in paths {
        if !p.is_file() {
            return Err(Error::Config(format!(
                "config file '{}' does not exist",
                p.display()
            )));
        }
        builder = builder.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("EDGEMASK")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    let cfg = builder.build().map_err(|e| Error::Config(e.to_string()))?;
    file_structure(cfg)
}

/// Where a camera's frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File {
        path: PathBuf,
    },
    /// `url` never holds a login: it is split out into `credentials` while validating, so
    /// the URL can be logged and set on elements as it is.
    Rtsp {
        url: String,
        tcp: bool,
        credentials: Option<Credentials>,
    },
    V4l2 {
        device: PathBuf,
    },
    TestPattern {
        pattern: String,
        width: u32,
        height: u32,
        fps: u32,
        num_frames: Option<u64>,
        live: bool,
    },
}

impl Source {
    /// Whether the source is live (restarted on failure, never "done").
    pub fn is_live(&self) -> bool {
        match self {
            Source::File { .. } => false,
            Source::Rtsp { .. } | Source::V4l2 { .. } => true,
            Source::TestPattern { live, .. } => *live,
        }
    }
}

/// An RTSP camera's login, handed to `rtspsrc` as `user-id`/`user-pw` (never part of a
/// URL that elements log or a dot dump shows).
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// `url` without its `user:password@`, and that login percent-decoded. The authority ends
/// at the first `/`, `?` or `#` (RFC 3986), so a `/` in a password must be written `%2F`.
pub fn split_login(url: &str) -> (String, Option<Credentials>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let login = Credentials {
        user: decode(user),
        password: decode(password),
    };
    (
        format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        Some(login),
    )
}

/// Reads `user:password` from a credentials file: a bare name is looked up in systemd's
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), a relative path beside the config. The
/// file must not be readable by group or others, as ssh insists for its keys.
fn read_credentials(key: &str, name: &Path, base: &Path) -> Result<Credentials> {
    use std::os::unix::fs::MetadataExt;
    let bare = name.components().count() == 1 && name.is_relative();
    let path = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if bare => PathBuf::from(dir).join(name),
        _ if name.is_relative() => base.join(name),
        _ => name.to_path_buf(),
    };
    let shown = format!("\"{}\"", path.display());
    let bad = |reason: String| Error::invalid(key, &shown, reason);
    let meta = std::fs::metadata(&path).map_err(|e| {
        bad(format!(
            "cannot read it ({e}): give a file holding user:password, or a credential name \
             of the unit's LoadCredential="
        ))
    })?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:04o} lets other users read the camera password: chmod 600 it",
            meta.mode() & 0o7777
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }),
        _ => Err(bad("its first line must be user:password".into())),
    }
}

/// What part of a stream is kept (see `policy.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyKind {
    Always,
    Person,
    Uncertain,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub kind: PolicyKind,
    /// Coverage (person) or uncertain share (uncertain) at or above which a frame counts.
    pub min_share: f64,
    pub min_duration: Duration,
    pub preroll: Duration,
    /// Byte cap of the in-memory pre-roll ring (policies other than `always`).
    pub preroll_max_bytes: u64,
}

/// The runner's `resize` when a camera names none: `bilinear`. Measured on moving content
/// (`scripts/iou-moving.py`, `docs/results/iou-moving.json`: the test person moving over a
/// panning background at three scales) it gives masks closer to the person than
/// `antialias` (mean IoU 0.72 / 0.76 / 0.22 against 0.45 / 0.58 / 0.13), and at 8 cameras
/// more fresh masks for less CPU (`scripts/bench-runner.sh`). The element's own default
/// stays `antialias`.
pub const DEFAULT_RESIZE: &str = "bilinear";

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub path: PathBuf,
    pub device: String,
    /// ONNX Runtime threads as configured; 0: `auto_threads`.
    pub threads: u32,
    /// This camera's share of the cores (set by `validate`), used when `threads` is 0.
    pub auto_threads: u32,
    pub threshold: f64,
    pub inference_interval: u32,
    /// The element's `pipelined` (CPU path: inference overlaps the next frame's
    /// pre-processing, one frame of latency).
    pub pipelined: bool,
    /// The element's `spin` (when ONNX Runtime's threads busy-wait); unset: its default.
    pub spin: Option<String>,
    pub resize: Option<String>,
    pub layout: Option<String>,
    pub channel_order: Option<String>,
    pub input_size: Option<String>,
    pub activation: Option<String>,
    pub person_class: Option<i32>,
    pub mean: Option<String>,
    pub std: Option<String>,
    pub scale: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Mkv,
}

impl Container {
    pub fn extension(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Mkv => "mkv",
        }
    }
    pub fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4mux",
            Container::Mkv => "matroskamux",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub enabled: bool,
    pub container: Container,
    pub clip_duration: Duration,
    /// 0: no size limit.
    pub clip_max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Camera {
    pub name: String,
    pub source: Source,
    pub model: Model,
    pub recording: Recording,
    pub policy: Policy,
    /// On-screen display: the video sink element (`autovideosink` for `display = true`).
    pub display: Option<String>,
    /// Re-streamed over the runner's RTSP server at `rtsp://<rtsp_listen>/<name>`.
    pub restream: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub output_dir: PathBuf,
    pub host: Option<String>,
    pub disk_floor_bytes: u64,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub stall_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub progress: bool,
    /// Address of the RTSP server that re-streams the processed video of cameras with
    /// `restream = true`.
    pub rtsp_listen: Option<std::net::SocketAddr>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub runner: Runner,
    pub cameras: Vec<Camera>,
}

fn positive(key: &str, v: f64) -> Result<Duration> {
    if v.is_finite() && v > 0.0 && v < 1e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(Error::invalid(key, v, "a number of seconds > 0 is allowed"))
    }
}

/// `mb` MiB in bytes; a value whose bytes overflow a u64 is refused, not wrapped.
fn mebibytes(key: &str, mb: u64) -> Result<u64> {
    mb.checked_mul(1024 * 1024)
        .ok_or_else(|| Error::invalid(key, mb, format!("allowed: 0..={} MiB", u64::MAX >> 20)))
}

fn share(key: &str, v: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(Error::invalid(key, v, "a share between 0.0 and 1.0 is allowed"))
    }
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<String> {
    let l = v.to_ascii_lowercase();
    if allowed.contains(&l.as_str()) {
        Ok(l)
    } else {
        Err(Error::invalid(
            key,
            format!("\"{v}\""),
            format!("allowed: {}", allowed.join(", ")),
        ))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Host and port of an `rtsp://` or `rtsps://` URL.
pub fn rtsp_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "rtsp" | "rtspt" | "rtspu" => 554,
        "rtsps" => 322,
        _ => return None,
    };
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(stripped) = hostport.strip_prefix('[') {
        let (host, after) = stripped.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None if !hostport.is_empty() => Some((hostport.to_string(), default)),
        None => None,
    }
}

fn merge_model(shared: &ModelFile, cam: Option<&ModelFile>, prefix: &str, base: &Path) -> Result<Model> {
    let d = ModelFile::default();
    let c = cam.unwrap_or(&d);
    macro_rules! pick {
        ($f:ident) => {
            c.$f.clone().or_else(|| shared.$f.clone())
        };
    }
    let key = |k: &str| format!("{prefix}model.{k}");
    let path = pick!(path).ok_or_else(|| {
        Error::invalid(
            key("path"),
            "(missing)",
            "the path of an .onnx model file is required",
        )
    })?;
    let path = if path.is_relative() { base.join(path) } else { path };
    // Values the element takes are checked against the element's own ranges and nicks
    // when the camera's elements are built (`camera::unetmask`, run by `check` and before
    // any pipeline starts): one source for them, not a copy here.
    let lower = |v: Option<String>| v.map(|v| v.to_ascii_lowercase());
    Ok(Model {
        path,
        device: pick!(device)
            .unwrap_or_else(|| "auto".into())
            .to_ascii_lowercase(),
        threads: pick!(threads).unwrap_or(0),
        auto_threads: 1,
        threshold: pick!(threshold).unwrap_or(0.5),
        inference_interval: pick!(inference_interval).unwrap_or(1),
        pipelined: pick!(pipelined).unwrap_or(false),
        spin: lower(pick!(spin)),
        resize: lower(pick!(resize)).or_else(|| Some(DEFAULT_RESIZE.to_string())),
        layout: lower(pick!(layout)),
        channel_order: lower(pick!(channel_order)),
        input_size: pick!(input_size),
        activation: lower(pick!(activation)),
        person_class: pick!(person_class),
        mean: pick!(mean),
        std: pick!(std),
        scale: pick!(scale),
    })
}

fn merge_recording(shared: &RecordingFile, cam: Option<&RecordingFile>, prefix: &str) -> Result<Recording> {
    let d = RecordingFile::default();
    let c = cam.unwrap_or(&d);
    let key = |k: &str| format!("{prefix}recording.{k}");
    let container = match c.container.clone().or_else(|| shared.container.clone()) {
        None => Container::Mp4,
        Some(v) => match one_of(&key("container"), &v, &["mp4", "mkv"])?.as_str() {
            "mkv" => Container::Mkv,
            _ => Container::Mp4,
        },
    };
    let clip_seconds = c.clip_seconds.or(shared.clip_seconds).unwrap_or(60.0);
    Ok(Recording {
        enabled: c.enabled.or(shared.enabled).unwrap_or(true),
        container,
        clip_duration: positive(&key("clip_seconds"), clip_seconds)?,
        clip_max_bytes: mebibytes(
            &key("clip_max_mb"),
            c.clip_max_mb.or(shared.clip_max_mb).unwrap_or(0),
        )?,
    })
}

fn policy(p: Option<&PolicyFile>, prefix: &str) -> Result<Policy> {
    let d = PolicyFile::default();
    let p = p.unwrap_or(&d);
    let key = |k: &str| format!("{prefix}policy.{k}");
    let kind = match p.kind.as_deref() {
        None => PolicyKind::Always,
        Some(v) => match one_of(&key("kind"), v, &["always", "person", "uncertain"])?.as_str() {
            "person" => PolicyKind::Person,
            "uncertain" => PolicyKind::Uncertain,
            _ => PolicyKind::Always,
        },
    };
    let (share_key, share_val, other) = match kind {
        PolicyKind::Uncertain => (
            "min_uncertain",
            p.min_uncertain.unwrap_or(0.1),
            p.min_coverage.map(|_| "min_coverage"),
        ),
        _ => (
            "min_coverage",
            p.min_coverage.unwrap_or(0.02),
            p.min_uncertain.map(|_| "min_uncertain"),
        ),
    };
    if let Some(o) = other {
        return Err(Error::invalid(
            key(o),
            "(set)",
            format!("not used by policy kind {kind:?}; use {share_key}"),
        ));
    }
    let min_duration = p.min_duration_s.unwrap_or(1.0);
    if !(min_duration.is_finite() && (0.0..1e6).contains(&min_duration)) {
        return Err(Error::invalid(
            key("min_duration_s"),
            min_duration,
            "allowed: seconds >= 0",
        ));
    }
    let preroll = p.preroll_s.unwrap_or(2.0);
    if !(preroll.is_finite() && (0.0..=600.0).contains(&preroll)) {
        return Err(Error::invalid(
            key("preroll_s"),
            preroll,
            "allowed: 0..=600 seconds",
        ));
    }
    let preroll_max_mb = p.preroll_max_mb.unwrap_or(64);
    if !(1..=65536).contains(&preroll_max_mb) {
        return Err(Error::invalid(
            key("preroll_max_mb"),
            preroll_max_mb,
            "allowed: 1..=65536 MiB",
        ));
    }
    Ok(Policy {
        kind,
        min_share: share(&key(share_key), share_val)?,
        min_duration: Duration::from_secs_f64(min_duration),
        preroll: Duration::from_secs_f64(preroll),
        preroll_max_bytes: preroll_max_mb * 1024 * 1024,
    })
}

fn source(c: &CameraFile, prefix: &str, base: &Path) -> Result<Source> {
    let key = |k: &str| format!("{prefix}{k}");
    let kind = c.source.as_deref().ok_or_else(|| {
        Error::invalid(
            key("source"),
            "(missing)",
            "allowed: file, rtsp, v4l2, testpattern",
        )
    })?;
    let kind = one_of(&key("source"), kind, &["file", "rtsp", "v4l2", "testpattern"])?;
    let used: &[(&str, bool)] = &[
        ("path", c.path.is_some()),
        ("url", c.url.is_some()),
        ("credentials_file", c.credentials_file.is_some()),
        ("transport", c.transport.is_some()),
        ("device", c.device.is_some()),
        ("pattern", c.pattern.is_some()),
        ("width", c.width.is_some()),
        ("height", c.height.is_some()),
        ("fps", c.fps.is_some()),
        ("num_frames", c.num_frames.is_some()),
        ("live", c.live.is_some()),
    ];
    let allowed: &[&str] = match kind.as_str() {
        "file" => &["path"],
        "rtsp" => &["url", "credentials_file", "transport"],
        "v4l2" => &["device"],
        _ => &["pattern", "width", "height", "fps", "num_frames", "live"],
    };
    for (k, set) in used {
        if *set && !allowed.contains(k) {
            return Err(Error::invalid(
                key(k),
                "(set)",
                format!(
                    "not used by source = \"{kind}\"; keys for it: {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(match kind.as_str() {
        "file" => {
            let p = c
                .path
                .clone()
                .ok_or_else(|| Error::invalid(key("path"), "(missing)", "a file path is required"))?;
            Source::File {
                path: if p.is_relative() { base.join(p) } else { p },
            }
        }
        "rtsp" => {
            let url = c
                .url
                .clone()
                .ok_or_else(|| Error::invalid(key("url"), "(missing)", "an rtsp:// URL is required"))?;
            if rtsp_host_port(&url).is_none() {
                return Err(Error::invalid(
                    key("url"),
                    format!("\"{}\"", crate::redact::redact(&url)),
                    "allowed: rtsp://[user:pass@]host[:port]/path",
                ));
            }
            let tcp = match c.transport.as_deref() {
                None => true,
                Some(t) => one_of(&key("transport"), t, &["tcp", "udp"])? == "tcp",
            };
            let (url, in_url) = split_login(&url);
            let credentials = match (&c.credentials_file, in_url) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        key("url"),
                        format!("\"{url}\""),
                        "holds a login and credentials_file is set too: keep one (the file)",
                    ));
                }
                (Some(f), None) => Some(read_credentials(&key("credentials_file"), f, base)?),
                (None, login) => login,
            };
            Source::Rtsp {
                url,
                tcp,
                credentials,
            }
        }
        "v4l2" => Source::V4l2 {
            device: PathBuf::from(c.device.clone().unwrap_or_else(|| "/dev/video0".into())),
        },
        _ => {
            let pattern = c.pattern.clone().unwrap_or_else(|| "smpte".into());
            let (w, h, fps) = (
                c.width.unwrap_or(320),
                c.height.unwrap_or(240),
                c.fps.unwrap_or(30),
            );
            for (k, v, max) in [("width", w, 7680), ("height", h, 4320), ("fps", fps, 240)] {
                if v == 0 || v > max || (k != "fps" && v % 2 == 1) {
                    return Err(Error::invalid(
                        key(k),
                        v,
                        format!("allowed: 1..={max} (even for sizes)"),
                    ));
                }
            }
            if c.num_frames == Some(0) {
                return Err(Error::invalid(
                    key("num_frames"),
                    0,
                    "allowed: 1 or more (leave out for endless)",
                ));
            }
            Source::TestPattern {
                pattern,
                width: w,
                height: h,
                fps,
                num_frames: c.num_frames,
                live: c.live.unwrap_or(false),
            }
        }
    })
}

fn display(d: Option<&DisplayFile>, prefix: &str) -> Result<Option<String>> {
    match d {
        None | Some(DisplayFile::Flag(false)) => Ok(None),
        Some(DisplayFile::Flag(true)) => Ok(Some("autovideosink".into())),
        Some(DisplayFile::Sink(s)) => {
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ok {
                Ok(Some(s.clone()))
            } else {
                Err(Error::invalid(
                    format!("{prefix}display"),
                    format!("\"{s}\""),
                    "allowed: true, false, or the name of a video sink element (e.g. \"xvimagesink\", \"fakesink\")",
                ))
            }
        }
    }
}

/// Turns the file structure into [`Settings`]; `base` resolves relative paths (the config
/// file's directory).
pub fn validate(file: &ConfigFile, base: &Path) -> Result<Settings> {
    let r = &file.runner;
    let output_dir = r
        .output_dir
        .clone()
        .ok_or_else(|| Error::invalid("runner.output_dir", "(missing)", "a directory path is required"))?;
    let output_dir = if output_dir.is_relative() {
        base.join(output_dir)
    } else {
        output_dir
    };
    let metrics_listen = match &r.metrics_listen {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s.parse().map_err(|_| {
            Error::invalid(
                "runner.metrics_listen",
                format!("\"{s}\""),
                "allowed: IP:PORT, e.g. 127.0.0.1:9757",
            )
        })?),
    };
    let rtsp_listen = match &r.rtsp_listen {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s.parse().map_err(|_| {
            Error::invalid(
                "runner.rtsp_listen",
                format!("\"{s}\""),
                "allowed: IP:PORT, e.g. 127.0.0.1:8554",
            )
        })?),
    };
    let backoff_initial = positive("runner.backoff_initial_s", r.backoff_initial_s.unwrap_or(1.0))?;
    let backoff_max = positive("runner.backoff_max_s", r.backoff_max_s.unwrap_or(60.0))?;
    if backoff_max < backoff_initial {
        return Err(Error::invalid(
            "runner.backoff_max_s",
            backoff_max.as_secs_f64(),
            "must be >= runner.backoff_initial_s",
        ));
    }
    let runner = Runner {
        output_dir,
        host: r.host.clone(),
        disk_floor_bytes: mebibytes("runner.disk_floor_mb", r.disk_floor_mb.unwrap_or(512))?,
        metrics_listen,
        stall_timeout: positive("runner.stall_timeout_s", r.stall_timeout_s.unwrap_or(5.0))?,
        backoff_initial,
        backoff_max,
        progress: r.progress.unwrap_or(true),
        rtsp_listen,
    };
    if file.cameras.is_empty() {
        return Err(Error::invalid(
            "cameras",
            "(none)",
            "at least one [cameras.NAME] table is required",
        ));
    }
    let mut cameras = Vec::new();
    for (name, c) in &file.cameras {
        let prefix = format!("cameras.{name}.");
        if !valid_name(name) {
            return Err(Error::invalid(
                format!("cameras.{name}"),
                format!("\"{name}\""),
                "camera names allowed: 1-64 of a-z, 0-9, _ and -",
            ));
        }
        if c.enabled == Some(false) {
            continue;
        }
        cameras.push(Camera {
            name: name.clone(),
            source: source(c, &prefix, base)?,
            model: merge_model(&file.model, c.model.as_ref(), &prefix, base)?,
            recording: merge_recording(&file.recording, c.recording.as_ref(), &prefix)?,
            policy: policy(c.policy.as_ref(), &prefix)?,
            display: display(c.display.as_ref(), &prefix)?,
            restream: match c.restream {
                Some(true) if runner.rtsp_listen.is_none() => {
                    return Err(Error::invalid(
                        format!("{prefix}restream"),
                        true,
                        "needs the runner's RTSP server: set runner.rtsp_listen, e.g. \"127.0.0.1:8554\"",
                    ));
                }
                r => r.unwrap_or(false),
            },
        });
    }
    if cameras.is_empty() {
        return Err(Error::invalid(
            "cameras",
            "(all disabled)",
            "at least one enabled camera is required",
        ));
    }
    // threads = 0: share the cores between the cameras instead of giving every camera's
    // ONNX Runtime one thread per core (N cameras x cores threads fighting over the cores).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = auto_threads(cores, cameras.len());
    for c in &mut cameras {
        c.model.auto_threads = threads;
    }
    Ok(Settings { runner, cameras })
}

/// ONNX Runtime threads per camera when the config says 0: the cores divided between the
/// cameras, at least one each.
pub fn auto_threads(cores: usize, cameras: usize) -> u32 {
    (cores / cameras.max(1)).max(1) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_test_helpers_compare_with_the_runners_default_resize() {
        assert_eq!(super::DEFAULT_RESIZE, edgemask_tests::element::RUNNER_RESIZE);
    }

    use super::*;

    #[test]
    fn auto_threads_share_the_cores() {
        assert_eq!(auto_threads(2, 1), 2);
        assert_eq!(auto_threads(2, 4), 1);
        assert_eq!(auto_threads(16, 4), 4);
        assert_eq!(auto_threads(16, 3), 5);
        assert_eq!(auto_threads(1, 0), 1);
    }

    fn parse(toml: &str) -> Result<Settings> {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        validate(&file_structure(cfg)?, Path::new("/base"))
    }

    const GOOD: &str = r#"
        [runner]
        output_dir = "out"
        [model]
        path = "m.onnx"
        [cameras.front]
        source = "testpattern"
        num_frames = 10
    "#;

    #[test]
    fn good_config_resolves_paths_and_defaults() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.runner.output_dir, PathBuf::from("/base/out"));
        assert_eq!(s.cameras.len(), 1);
        let c = &s.cameras[0];
        assert_eq!(c.model.path, PathBuf::from("/base/m.onnx"));
        assert_eq!(c.model.threshold, 0.5);
        assert_eq!(c.policy.kind, PolicyKind::Always);
        assert_eq!(c.recording.container, Container::Mp4);
        assert!(matches!(
            c.source,
            Source::TestPattern {
                width: 320,
                height: 240,
                fps: 30,
                num_frames: Some(10),
                ..
            }
        ));
    }

    #[test]
    fn unknown_key_names_key_value_and_allowed() {
        let e = parse(&GOOD.replace("path = \"m.onnx\"", "path = \"m.onnx\"\ndevcie = \"cpu\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: unknown key `model.devcie` (value \"cpu\"); allowed keys here: path, device, \
             threads, threshold, inference_interval, pipelined, spin, resize, layout, channel_order, input_size, \
             activation, person_class, mean, std, scale"
        );
        assert_eq!(e.exit_code(), crate::error::exit::CONFIG);
    }

    /// Several mistakes: the first in the file is reported, every time (the `config`
    /// crate's tables keep the file's order; a hash map's order changed from run to run).
    #[test]
    fn of_several_mistakes_the_first_in_the_file_is_reported_every_time() {
        let toml = GOOD
            .replace("output_dir = \"out\"", "output_dir = \"out\"\ncolour = \"blue\"")
            .replace("path = \"m.onnx\"", "path = \"m.onnx\"\ndevcie = \"cpu\"")
            .replace("num_frames = 10", "num_frames = 10\nfps_max = 30");
        let messages: std::collections::BTreeSet<String> =
            (0..30).map(|_| parse(&toml).unwrap_err().to_string()).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        let first = messages.first().unwrap();
        assert!(first.contains("unknown key `runner.colour`"), "{first}");
    }

    #[test]
    fn unknown_camera_key_is_reported_with_camera_path() {
        let e = parse(&format!("{GOOD}\nfoo = 3\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unknown key `cameras.front.foo` (value 3)"), "{msg}");
        assert!(msg.contains("allowed keys here: source, path, url,"), "{msg}");
        assert!(msg.ends_with("restream, model, recording, policy"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_reported_at_every_level() {
        let table = |t: &str| format!("{GOOD}\n{t}\n");
        for (toml, key, value, allowed) in [
            (
                format!("colour = \"blue\"\n{GOOD}"),
                "colour",
                "\"blue\"",
                "runner, model, recording, cameras",
            ),
            (
                GOOD.replace("output_dir = \"out\"", "output_dir = \"out\"\noutput = \"x\""),
                "runner.output",
                "\"x\"",
                "output_dir, host, disk_floor_mb, metrics_listen, stall_timeout_s, backoff_initial_s, \
                 backoff_max_s, progress, rtsp_listen",
            ),
            (
                table("[recording]\nclip_s = 5"),
                "recording.clip_s",
                "5",
                "enabled, container, clip_seconds, clip_max_mb",
            ),
            (
                table("[cameras.front.recording]\nformat = \"mkv\""),
                "cameras.front.recording.format",
                "\"mkv\"",
                "enabled, container, clip_seconds, clip_max_mb",
            ),
            (
                table("[cameras.front.model]\nthreshhold = 0.7"),
                "cameras.front.model.threshhold",
                "0.7",
                "path, device, threads, threshold,",
            ),
            (
                table("[cameras.front.policy]\nmin_coverge = 0.1"),
                "cameras.front.policy.min_coverge",
                "0.1",
                "kind, min_coverage, min_uncertain, min_duration_s, preroll_s, preroll_max_mb",
            ),
        ] {
            let msg = parse(&toml).unwrap_err().to_string();
            assert!(
                msg.contains(&format!(
                    "unknown key `{key}` (value {value}); allowed keys here: {allowed}"
                )),
                "{key}: {msg}"
            );
        }
    }

    #[test]
    fn allowed_keys_are_read_from_serdes_message() {
        assert_eq!(
            allowed_keys("unknown field `foo`, expected one of `a`, `b`, `c`"),
            Some(vec!["a", "b", "c"])
        );
        assert_eq!(
            allowed_keys("unknown field `foo`, expected `a` or `b`"),
            Some(vec!["a", "b"])
        );
        assert_eq!(allowed_keys("unknown field `foo`, expected `a`"), Some(vec!["a"]));
        assert_eq!(
            allowed_keys("unknown field `foo`, there are no fields"),
            Some(vec![])
        );
        assert_eq!(allowed_keys("invalid type: string \"x\", expected u64"), None);
    }

    #[test]
    fn wrong_type_is_a_config_error_naming_the_key() {
        let e = parse(&GOOD.replace("num_frames = 10", "num_frames = \"ten\"")).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::CONFIG);
        assert!(e.to_string().contains("num_frames"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (from, to, key) in [
            ("num_frames = 10", "num_frames = 0", "cameras.front.num_frames"),
            (
                // Its bytes overflowed a u64 (a panic in debug builds, a wrapped size else).
                "num_frames = 10",
                "num_frames = 10\n[cameras.front.recording]\nclip_max_mb = 9223372036854775807",
                "cameras.front.recording.clip_max_mb",
            ),
            (
                "source = \"testpattern\"",
                "source = \"webcam\"",
                "cameras.front.source",
            ),
            (
                "num_frames = 10",
                "num_frames = 10\nurl = \"rtsp://x\"",
                "cameras.front.url",
            ),
            (
                "output_dir = \"out\"",
                "output_dir = \"out\"\nmetrics_listen = \"nope\"",
                "runner.metrics_listen",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
            assert_eq!(e.exit_code(), crate::error::exit::CONFIG);
        }
    }

    #[test]
    fn camera_model_overrides_shared_fields() {
        let s = parse(&format!("{GOOD}\n[cameras.front.model]\nthreshold = 0.7\n")).unwrap();
        assert_eq!(s.cameras[0].model.threshold, 0.7);
        assert_eq!(s.cameras[0].model.path, PathBuf::from("/base/m.onnx"));
        assert!(!s.cameras[0].model.pipelined, "off unless asked for");
        let s = parse(&format!("{GOOD}\n[cameras.front.model]\npipelined = true\n")).unwrap();
        assert!(s.cameras[0].model.pipelined);
        let e = parse(&format!("{GOOD}\n[cameras.front.model]\npipelined = \"maybe\"\n")).unwrap_err();
        assert!(e.to_string().contains("pipelined"), "{e}");
    }

    #[test]
    fn policy_parsing() {
        let s = parse(&format!(
            "{GOOD}\n[cameras.front.policy]\nkind = \"person\"\nmin_coverage = 0.1\nmin_duration_s = 0.5\npreroll_s = 1\n"
        ))
        .unwrap();
        let p = s.cameras[0].policy;
        assert_eq!(p.kind, PolicyKind::Person);
        assert_eq!(p.min_share, 0.1);
        assert_eq!(p.preroll, Duration::from_secs(1));
        let e = parse(&format!(
            "{GOOD}\n[cameras.front.policy]\nkind = \"person\"\nmin_uncertain = 0.1\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("min_uncertain"), "{e}");
    }

    #[test]
    fn display_and_restream() {
        let s = parse(&format!("{GOOD}\ndisplay = true\n")).unwrap();
        assert_eq!(s.cameras[0].display.as_deref(), Some("autovideosink"));
        assert!(!s.cameras[0].restream);
        let s = parse(&format!("{GOOD}\ndisplay = \"fakesink\"\n")).unwrap();
        assert_eq!(s.cameras[0].display.as_deref(), Some("fakesink"));
        let e = parse(&format!("{GOOD}\ndisplay = \"a b\"\n")).unwrap_err();
        assert!(e.to_string().contains("cameras.front.display"), "{e}");
        let e = parse(&format!("{GOOD}\nrestream = true\n")).unwrap_err();
        assert!(e.to_string().contains("runner.rtsp_listen"), "{e}");
        let s = parse(&format!("{GOOD}\nrestream = true\n").replace(
            "output_dir = \"out\"",
            "output_dir = \"out\"\nrtsp_listen = \"127.0.0.1:8554\"",
        ))
        .unwrap();
        assert!(s.cameras[0].restream);
        assert_eq!(s.runner.rtsp_listen, Some("127.0.0.1:8554".parse().unwrap()));
    }

    #[test]
    fn url_helpers() {
        let (url, login) = split_login("rtsp://ad%3Amin:p%40ss:w@cam:8554/s?x=a@b");
        assert_eq!(url, "rtsp://cam:8554/s?x=a@b");
        let login = login.unwrap();
        assert_eq!(
            (login.user.as_str(), login.password.as_str()),
            ("ad:min", "p@ss:w")
        );
        assert!(!format!("{login:?}").contains("p@ss"), "Debug hides the password");
        assert_eq!(
            split_login("rtsp://cam/s@x"),
            ("rtsp://cam/s@x".to_string(), None)
        );
        let (url, login) = split_login("rtsp://user@cam/s");
        assert_eq!(
            (url.as_str(), login.unwrap().password.as_str()),
            ("rtsp://cam/s", "")
        );
        assert_eq!(
            rtsp_host_port("rtsp://u:p@127.0.0.1:8554/s"),
            Some(("127.0.0.1".into(), 8554))
        );
        assert_eq!(rtsp_host_port("rtsp://cam/s"), Some(("cam".into(), 554)));
        assert_eq!(rtsp_host_port("rtsp://[::1]:9/s"), Some(("::1".into(), 9)));
        assert_eq!(rtsp_host_port("http://cam/s"), None);
    }
}
