//! Reads a systemd unit file and starts its service the way systemd would, with paths
//! mapped into a test directory: the same `ExecStartPre=`/`ExecStart=` arguments, the
//! unit's `Environment=` (and nothing else from the test's environment), `State`/`Cache`
//! directories created for the service's user with their `…DirectoryMode=`, `UMask=`,
//! `NOTIFY_SOCKET`/`WATCHDOG_USEC`, and — when the test runs as root — the unit's
//! `User=`, `Group=` and `SupplementaryGroups=` as the ids the test gives those names
//! ([`Ids`]; `nobody` for a user it does not name, or for `DynamicUser=yes`).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A unit file: section → key → values, in file order (keys may repeat).
#[derive(Debug, Default)]
pub struct Unit {
    sections: BTreeMap<String, Vec<(String, String)>>,
}

impl Unit {
    pub fn read(path: &Path) -> Unit {
        Unit::parse(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Unit {
        let mut u = Unit::default();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                u.sections
                    .entry(section.clone())
                    .or_default()
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        u
    }

    /// Every value of `key` in `[section]`, in order.
    pub fn all(&self, section: &str, key: &str) -> Vec<String> {
        self.sections
            .get(section)
            .map(|kv| {
                kv.iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last value of `key` in `[section]`.
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        self.all(section, key).pop()
    }

    /// Whether the service runs as a user other than root.
    pub fn non_root(&self) -> bool {
        self.get("Service", "User").is_some_and(|u| u != "root")
            || self
                .get("Service", "DynamicUser")
                .is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on"))
    }

    /// `Environment=` assignments, in order (`A=B` per value; several per line allowed).
    pub fn environment(&self) -> Vec<(String, String)> {
        self.all("Service", "Environment")
            .iter()
            .flat_map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|a| {
                let a = a.trim_matches('"');
                a.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// `WatchdogSec=` in microseconds.
    pub fn watchdog_usec(&self) -> Option<u64> {
        let v = self.get("Service", "WatchdogSec")?;
        let secs: f64 = v.trim_end_matches('s').parse().ok()?;
        Some((secs * 1e6) as u64)
    }
}

/// Expands the specifiers our units use (`%i`, `%%`).
pub fn expand(s: &str, instance: &str) -> String {
    s.replace("%%", "\u{0}")
        .replace("%i", instance)
        .replace('\u{0}', "%")
}

/// An `Exec*=` line as program and arguments (our units quote nothing), with systemd's
/// prefixes (`-`, `@`, `+`, `!`, `:`) removed.
pub fn exec_args(line: &str) -> Vec<String> {
    line.trim_start_matches(['-', '@', '+', '!', ':'])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Path prefixes mapped from the unit's absolute paths into the test's world; the
/// longest matching prefix wins.
#[derive(Default)]
pub struct PathMap(Vec<(String, String)>);

impl PathMap {
    pub fn map(mut self, from: &str, to: impl AsRef<Path>) -> Self {
        self.0.push((from.to_string(), to.as_ref().display().to_string()));
        self.0.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
        self
    }

    /// `s` with the first (longest) mapped prefix replaced, at the start or after `=`.
    pub fn apply(&self, s: &str) -> String {
        for (from, to) in &self.0 {
            if let Some(rest) = s.strip_prefix(from.as_str()) {
                return format!("{to}{rest}");
            }
            if let Some((k, v)) = s.split_once('=')
                && let Some(rest) = v.strip_prefix(from.as_str())
            {
                return format!("{k}={to}{rest}");
            }
        }
        s.to_string()
    }
}

/// The user a non-root unit runs as in the test, when the test is root and names no id
/// for the unit's user: `nobody`.
pub const NOBODY: u32 = 65534;

/// The numeric ids a test gives the user and group names of its units (no passwd entry
/// needed: the test sets them on the process itself).
#[derive(Debug, Clone, Default)]
pub struct Ids {
    users: Vec<(String, u32)>,
    groups: Vec<(String, u32)>,
}

impl Ids {
    pub fn user(mut self, name: &str, uid: u32) -> Self {
        self.users.push((name.to_string(), uid));
        self
    }

    pub fn group(mut self, name: &str, gid: u32) -> Self {
        self.groups.push((name.to_string(), gid));
        self
    }

    fn uid(&self, name: &str) -> Option<u32> {
        self.users.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    fn gid(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }
}

/// Who a unit's processes run as, and with which umask.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `None`: the test's own user (it is not root, or the unit runs as root).
    pub uid: Option<u32>,
    pub gid: u32,
    /// Supplementary groups the test gave ids for (others, e.g. `video`, are left out).
    pub groups: Vec<u32>,
    pub umask: u32,
}

impl Unit {
    /// The identity of the unit's processes in the test.
    pub fn identity(&self, ids: &Ids) -> Identity {
        let umask = self
            .get("Service", "UMask")
            .and_then(|m| u32::from_str_radix(&m, 8).ok())
            .unwrap_or(0o022);
        if !(self.non_root() && nix::unistd::Uid::effective().is_root()) {
            return Identity {
                uid: None,
                gid: nix::unistd::getegid().as_raw(),
                groups: Vec::new(),
                umask,
            };
        }
        let uid = self
            .get("Service", "User")
            .and_then(|u| ids.uid(&u))
            .unwrap_or(NOBODY);
        let gid = self
            .get("Service", "Group")
            .and_then(|g| ids.gid(&g))
            .unwrap_or(uid);
        let groups = self
            .all("Service", "SupplementaryGroups")
            .iter()
            .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|g| ids.gid(&g))
            .collect();
        Identity {
            uid: Some(uid),
            gid,
            groups,
            umask,
        }
    }
}

/// The commands (`ExecStartPre=`…, then `ExecStart=`) of `unit` for `instance`, with paths
/// mapped, a clean environment (the unit's `Environment=` plus what systemd sets), the
/// unit's `State`/`CacheDirectory` created, and the unit's user.
pub fn commands(unit: &Unit, instance: &str, paths: &PathMap, ids: &Ids, notify: &Path) -> Vec<Command> {
    let who = unit.identity(ids);
    let mut env: Vec<(String, String)> = vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into(),
    )];
    for (kind, var, base) in [
        ("StateDirectory", "STATE_DIRECTORY", "/var/lib/"),
        ("CacheDirectory", "CACHE_DIRECTORY", "/var/cache/"),
    ] {
        if let Some(d) = unit.get("Service", kind) {
            let dir = PathBuf::from(paths.apply(&format!("{base}{}", expand(&d, instance))));
            let mode = unit
                .get("Service", &format!("{kind}Mode"))
                .and_then(|m| u32::from_str_radix(&m, 8).ok())
                .unwrap_or(0o755);
            make_owned_dir(&dir, who.uid.map(|u| (u, who.gid)), mode);
            env.push((var.into(), dir.display().to_string()));
        }
    }
    for (k, v) in unit.environment() {
        env.push((k, paths.apply(&expand(&v, instance))));
    }
    let workdir = unit
        .get("Service", "WorkingDirectory")
        .map(|w| PathBuf::from(paths.apply(&expand(&w, instance))))
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut out = Vec::new();
    let pre = unit.all("Service", "ExecStartPre");
    let main = unit.all("Service", "ExecStart");
    assert_eq!(main.len(), 1, "one ExecStart= in the unit");
    for (i, line) in pre.iter().chain(&main).enumerate() {
        let args: Vec<String> = exec_args(&expand(line, instance))
            .iter()
            .map(|a| paths.apply(a))
            .collect();
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]).env_clear().envs(env.iter().cloned());
        c.current_dir(&workdir);
        if i == pre.len() {
            c.env("NOTIFY_SOCKET", notify);
            if let Some(us) = unit.watchdog_usec() {
                c.env("WATCHDOG_USEC", us.to_string());
            }
        }
        let who = who.clone();
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                libc::umask(who.umask as libc::mode_t);
                if let Some(uid) = who.uid
                    && (libc::setgroups(who.groups.len(), who.groups.as_ptr()) != 0
                        || libc::setgid(who.gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        out.push(c);
    }
    out
}

/// Creates `dir` (and its parents) owned by `owner` (uid, gid) when given and with `mode`,
/// as systemd does for `StateDirectory=` and `StateDirectoryMode=`.
pub fn make_owned_dir(dir: &Path, owner: Option<(u32, u32)>, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "[Unit]\nDescription=x (%i)\n[Service]\nType=notify\n\
        ExecStartPre=-/usr/bin/tool check /etc/x/%i.toml\nExecStart=/usr/bin/tool run /etc/x/%i.toml\n\
        Environment=A=/var/lib/x/%i\nEnvironment=B=1 C=2\nDynamicUser=yes\nWatchdogSec=60\n";

    #[test]
    fn parses_repeated_keys_and_environment() {
        let u = Unit::parse(UNIT);
        assert_eq!(u.all("Service", "ExecStartPre").len(), 1);
        assert_eq!(u.get("Service", "Type").as_deref(), Some("notify"));
        assert_eq!(
            u.environment(),
            vec![
                ("A".into(), "/var/lib/x/%i".into()),
                ("B".into(), "1".into()),
                ("C".into(), "2".into())
            ]
        );
        assert!(u.non_root());
        assert_eq!(u.watchdog_usec(), Some(60_000_000));
    }

    #[test]
    fn expands_specifiers_and_maps_paths() {
        assert_eq!(expand("/etc/x/%i.toml 100%%", "cam"), "/etc/x/cam.toml 100%");
        assert_eq!(
            exec_args("-/usr/bin/tool check a"),
            vec!["/usr/bin/tool", "check", "a"]
        );
        let m = PathMap::default()
            .map("/usr/bin/tool", "/build/tool")
            .map("/usr/bin", "/b")
            .map("/var/lib", "/t/var/lib");
        assert_eq!(m.apply("/usr/bin/tool"), "/build/tool");
        assert_eq!(m.apply("/usr/bin/other"), "/b/other");
        assert_eq!(m.apply("DIR=/var/lib/x"), "DIR=/t/var/lib/x");
        assert_eq!(m.apply("relative"), "relative");
    }
}
