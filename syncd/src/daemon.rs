//! The daemon: watch + rescan, readiness, journal, dispatch, retention, shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use rustix::fs::FileType;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{AfterUpload, Config};
use crate::contract;
use crate::dest::Dest;
use crate::error::{Result, SyncError};
use crate::journal::{self, Event, FileRow, Journal, NewFile};
use crate::keys::{self, KeyVars};
use crate::metrics::{self, Metrics};
use crate::ratelimit::RateLimiter;
use crate::ready::{self, NameRules, Observation};
use crate::refusal::Refusal;
use crate::retry::Blame;
use crate::tree::{self, Policy};
use crate::upload::{Outcome, Worker, remove_uploaded};

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOpts {
    /// Drain the backlog and exit.
    pub once: bool,
}

/// What a run did (for `--once`).
#[derive(Debug, Default)]
pub struct Report {
    pub uploaded: u64,
    /// Files left queued because their upload failed (in `--once`).
    pub failed: u64,
    /// Files not yet settled when `--once` gave up waiting.
    pub unsettled: usize,
    /// The destination refused us.
    pub destination_error: Option<SyncError>,
}

/// Finds ready files: full scans and single paths. Nothing it looks at can stop it: a file
/// that cannot be uploaded is refused (logged once, counted, listed by `status`) and
/// skipped.
pub struct Scanner {
    rules: NameRules,
    roots: Vec<PathBuf>,
    exclude: Vec<PathBuf>,
    settle: Duration,
    host: String,
    template: String,
    prefix: String,
    policy: Policy,
    metrics: Arc<Metrics>,
    /// Files seen but not ready yet: observation and whether a change was seen.
    pub unsettled: HashMap<PathBuf, (Observation, bool)>,
}

/// A clip manifest as the scanner finds it.
enum Manifest {
    Absent,
    Good(serde_json::Value),
    /// Refused (too large, not JSON, a link…): reported; its clip is treated as one
    /// without a manifest.
    Refused,
}

impl Scanner {
    pub fn new(cfg: &Config) -> Scanner {
        let mut exclude = vec![cfg.journal.clone()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = cfg.journal.clone().into_os_string();
            p.push(suffix);
            exclude.push(PathBuf::from(p));
        }
        if let crate::config::Destination::File { dir } = cfg.destination() {
            exclude.push(dir);
        }
        Scanner {
            rules: cfg.name_rules(),
            roots: cfg.watch.clone(),
            exclude,
            settle: cfg.settle(),
            host: cfg.host_name(),
            template: cfg.key_template.clone(),
            prefix: cfg.destination().prefix().to_string(),
            policy: cfg.file_policy(),
            metrics: Arc::new(Metrics::new()),
            unsettled: HashMap::new(),
        }
    }

    /// Count refusals in the daemon's metrics (else in a private set).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Scanner {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.iter().any(|e| path.starts_with(e))
    }

    fn refuse(&self, journal: Option<&Journal>, path: &Path, reason: Refusal, detail: &str) {
        tree::report(journal, &self.metrics, path, reason, detail);
    }

    /// Walk every root; collect ready files into `out`.
    pub fn scan_all(&mut self, journal: Option<&Journal>, out: &mut Vec<NewFile>) {
        let mut seen = HashSet::new();
        for root in self.roots.clone() {
            self.scan_tree(&root, journal, out, &mut seen);
        }
        self.unsettled.retain(|p, _| seen.contains(p));
    }

    /// Walk one directory tree (bounded depth). Every directory is opened beneath its root
    /// without following a symlink, so the walk never leaves the tree, even when a
    /// directory is swapped for a link while it runs.
    pub fn scan_tree(
        &mut self,
        top: &Path,
        journal: Option<&Journal>,
        out: &mut Vec<NewFile>,
        seen: &mut HashSet<PathBuf>,
    ) {
        let Some((root, rel)) =
            tree::split(&self.roots, top).map(|(r, l)| (r.to_path_buf(), l.to_path_buf()))
        else {
            return;
        };
        if self.excluded(top) {
            return;
        }
        let mut stack = vec![(rel, 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let entries = match tree::list_dir(&root, &dir) {
                Ok(e) => e,
                Err(SyncError::Refused { path, reason, detail }) => {
                    self.refuse(journal, &path, reason, &detail);
                    continue;
                }
                Err(e) if tree::is_not_found(&e) => continue,
                Err(e) => {
                    warn!(dir = %root.join(&dir).display(), error = %e, "cannot list directory");
                    continue;
                }
            };
            for entry in entries {
                let rel = dir.join(&entry.name);
                let path = root.join(&rel);
                if self.excluded(&path) {
                    continue;
                }
                match entry.kind {
                    FileType::Directory if entry.name.to_str().is_none() => self.refuse(
                        journal,
                        &path,
                        Refusal::NotUtf8,
                        "directory name is not UTF-8: not descended into",
                    ),
                    FileType::Directory => {
                        if depth < 32 {
                            stack.push((rel, depth + 1));
                        }
                    }
                    FileType::RegularFile => {
                        seen.insert(path.clone());
                        self.consider(&path, journal, out);
                    }
                    FileType::Symlink => self.refuse(
                        journal,
                        &path,
                        Refusal::Symlink,
                        "a symbolic link: never followed",
                    ),
                    // Temporary names (sockets of some tool, `.x` files) stay silent.
                    _ if self.rules.is_temp(&entry.name.to_string_lossy()) => {}
                    k => self.refuse(
                        journal,
                        &path,
                        Refusal::NotRegular,
                        &format!("not a regular file ({k:?})"),
                    ),
                }
            }
        }
    }

    /// Re-check files still settling.
    pub fn recheck(&mut self, journal: Option<&Journal>, out: &mut Vec<NewFile>) {
        let paths: Vec<PathBuf> = self.unsettled.keys().cloned().collect();
        for p in paths {
            self.consider(&p, journal, out);
        }
    }

    /// Look at one path (from an event or a scan).
    pub fn consider(&mut self, path: &Path, journal: Option<&Journal>, out: &mut Vec<NewFile>) {
        self.consider_file(path, journal, out);
    }

    /// [`Scanner::consider`]; true when the file is refused (a manifest waits for such
    /// members, like for a rejected one).
    fn consider_file(&mut self, path: &Path, journal: Option<&Journal>, out: &mut Vec<NewFile>) -> bool {
        if self.excluded(path) {
            return false;
        }
        let Some((root, rel)) =
            tree::split(&self.roots, path).map(|(r, l)| (r.to_path_buf(), l.to_path_buf()))
        else {
            return false;
        };
        let Some(os_name) = path.file_name() else {
            return false;
        };
        let Some(name) = os_name.to_str() else {
            self.unsettled.remove(path);
            if !self.rules.is_temp(&os_name.to_string_lossy()) {
                self.refuse(journal, path, Refusal::NotUtf8, "file name is not UTF-8");
                return true;
            }
            return false;
        };
        if self.rules.is_temp(name) {
            self.unsettled.remove(path);
            return false;
        }
        if path.to_str().is_none() {
            self.unsettled.remove(path);
            self.refuse(
                journal,
                path,
                Refusal::NotUtf8,
                "a directory name above it is not UTF-8",
            );
            return true;
        }
        let id = match tree::stat(&root, &rel) {
            Ok(id) => id,
            Err(SyncError::Refused {
                path: p,
                reason,
                detail,
            }) => {
                self.unsettled.remove(path);
                self.refuse(journal, &p, reason, &detail);
                return true;
            }
            Err(e) => {
                // Gone, or unreadable for now: the next event or scan looks again.
                debug!(path = %path.display(), error = %e, "cannot look at file");
                self.unsettled.remove(path);
                return false;
            }
        };
        if id.kind == FileType::Directory {
            return false;
        }
        let checked = id.check(&self.policy);
        let (Ok(()), Some(mtime_ns)) = (checked.clone(), id.mtime_ns) else {
            self.unsettled.remove(path);
            let (reason, detail) = checked
                .err()
                .unwrap_or((Refusal::BadMtime, "mtime out of range".into()));
            self.refuse(journal, path, reason, &detail);
            return true;
        };
        let (size, mtime) = (id.size, system_time(mtime_ns));
        if let Some(j) = journal {
            match j.get_by_path(path) {
                Ok(Some(row))
                    if row.size == size
                        && row.mtime_ns == mtime_ns
                        && row.ident.is_none_or(|i| i == (id.dev, id.ino)) =>
                {
                    self.unsettled.remove(path);
                    return false;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "journal lookup failed; looked at again later");
                    return false;
                }
            }
        }
        let dir_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let is_manifest = self.rules.manifest_stem(name).is_some();
        let manifest_rel = dir_rel.join(self.rules.manifest_for(name));
        let manifest = self.read_manifest(journal, &root, &manifest_rel);
        let manifest = match manifest {
            Manifest::Good(v) => Some(v),
            Manifest::Refused if is_manifest => {
                self.unsettled.remove(path);
                return true;
            }
            Manifest::Absent if is_manifest => {
                self.unsettled.remove(path);
                return false;
            }
            Manifest::Absent | Manifest::Refused => None,
        };
        let ready = if manifest.is_some() {
            true
        } else if contract::runner_name(name).is_some() {
            // The runner's file without its manifest: the runner stopped between its
            // renames (a crash, a full disk). Never uploaded on its own; it waits for its
            // manifest (docs/clip-contract.md).
            if !self.unsettled.contains_key(path) {
                info!(path = %path.display(), "runner clip file without its manifest: waiting for the manifest, never uploaded alone");
                let now = SystemTime::now();
                self.unsettled
                    .insert(path.to_path_buf(), (Observation::first(size, mtime, now), false));
            }
            false
        } else {
            let now = SystemTime::now();
            let entry = self
                .unsettled
                .entry(path.to_path_buf())
                .or_insert((Observation::first(size, mtime, now), false));
            let updated = entry.0.update(size, mtime, now);
            if updated != entry.0 {
                *entry = (updated, true);
            }
            ready::is_settled(&entry.0, now, self.settle, entry.1)
        };
        if !ready {
            return false;
        }
        if is_manifest {
            // The manifest comes last: its clip's members are final; queue them first. A
            // member refused holds the manifest back, so the store never shows a clip
            // whose manifest names a file it lacks.
            let stem = ready::clip_stem(name).to_string();
            let mut held = Vec::new();
            if let Ok(entries) = tree::list_dir(&root, &dir_rel) {
                for e in entries {
                    let Some(n) = e.name.to_str() else { continue };
                    if !self.rules.is_member(&stem, n) {
                        continue;
                    }
                    let p = root.join(&dir_rel).join(n);
                    let refused = match e.kind {
                        FileType::RegularFile => self.consider_file(&p, journal, out),
                        FileType::Directory => false,
                        _ => true, // a link or a device named like a clip file
                    };
                    if refused {
                        held.push(n.to_string());
                    }
                }
            }
            if !held.is_empty() {
                self.unsettled.remove(path);
                self.refuse(
                    journal,
                    path,
                    Refusal::MemberRefused,
                    &format!("held back: its clip's {} refused", held.join(", ")),
                );
                return true;
            }
        }
        self.unsettled.remove(path);
        match self.new_file(
            journal,
            path,
            name,
            size,
            mtime,
            &id,
            is_manifest,
            manifest.as_ref(),
            &root.join(&manifest_rel),
        ) {
            Ok(f) => {
                // Fixed since it was refused: no longer listed (a bad manifest date stays,
                // it is the manifest's and reported once).
                if self.metrics.unrefuse(path, Refusal::BadDate)
                    && let Some(j) = journal
                {
                    let _ = j.clear_refusals(Some(path), Refusal::BadDate.as_str());
                }
                out.push(f);
                false
            }
            Err((reason, detail)) => {
                self.refuse(journal, path, reason, &detail);
                true
            }
        }
    }

    /// The clip manifest at `rel`, read beneath the root with a size cap.
    fn read_manifest(&self, journal: Option<&Journal>, root: &Path, rel: &Path) -> Manifest {
        let src = tree::Source {
            root: root.to_path_buf(),
            rel: rel.to_path_buf(),
            policy: self.policy,
            want: None,
        };
        match src.read_capped(tree::MAX_MANIFEST_BYTES) {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => Manifest::Good(v),
                Err(e) => {
                    self.refuse(
                        journal,
                        &src.path(),
                        Refusal::BadManifest,
                        &format!("not JSON: {e}"),
                    );
                    Manifest::Refused
                }
            },
            Err(SyncError::Refused { path, reason, detail }) => {
                self.refuse(journal, &path, reason, &detail);
                Manifest::Refused
            }
            Err(e) if tree::is_not_found(&e) => Manifest::Absent,
            Err(e) => {
                debug!(path = %src.path().display(), error = %e, "cannot read manifest");
                Manifest::Refused
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_file(
        &self,
        journal: Option<&Journal>,
        path: &Path,
        name: &str,
        size: u64,
        mtime: SystemTime,
        id: &tree::FileId,
        is_manifest: bool,
        manifest: Option<&serde_json::Value>,
        manifest_path: &Path,
    ) -> std::result::Result<NewFile, (Refusal, String)> {
        let root = self
            .roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len());
        let rel = root.and_then(|r| path.strip_prefix(r).ok()).unwrap_or(path);
        let rel_dir = rel
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let field = |k: &str| {
            manifest
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let camera = field("camera")
            .or_else(|| {
                rel.components()
                    .next()
                    .filter(|_| !rel_dir.is_empty())
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let date = match ["start", "wall_clock_start", "start_time"]
            .iter()
            .find_map(|k| field(k))
        {
            Some(s) => manifest_date(&s).unwrap_or_else(|| {
                self.refuse(
                    journal,
                    manifest_path,
                    Refusal::BadDate,
                    &format!("date {s:?} is not YYYY-MM-DD…; {{date}} taken from the file's mtime"),
                );
                utc_date(mtime)
            }),
            None => utc_date(mtime),
        };
        let vars = KeyVars {
            // Never the manifest's: a runner (or anything that writes a manifest) must not
            // steer uploads into another host's prefix (configs/iam/).
            host: self.host.clone(),
            camera,
            date,
            clip: ready::clip_stem(name).to_string(),
            file: name.to_string(),
            rel: rel.to_string_lossy().into_owned(),
            dir: rel_dir,
        };
        let key = keys::render_key(&self.prefix, &self.template, &vars)
            .map_err(|e| (Refusal::BadKey, e.to_string()))?;
        let clip = format!(
            "{}/{}",
            path.parent().unwrap_or(Path::new("")).display(),
            ready::clip_stem(name)
        );
        Ok(NewFile {
            path: path.to_path_buf(),
            size,
            mtime_ns: journal::mtime_ns(mtime),
            clip: Some(clip),
            is_manifest,
            key,
            ident: Some((id.dev, id.ino)),
        })
    }
}

/// `YYYY-MM-DD` from the start of a manifest date, if it has one. Byte offsets are
/// checked, not assumed: a multi-byte character there must not panic the daemon.
fn manifest_date(s: &str) -> Option<String> {
    let d = s.get(..10)?;
    let ok = d.bytes().enumerate().all(|(i, b)| {
        if i == 4 || i == 7 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    ok.then(|| d.to_string())
}

/// The file's mtime as a `SystemTime` (the journal keeps nanoseconds since the epoch).
fn system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

/// `YYYY-MM-DD` (UTC) of `t`, clamped to years 0000..=9999: never panics, whatever a
/// file's mtime says.
fn utc_date(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!("{:04}-{:02}-{:02}", dt.year(), dt.month() as u8, dt.day()),
        Err(_) if secs > 0 => "9999-12-31".into(),
        Err(_) => "0000-01-01".into(),
    }
}

/// Fraction of the file system holding `path` that is in use (0..1).
pub fn disk_used_fraction(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(1.0 - st.f_bavail as f64 / st.f_blocks as f64)
}

/// `--dry-run`: print what would be uploaded where; touches nothing.
pub fn dry_run(cfg: &Config) -> Result<usize> {
    let journal = if cfg.journal.exists() {
        Some(Journal::open_read_only(&cfg.journal)?)
    } else {
        None
    };
    let mut scanner = Scanner::new(cfg);
    let mut out = Vec::new();
    scanner.scan_all(journal.as_ref(), &mut out);
    let dest = cfg.destination();
    let base = match &dest {
        crate::config::Destination::S3 { bucket, .. } => format!("s3://{bucket}"),
        crate::config::Destination::File { dir } => format!("file://{}", dir.display()),
    };
    out.sort_by_key(|f| (f.is_manifest, f.path.clone()));
    out.dedup_by(|a, b| a.path == b.path);
    for f in &out {
        let how = if f.size > cfg.upload.multipart_threshold {
            format!("multipart, {} parts", f.size.div_ceil(cfg.upload.part_size))
        } else {
            "single PUT".to_string()
        };
        println!(
            "would upload {} -> {base}/{} ({} bytes, {how})",
            f.path.display(),
            f.key,
            f.size
        );
    }
    for p in scanner.unsettled.keys() {
        println!("not ready yet (settling) {}", p.display());
    }
    for (p, reason) in scanner.metrics().refusals() {
        println!("refused ({}) {}", reason.as_str(), p.display());
    }
    Ok(out.len())
}

/// Run the daemon until `cancel` (or, with `--once`, until the backlog is drained).
pub async fn run(cfg: Config, opts: RunOpts, cancel: CancellationToken) -> Result<Report> {
    let cfg = Arc::new(cfg);
    let journal = Journal::open(&cfg.journal)?;
    let metrics = Arc::new(Metrics::new());
    let dest = Arc::new(Dest::new(&cfg, metrics.clone()).await);
    let worker = Arc::new(Worker {
        cfg: cfg.clone(),
        journal: journal.clone(),
        dest: dest.clone(),
        limiter: Arc::new(RateLimiter::new(cfg.upload.rate_limit_bytes_per_sec)),
        metrics: metrics.clone(),
        transfers: Arc::new(tokio::sync::Semaphore::new(cfg.upload.max_files)),
    });
    info!(destination = %dest.describe(), watch = ?cfg.watch, once = opts.once, "edgemask-syncd starting");
    let aux = serve_metrics(&cfg, &metrics, &cancel).await?;

    // The destination: refuse early and clearly.
    let dest_down = match check_destination(&dest, &cfg, &journal, &metrics, &cancel).await {
        Ok(()) => None,
        Err(e @ SyncError::Fatal { .. }) if opts.once => {
            return Ok(Report {
                destination_error: Some(e),
                ..Report::default()
            });
        }
        Err(e @ SyncError::Fatal { .. }) => Some((e.to_string(), Instant::now())),
        Err(e) if cancel.is_cancelled() => {
            debug!(error = %e, "cancelled during start");
            return Ok(Report::default());
        }
        Err(e) => {
            error!(error = %e, "destination not reachable; will keep retrying");
            Some((e.to_string(), Instant::now()))
        }
    };

    // Watch first, then scan, so nothing falls between the two.
    let watch = Watch::start(&cfg.watch)?;
    let scanner = first_scan(&cfg, &journal, &metrics)?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    Daemon {
        timers: Timers::new(&cfg, &metrics),
        cfg,
        opts,
        cancel,
        journal,
        metrics,
        dest,
        worker,
        aux,
        watch,
        scanner,
        dispatch: Dispatch::default(),
        dest_down,
        report: Report::default(),
    }
    .run()
    .await
}

/// The Prometheus endpoint (`metrics.listen`), as the first of the daemon's side tasks.
async fn serve_metrics(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<JoinSet<()>> {
    let mut aux = JoinSet::new();
    if let Some(listen) = &cfg.metrics.listen {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| SyncError::Config(format!("metrics.listen = {listen:?}: {e}")))?;
        aux.spawn(metrics::serve(l, metrics.clone(), cancel.clone()));
    }
    Ok(aux)
}

/// The scan at start, its ready files recorded; the scanner goes on from there.
fn first_scan(cfg: &Config, journal: &Journal, metrics: &Arc<Metrics>) -> Result<Scanner> {
    // Refusals are listed for the files there now: the first scan finds them again.
    let _ = journal.clear_refusals(None, "");
    let mut scanner = Scanner::new(cfg).with_metrics(metrics.clone());
    let mut fresh = Vec::new();
    scanner.scan_all(Some(journal), &mut fresh);
    insert_ready(journal, &mut fresh)?;
    Ok(scanner)
}

/// The daemon once started: its loop waits for the next event (watcher events, a job that
/// ended, the 200 ms tick) and hands it to the method for it.
struct Daemon {
    cfg: Arc<Config>,
    opts: RunOpts,
    cancel: CancellationToken,
    journal: Journal,
    metrics: Arc<Metrics>,
    dest: Arc<Dest>,
    worker: Arc<Worker>,
    /// Tasks besides the uploads: the metrics endpoint, aborts of dropped uploads.
    aux: JoinSet<()>,
    watch: Watch,
    scanner: Scanner,
    dispatch: Dispatch,
    /// The destination refused us: why, and since when. Nothing is dispatched meanwhile.
    dest_down: Option<(String, Instant)>,
    timers: Timers,
    report: Report,
}

/// The file watcher and what it hands over.
struct Watch {
    watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<notify::Event>,
    /// Events were dropped (the watcher's queue or ours overflowed): rescan everything.
    overflow: Arc<AtomicBool>,
}

/// The upload jobs, and the queue they are started from.
#[derive(Default)]
struct Dispatch {
    jobs: JoinSet<(i64, Outcome)>,
    inflight: HashSet<i64>,
    /// Files whose upload failed: not retried before then.
    not_before: HashMap<i64, Instant>,
    /// `--once`: files whose upload failed, left queued.
    given_up: HashSet<i64>,
    blame: Blame,
    /// A batch read of the journal's queue.
    queue: VecDeque<FileRow>,
}

/// The periodic chores: when each last ran.
struct Timers {
    tick: tokio::time::Interval,
    rescan_every: Duration,
    last_scan: Instant,
    last_prune: Instant,
    last_retention: Instant,
    /// When the rate was last sampled, the bytes sent then, and the smoothed rate.
    last_rate: (Instant, u64, f64),
    last_status: Instant,
    last_dest_check: Instant,
    hw_warned: Instant,
    /// systemd's watchdog: whether it is on, its interval, the last ping.
    watchdog: bool,
    watchdog_usec: u64,
    last_ping: Instant,
    /// `--once`: how long to wait for files still settling.
    once_deadline: Instant,
}

impl Watch {
    /// Watch every root (created if missing), recursively. Only events that can change
    /// readiness are kept; a full queue raises `overflow` instead of blocking the watcher.
    fn start(roots: &[PathBuf]) -> Result<Watch> {
        let (tx, events) = mpsc::channel::<notify::Event>(8192);
        let overflow = Arc::new(AtomicBool::new(false));
        let ov = overflow.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.need_rescan() => ov.store(true, Ordering::Relaxed),
            Ok(ev) if !event_matters(&ev.kind) => {}
            Ok(ev) => {
                if tx.try_send(ev).is_err() {
                    ov.store(true, Ordering::Relaxed);
                }
            }
            Err(_) => ov.store(true, Ordering::Relaxed),
        };
        // A symlinked directory is not watched (notify follows links by default): what lies
        // behind it is not ours.
        let mut watcher =
            notify::RecommendedWatcher::new(handler, notify::Config::default().with_follow_symlinks(false))?;
        for root in roots {
            std::fs::create_dir_all(root).map_err(|e| SyncError::io(root, e))?;
            watcher.watch(root, RecursiveMode::Recursive)?;
        }
        Ok(Watch {
            watcher,
            events,
            overflow,
        })
    }
}

impl Timers {
    fn new(cfg: &Config, metrics: &Metrics) -> Timers {
        let now = Instant::now();
        let mut watchdog_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Timers {
            tick,
            rescan_every: Duration::from_secs_f64(cfg.readiness.rescan_secs),
            last_scan: now,
            // The chores that are due at start run at the first tick.
            last_prune: now - Duration::from_secs(3600),
            last_retention: now - Duration::from_secs(60),
            last_rate: (now, metrics.bytes_sent(), 0.0),
            last_status: now - Duration::from_secs(60),
            last_dest_check: now,
            hw_warned: now - Duration::from_secs(3600),
            watchdog,
            watchdog_usec,
            last_ping: now,
            once_deadline: now + cfg.settle() * 2 + Duration::from_secs(1),
        }
    }
}

impl Daemon {
    async fn run(mut self) -> Result<Report> {
        loop {
            let mut fresh = Vec::new();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(ev) = self.watch.events.recv() => self.on_events(ev, &mut fresh),
                Some(res) = self.dispatch.jobs.join_next(), if !self.dispatch.jobs.is_empty() => {
                    self.on_job_end(res)
                }
                _ = self.timers.tick.tick() => self.on_tick(&mut fresh).await?,
            }
            if self.after_event(&mut fresh)? {
                break;
            }
        }
        Ok(self.shutdown().await)
    }

    /// A batch of watcher events: one look per path; a directory is walked only when it is
    /// new here (created or moved in: files may have landed before its watch).
    fn on_events(&mut self, first: notify::Event, fresh: &mut Vec<NewFile>) {
        let mut events = vec![first];
        while events.len() < 4096 {
            match self.watch.events.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let (mut dirs, mut paths) = (HashSet::new(), HashSet::new());
        for ev in events {
            let arrived = new_entry(&ev.kind);
            for p in ev.paths {
                // Not `is_dir()`: it follows a symlink to a directory elsewhere.
                if arrived && std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    dirs.insert(p);
                } else {
                    paths.insert(p);
                }
            }
        }
        for d in &dirs {
            self.scanner
                .scan_tree(d, Some(&self.journal), fresh, &mut HashSet::new());
        }
        for p in &paths {
            if !dirs.iter().any(|d| p.starts_with(d)) {
                self.scanner.consider(p, Some(&self.journal), fresh);
            }
        }
    }

    /// An upload job ended: forget it, or schedule its retry, or stop the destination.
    fn on_job_end(&mut self, res: std::result::Result<(i64, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match res {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "upload task failed");
                return;
            }
        };
        let d = &mut self.dispatch;
        d.inflight.remove(&id);
        self.metrics.touch();
        let cap_ms = self.cfg.retry.cap_ms;
        match outcome {
            Outcome::Done => {
                d.not_before.remove(&id);
                d.blame.done(id);
            }
            Outcome::Cancelled => {}
            Outcome::Later(e) => {
                if self.opts.once {
                    d.given_up.insert(id);
                    self.report.failed += 1;
                } else {
                    d.not_before
                        .insert(id, Instant::now() + Duration::from_millis(cap_ms));
                }
                debug!(id, error = %e, "file re-queued");
            }
            Outcome::DestinationDown(e) if !self.opts.once && !d.blame.fatal(id) => {
                error!(id, error = %e,
                       "refused again for this file only, though the destination passed its check; the file waits, the others go on");
                let wait = Duration::from_millis(cap_ms.saturating_mul(10));
                d.not_before.insert(id, Instant::now() + wait);
            }
            Outcome::DestinationDown(e) => self.stop_destination(e),
        }
    }

    /// The destination refuses uploads: dispatch nothing until it passes its check again.
    fn stop_destination(&mut self, e: SyncError) {
        if self.dest_down.is_none() {
            error!(destination = %self.dest.describe(), error = %e,
                   "destination refuses uploads; stopping it, every file is kept");
            let _ = self.journal.set_meta("destination_error", &e.to_string());
        }
        self.metrics.set_dest_up(false);
        self.dest_down = Some((e.to_string(), Instant::now()));
        self.timers.last_dest_check = Instant::now();
        if self.opts.once && self.report.destination_error.is_none() {
            self.report.destination_error = Some(e);
        }
    }

    /// The 200 ms tick: files still settling, then each periodic chore that is due.
    async fn on_tick(&mut self, fresh: &mut Vec<NewFile>) -> Result<()> {
        self.scanner.recheck(Some(&self.journal), fresh);
        if self.timers.last_scan.elapsed() >= self.timers.rescan_every {
            // Directory walks and the journal are blocking I/O: off the runtime's worker, so
            // requests in flight keep moving during a long scan.
            tokio::task::block_in_place(|| self.scanner.scan_all(Some(&self.journal), fresh));
            self.timers.last_scan = Instant::now();
        }
        self.prune()?;
        self.retain()?;
        self.publish()?;
        self.ping_watchdog();
        self.recheck_destination().await;
        Ok(())
    }

    /// Once a minute: forget the rows of files gone for over `retain.forget_after_days`.
    fn prune(&mut self) -> Result<()> {
        let forget = self.cfg.retain.forget_after_days;
        if forget > 0.0 && self.timers.last_prune.elapsed() >= Duration::from_secs(60) {
            // Batched, so a backlog of old rows never holds the loop for long.
            let older = (forget * 86_400.0) as u64;
            let n = tokio::task::block_in_place(|| self.journal.prune(older, 10_000))?;
            if n > 0 {
                debug!(
                    rows = n,
                    "journal: forgot files gone for over retain.forget_after_days"
                );
            }
            self.timers.last_prune = Instant::now();
        }
        Ok(())
    }

    /// Every 2 s: [`retention`], and the aborts of the multipart uploads of dropped files.
    fn retain(&mut self) -> Result<()> {
        if self.timers.last_retention.elapsed() < Duration::from_secs(2) {
            return Ok(());
        }
        let aborts = tokio::task::block_in_place(|| {
            retention(
                &self.cfg,
                &self.journal,
                &self.metrics,
                &self.dispatch.inflight,
                &mut self.timers.hw_warned,
            )
        })?;
        for (key, upload_id) in aborts {
            // A dropped file's multipart upload: abort it now (else the next start's orphan
            // sweep does).
            let (d, c) = (self.dest.clone(), self.cancel.clone());
            self.aux.spawn(async move {
                if let Dest::S3(s) = &*d {
                    s.abort(&key, &upload_id, &c).await;
                }
            });
        }
        self.timers.last_retention = Instant::now();
        Ok(())
    }

    /// Every second: the upload rate and the queue gauges; every 5 s, systemd's STATUS.
    fn publish(&mut self) -> Result<()> {
        let (t, b, r) = self.timers.last_rate;
        if t.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        let now_b = self.metrics.bytes_sent();
        let inst = (now_b - b) as f64 / t.elapsed().as_secs_f64();
        let rate = 0.7 * r + 0.3 * inst;
        self.metrics.set_rate(rate);
        self.timers.last_rate = (Instant::now(), now_b, rate);
        let s = self.journal.summary()?;
        let count = |state: &str| s.counts.get(state).copied().unwrap_or(0);
        let open = count("pending") + count("uploading");
        let oldest = s
            .oldest_pending_ready_at
            .map(|t| (journal::now_secs() - t).max(0) as u64)
            .unwrap_or(0);
        let bad = count("conflict") + count("rejected");
        self.metrics.set_queue(open, s.pending_bytes, oldest, bad);
        if self.timers.last_status.elapsed() >= Duration::from_secs(5) {
            let st = format!(
                "queue {open} files ({} bytes), {} uploaded, {:.1} MB/s{}",
                s.pending_bytes,
                self.metrics.files_uploaded(),
                rate / 1e6,
                if self.dest_down.is_some() {
                    ", destination DOWN"
                } else {
                    ""
                }
            );
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&st)]);
            self.timers.last_status = Instant::now();
        }
        Ok(())
    }

    /// Watchdog: alive and either idle or moving (bytes or scheduled retries).
    fn ping_watchdog(&mut self) {
        let t = &mut self.timers;
        if t.watchdog && t.last_ping.elapsed() >= Duration::from_micros(t.watchdog_usec / 3) {
            let healthy =
                self.dispatch.jobs.is_empty() || self.metrics.since_progress() < t.watchdog_usec as f64 / 1e6;
            if healthy {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                t.last_ping = Instant::now();
            }
        }
    }

    /// A stopped destination is checked again every `retry.cap_ms`.
    async fn recheck_destination(&mut self) {
        let cap = Duration::from_millis(self.cfg.retry.cap_ms);
        if let Some((_, since)) = &self.dest_down
            && !self.opts.once
            && since.elapsed() >= cap
            && self.timers.last_dest_check.elapsed() >= cap
        {
            self.timers.last_dest_check = Instant::now();
            if check_destination(&self.dest, &self.cfg, &self.journal, &self.metrics, &self.cancel)
                .await
                .is_ok()
            {
                info!(destination = %self.dest.describe(), "destination accepts uploads again");
                self.dest_down = None;
                self.dispatch.blame.check_passed();
            }
        }
    }

    /// After every event but shutdown: a full rescan if the watcher dropped events, the
    /// files found ready recorded, uploads started. True when `--once` is done.
    fn after_event(&mut self, fresh: &mut Vec<NewFile>) -> Result<bool> {
        if self.watch.overflow.swap(false, Ordering::Relaxed) {
            warn!("watcher dropped events; full rescan");
            self.scanner.scan_all(Some(&self.journal), fresh);
            self.timers.last_scan = Instant::now();
        }
        if insert_ready(&self.journal, fresh)? {
            self.dispatch.queue.clear(); // new work: take the journal's order again
        }
        self.start_jobs()?;
        self.once_done()
    }

    /// Start uploads up to the limit. Candidates come from a batch read of the journal's
    /// queue, refilled when used up: one read per batch of jobs, not one per finished job.
    fn start_jobs(&mut self) -> Result<()> {
        // Jobs in flight: the transfers plus the files in their metadata phases (checks).
        let max_jobs = self.cfg.upload.max_files + self.cfg.upload.max_checks;
        let d = &mut self.dispatch;
        if self.dest_down.is_some() || self.cancel.is_cancelled() || d.jobs.len() >= max_jobs {
            return Ok(());
        }
        let now = Instant::now();
        d.not_before.retain(|_, t| *t > now);
        let mut refilled = false;
        while d.jobs.len() < max_jobs {
            let Some(row) = d.queue.pop_front() else {
                if refilled {
                    break;
                }
                let limit = max_jobs * 4 + d.inflight.len() + d.not_before.len() + d.given_up.len();
                d.queue.extend(self.journal.open_work(limit)?);
                refilled = true;
                continue;
            };
            if d.inflight.contains(&row.id)
                || d.not_before.contains_key(&row.id)
                || d.given_up.contains(&row.id)
            {
                continue;
            }
            if row.is_manifest
                && row.state != journal::State::Uploaded
                && let Some(clip) = &row.clip
                && self.journal.clip_members_open(clip)? > 0
            {
                continue; // the manifest goes last
            }
            d.inflight.insert(row.id);
            let (w, c) = (self.worker.clone(), self.cancel.clone());
            d.jobs.spawn(async move {
                let id = row.id;
                (id, w.run(row, c).await)
            });
        }
        Ok(())
    }

    /// `--once`: done when nothing is in flight and every queued file was given up on (and
    /// no file is still settling, or waiting for them is over), or the destination refused us.
    fn once_done(&mut self) -> Result<bool> {
        if !self.opts.once || !self.dispatch.jobs.is_empty() {
            return Ok(false);
        }
        let given_up = &self.dispatch.given_up;
        let open: Vec<FileRow> = self.journal.open_work(given_up.len() + 1)?;
        let queue_empty = open.iter().all(|r| given_up.contains(&r.id));
        let waiting = !self.scanner.unsettled.is_empty() && Instant::now() < self.timers.once_deadline;
        if self.report.destination_error.is_some() || (queue_empty && !waiting) {
            self.report.unsettled = self.scanner.unsettled.len();
            return Ok(true);
        }
        Ok(false)
    }

    /// Parts in flight finish and are checkpointed, bounded by the shutdown deadline.
    async fn shutdown(mut self) -> Report {
        let jobs = &mut self.dispatch.jobs;
        if !jobs.is_empty() {
            info!(in_flight = jobs.len(), "waiting for uploads in flight");
            let deadline = Duration::from_secs_f64(self.cfg.upload.shutdown_timeout_secs);
            if tokio::time::timeout(deadline, async { while jobs.join_next().await.is_some() {} })
                .await
                .is_err()
            {
                warn!("shutdown deadline reached; abandoning uploads in flight (they resume at next start)");
                jobs.abort_all();
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.cancel.cancel();
        while self.aux.join_next().await.is_some() {}
        drop(self.watch.watcher);
        let metrics = &self.metrics;
        self.report.uploaded = metrics.files_uploaded();
        info!(
            uploaded = self.report.uploaded,
            checks_create_only = metrics.existence_checks("create_only"),
            checks_by_head = metrics.existence_checks("head"),
            checks_by_listing = metrics.existence_checks("listing"),
            list_requests = metrics.list_requests(),
            "edgemask-syncd stopped"
        );
        self.report
    }
}

/// Whether a watcher event can change what is ready. Opening, reading and closing a file
/// without writing cannot — and the daemon itself opens every file it uploads and lists
/// every directory it scans: reacting to those (a directory listing produces `IN_OPEN` on
/// the directory, reported by its own watch and its parent's) fed scans back into more
/// scans, flooded the event queue and stalled dispatching for seconds at a time.
pub fn event_matters(kind: &notify::EventKind) -> bool {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        K::Access(AccessKind::Close(AccessMode::Write)) => true,
        K::Access(_) => false,
        K::Any | K::Create(_) | K::Modify(_) | K::Remove(_) | K::Other => true,
    }
}

/// Whether an event says a path newly appeared here (created, or renamed into place).
fn new_entry(kind: &notify::EventKind) -> bool {
    use notify::EventKind as K;
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        kind,
        K::Create(_)
            | K::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any
            ))
    )
}

/// Record the files found ready, in one transaction; true when any is new work.
fn insert_ready(journal: &Journal, fresh: &mut Vec<NewFile>) -> Result<bool> {
    let rows = journal.upsert_ready_many(fresh)?;
    fresh.clear();
    for row in &rows {
        debug!(path = %row.path.display(), key = %row.key, "ready");
    }
    Ok(!rows.is_empty())
}

async fn check_destination(
    dest: &Dest,
    cfg: &Config,
    journal: &Journal,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<()> {
    match dest.probe(cfg, cancel).await {
        Ok(()) => {
            metrics.set_dest_up(true);
            let _ = journal.set_meta("destination_error", "");
            if let Dest::S3(s) = dest {
                let n = s.abort_orphans(journal, cancel).await?;
                if n > 0 {
                    info!(aborted = n, "aborted multipart uploads left behind");
                }
            }
            Ok(())
        }
        Err(e) => {
            metrics.set_dest_up(false);
            metrics.failure(e.kind());
            error!(destination = %dest.describe(), error = %e, "destination check failed; every file is kept");
            let _ = journal.set_meta("destination_error", &e.to_string());
            Err(e)
        }
    }
}

/// Retention of uploaded files: max age, max bytes, disk high-water mark. Only files in
/// the `retained` state (verified in the destination) are deleted here — except, when
/// `retain.drop_not_uploaded` allows it and the disk is still above the mark once no
/// uploaded file is left, the oldest clips not uploaded yet (not in flight), each logged
/// and counted. Returns the multipart uploads of dropped files, to abort.
fn retention(
    cfg: &Config,
    journal: &Journal,
    metrics: &Metrics,
    inflight: &HashSet<i64>,
    hw_warned: &mut Instant,
) -> Result<Vec<(String, String)>> {
    let r = &cfg.retain;
    let hw = r.high_water_percent / 100.0;
    let mut aborts = Vec::new();
    if cfg.after_upload != AfterUpload::Retain && hw <= 0.0 {
        return Ok(aborts);
    }
    let now = journal::mtime_ns(SystemTime::now());
    let evict = |row: &FileRow, why: &str| -> Result<bool> {
        // One file that cannot be deleted (permissions…) must not stop the daemon: it is
        // tried again next round.
        if let Err(e) = remove_uploaded(&cfg.watch, row) {
            warn!(path = %row.path.display(), error = %e, "cannot delete uploaded file");
            return Ok(false);
        }
        journal.mark(row, Event::Evicted, None)?;
        metrics.evicted();
        info!(path = %row.path.display(), reason = why, "deleted uploaded file");
        Ok(true)
    };
    // Candidates are read in batches from the retained files' indexes, oldest first, and
    // only as many as the rule takes: the cost follows what is evicted, not how many
    // files are kept. A file that cannot be deleted is passed over (cursor), not retried
    // in a loop.
    const BATCH: usize = 256;
    if r.max_age_secs > 0 {
        let limit = (r.max_age_secs as i64).saturating_mul(1_000_000_000);
        let mut after = (i64::MIN, i64::MIN);
        loop {
            let old = journal.retained_older(now.saturating_sub(limit), after, BATCH)?;
            for f in &old {
                evict(f, "max_age")?;
                after = (f.mtime_ns, f.id);
            }
            if old.len() < BATCH {
                break;
            }
        }
    }
    if r.max_bytes > 0 {
        let mut total = journal.retained_bytes()?;
        let mut after = i64::MIN;
        'bytes: while total > r.max_bytes {
            let batch = journal.retained_after(after, BATCH)?;
            for f in &batch {
                after = f.uploaded_seq.unwrap_or(after);
                if total <= r.max_bytes {
                    break 'bytes;
                }
                if evict(f, "max_bytes")? {
                    total = total.saturating_sub(f.size);
                }
            }
            if batch.len() < BATCH {
                break;
            }
        }
    }
    if hw > 0.0 {
        let above = |root: &Path| disk_used_fraction(root).is_some_and(|u| u > hw);
        for root in &cfg.watch {
            let mut after = i64::MIN;
            'hw: while above(root) {
                let batch = journal.retained_after(after, BATCH)?;
                for f in &batch {
                    after = f.uploaded_seq.unwrap_or(after);
                    if !above(root) {
                        break 'hw;
                    }
                    if f.path.starts_with(root) {
                        evict(f, "high_water")?;
                    }
                }
                if batch.len() < BATCH {
                    break;
                }
            }
            if above(root) && r.drop_not_uploaded {
                for clip in journal.not_uploaded_clips()? {
                    if !above(root) {
                        break;
                    }
                    if clip
                        .iter()
                        .any(|f| !f.path.starts_with(root) || inflight.contains(&f.id))
                    {
                        continue;
                    }
                    let mut bytes = 0;
                    for f in &clip {
                        if let Err(e) = remove_uploaded(&cfg.watch, f) {
                            warn!(path = %f.path.display(), error = %e, "cannot delete file");
                            continue;
                        }
                        journal.mark_dropped(f, "dropped under disk pressure, never uploaded")?;
                        metrics.dropped();
                        bytes += f.size;
                        if let Some(id) = &f.upload_id {
                            aborts.push((f.key.clone(), id.clone()));
                        }
                    }
                    let names: Vec<String> = clip.iter().map(|f| f.path.display().to_string()).collect();
                    warn!(clip = ?clip[0].clip, files = ?names, bytes,
                          "disk above the high-water mark and no uploaded file left: DROPPED a clip that was never uploaded (retain.drop_not_uploaded)");
                }
            }
            if above(root) && hw_warned.elapsed() > Duration::from_secs(300) {
                warn!(dir = %root.display(), "disk above the high-water mark and no uploaded file left to delete; {}",
                      if r.drop_not_uploaded { "nothing left that may be dropped" } else { "files not uploaded are never deleted (retain.drop_not_uploaded = false)" });
                *hw_warned = Instant::now();
            }
        }
    }
    Ok(aborts)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cfg(out: &Path, settle: f64) -> Config {
        Config::from_toml(
            &format!(
                "watch = [\"{}\"]\ndestination = \"s3://b/p\"\njournal = \"{}/j.sqlite\"\nhost = \"h\"\n[readiness]\nsettle_secs = {settle}\n",
                out.display(),
                out.display()
            ),
            [],
        )
        .unwrap()
    }

    #[test]
    fn scanner_follows_the_clip_contract() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::create_dir_all(out.join("cam")).unwrap();
        let mut s = Scanner::new(&cfg(out, 3600.0));
        std::fs::write(out.join("cam/c1.mkv"), b"media").unwrap();
        std::fs::write(out.join("cam/c1.mask.mkv"), b"mask").unwrap();
        std::fs::write(out.join("cam/.c1.manifest.json.tmp"), b"{}").unwrap();
        std::fs::write(out.join("j.sqlite"), b"journal").unwrap();
        let mut found = Vec::new();
        s.scan_all(None, &mut found);
        assert!(
            found.is_empty(),
            "nothing is ready before the manifest: {found:?}"
        );
        assert_eq!(
            s.unsettled.len(),
            2,
            "the temp manifest and the journal are not tracked"
        );
        std::fs::rename(
            out.join("cam/.c1.manifest.json.tmp"),
            out.join("cam/c1.manifest.json"),
        )
        .unwrap();
        s.consider(&out.join("cam/c1.manifest.json"), None, &mut found);
        let names: Vec<String> = found.iter().map(|f| f.key.clone()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            found.last().unwrap().is_manifest,
            "manifest queued last: {names:?}"
        );
        assert!(names.iter().all(|k| k.starts_with("p/h/cam/")), "{names:?}");
        assert!(found.iter().all(|f| f.clip == found[0].clip));
        assert!(s.unsettled.is_empty());
    }

    #[test]
    fn only_events_that_can_change_readiness_matter() {
        use notify::EventKind as K;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
        // Our own reads and directory listings must not wake the scanner.
        assert!(!event_matters(&K::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!event_matters(&K::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!event_matters(&K::Access(AccessKind::Read)));
        // Writes finishing, renames, creations and deletions do.
        assert!(event_matters(&K::Access(AccessKind::Close(AccessMode::Write))));
        assert!(event_matters(&K::Create(CreateKind::File)));
        assert!(event_matters(&K::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(event_matters(&K::Modify(ModifyKind::Any)));
        assert!(event_matters(&K::Remove(RemoveKind::File)));
        // Only a creation or a move-in makes a directory worth walking.
        assert!(new_entry(&K::Create(CreateKind::Folder)));
        assert!(new_entry(&K::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(!new_entry(&K::Modify(ModifyKind::Name(RenameMode::From))));
        assert!(!new_entry(&K::Modify(ModifyKind::Any)));
        assert!(!new_entry(&K::Remove(RemoveKind::Folder)));
    }

    #[test]
    fn foreign_files_wait_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(out.join("seg-00001.mp4"), b"data").unwrap();
        let mut found = Vec::new();
        Scanner::new(&cfg(out, 3600.0)).scan_all(None, &mut found);
        assert!(found.is_empty());
        Scanner::new(&cfg(out, 0.0)).scan_all(None, &mut found);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].key,
            "p/h/unknown/".to_string() + &utc_date(SystemTime::now()) + "/seg-00001.mp4"
        );
    }

    /// Nothing a watched tree holds can panic or stop the scanner, and nothing outside it
    /// is looked into: each bad file is refused once, with its reason, and skipped.
    #[test]
    fn scanner_refuses_hostile_files_and_never_panics() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let (out, secret) = (dir.path().join("out"), dir.path().join("secret"));
        std::fs::create_dir_all(out.join("cam")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("s.mkv"), b"secret").unwrap();
        std::fs::write(secret.join("s.manifest.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(&secret, out.join("x")).unwrap();
        std::os::unix::fs::symlink(secret.join("s.mkv"), out.join("cam/l.mkv")).unwrap();
        std::fs::write(dir.path().join("credentials"), b"key").unwrap();
        std::fs::hard_link(dir.path().join("credentials"), out.join("cam/h.mkv")).unwrap();
        let bad = out.join(std::ffi::OsStr::from_bytes(b"bad\xff"));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("b.mkv"), b"b").unwrap();
        std::fs::write(bad.join("b.manifest.json"), b"{}").unwrap();
        std::fs::write(
            out.join("cam").join(std::ffi::OsStr::from_bytes(b"n\xfe.mkv")),
            b"n",
        )
        .unwrap();
        // Byte 10 falls inside "\u{e9}".
        std::fs::write(out.join("cam/d.mkv"), b"d").unwrap();
        std::fs::write(
            out.join("cam/d.manifest.json"),
            r#"{"start": "2026-11-2\u00e9T00:00:00Z"}"#,
        )
        .unwrap();
        std::fs::write(out.join("cam/big.mkv"), b"big").unwrap();
        std::fs::File::create(out.join("cam/big.manifest.json"))
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        std::fs::write(out.join("cam/j.mkv"), b"j").unwrap();
        std::fs::write(out.join("cam/j.manifest.json"), b"{not json").unwrap();
        let f = std::fs::File::create(out.join("cam/future.mkv")).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(884_541_340_800))
            .unwrap();
        std::fs::write(out.join("cam/ok.mkv"), b"ok").unwrap();

        let mut s = Scanner::new(&cfg(&out, 0.0));
        let mut found = Vec::new();
        s.scan_all(None, &mut found);
        let mut names: Vec<String> = found
            .iter()
            .map(|f| f.path.strip_prefix(&out).unwrap().display().to_string())
            .collect();
        names.sort();
        // A clip file is found by the walk and again with its manifest (the journal keeps one).
        names.dedup();
        assert_eq!(
            names,
            [
                "cam/big.mkv",
                "cam/d.manifest.json",
                "cam/d.mkv",
                "cam/j.mkv",
                "cam/ok.mkv"
            ],
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .all(|f| f.path.starts_with(&out) && f.ident.is_some())
        );
        let d = found.iter().find(|f| f.path.ends_with("d.mkv")).unwrap();
        assert!(d.key.contains(&utc_date(SystemTime::now())), "{}", d.key);
        let m = s.metrics();
        for (reason, n) in [
            (Refusal::Symlink, 2),
            (Refusal::HardLink, 1),
            (Refusal::NotUtf8, 2),
            (Refusal::BadDate, 1),
            (Refusal::ManifestTooLarge, 1),
            (Refusal::BadManifest, 1),
            (Refusal::BadMtime, 1),
        ] {
            assert_eq!(m.refused_count(reason), n, "{reason:?}: {:?}", m.refusals());
        }
        // A second scan reports nothing twice.
        s.scan_all(None, &mut Vec::new());
        assert_eq!(s.metrics().refused_count(Refusal::Symlink), 2);
        assert_eq!(std::fs::read(secret.join("s.mkv")).unwrap(), b"secret");
    }

    #[test]
    fn dates_never_panic() {
        assert_eq!(manifest_date("2026-11-2\u{e9}T00"), None);
        assert_eq!(
            manifest_date("2026-01-02T03:04:05Z").as_deref(),
            Some("2026-01-02")
        );
        assert_eq!(manifest_date("20260102"), None);
        assert_eq!(manifest_date("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"), None);
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(884_541_340_800);
        assert_eq!(utc_date(far), "9999-12-31");
        assert_eq!(utc_date(SystemTime::UNIX_EPOCH), "1970-01-01");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn hostile_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,30}",
            Just("2026-11-2\u{e9}T10:00:00Z".to_string()),
            Just("../../etc".to_string()),
            Just("\u{202E}gpj.exe".to_string()),
            "[0-9-]{0,12}",
            "[a-z/.]{0,1500}",
        ]
    }

    /// Manifest bytes: arbitrary, or JSON objects whose fields are hostile.
    fn manifest_bytes() -> impl Strategy<Value = Vec<u8>> {
        let json = (
            hostile_text(),
            hostile_text(),
            hostile_text(),
            prop::collection::vec(("[A-Za-z_ -]{0,20}", hostile_text()), 0..6),
        )
            .prop_map(|(camera, start, host, extra)| {
                let mut m = serde_json::Map::new();
                m.insert("camera".into(), camera.into());
                m.insert("start".into(), start.into());
                m.insert("host".into(), host.into());
                for (k, v) in extra {
                    m.insert(k, v.into());
                }
                serde_json::Value::Object(m).to_string().into_bytes()
            });
        prop_oneof![json, prop::collection::vec(any::<u8>(), 0..200)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever a manifest holds, scanning its clip never panics, and every file it
        /// queues has a valid key under the prefix and safe metadata; a manifest that is
        /// not JSON is refused and counted.
        #[test]
        fn any_manifest_gives_valid_keys_or_a_refusal(bytes in manifest_bytes()) {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path();
            std::fs::create_dir_all(out.join("cam")).unwrap();
            std::fs::write(out.join("cam/c-1.mkv"), b"media").unwrap();
            std::fs::write(out.join("cam/c-1.manifest.json"), &bytes).unwrap();
            let mut s = Scanner::new(&super::tests::cfg(out, 0.0));
            let mut found = Vec::new();
            s.scan_all(None, &mut found);
            let json = serde_json::from_slice::<serde_json::Value>(&bytes);
            if json.is_err() {
                prop_assert!(found.iter().all(|f| !f.is_manifest), "a manifest that is not JSON is never queued");
                prop_assert!(s.metrics().render().contains("reason=\"bad_manifest\""));
            }
            for f in &found {
                prop_assert!(f.key.starts_with("p/h/"), "{}", f.key);
                prop_assert!(f.key.len() <= keys::MAX_KEY_BYTES);
                prop_assert!(!f.key.split('/').any(|s| s.is_empty() || s == "." || s == ".."), "{}", f.key);
            }
            if let Ok(v) = json {
                for (k, val) in crate::upload::manifest_metadata(&v) {
                    prop_assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{k}");
                    prop_assert!(val.len() <= 256 && val.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{val:?}");
                }
            }
        }
    }
}
