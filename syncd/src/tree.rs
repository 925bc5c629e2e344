//! The one way the daemon opens, stats, reads and deletes a file under a watch root.
//!
//! Paths under a watch root are written by someone else, and may change between two looks:
//! a directory may be a symlink to `/etc`, a clip swapped for a symlink to a secret after it
//! was journaled, a hard link may point at `~/.aws/credentials`. So nothing here takes an
//! absolute path at face value: every open is relative to the root, with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (or, on kernels
//! without it, `openat(O_NOFOLLOW)` one component at a time), the open descriptor is
//! `fstat`ed, and what it names is judged by its identity — (dev, inode, size, mtime) — not
//! by its name. A delete re-checks that identity on the name it removes.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tracing::warn;

use crate::error::{Result, SyncError};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::refusal::Refusal;

/// Manifests are small JSON documents; anything bigger is not one of ours, and reading it
/// whole would let one file exhaust the unit's memory.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What the daemon accepts besides plain, singly-linked files of its own user
/// (`[files]` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow_hard_links: bool,
    pub allow_other_owners: bool,
    /// The runner's uid when it runs as another user than the daemon.
    pub runner_uid: Option<u32>,
}

/// What `fstat` says about an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// `None` when the mtime does not fit an `i64` of nanoseconds.
    pub mtime_ns: Option<i64>,
    pub nlink: u64,
    pub uid: u32,
    pub kind: FileType,
}

/// The identity a journal row remembers. `dev`/`ino` are `None` for rows written before
/// the journal recorded them: those are matched by size and mtime only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub dev_ino: Option<(u64, u64)>,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileId {
    // `struct stat`'s field types differ between architectures (`st_nlink` is 32-bit on
    // aarch64): the conversions are no-ops on some and needed on others.
    #[allow(clippy::useless_conversion)]
    fn from_stat(st: &rustix::fs::Stat) -> FileId {
        let secs = i64::try_from(st.st_mtime).ok();
        let nsec = i64::try_from(st.st_mtime_nsec).ok();
        let mtime_ns = secs
            .zip(nsec)
            .and_then(|(s, n)| s.checked_mul(1_000_000_000)?.checked_add(n));
        FileId {
            dev: u64::try_from(st.st_dev).unwrap_or(u64::MAX),
            ino: u64::try_from(st.st_ino).unwrap_or(u64::MAX),
            // A negative size is impossible for a regular file; 0 makes it fail any check.
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns,
            nlink: u64::try_from(st.st_nlink).unwrap_or(u64::MAX),
            uid: u32::try_from(st.st_uid).unwrap_or(u32::MAX),
            kind: FileType::from_raw_mode(st.st_mode as _),
        }
    }

    /// Whether this may be uploaded under `policy`; the refusal and a detail when not.
    pub fn check(&self, policy: &Policy) -> std::result::Result<(), (Refusal, String)> {
        match self.kind {
            FileType::RegularFile => {}
            FileType::Symlink => return Err((Refusal::Symlink, "a symbolic link".into())),
            k => return Err((Refusal::NotRegular, format!("not a regular file ({k:?})"))),
        }
        if self.nlink > 1 && !policy.allow_hard_links {
            return Err((
                Refusal::HardLink,
                format!("{} hard links (files.allow_hard_links = false)", self.nlink),
            ));
        }
        if !policy.allow_other_owners && self.uid != euid() && Some(self.uid) != policy.runner_uid {
            return Err((
                Refusal::OtherOwner,
                format!(
                    "owned by uid {}, neither the daemon's ({}) nor files.runner_user's ({}) \
                     (files.allow_other_owners = false)",
                    self.uid,
                    euid(),
                    policy.runner_uid.map_or("unset".to_string(), |u| u.to_string())
                ),
            ));
        }
        if self.mtime_ns.is_none() {
            return Err((Refusal::BadMtime, "mtime out of range".into()));
        }
        Ok(())
    }

    /// Whether this is the file a journal row describes.
    pub fn is(&self, want: &Ident) -> bool {
        self.size == want.size
            && self.mtime_ns == Some(want.mtime_ns)
            && want.dev_ino.is_none_or(|di| di == (self.dev, self.ino))
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The watch root holding `path` (the longest one) and the path relative to it. `None` when
/// no root holds it or the rest is not plain names (`..`, `.`): nothing outside is touched.
pub fn split<'a>(roots: &'a [PathBuf], path: &'a Path) -> Option<(&'a Path, &'a Path)> {
    let root = roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.as_os_str().len())?;
    let rel = path.strip_prefix(root).ok()?;
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some((root.as_path(), rel))
}

/// Whether an error means "nothing there".
pub fn is_not_found(e: &SyncError) -> bool {
    matches!(e, SyncError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Kernels before 5.6 (and some seccomp filters) lack `openat2`: remembered after the first
/// refusal so each open does not try it again.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    // The root itself comes from the config: it may be a symlink the operator chose.
    Ok(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open `rel` beneath `dir` without following any symlink, with `flags` for the last step.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // A symlink opened with O_PATH|O_NOFOLLOW|O_DIRECTORY is "not a directory":
            // the walk below, as safe, tells it apart from a plain file.
            Err(Errno::NOTDIR) => {}
            r => return r,
        }
    }
    // One component at a time, none of them followed if it is a symlink.
    let mut comps = rel.components().peekable();
    let mut cur: Option<OwnedFd> = None;
    while let Some(c) = comps.next() {
        let Component::Normal(name) = c else {
            if matches!(c, Component::CurDir) && comps.peek().is_none() {
                let at = cur.as_ref().map_or(dir, |f| f.as_fd());
                return rustix::fs::openat(at, ".", flags, Mode::empty());
            }
            return Err(Errno::XDEV);
        };
        let at = cur.as_ref().map_or(dir, |f| f.as_fd());
        let last = comps.peek().is_none();
        let f = if last {
            flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        cur = Some(match rustix::fs::openat(at, name, f, Mode::empty()) {
            Ok(fd) => fd,
            // O_NOFOLLOW with O_DIRECTORY or O_PATH reports a symlink as "not a
            // directory": tell it apart from a plain file, as openat2 does with ELOOP.
            Err(Errno::NOTDIR)
                if rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode as _) == FileType::Symlink) =>
            {
                return Err(Errno::LOOP);
            }
            Err(e) => return Err(e),
        });
    }
    cur.ok_or(Errno::INVAL)
}

fn errno_to(path: &Path, e: Errno) -> SyncError {
    match e {
        // A symlink somewhere on the way (with O_NOFOLLOW, or RESOLVE_NO_SYMLINKS).
        Errno::LOOP => SyncError::Refused {
            path: path.to_path_buf(),
            reason: Refusal::Symlink,
            detail: "a symbolic link on the way (not followed)".into(),
        },
        Errno::XDEV => SyncError::Refused {
            path: path.to_path_buf(),
            reason: Refusal::OutsideTree,
            detail: "resolves outside the watched directory".into(),
        },
        e => SyncError::io(path, e.into()),
    }
}

fn refused(path: &Path, (reason, detail): (Refusal, String)) -> SyncError {
    SyncError::Refused {
        path: path.to_path_buf(),
        reason,
        detail,
    }
}

/// `fstat` of whatever `rel` names beneath `root`, without following a symlink at its end
/// (a symlink comes back as `FileType::Symlink`) or on the way (refused). Opens nothing for
/// reading: a FIFO or device is never opened.
pub fn stat(root: &Path, rel: &Path) -> Result<FileId> {
    let path = root.join(rel);
    let r = open_root(root).map_err(|e| SyncError::io(root, e))?;
    let fd = open_beneath(r.as_fd(), rel, OFlags::PATH).map_err(|e| errno_to(&path, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| SyncError::io(&path, e.into()))?;
    Ok(FileId::from_stat(&st))
}

/// A file under a watch root, opened only through [`Source::open`].
#[derive(Debug, Clone)]
pub struct Source {
    pub root: PathBuf,
    pub rel: PathBuf,
    pub policy: Policy,
    /// The identity it must still have (the journal's), if any.
    pub want: Option<Ident>,
}

impl Source {
    /// The source for `path`, or `outside_tree` when no root holds it.
    pub fn new(roots: &[PathBuf], path: &Path, policy: Policy, want: Option<Ident>) -> Result<Source> {
        let (root, rel) = split(roots, path).ok_or_else(|| SyncError::Refused {
            path: path.to_path_buf(),
            reason: Refusal::OutsideTree,
            detail: "not beneath any watched directory".into(),
        })?;
        Ok(Source {
            root: root.to_path_buf(),
            rel: rel.to_path_buf(),
            policy,
            want,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Open for reading: beneath the root, no symlink followed, then judged by `fstat` —
    /// the policy, and the identity the journal recorded (another file under the same name
    /// is `Changed`, never read).
    pub fn open(&self) -> Result<(File, FileId)> {
        let path = self.path();
        let r = open_root(&self.root).map_err(|e| SyncError::io(&self.root, e))?;
        // O_NONBLOCK: a FIFO swapped in must not hang the open; harmless for regular files.
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = open_beneath(r.as_fd(), &self.rel, flags).map_err(|e| errno_to(&path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| SyncError::io(&path, e.into()))?;
        let id = FileId::from_stat(&st);
        id.check(&self.policy).map_err(|r| refused(&path, r))?;
        if let Some(want) = &self.want
            && !id.is(want)
        {
            return Err(SyncError::Changed(path));
        }
        Ok((File::from(fd), id))
    }

    /// The whole file, refused (`manifest_too_large`) above `cap` bytes: never read whole.
    pub fn read_capped(&self, cap: u64) -> Result<Vec<u8>> {
        let path = self.path();
        let (f, id) = self.open()?;
        let too_big = || SyncError::Refused {
            path: path.clone(),
            reason: Refusal::ManifestTooLarge,
            detail: format!("larger than {cap} bytes"),
        };
        if id.size > cap {
            return Err(too_big());
        }
        let mut buf = Vec::new();
        f.take(cap + 1)
            .read_to_end(&mut buf)
            .map_err(|e| SyncError::io(&path, e))?;
        if buf.len() as u64 > cap {
            return Err(too_big());
        }
        Ok(buf)
    }
}

/// What [`remove_if_same`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Nothing under that name any more.
    Gone,
    /// Another file (or a symlink, a directory…) holds the name now: kept.
    Different,
}

/// Delete `rel` beneath `root` only if the name still holds the file `want` describes —
/// so a writer that reuses names never loses its new file to a delete meant for the old
/// one. The parent is opened beneath the root without following symlinks, the name is
/// looked at with `AT_SYMLINK_NOFOLLOW` and removed with `unlinkat` on that same parent.
pub fn remove_if_same(root: &Path, rel: &Path, want: &Ident) -> Result<Removal> {
    let path = root.join(rel);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(refused(&path, (Refusal::OutsideTree, "not a file name".into())));
    };
    let r = open_root(root).map_err(|e| SyncError::io(root, e))?;
    let dir = match open_beneath(r.as_fd(), parent, OFlags::PATH | OFlags::DIRECTORY) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(Removal::Gone),
        Err(e) => return Err(errno_to(&path, e)),
    };
    let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Removal::Gone),
        Err(e) => return Err(SyncError::io(&path, e.into())),
    };
    let id = FileId::from_stat(&st);
    if id.kind != FileType::RegularFile || !id.is(want) {
        return Ok(Removal::Different);
    }
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) => Ok(Removal::Removed),
        Err(Errno::NOENT) => Ok(Removal::Gone),
        Err(e) => Err(SyncError::io(&path, e.into())),
    }
}

/// One entry of a directory listing, as the directory says it is (no link followed).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    pub kind: FileType,
}

/// List the directory `rel` beneath `root`: opened without following symlinks, so a
/// directory swapped for a link while the walk runs is refused, not listed.
pub fn list_dir(root: &Path, rel: &Path) -> Result<Vec<Entry>> {
    let path = root.join(rel);
    let r = open_root(root).map_err(|e| SyncError::io(root, e))?;
    let dir = open_beneath(r.as_fd(), rel, OFlags::RDONLY | OFlags::DIRECTORY).map_err(|e| match e {
        // A symlink as the last component, opened with O_DIRECTORY|O_NOFOLLOW: ENOTDIR or ELOOP.
        Errno::NOTDIR => refused(
            &path,
            (Refusal::Symlink, "not a directory (a symbolic link?)".into()),
        ),
        e => errno_to(&path, e),
    })?;
    let mut out = Vec::new();
    let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| SyncError::io(&path, e.into()))?;
    for e in entries {
        let e = e.map_err(|e| SyncError::io(&path, e.into()))?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut kind = e.file_type();
        if kind == FileType::Unknown {
            // Some file systems do not fill d_type: ask, still without following links.
            kind = rustix::fs::statat(&dir, e.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode as _))
                .unwrap_or(FileType::Unknown);
        }
        out.push(Entry {
            name: std::ffi::OsStr::from_bytes(name).to_os_string(),
            kind,
        });
    }
    Ok(out)
}

/// Record a refusal: logged once per path and reason in this process, counted in
/// `files_refused_total{reason}`, and kept in the journal for `status`.
pub fn report(journal: Option<&Journal>, metrics: &Metrics, path: &Path, reason: Refusal, detail: &str) {
    if !metrics.refused(path, reason) {
        return;
    }
    warn!(path = %path.display(), reason = reason.as_str(), detail, "file refused: skipped, never read or deleted");
    if let Some(j) = journal
        && let Err(e) = j.note_refusal(path, reason.as_str(), detail)
    {
        tracing::debug!(error = %e, "refusal not recorded in the journal");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ident(id: &FileId) -> Ident {
        Ident {
            dev_ino: Some((id.dev, id.ino)),
            size: id.size,
            mtime_ns: id.mtime_ns.unwrap(),
        }
    }

    fn src(root: &Path, rel: &str) -> Source {
        Source::new(&[root.to_path_buf()], &root.join(rel), Policy::default(), None).unwrap()
    }

    fn reason(e: SyncError) -> Refusal {
        match e {
            SyncError::Refused { reason, .. } => reason,
            e => panic!("expected a refusal, got {e:?}"),
        }
    }

    /// Runs the test body twice: with openat2, and with the component-by-component walk.
    fn both(f: impl Fn()) {
        f();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        f();
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    #[test]
    fn symlinks_are_never_followed() {
        both(|| {
            let t = tempfile::tempdir().unwrap();
            let (root, secret) = (t.path().join("out"), t.path().join("secret"));
            std::fs::create_dir_all(root.join("cam")).unwrap();
            std::fs::create_dir_all(&secret).unwrap();
            std::fs::write(secret.join("key"), b"secret").unwrap();
            std::fs::write(root.join("cam/ok.mkv"), b"clip").unwrap();
            symlink(secret.join("key"), root.join("cam/leaf.mkv")).unwrap();
            symlink(&secret, root.join("x")).unwrap();
            symlink("../../secret/key", root.join("cam/rel.mkv")).unwrap();

            let (mut f, _) = src(&root, "cam/ok.mkv").open().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "clip");
            // A symlink as the leaf, relative or absolute, and as an intermediate directory.
            for rel in ["cam/leaf.mkv", "cam/rel.mkv", "x/key"] {
                assert_eq!(
                    reason(src(&root, rel).open().unwrap_err()),
                    Refusal::Symlink,
                    "{rel}"
                );
            }
            assert_eq!(
                reason(list_dir(&root, Path::new("x")).unwrap_err()),
                Refusal::Symlink
            );
            assert_eq!(
                stat(&root, Path::new("cam/leaf.mkv")).unwrap().kind,
                FileType::Symlink
            );
            assert_eq!(
                reason(stat(&root, Path::new("x/key")).unwrap_err()),
                Refusal::Symlink
            );
            // `..` never leaves the root.
            assert!(split(std::slice::from_ref(&root), &root.join("cam/../../secret/key")).is_none());
            assert!(split(std::slice::from_ref(&root), &t.path().join("secret/key")).is_none());
            assert!(
                open_beneath(
                    open_root(&root).unwrap().as_fd(),
                    Path::new("../secret/key"),
                    OFlags::RDONLY
                )
                .is_err()
            );
            let names: Vec<_> = list_dir(&root, Path::new(""))
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.kind))
                .collect();
            assert!(names.contains(&("x".into(), FileType::Symlink)), "{names:?}");
        });
    }

    #[test]
    fn hard_links_and_other_owners_are_refused_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("out");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(t.path().join("credentials"), b"secret").unwrap();
        std::fs::hard_link(t.path().join("credentials"), root.join("c.mkv")).unwrap();
        assert_eq!(reason(src(&root, "c.mkv").open().unwrap_err()), Refusal::HardLink);
        let mut s = src(&root, "c.mkv");
        s.policy.allow_hard_links = true;
        assert!(s.open().is_ok());

        std::fs::write(root.join("o.mkv"), b"x").unwrap();
        if euid() == 0 {
            // Only root can give a file away; elsewhere the check is the same code path.
            std::os::unix::fs::chown(root.join("o.mkv"), Some(4242), None).unwrap();
            assert_eq!(
                reason(src(&root, "o.mkv").open().unwrap_err()),
                Refusal::OtherOwner
            );
            let mut s = src(&root, "o.mkv");
            s.policy.allow_other_owners = true;
            assert!(s.open().is_ok());
            // The runner's user (the units run it apart from the daemon), and only it.
            let mut s = src(&root, "o.mkv");
            s.policy.runner_uid = Some(4242);
            assert!(s.open().is_ok());
            s.policy.runner_uid = Some(4243);
            assert_eq!(reason(s.open().unwrap_err()), Refusal::OtherOwner);
        }
        let fifo = root.join("p.mkv");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            reason(src(&root, "p.mkv").open().unwrap_err()),
            Refusal::NotRegular
        );
    }

    #[test]
    fn a_file_swapped_after_it_was_seen_is_not_read_or_deleted() {
        both(|| {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("out");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(t.path().join("secret"), b"secret!").unwrap();
            std::fs::write(root.join("a.mkv"), b"first").unwrap();
            let seen = stat(&root, Path::new("a.mkv")).unwrap();
            let want = ident(&seen);
            let mut s = src(&root, "a.mkv");
            s.want = Some(want);
            assert!(s.open().is_ok());

            // Same name, another inode with the same size and mtime: not the journaled file.
            std::fs::write(root.join("b.tmp"), b"other").unwrap();
            let f = File::options().write(true).open(root.join("b.tmp")).unwrap();
            f.set_modified(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(seen.mtime_ns.unwrap() as u64),
            )
            .unwrap();
            std::fs::rename(root.join("b.tmp"), root.join("a.mkv")).unwrap();
            assert!(matches!(s.open().unwrap_err(), SyncError::Changed(_)));
            assert_eq!(
                remove_if_same(&root, Path::new("a.mkv"), &want).unwrap(),
                Removal::Different
            );
            assert!(
                root.join("a.mkv").exists(),
                "a new file under an old name is kept"
            );

            // Swapped for a symlink to a secret: refused, never read, never deleted through.
            std::fs::remove_file(root.join("a.mkv")).unwrap();
            symlink(t.path().join("secret"), root.join("a.mkv")).unwrap();
            assert_eq!(reason(s.open().unwrap_err()), Refusal::Symlink);
            assert_eq!(
                remove_if_same(&root, Path::new("a.mkv"), &want).unwrap(),
                Removal::Different
            );
            assert!(t.path().join("secret").exists());
            assert!(std::fs::symlink_metadata(root.join("a.mkv")).is_ok());

            // The journaled file itself: deleted; then gone.
            std::fs::remove_file(root.join("a.mkv")).unwrap();
            std::fs::write(root.join("d.mkv"), b"data").unwrap();
            let want = ident(&stat(&root, Path::new("d.mkv")).unwrap());
            assert_eq!(
                remove_if_same(&root, Path::new("d.mkv"), &want).unwrap(),
                Removal::Removed
            );
            assert_eq!(
                remove_if_same(&root, Path::new("d.mkv"), &want).unwrap(),
                Removal::Gone
            );
            // Through a symlinked directory: never.
            std::fs::create_dir_all(t.path().join("sec")).unwrap();
            std::fs::write(t.path().join("sec/d.mkv"), b"data").unwrap();
            symlink(t.path().join("sec"), root.join("lnk")).unwrap();
            let want = ident(&stat(&t.path().join("sec"), Path::new("d.mkv")).unwrap());
            assert_eq!(
                reason(remove_if_same(&root, Path::new("lnk/d.mkv"), &want).unwrap_err()),
                Refusal::Symlink
            );
            assert!(t.path().join("sec/d.mkv").exists());
        });
    }

    #[test]
    fn manifests_are_read_with_a_cap_and_mtimes_out_of_range_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("out");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("m.manifest.json"), b"{}").unwrap();
        assert_eq!(src(&root, "m.manifest.json").read_capped(16).unwrap(), b"{}");
        let f = File::create(root.join("big.manifest.json")).unwrap();
        f.set_len(100 << 20).unwrap(); // sparse: no disk used
        assert_eq!(
            reason(
                src(&root, "big.manifest.json")
                    .read_capped(MAX_MANIFEST_BYTES)
                    .unwrap_err()
            ),
            Refusal::ManifestTooLarge
        );
        std::fs::write(root.join("future.mkv"), b"x").unwrap();
        let f = File::options().write(true).open(root.join("future.mkv")).unwrap();
        // Year 30000.
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(884_541_340_800))
            .unwrap();
        let id = stat(&root, Path::new("future.mkv")).unwrap();
        assert_eq!(id.mtime_ns, None);
        assert_eq!(id.check(&Policy::default()).unwrap_err().0, Refusal::BadMtime);
    }
}
