//! The crash-safe journal: one SQLite database (rusqlite, bundled) holding every file's
//! state, its object key, the multipart UploadId with the parts done and their checksums.
//!
//! Each state change is one transaction (its reads and writes together) in WAL mode with `synchronous=NORMAL`: after a
//! kill -9 the journal holds every committed state; after a power cut it may lose the last
//! few commits, which only makes the daemon redo a HEAD (the object is found identical and
//! counted once) — a local file is deleted only after the store verified it, whatever the
//! journal remembers. The state machine itself is the pure [`transition`] function.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::checkpoint::{Checkpoints, PartRow};
use crate::error::{Result, SyncError};

/// A file's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Ready and queued.
    Pending,
    /// An upload is under way (maybe multipart, with an UploadId and parts done).
    Uploading,
    /// Verified in the destination; the local file is still there.
    Uploaded,
    /// Verified and the local file deleted.
    Removed,
    /// Verified and kept under the retention rule.
    Retained,
    /// A different object exists under the key; the local file is kept.
    Conflict,
    /// The destination refused this object; the local file is kept.
    Rejected,
    /// The file vanished before it was uploaded (deleted by someone else).
    Vanished,
    /// Not uploaded, deleted under disk pressure (`retain.drop_not_uploaded`).
    Dropped,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Pending,
        State::Uploading,
        State::Uploaded,
        State::Removed,
        State::Retained,
        State::Conflict,
        State::Rejected,
        State::Vanished,
        State::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Uploading => "uploading",
            State::Uploaded => "uploaded",
            State::Removed => "removed",
            State::Retained => "retained",
            State::Conflict => "conflict",
            State::Rejected => "rejected",
            State::Vanished => "vanished",
            State::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Result<State> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| SyncError::Config(format!("journal holds unknown state {s:?}")))
    }

    /// Work still to do for this file.
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Uploading | State::Uploaded)
    }
}

/// What happens to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Verified,
    Deleted,
    Kept,
    Evicted,
    Restart,
    Conflict,
    Rejected,
    Vanished,
    /// Deleted without an upload under disk pressure, as the config allows.
    Dropped,
    /// The file reappeared with new content (a new generation at the same path).
    Reappeared,
}

/// The state machine. Anything not listed is a bug and refused.
pub fn transition(from: State, ev: Event) -> Result<State> {
    use Event as E;
    use State as S;
    let to = match (from, ev) {
        (S::Pending | S::Uploading, E::Start) => S::Uploading,
        (S::Pending | S::Uploading, E::Verified) => S::Uploaded,
        (S::Uploading, E::Restart) => S::Pending,
        (S::Uploaded, E::Deleted) => S::Removed,
        (S::Uploaded, E::Kept) => S::Retained,
        (S::Retained, E::Evicted) => S::Removed,
        (S::Pending | S::Uploading, E::Conflict) => S::Conflict,
        (S::Pending | S::Uploading, E::Rejected) => S::Rejected,
        (S::Pending | S::Uploading, E::Vanished) => S::Vanished,
        (S::Pending | S::Uploading, E::Dropped) => S::Dropped,
        (
            S::Removed | S::Retained | S::Conflict | S::Rejected | S::Vanished | S::Dropped | S::Pending,
            E::Reappeared,
        ) => S::Pending,
        (from, ev) => {
            return Err(SyncError::Config(format!(
                "journal: illegal transition {ev:?} from {}",
                from.as_str()
            )));
        }
    };
    Ok(to)
}

/// One row of the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: i64,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// `dir/stem` of the clip when the file belongs to a runner clip.
    pub clip: Option<String>,
    pub is_manifest: bool,
    pub key: String,
    pub state: State,
    pub upload_id: Option<String>,
    pub part_size: Option<u64>,
    pub etag: Option<String>,
    pub checksum: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub ready_at: i64,
    pub uploaded_seq: Option<i64>,
    /// (dev, inode) of the file when it was found ready; `None` in rows from journals
    /// that did not record it.
    pub ident: Option<(u64, u64)>,
}

/// Insert request for a newly ready file.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub clip: Option<String>,
    pub is_manifest: bool,
    pub key: String,
    /// (dev, inode), from `fstat` of the file found ready.
    pub ident: Option<(u64, u64)>,
}

impl NewFile {
    /// The journal row of this file, just inserted as `id` at `now`.
    pub fn pending_row(&self, id: i64, now: i64) -> FileRow {
        FileRow {
            id,
            path: self.path.clone(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            clip: self.clip.clone(),
            is_manifest: self.is_manifest,
            key: self.key.clone(),
            state: State::Pending,
            upload_id: None,
            part_size: None,
            etag: None,
            checksum: None,
            attempts: 0,
            last_error: None,
            ready_at: now,
            uploaded_seq: None,
            ident: self.ident,
        }
    }
}

/// Counts per state plus the oldest open file.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub counts: HashMap<&'static str, u64>,
    pub pending_bytes: u64,
    pub oldest_pending_ready_at: Option<i64>,
}

#[derive(Clone)]
pub struct Journal {
    conn: Arc<Mutex<Connection>>,
}

/// Move a damaged journal (and its WAL and shared-memory files) aside as
/// `<name>.corrupt-<unix time>`; returns the new path of the database.
fn quarantine(path: &Path) -> Result<PathBuf> {
    let stamp = now_secs();
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let aside = with(&format!(".corrupt-{stamp}"));
    std::fs::rename(path, &aside).map_err(|e| SyncError::io(path, e))?;
    for side in ["-wal", "-shm"] {
        let from = with(side);
        if from.exists() {
            let to = with(&format!(".corrupt-{stamp}{side}"));
            std::fs::rename(&from, &to).map_err(|e| SyncError::io(&from, e))?;
        }
    }
    Ok(aside)
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn mtime_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    clip TEXT,
    is_manifest INTEGER NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    upload_id TEXT,
    part_size INTEGER,
    etag TEXT,
    checksum TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    ready_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    uploaded_seq INTEGER
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_clip ON files(clip);
-- MAX(uploaded_seq) for each verified upload, and key lookups: index reads, not scans of
-- every file the journal holds (which made each upload cost O(files)).
CREATE INDEX IF NOT EXISTS files_seq ON files(uploaded_seq);
CREATE INDEX IF NOT EXISTS files_key ON files(key);
-- The dispatcher's queue (`open_work`), in its order: a few rows per call, not a sort of
-- every open file each time a job ends.
CREATE INDEX IF NOT EXISTS files_open ON files(is_manifest, ready_at, id)
    WHERE state IN ('pending','uploading','uploaded');
CREATE TABLE IF NOT EXISTS parts (
    file_id INTEGER NOT NULL,
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    crc32c TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (file_id, part_number)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
-- Terminal rows of files that are gone, by age: what pruning deletes, without a scan.
CREATE INDEX IF NOT EXISTS files_gone ON files(updated_at)
    WHERE state IN ('removed','vanished','dropped');
-- Retained files by age of upload and of content: what retention evicts first.
CREATE INDEX IF NOT EXISTS files_retained ON files(uploaded_seq) WHERE state='retained';
CREATE INDEX IF NOT EXISTS files_retained_mtime ON files(mtime_ns) WHERE state='retained';
";

/// Files and bytes per state, kept by triggers in the same transaction as every change, so
/// the per-tick summary reads nine rows instead of counting every row the journal holds.
const TOTALS: &str = "
CREATE TABLE IF NOT EXISTS state_totals (
    state TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS totals_insert AFTER INSERT ON files BEGIN
    UPDATE state_totals SET n = n + 1, bytes = bytes + NEW.size WHERE state = NEW.state;
END;
CREATE TRIGGER IF NOT EXISTS totals_delete AFTER DELETE ON files BEGIN
    UPDATE state_totals SET n = n - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS totals_update AFTER UPDATE OF state, size ON files BEGIN
    UPDATE state_totals SET n = n - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
    UPDATE state_totals SET n = n + 1, bytes = bytes + NEW.size WHERE state = NEW.state;
END;
";

/// Create the totals (and count what an older journal already holds) once.
fn init_totals(c: &mut Connection) -> Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let exists: bool = tx
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name='state_totals'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !exists {
        tx.execute_batch(TOTALS)?;
        for st in State::ALL {
            tx.execute(
                "INSERT INTO state_totals (state, n, bytes)
                 SELECT ?1, COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE state = ?1",
                [st.as_str()],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Whether an SQLite error says the database file itself is damaged or not a database.
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

const COLS: &str = "id, path, size, mtime_ns, clip, is_manifest, key, state, upload_id, part_size, \
                    etag, checksum, attempts, last_error, ready_at, uploaded_seq, dev, ino";

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(FileRow, String)> {
    let state: String = r.get(7)?;
    Ok((
        FileRow {
            id: r.get(0)?,
            path: PathBuf::from(r.get::<_, String>(1)?),
            size: r.get::<_, i64>(2)? as u64,
            mtime_ns: r.get(3)?,
            clip: r.get(4)?,
            is_manifest: r.get::<_, i64>(5)? != 0,
            key: r.get(6)?,
            state: State::Pending,
            upload_id: r.get(8)?,
            part_size: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
            etag: r.get(10)?,
            checksum: r.get(11)?,
            attempts: r.get::<_, i64>(12)? as u32,
            last_error: r.get(13)?,
            ready_at: r.get(14)?,
            uploaded_seq: r.get(15)?,
            // Stored as the i64 bit pattern (SQLite integers are signed).
            ident: r
                .get::<_, Option<i64>>(16)?
                .zip(r.get::<_, Option<i64>>(17)?)
                .map(|(d, i)| (d as u64, i as u64)),
        },
        state,
    ))
}

fn finish(pair: (FileRow, String)) -> Result<FileRow> {
    let (mut row, state) = pair;
    row.state = State::parse(&state)?;
    Ok(row)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| SyncError::Config(format!("{} is not valid UTF-8", p.display())))
}

fn row_by_path(c: &Connection, path: &Path) -> Result<Option<FileRow>> {
    let pair = c
        .prepare_cached(&format!("SELECT {COLS} FROM files WHERE path = ?1"))?
        .query_row([path_str(path)?], row_from)
        .optional()?;
    pair.map(finish).transpose()
}

fn row_by_id(c: &Connection, id: i64) -> Result<FileRow> {
    let pair = c
        .prepare_cached(&format!("SELECT {COLS} FROM files WHERE id = ?1"))?
        .query_row([id], row_from)?;
    finish(pair)
}

/// Record one ready file (see [`Journal::upsert_ready`]) on `c`, inside a transaction.
fn upsert_on(c: &Connection, f: &NewFile, now: i64) -> Result<Option<FileRow>> {
    match row_by_path(c, &f.path)? {
        Some(row) if row.size == f.size && row.mtime_ns == f.mtime_ns && same_ident(&row, f) => Ok(None),
        Some(row) if matches!(row.state, State::Uploading | State::Uploaded) => {
            // Changed while an upload was under way (the job notices and re-queues
            // it), or after it was verified (the next scan sees it as new once the
            // row is removed or retained).
            Ok(None)
        }
        Some(row) => {
            let to = transition(row.state, Event::Reappeared)?;
            c.prepare_cached("DELETE FROM parts WHERE file_id = ?1")?
                .execute([row.id])?;
            c.prepare_cached(
                "UPDATE files SET size=?2, mtime_ns=?3, clip=?4, is_manifest=?5, key=?6, state=?7,
                   upload_id=NULL, part_size=NULL, etag=NULL, checksum=NULL, attempts=0,
                   last_error=NULL, ready_at=?8, updated_at=?8, uploaded_seq=NULL, dev=?9, ino=?10
                 WHERE id=?1",
            )?
            .execute(params![
                row.id,
                f.size as i64,
                f.mtime_ns,
                f.clip,
                f.is_manifest as i64,
                f.key,
                to.as_str(),
                now,
                f.ident.map(|i| i.0 as i64),
                f.ident.map(|i| i.1 as i64)
            ])?;
            Ok(Some(row_by_id(c, row.id)?))
        }
        None => {
            c.prepare_cached(
                "INSERT INTO files (path, size, mtime_ns, clip, is_manifest, key, state, ready_at, updated_at, dev, ino)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?8, ?9)",
            )?
            .execute(params![
                path_str(&f.path)?,
                f.size as i64,
                f.mtime_ns,
                f.clip,
                f.is_manifest as i64,
                f.key,
                now,
                f.ident.map(|i| i.0 as i64),
                f.ident.map(|i| i.1 as i64)
            ])?;
            Ok(Some(f.pending_row(c.last_insert_rowid(), now)))
        }
    }
}

/// Move row `id` along the state machine from the state the journal holds (not the one a
/// caller remembers); `extra` sets more columns from `args` (numbered from ?4).
fn set_state(
    c: &Connection,
    id: i64,
    ev: Event,
    extra: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<State> {
    let current: String = c
        .prepare_cached("SELECT state FROM files WHERE id=?1")?
        .query_row([id], |r| r.get(0))?;
    let to = transition(State::parse(&current)?, ev)?;
    let sql = format!("UPDATE files SET state=?1, updated_at=?2{extra} WHERE id=?3");
    let (to_s, now) = (to.as_str(), now_secs());
    let mut all: Vec<&dyn rusqlite::ToSql> = vec![&to_s, &now, &id];
    all.extend_from_slice(args);
    c.prepare_cached(&sql)?.execute(all.as_slice())?;
    Ok(to)
}

impl Journal {
    /// Open (creating) the journal for the daemon.
    ///
    /// A journal that is damaged or not a database at all is moved aside (renamed with a
    /// timestamp, kept for inspection) and a new one started: the rescan that follows
    /// finds every file again, and uploading them again is safe — create-only writes or
    /// the existence check find what is already in the destination, and checksums decide
    /// "identical, counted once" or "conflict, kept". Refusing to start instead would be a
    /// restart loop with nothing uploaded.
    pub fn open(path: &Path) -> Result<Journal> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| SyncError::io(parent, e))?;
        }
        match Self::open_checked(path) {
            Err(SyncError::Journal(e)) if is_corrupt(&e) => {
                let aside = quarantine(path)?;
                tracing::error!(journal = %path.display(), moved_to = %aside.display(), error = %e,
                    "journal damaged; moved aside, starting a new one (a rescan finds every file again; nothing is uploaded twice)");
                Self::open_checked(path)
            }
            other => other,
        }
    }

    fn open_checked(path: &Path) -> Result<Journal> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Damage past the header shows up here, at start, not as a failed query (and an
        // exit, and a restart loop) later.
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(SyncError::Journal(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        conn.execute_batch(SCHEMA)?;
        migrate_identity(&conn)?;
        init_totals(&mut conn)?;
        Ok(Journal {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Open an existing journal read-only (`status`, `--dry-run`).
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        shim_identity(&conn)?;
        Ok(Journal {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each change is a
        // transaction), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` as one transaction: one commit and one round of file locks for every
    /// statement in it (each statement on its own is a transaction of its own).
    fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let c = self.lock();
        // IMMEDIATE: the write lock up front, so the read that decides the change and the
        // change itself see the same journal.
        let tx = Transaction::new_unchecked(&c, TransactionBehavior::Immediate)?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }

    pub fn get_by_path(&self, path: &Path) -> Result<Option<FileRow>> {
        row_by_path(&self.lock(), path)
    }

    pub fn get(&self, id: i64) -> Result<FileRow> {
        row_by_id(&self.lock(), id)
    }

    /// Record a ready file: inserts it as pending, or starts a new generation when the path
    /// was seen before with other content. Returns the row, or `None` when the journal
    /// already has this exact file (same size and mtime).
    pub fn upsert_ready(&self, f: &NewFile) -> Result<Option<FileRow>> {
        self.write(|c| upsert_on(c, f, now_secs()))
    }

    /// [`Journal::upsert_ready`] for many files in one transaction (a scan finding a
    /// backlog: one commit instead of one per file). Returns the rows that are new work.
    pub fn upsert_ready_many(&self, files: &[NewFile]) -> Result<Vec<FileRow>> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|c| {
            let now = now_secs();
            let mut rows = Vec::new();
            for f in files {
                rows.extend(upsert_on(c, f, now)?);
            }
            Ok(rows)
        })
    }

    fn set_state(
        &self,
        row: &FileRow,
        ev: Event,
        extra: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<State> {
        self.write(|c| set_state(c, row.id, ev, extra, args))
    }

    pub fn mark_uploading(&self, row: &FileRow) -> Result<()> {
        self.set_state(row, Event::Start, ", attempts = attempts + 1", &[])?;
        Ok(())
    }

    pub fn parts(&self, id: i64, upload_id: &str) -> Result<Vec<PartRow>> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT part_number, etag, crc32c, size FROM parts WHERE file_id=?1 AND upload_id=?2
             ORDER BY part_number",
        )?;
        let rows = st.query_map(params![id, upload_id], |r| {
            Ok(PartRow {
                number: r.get(0)?,
                etag: r.get(1)?,
                crc32c: r.get(2)?,
                size: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The upload is verified in the destination; `then` (e.g. [`Event::Kept`], when
    /// keeping the file needs nothing done to it) follows in the same transaction.
    /// Returns the state reached.
    pub fn mark_uploaded(
        &self,
        row: &FileRow,
        etag: Option<&str>,
        checksum: &str,
        then: Option<Event>,
    ) -> Result<State> {
        self.write(|c| {
            let seq: i64 = c
                .prepare_cached("SELECT COALESCE(MAX(uploaded_seq), 0) + 1 FROM files")?
                .query_row([], |r| r.get(0))?;
            let mut to = set_state(
                c,
                row.id,
                Event::Verified,
                ", etag=?4, checksum=?5, uploaded_seq=?6, upload_id=NULL, last_error=NULL",
                &[&etag, &checksum, &seq],
            )?;
            if let Some(ev) = then {
                to = set_state(c, row.id, ev, "", &[])?;
            }
            c.prepare_cached("DELETE FROM parts WHERE file_id=?1")?
                .execute([row.id])?;
            Ok(to)
        })
    }

    /// A file not uploaded was deleted under disk pressure: its multipart upload (aborted
    /// by the caller) is no longer one the journal relies on.
    pub fn mark_dropped(&self, row: &FileRow, why: &str) -> Result<()> {
        self.write(|c| {
            set_state(
                c,
                row.id,
                Event::Dropped,
                ", upload_id=NULL, last_error=?4",
                &[&why],
            )?;
            c.prepare_cached("DELETE FROM parts WHERE file_id=?1")?
                .execute([row.id])?;
            Ok(())
        })
    }

    pub fn mark(&self, row: &FileRow, ev: Event, error: Option<&str>) -> Result<State> {
        self.set_state(row, ev, ", last_error=COALESCE(?4, last_error)", &[&error])
    }

    /// Drop a row (the file turned out not to be finished); readiness decides again.
    pub fn forget(&self, id: i64) -> Result<()> {
        self.write(|c| {
            c.execute("DELETE FROM parts WHERE file_id=?1", [id])?;
            c.execute("DELETE FROM files WHERE id=?1", [id])?;
            Ok(())
        })
    }

    pub fn note_error(&self, id: i64, error: &str) -> Result<()> {
        let c = self.lock();
        c.execute(
            "UPDATE files SET last_error=?2, updated_at=?3 WHERE id=?1",
            params![id, error, now_secs()],
        )?;
        Ok(())
    }

    /// Open work, oldest first, media before manifests.
    pub fn open_work(&self, limit: usize) -> Result<Vec<FileRow>> {
        let c = self.lock();
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLS} FROM files INDEXED BY files_open
             WHERE state IN ('pending','uploading','uploaded')
             ORDER BY is_manifest, ready_at, id LIMIT ?1"
        ))?;
        let rows = st.query_map([limit as i64], row_from)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Whether a clip still has members not verified in the destination.
    pub fn clip_members_open(&self, clip: &str) -> Result<u64> {
        let c = self.lock();
        let n: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM files WHERE clip=?1 AND is_manifest=0
                 AND state IN ('pending','uploading','conflict','rejected')",
            )?
            .query_row([clip], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Retained files uploaded after `after_seq`, oldest upload first, at most `limit`
    /// (from the retained files' partial index: as many rows as asked for).
    pub fn retained_after(&self, after_seq: i64, limit: usize) -> Result<Vec<FileRow>> {
        let c = self.lock();
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLS} FROM files INDEXED BY files_retained
             WHERE state='retained' AND uploaded_seq > ?1 ORDER BY uploaded_seq LIMIT ?2"
        ))?;
        let rows = st.query_map(params![after_seq, limit as i64], row_from)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Retained files whose content (mtime) is older than `cutoff_ns`, oldest first, after
    /// `(mtime_ns, id)`, at most `limit`.
    pub fn retained_older(&self, cutoff_ns: i64, after: (i64, i64), limit: usize) -> Result<Vec<FileRow>> {
        let c = self.lock();
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLS} FROM files INDEXED BY files_retained_mtime
             WHERE state='retained' AND mtime_ns < ?1 AND (mtime_ns, id) > (?2, ?3)
             ORDER BY mtime_ns, id LIMIT ?4"
        ))?;
        let rows = st.query_map(params![cutoff_ns, after.0, after.1, limit as i64], row_from)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Bytes of retained files (kept by triggers).
    pub fn retained_bytes(&self) -> Result<u64> {
        let c = self.lock();
        let b: i64 = c
            .prepare_cached("SELECT bytes FROM state_totals WHERE state='retained'")?
            .query_row([], |r| r.get(0))?;
        Ok(b.max(0) as u64)
    }

    /// Files that are ready but not uploaded (queued, or an upload interrupted), grouped
    /// by clip, the clip with the oldest file first: what disk pressure may drop when the
    /// config allows it.
    pub fn not_uploaded_clips(&self) -> Result<Vec<Vec<FileRow>>> {
        let rows: Vec<FileRow> = {
            let c = self.lock();
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLS} FROM files WHERE state IN ('pending','uploading') ORDER BY id"
            ))?;
            let rows = st.query_map([], row_from)?;
            rows.map(|r| finish(r?)).collect::<Result<_>>()?
        };
        Ok(group_oldest_first(rows))
    }

    /// Rows with a given state.
    pub fn with_state(&self, state: State, limit: usize) -> Result<Vec<FileRow>> {
        let c = self.lock();
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLS} FROM files WHERE state=?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = st.query_map(params![state.as_str(), limit as i64], row_from)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Counts and bytes per state (kept by triggers: nine rows read), and the oldest open
    /// file (from the queue's partial index: as many rows as are queued, not as the
    /// history holds).
    pub fn summary(&self) -> Result<Summary> {
        let c = self.lock();
        let mut s = Summary::default();
        let mut st = c.prepare_cached("SELECT state, n, bytes FROM state_totals")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })?;
        for r in rows {
            let (state, n, bytes) = r?;
            let state = State::parse(&state)?;
            s.counts.insert(state.as_str(), n.max(0) as u64);
            if matches!(state, State::Pending | State::Uploading) {
                s.pending_bytes += bytes.max(0) as u64;
            }
        }
        s.oldest_pending_ready_at = c
            .prepare_cached(
                "SELECT MIN(ready_at) FROM files INDEXED BY files_open
                 WHERE state IN ('pending','uploading','uploaded') AND state != 'uploaded'",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(s)
    }

    /// Delete up to `batch` rows of files that are gone (`removed`, `vanished`, `dropped`)
    /// whose last change is older than `older_than_secs`; returns how many. Their rows
    /// only served history: the file is not on disk any more, so no rescan can meet it.
    pub fn prune(&self, older_than_secs: u64, batch: usize) -> Result<usize> {
        let cutoff = now_secs().saturating_sub(older_than_secs.min(i64::MAX as u64) as i64);
        self.write(|c| {
            c.prepare_cached(
                "DELETE FROM parts WHERE file_id IN (SELECT id FROM files INDEXED BY files_gone
                 WHERE state IN ('removed','vanished','dropped') AND updated_at < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, batch as i64])?;
            let n = c
                .prepare_cached(
                    "DELETE FROM files WHERE id IN (SELECT id FROM files INDEXED BY files_gone
                     WHERE state IN ('removed','vanished','dropped') AND updated_at < ?1 LIMIT ?2)",
                )?
                .execute(params![cutoff, batch as i64])?;
            Ok(n)
        })
    }

    pub fn set_meta(&self, k: &str, v: &str) -> Result<()> {
        let c = self.lock();
        c.execute(
            "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            params![k, v],
        )?;
        Ok(())
    }

    pub fn meta(&self, k: &str) -> Result<Option<String>> {
        let c = self.lock();
        Ok(c.query_row("SELECT v FROM meta WHERE k=?1", [k], |r| r.get(0))
            .optional()?)
    }
}

/// The file's identity (dev, inode) and the refused files, added to journals created
/// before they were recorded: one place for the columns and table the rest relies on.
fn migrate_identity(c: &Connection) -> Result<()> {
    let has_dev: bool = c
        .prepare("SELECT COUNT(*) FROM pragma_table_info('files') WHERE name = 'dev'")?
        .query_row([], |r| r.get::<_, i64>(0))?
        > 0;
    if !has_dev {
        c.execute_batch(
            "ALTER TABLE files ADD COLUMN dev INTEGER; ALTER TABLE files ADD COLUMN ino INTEGER;",
        )?;
    }
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS refused (
            path BLOB NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, at INTEGER NOT NULL,
            PRIMARY KEY (path, reason));",
    )?;
    Ok(())
}

/// A read-only connection cannot migrate: a journal the daemon has not opened since the
/// upgrade gets a temporary view with the identity columns empty, so `status` and
/// `--dry-run` still read it.
fn shim_identity(c: &Connection) -> Result<()> {
    let has_dev: bool = c
        .prepare("SELECT COUNT(*) FROM pragma_table_info('files') WHERE name = 'dev'")?
        .query_row([], |r| r.get::<_, i64>(0))?
        > 0;
    let has_files: bool = c
        .prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'files'")?
        .query_row([], |r| r.get::<_, i64>(0))?
        > 0;
    if has_files && !has_dev {
        c.execute_batch("CREATE TEMP VIEW files AS SELECT *, NULL AS dev, NULL AS ino FROM main.files;")?;
    }
    Ok(())
}

/// Whether a recorded row and a file found now are the same file by (dev, inode); rows
/// without an identity match on size and mtime alone.
fn same_ident(row: &FileRow, f: &NewFile) -> bool {
    match (row.ident, f.ident) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The multipart checkpoints live in the `files` (UploadId, part size) and `parts` tables.
impl Checkpoints for Journal {
    fn set_upload(&self, id: i64, upload_id: &str, part_size: u64) -> Result<()> {
        self.write(|c| {
            c.prepare_cached("DELETE FROM parts WHERE file_id = ?1")?
                .execute([id])?;
            c.prepare_cached("UPDATE files SET upload_id=?2, part_size=?3, updated_at=?4 WHERE id=?1")?
                .execute(params![id, upload_id, part_size as i64, now_secs()])?;
            Ok(())
        })
    }

    fn clear_upload(&self, id: i64) -> Result<()> {
        self.write(|c| {
            c.prepare_cached("DELETE FROM parts WHERE file_id = ?1")?
                .execute([id])?;
            c.prepare_cached("UPDATE files SET upload_id=NULL, part_size=NULL, updated_at=?2 WHERE id=?1")?
                .execute(params![id, now_secs()])?;
            Ok(())
        })
    }

    fn record_part(&self, id: i64, upload_id: &str, p: &PartRow) -> Result<()> {
        let c = self.lock();
        c.prepare_cached(
            "INSERT OR REPLACE INTO parts (file_id, upload_id, part_number, etag, crc32c, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![id, upload_id, p.number, p.etag, p.crc32c, p.size as i64])?;
        Ok(())
    }

    fn live_uploads(&self) -> Result<HashMap<String, String>> {
        let c = self.lock();
        let mut st = c.prepare_cached("SELECT key, upload_id FROM files WHERE upload_id IS NOT NULL")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
    }

    fn knows_key(&self, key: &str) -> Result<bool> {
        let c = self.lock();
        let n: i64 = c
            .prepare_cached("SELECT COUNT(*) FROM files WHERE key=?1")?
            .query_row([key], |r| r.get(0))?;
        Ok(n > 0)
    }
}

/// Refused files as `status` lists them: (path, reason, detail), and (reason, count).
pub type Refusals = (Vec<(PathBuf, String, String)>, Vec<(String, u64)>);

/// Refused files, for `status` (the daemon's own log says each once).
impl Journal {
    /// Remember that `path` was refused for `reason`.
    pub fn note_refusal(&self, path: &Path, reason: &str, detail: &str) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = self.lock();
        c.prepare_cached(
            "INSERT INTO refused (path, reason, detail, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(path, reason) DO UPDATE SET detail=excluded.detail, at=excluded.at",
        )?
        .execute(params![path.as_os_str().as_bytes(), reason, detail, now_secs()])?;
        Ok(())
    }

    /// Forget the refusals of `path` (it is accepted now), except for `keep`; or of every
    /// path (`None`: at start, before the first scan finds them again).
    pub fn clear_refusals(&self, path: Option<&Path>, keep: &str) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = self.lock();
        match path {
            Some(p) => c
                .prepare_cached("DELETE FROM refused WHERE path = ?1 AND reason != ?2")?
                .execute(params![p.as_os_str().as_bytes(), keep])?,
            None => c.execute("DELETE FROM refused", [])?,
        };
        Ok(())
    }

    /// Refused paths (newest first, at most `limit`) and the count per reason. Empty for a
    /// journal from before refusals were recorded.
    pub fn refusals(&self, limit: usize) -> Result<Refusals> {
        use std::os::unix::ffi::OsStrExt;
        let c = self.lock();
        let exists: i64 = c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'refused'",
            [],
            |r| r.get(0),
        )?;
        if exists == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut st = c.prepare("SELECT path, reason, detail FROM refused ORDER BY at DESC, path LIMIT ?1")?;
        let rows = st
            .query_map([limit as i64], |r| {
                let p: Vec<u8> = r.get(0)?;
                Ok((
                    PathBuf::from(std::ffi::OsStr::from_bytes(&p)),
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut st = c.prepare("SELECT reason, COUNT(*) FROM refused GROUP BY reason ORDER BY reason")?;
        let counts = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((rows, counts))
    }
}

/// Group rows by clip (a row without one is its own group), the group whose oldest file
/// (mtime) is oldest first; ties by path, so the order is stable.
pub fn group_oldest_first(rows: Vec<FileRow>) -> Vec<Vec<FileRow>> {
    let mut groups: HashMap<String, Vec<FileRow>> = HashMap::new();
    for r in rows {
        let k = r
            .clip
            .clone()
            .unwrap_or_else(|| r.path.to_string_lossy().into_owned());
        groups.entry(k).or_default().push(r);
    }
    let mut out: Vec<(i64, String, Vec<FileRow>)> = groups
        .into_iter()
        .map(|(k, v)| (v.iter().map(|r| r.mtime_ns).min().unwrap_or(0), k, v))
        .collect();
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out.into_iter().map(|(_, _, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_transitions() {
        use Event as E;
        use State as S;
        assert_eq!(transition(S::Pending, E::Start).unwrap(), S::Uploading);
        assert_eq!(transition(S::Uploading, E::Verified).unwrap(), S::Uploaded);
        assert_eq!(transition(S::Pending, E::Verified).unwrap(), S::Uploaded);
        assert_eq!(transition(S::Uploaded, E::Deleted).unwrap(), S::Removed);
        assert_eq!(transition(S::Uploaded, E::Kept).unwrap(), S::Retained);
        assert_eq!(transition(S::Retained, E::Evicted).unwrap(), S::Removed);
        assert_eq!(transition(S::Uploading, E::Restart).unwrap(), S::Pending);
        assert_eq!(transition(S::Removed, E::Reappeared).unwrap(), S::Pending);
        assert_eq!(transition(S::Uploading, E::Conflict).unwrap(), S::Conflict);
        assert_eq!(transition(S::Pending, E::Dropped).unwrap(), S::Dropped);
        assert_eq!(transition(S::Uploading, E::Dropped).unwrap(), S::Dropped);
        assert_eq!(transition(S::Dropped, E::Reappeared).unwrap(), S::Pending);
    }

    #[test]
    fn clips_to_drop_oldest_first() {
        let row = |id: i64, clip: Option<&str>, mtime_ns: i64| {
            NewFile {
                path: format!("/out/{id}").into(),
                size: 1,
                mtime_ns,
                clip: clip.map(str::to_string),
                is_manifest: false,
                key: format!("k{id}"),
                ident: None,
            }
            .pending_row(id, 0)
        };
        let groups = group_oldest_first(vec![
            row(1, Some("/out/new"), 300),
            row(2, Some("/out/old"), 200),
            row(3, Some("/out/new"), 50), // the clip "new" has the oldest file
            row(4, None, 100),
            row(5, Some("/out/old"), 250),
        ]);
        let ids: Vec<Vec<i64>> = groups.iter().map(|g| g.iter().map(|r| r.id).collect()).collect();
        assert_eq!(ids, vec![vec![1, 3], vec![4], vec![2, 5]]);
    }

    #[test]
    fn illegal_transitions_are_refused() {
        use Event as E;
        use State as S;
        // Never delete a file that is not verified.
        for s in [S::Pending, S::Uploading, S::Conflict, S::Rejected, S::Vanished] {
            assert!(transition(s, E::Deleted).is_err(), "{s:?}");
            assert!(transition(s, E::Evicted).is_err(), "{s:?}");
            assert!(transition(s, E::Kept).is_err(), "{s:?}");
        }
        // Only files not uploaded may be dropped; an uploaded one is deleted, not dropped.
        for s in [
            S::Uploaded,
            S::Removed,
            S::Retained,
            S::Conflict,
            S::Rejected,
            S::Vanished,
        ] {
            assert!(transition(s, E::Dropped).is_err(), "{s:?}");
        }
        assert!(transition(S::Uploaded, E::Reappeared).is_err());
        assert!(transition(S::Uploading, E::Reappeared).is_err());
        assert!(transition(S::Removed, E::Start).is_err());
    }

    #[test]
    fn journal_round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let j = Journal::open(&path).unwrap();
        let nf = NewFile {
            path: "/out/cam/c1.mkv".into(),
            size: 10,
            mtime_ns: 5,
            clip: Some("/out/cam/c1".into()),
            is_manifest: false,
            key: "k/c1.mkv".into(),
            ident: None,
        };
        let row = j.upsert_ready(&nf).unwrap().unwrap();
        assert_eq!(row.state, State::Pending);
        assert_eq!(j.get(row.id).unwrap(), row, "the row returned is the row stored");
        assert!(j.upsert_ready(&nf).unwrap().is_none(), "same file twice");
        j.mark_uploading(&row).unwrap();
        j.set_upload(row.id, "up-1", 5).unwrap();
        j.record_part(
            row.id,
            "up-1",
            &PartRow {
                number: 1,
                etag: "e1".into(),
                crc32c: "c1".into(),
                size: 5,
            },
        )
        .unwrap();
        assert_eq!(j.clip_members_open("/out/cam/c1").unwrap(), 1);
        drop(j);
        let j = Journal::open(&path).unwrap();
        let row = j.get(row.id).unwrap();
        assert_eq!(row.state, State::Uploading);
        assert_eq!(row.upload_id.as_deref(), Some("up-1"));
        assert_eq!(j.parts(row.id, "up-1").unwrap().len(), 1);
        assert_eq!(
            j.live_uploads().unwrap().get("k/c1.mkv").map(String::as_str),
            Some("up-1")
        );
        j.mark_uploaded(&row, Some("etag"), "crc", None).unwrap();
        assert!(
            j.mark(&row, Event::Evicted, None).is_err(),
            "uploaded is not retained"
        );
        assert_eq!(j.mark(&row, Event::Deleted, None).unwrap(), State::Removed);
        assert_eq!(j.clip_members_open("/out/cam/c1").unwrap(), 0);
        assert!(j.live_uploads().unwrap().is_empty());
        // Same path, new content: a new generation.
        let again = NewFile { size: 11, ..nf };
        let row2 = j.upsert_ready(&again).unwrap().unwrap();
        assert_eq!(row2.id, row.id);
        assert_eq!(row2.state, State::Pending);
        assert_eq!(row2.uploaded_seq, None);
        let s = j.summary().unwrap();
        assert_eq!(s.counts.get("pending"), Some(&1));
    }

    #[test]
    fn a_backlog_is_recorded_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let files: Vec<NewFile> = (0..3)
            .map(|i| NewFile {
                path: format!("/o/f{i}").into(),
                size: 3,
                mtime_ns: 1,
                clip: None,
                is_manifest: false,
                key: format!("k{i}"),
                ident: None,
            })
            .collect();
        let rows = j.upsert_ready_many(&files).unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert_eq!(&j.get(r.id).unwrap(), r);
        }
        assert!(
            j.upsert_ready_many(&files).unwrap().is_empty(),
            "the same files again"
        );
        assert!(j.upsert_ready_many(&[]).unwrap().is_empty());
        // One bad entry (a path that is not UTF-8) leaves the journal as it was.
        use std::os::unix::ffi::OsStrExt;
        let bad = NewFile {
            path: std::ffi::OsStr::from_bytes(b"/o/\xff").into(),
            key: "bad".into(),
            ..files[0].clone()
        };
        let new = NewFile {
            path: "/o/new".into(),
            key: "new".into(),
            ..files[0].clone()
        };
        assert!(j.upsert_ready_many(&[new.clone(), bad]).is_err());
        assert!(j.get_by_path(&new.path).unwrap().is_none(), "rolled back");
    }

    #[test]
    fn verified_and_kept_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let nf = |p: &str| NewFile {
            path: p.into(),
            size: 3,
            mtime_ns: 1,
            clip: None,
            is_manifest: false,
            key: p.trim_start_matches('/').into(),
            ident: None,
        };
        let a = j.upsert_ready(&nf("/o/a")).unwrap().unwrap();
        j.mark_uploading(&a).unwrap();
        let to = j.mark_uploaded(&a, None, "crc-a", Some(Event::Kept)).unwrap();
        assert_eq!(to, State::Retained);
        let a = j.get(a.id).unwrap();
        assert_eq!(
            (a.state, a.uploaded_seq, a.checksum.as_deref()),
            (State::Retained, Some(1), Some("crc-a"))
        );
        // A follow-up the state machine refuses undoes the whole change, the upload too.
        let b = j.upsert_ready(&nf("/o/b")).unwrap().unwrap();
        j.mark_uploading(&b).unwrap();
        assert!(j.mark_uploaded(&b, None, "crc-b", Some(Event::Evicted)).is_err());
        let b = j.get(b.id).unwrap();
        assert_eq!(
            (b.state, b.uploaded_seq, b.checksum.as_deref()),
            (State::Uploading, None, None)
        );
        assert_eq!(j.mark_uploaded(&b, None, "crc-b", None).unwrap(), State::Uploaded);
        assert_eq!(j.get(b.id).unwrap().uploaded_seq, Some(2));
    }

    fn new_file(path: &str, size: u64) -> NewFile {
        NewFile {
            path: path.into(),
            size,
            mtime_ns: 1,
            clip: None,
            is_manifest: false,
            key: format!("k{path}"),
            ident: None,
        }
    }

    /// The totals the triggers keep, against a full count.
    fn assert_totals_exact(j: &Journal) {
        let c = j.lock();
        let mut st = c
            .prepare("SELECT state, COUNT(*), COALESCE(SUM(size), 0) FROM files GROUP BY state")
            .unwrap();
        let counted: HashMap<String, (i64, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        drop(st);
        drop(c);
        let s = j.summary().unwrap();
        for state in State::ALL {
            let (n, bytes) = counted.get(state.as_str()).copied().unwrap_or((0, 0));
            assert_eq!(
                s.counts.get(state.as_str()).copied().unwrap_or(0),
                n as u64,
                "{state:?}"
            );
            if matches!(state, State::Pending) {
                assert!(s.pending_bytes >= bytes as u64);
            }
        }
    }

    #[test]
    fn totals_follow_every_change_and_older_journals_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        // A journal from before the totals: rows, no state_totals table.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            for i in 0..5 {
                c.execute(
                    "INSERT INTO files (path, size, mtime_ns, is_manifest, key, state, ready_at, updated_at)
                     VALUES (?1, 10, 1, 0, ?1, ?2, 0, 0)",
                    params![format!("/old/{i}"), if i < 2 { "removed" } else { "pending" }],
                )
                .unwrap();
            }
        }
        let j = Journal::open(&path).unwrap();
        assert_totals_exact(&j);
        assert_eq!(j.summary().unwrap().counts["pending"], 3);
        assert_eq!(j.summary().unwrap().pending_bytes, 30);
        let a = j.upsert_ready(&new_file("/n/a", 7)).unwrap().unwrap();
        let b = j.upsert_ready(&new_file("/n/b", 9)).unwrap().unwrap();
        j.mark_uploading(&a).unwrap();
        assert_totals_exact(&j);
        j.mark_uploaded(&a, None, "c", Some(Event::Kept)).unwrap();
        j.mark(&b, Event::Vanished, None).unwrap();
        j.upsert_ready(&NewFile {
            size: 12,
            ..new_file("/n/b", 0)
        })
        .unwrap();
        assert_totals_exact(&j);
        j.forget(a.id).unwrap();
        assert_totals_exact(&j);
        // Reopening does not count the rows again.
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_totals_exact(&j);
        assert_eq!(j.summary().unwrap().counts["pending"], 4);
    }

    #[test]
    fn pruning_takes_only_old_rows_of_files_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let mut ids = Vec::new();
        for (i, ev) in [Event::Vanished, Event::Vanished, Event::Rejected, Event::Conflict]
            .into_iter()
            .enumerate()
        {
            let r = j.upsert_ready(&new_file(&format!("/p/{i}"), 1)).unwrap().unwrap();
            j.mark(&r, ev, None).unwrap();
            ids.push(r.id);
        }
        let kept = j.upsert_ready(&new_file("/p/kept", 1)).unwrap().unwrap();
        j.mark_uploaded(&kept, None, "c", Some(Event::Kept)).unwrap();
        let open = j.upsert_ready(&new_file("/p/open", 1)).unwrap().unwrap();
        // Nothing is old enough yet.
        assert_eq!(j.prune(3600, 100).unwrap(), 0);
        j.lock()
            .execute("UPDATE files SET updated_at = updated_at - 7200", [])
            .unwrap();
        assert_eq!(j.prune(3600, 1).unwrap(), 1, "batched");
        assert_eq!(j.prune(3600, 100).unwrap(), 1);
        assert_eq!(j.prune(3600, 100).unwrap(), 0);
        // Files still on disk (conflict, rejected, retained, queued) keep their rows: a
        // rescan would otherwise queue them again.
        for id in [ids[2], ids[3], kept.id, open.id] {
            assert!(j.get(id).is_ok(), "row {id} pruned");
        }
        assert_totals_exact(&j);
    }

    #[test]
    fn a_damaged_journal_is_moved_aside_not_a_restart_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        std::fs::write(dir.path().join("j.sqlite-wal"), b"junk").unwrap();
        let j = Journal::open(&path).expect("a new journal");
        assert!(j.upsert_ready(&new_file("/x", 1)).unwrap().is_some());
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".corrupt-"))
            .collect();
        // (SQLite may have dropped the junk WAL while failing to open the database.)
        assert!(!aside.is_empty(), "database kept for inspection: {aside:?}");
        assert!(
            aside
                .iter()
                .any(|n| n.starts_with("j.sqlite.corrupt-") && !n.ends_with("-wal"))
        );
    }

    #[test]
    fn a_journal_damaged_past_its_header_is_moved_aside_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        {
            let j = Journal::open(&path).unwrap();
            for i in 0..2000 {
                j.upsert_ready(&new_file(&format!("/d/{i:05}"), 1)).unwrap();
            }
            let c = j.lock();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        // Scribble over pages in the middle (the header stays valid).
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 64 << 10, "{}", bytes.len());
        for b in &mut bytes[16 << 10..48 << 10] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::open(&path).expect("a new journal");
        assert_eq!(j.summary().unwrap().counts.get("pending"), Some(&0));
        assert!(
            std::fs::read_dir(dir.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-"))
        );
    }

    /// A journal from before (dev, inode) were recorded gains the columns on open; a file
    /// with the same size and mtime but another inode is a new generation, not "seen".
    #[test]
    fn identity_columns_migrate_and_tell_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute(
                "INSERT INTO files (path, size, mtime_ns, is_manifest, key, state, ready_at, updated_at)
                 VALUES ('/o/old', 3, 1, 0, 'old', 'retained', 0, 0)",
                [],
            )
            .unwrap();
        }
        let ro = Journal::open_read_only(&path).unwrap();
        assert_eq!(ro.with_state(State::Retained, 9).unwrap()[0].ident, None);
        assert!(ro.refusals(9).unwrap().0.is_empty());
        drop(ro);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.get_by_path(Path::new("/o/old")).unwrap().unwrap().ident, None);
        let nf = NewFile {
            path: "/o/a".into(),
            size: 3,
            mtime_ns: 1,
            clip: None,
            is_manifest: false,
            key: "a".into(),
            ident: Some((7, u64::MAX)),
        };
        let row = j.upsert_ready(&nf).unwrap().unwrap();
        assert_eq!(j.get(row.id).unwrap().ident, Some((7, u64::MAX)));
        assert!(j.upsert_ready(&nf).unwrap().is_none(), "the same file");
        j.mark(&row, Event::Vanished, None).unwrap();
        let other = NewFile {
            ident: Some((7, 8)),
            ..nf
        };
        let again = j.upsert_ready(&other).unwrap().expect("another inode: new work");
        assert_eq!((again.state, again.ident), (State::Pending, Some((7, 8))));
        j.note_refusal(Path::new("/o/x"), "symlink", "a link").unwrap();
        j.note_refusal(Path::new("/o/x"), "symlink", "a link").unwrap();
        j.note_refusal(Path::new("/o/x"), "bad_date", "d").unwrap();
        let (rows, counts) = j.refusals(9).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(counts, vec![("bad_date".into(), 1), ("symlink".into(), 1)]);
        j.clear_refusals(Some(Path::new("/o/x")), "bad_date").unwrap();
        assert_eq!(j.refusals(9).unwrap().1, vec![("bad_date".into(), 1)]);
        j.clear_refusals(None, "").unwrap();
        assert!(j.refusals(9).unwrap().0.is_empty());
    }
}
