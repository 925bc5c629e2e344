//! The scanner: which files under the watched trees are finished clips, what the journal
//! should upload and under which key, and what it refuses (see `docs/clip-contract.md`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::fs::FileType;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::contract;
use crate::error::SyncError;
use crate::journal::{self, Journal, NewFile};
use crate::keys::{self, KeyVars};
use crate::metrics::Metrics;
use crate::ready::{self, NameRules, Observation};
use crate::refusal::Refusal;
use crate::tree::{self, Policy};

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
        let seen = Seen {
            path,
            name,
            size,
            mtime,
            id: &id,
            is_manifest,
        };
        match self.new_file(journal, &seen, manifest.as_ref(), &root.join(&manifest_rel)) {
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

    /// The journal's row for a ready file: its key and the manifest's fields, or why not.
    fn new_file(
        &self,
        journal: Option<&Journal>,
        seen: &Seen<'_>,
        manifest: Option<&serde_json::Value>,
        manifest_path: &Path,
    ) -> std::result::Result<NewFile, (Refusal, String)> {
        let Seen {
            path,
            name,
            size,
            mtime,
            id,
            is_manifest,
        } = *seen;
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

/// What the scan saw of a ready file.
#[derive(Clone, Copy)]
struct Seen<'a> {
    path: &'a Path,
    name: &'a str,
    size: u64,
    mtime: SystemTime,
    id: &'a tree::FileId,
    is_manifest: bool,
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
