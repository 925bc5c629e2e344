//! Readiness detection (pure): which names are temporary, which are manifests, which clip a
//! file belongs to, and when a file written by something other than the runner has
//! settled.
//!
//! The runner's contract (see `docs/clip-contract.md`): every file of a clip is written under a
//! temporary name and renamed into its final name when complete; the clip's manifest
//! `<stem>.manifest.json` is renamed into place last. So a final-named file whose manifest
//! exists is complete, and a manifest is complete when it appears. Anything else is
//! "foreign" and counts as ready once its size and mtime have not changed for the settle
//! time.

use std::time::{Duration, SystemTime};

/// Name rules (`[watch]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct NameRules {
    /// Suffix that marks a clip's manifest.
    pub manifest_suffix: String,
    /// Suffixes of temporary names (never uploaded).
    pub temp_suffixes: Vec<String>,
    /// Prefixes of temporary names (never uploaded). Hidden files (`.x`) always are.
    pub temp_prefixes: Vec<String>,
}

impl Default for NameRules {
    fn default() -> Self {
        NameRules {
            manifest_suffix: ".manifest.json".into(),
            temp_suffixes: vec![
                ".tmp".into(),
                ".part".into(),
                ".partial".into(),
                ".incomplete".into(),
                ".crdownload".into(),
                ".swp".into(),
                "~".into(),
            ],
            // None by default: `tmp` used to be one, and held back every clip of a camera
            // named `tmp1` forever (docs/clip-contract.md).
            temp_prefixes: vec![],
        }
    }
}

impl NameRules {
    /// A temporary name: never uploaded, whatever its age.
    pub fn is_temp(&self, name: &str) -> bool {
        name.is_empty()
            || name.starts_with('.')
            || self.temp_suffixes.iter().any(|s| name.ends_with(s.as_str()))
            || self
                .temp_prefixes
                .iter()
                .any(|p| !p.is_empty() && name.starts_with(p.as_str()))
    }

    /// `Some(stem)` when `name` is a clip manifest.
    pub fn manifest_stem<'a>(&self, name: &'a str) -> Option<&'a str> {
        let stem = name.strip_suffix(self.manifest_suffix.as_str())?;
        (!stem.is_empty() && !self.is_temp(name)).then_some(stem)
    }

    /// The manifest name that would make `name` part of a clip: `<stem>.manifest.json`
    /// where `<stem>` is the name up to its first `.`.
    pub fn manifest_for(&self, name: &str) -> String {
        format!("{}{}", clip_stem(name), self.manifest_suffix)
    }

    /// Whether `name` is a member of the clip with stem `stem` (and not its manifest).
    pub fn is_member(&self, stem: &str, name: &str) -> bool {
        !self.is_temp(name)
            && self.manifest_stem(name).is_none()
            && name.len() > stem.len()
            && name.starts_with(stem)
            && name.as_bytes()[stem.len()] == b'.'
    }
}

/// The clip stem of a file: its name up to the first `.` (`clip-7.mask.mkv` → `clip-7`).
pub fn clip_stem(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// What the daemon has seen of a file so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub size: u64,
    pub mtime: SystemTime,
    /// When (daemon clock) size or mtime were last seen to change, or first seen.
    pub changed_at: SystemTime,
}

impl Observation {
    pub fn first(size: u64, mtime: SystemTime, now: SystemTime) -> Self {
        Observation {
            size,
            mtime,
            changed_at: now,
        }
    }

    /// Update with a new stat; resets the settle clock when anything changed.
    pub fn update(self, size: u64, mtime: SystemTime, now: SystemTime) -> Self {
        if size == self.size && mtime == self.mtime {
            self
        } else {
            Observation {
                size,
                mtime,
                changed_at: now,
            }
        }
    }
}

/// A foreign file is settled when its mtime is at least `settle` old (nothing wrote to it
/// for that long) and, if the daemon watched it change, that change is `settle` old too.
/// After a restart, old files are therefore ready at once.
pub fn is_settled(obs: &Observation, now: SystemTime, settle: Duration, seen_change: bool) -> bool {
    let age = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
    age(obs.mtime) >= settle && (!seen_change || age(obs.changed_at) >= settle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        let r = NameRules::default();
        for t in [".clip.mkv", "clip.mkv.tmp", "clip.part", "a~", ""] {
            assert!(r.is_temp(t), "{t}");
        }
        for f in [
            "tmp123",
            "tmp1-20261122T021301123Z-000004.mp4",
            "clip.mkv",
            "clip-1.manifest.json",
            "clip.mask.mkv",
            "template.mkv",
        ] {
            assert!(!r.is_temp(f), "{f}");
        }
        assert!(r.is_temp(".clip-1.manifest.json"));
    }

    #[test]
    fn manifests_and_members() {
        let r = NameRules::default();
        assert_eq!(r.manifest_stem("cam-1.manifest.json"), Some("cam-1"));
        assert_eq!(r.manifest_stem("cam-1.manifest.json.tmp"), None);
        assert_eq!(r.manifest_stem(".manifest.json"), None);
        assert_eq!(r.manifest_stem("cam-1.mkv"), None);
        assert!(r.is_member("cam-1", "cam-1.mkv"));
        assert!(r.is_member("cam-1", "cam-1.mask.mkv"));
        assert!(!r.is_member("cam-1", "cam-10.mkv"));
        assert!(!r.is_member("cam-1", "cam-1.mkv.tmp"));
        assert!(!r.is_member("cam-1", "cam-1.manifest.json"));
        assert_eq!(r.manifest_for("cam-1.mask.mkv"), "cam-1.manifest.json");
        assert_eq!(clip_stem("cam-1.mask.mkv"), "cam-1");
    }

    #[test]
    fn settle_rules() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let settle = Duration::from_secs(10);
        // An old file seen for the first time after a restart: ready at once.
        let old = Observation::first(5, t0 - Duration::from_secs(60), t0);
        assert!(is_settled(&old, t0, settle, false));
        // A file being written: mtime fresh.
        let fresh = Observation::first(5, t0, t0);
        assert!(!is_settled(&fresh, t0 + Duration::from_secs(3), settle, false));
        assert!(is_settled(&fresh, t0 + Duration::from_secs(10), settle, false));
        // A change observed resets the clock even if the writer back-dates mtime.
        let grown = old.update(9, t0 - Duration::from_secs(60), t0 + Duration::from_secs(1));
        assert_ne!(grown, old);
        assert!(!is_settled(&grown, t0 + Duration::from_secs(5), settle, true));
        assert!(is_settled(&grown, t0 + Duration::from_secs(11), settle, true));
        // No change: same observation.
        assert_eq!(old.update(5, old.mtime, t0 + Duration::from_secs(5)), old);
        // Clock skew (mtime in the future) never counts as settled early.
        let future = Observation::first(1, t0 + Duration::from_secs(100), t0);
        assert!(!is_settled(&future, t0, settle, false));
    }
}
