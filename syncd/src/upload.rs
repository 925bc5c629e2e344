//! Destinations and the per-file upload job.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checksum;
use crate::config::{AfterUpload, Config, Destination};
use crate::dest::s3::S3Dest;
use crate::error::{Result, SyncError};
use crate::journal::{Event, FileRow, Journal, State};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::tree::{self, Ident, Removal};

/// A verified upload.
#[derive(Debug, Clone)]
pub struct Done {
    pub etag: Option<String>,
    /// The checksum as the destination reports it.
    pub checksum: String,
    /// Local full-object CRC32C and per-part CRC32Cs, when computed.
    pub local: Option<(u32, Vec<u32>)>,
    /// With Content-MD5: the ETag the content should have (the MD5, or the MD5 of the
    /// part MD5s and `-<parts>`).
    pub md5_etag: Option<String>,
}

/// Everything one upload needs.
pub struct UploadCtx<'a> {
    pub row: &'a FileRow,
    /// The only way to read the row's file: beneath its watch root, no symlink followed,
    /// still the file the journal recorded.
    pub src: tree::Source,
    pub journal: &'a Journal,
    pub cancel: &'a CancellationToken,
    pub limiter: &'a RateLimiter,
    /// Transfer slots (`upload.max_files`): taken for the data, not for metadata requests.
    pub transfers: &'a tokio::sync::Semaphore,
    pub metadata: BTreeMap<String, String>,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: usize,
}

/// Where files go.
pub enum Dest {
    S3(Box<S3Dest>),
    File(FileDest),
}

impl Dest {
    pub async fn new(cfg: &Config, metrics: Arc<Metrics>) -> Dest {
        match cfg.destination() {
            Destination::S3 { bucket, prefix } => {
                Dest::S3(Box::new(S3Dest::connect(cfg, &bucket, &prefix, metrics).await))
            }
            Destination::File { dir } => Dest::File(FileDest { dir, metrics }),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Dest::S3(s) => s.describe(),
            Dest::File(f) => format!("file://{}", f.dir.display()),
        }
    }

    /// Check the destination is usable; `Fatal` when it is not.
    pub async fn probe(&self, cfg: &Config, cancel: &CancellationToken) -> Result<()> {
        match self {
            Dest::S3(s) => s.probe(cancel, cfg.s3.probe).await.map(|_| ()),
            Dest::File(f) => {
                std::fs::create_dir_all(&f.dir).map_err(|e| SyncError::Fatal {
                    code: "Unwritable".into(),
                    message: format!("{}: {e}", f.dir.display()),
                })?;
                Ok(())
            }
        }
    }

    pub async fn upload(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        match self {
            Dest::S3(s) => s.upload(ctx).await,
            Dest::File(f) => f.upload(ctx).await,
        }
    }
}

/// `file:///dir`: the embedded default destination. Copies into `dir/<key>` through a
/// temporary name, fsyncs, renames, and verifies by reading the copy back.
pub struct FileDest {
    pub dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl FileDest {
    async fn upload(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let target = self.dir.join(&ctx.row.key);
        let src = ctx.row.path.clone();
        let key = ctx.row.key.clone();
        if target.exists() {
            let (t, s) = (target.clone(), ctx.src.clone());
            let same = tokio::task::spawn_blocking(move || -> Result<Option<u32>> {
                let (ts, tc, _) = checksum::file_checksums(&checksum::Own(&t), u64::MAX)?;
                let (ss, sc, _) = checksum::file_checksums(&s, u64::MAX)?;
                Ok((ts == ss && tc == sc).then_some(sc))
            })
            .await
            .map_err(join_err)??;
            return match same {
                Some(crc) => {
                    // An earlier attempt may have renamed it into place and failed its
                    // directory fsync: make sure before counting it.
                    sync_dir(target.parent().unwrap_or(&self.dir))?;
                    Ok(Done {
                        etag: None,
                        checksum: checksum::b64(crc),
                        local: Some((crc, vec![])),
                        md5_etag: None,
                    })
                }
                None => Err(SyncError::Conflict {
                    key,
                    detail: format!("{} differs", target.display()),
                }),
            };
        }
        let _slot = ctx.transfers.acquire().await.expect("semaphore never closed");
        // Copy in 1 MiB chunks through the shared rate limiter, computing CRC32C.
        let parent = target.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| SyncError::io(&parent, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.syncd-tmp"));
        let (mut input, _) = ctx.src.open()?;
        let mut out = std::fs::File::create(&tmp).map_err(|e| SyncError::io(&tmp, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut crc, mut total) = (0u32, 0u64);
        loop {
            if ctx.cancel.is_cancelled() {
                let _ = std::fs::remove_file(&tmp);
                return Err(SyncError::Cancelled);
            }
            let n = input.read(&mut buf).map_err(|e| SyncError::io(&src, e))?;
            if n == 0 {
                break;
            }
            ctx.limiter.acquire(n as u64).await;
            out.write_all(&buf[..n]).map_err(|e| SyncError::io(&tmp, e))?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            total += n as u64;
            self.metrics.add_bytes(n as u64);
        }
        out.sync_all().map_err(|e| SyncError::io(&tmp, e))?;
        drop(out);
        if total != ctx.row.size {
            let _ = std::fs::remove_file(&tmp);
            return Err(SyncError::Changed(src));
        }
        std::fs::rename(&tmp, &target).map_err(|e| SyncError::io(&target, e))?;
        // The rename is durable only once its directory is: until then the copy is not
        // "uploaded", and a failure is an error (retried), not ignored.
        sync_dir(&parent)?;
        // Verify the copy as it is on disk now.
        let t = target.clone();
        let (size, back, _) =
            tokio::task::spawn_blocking(move || checksum::file_checksums(&checksum::Own(&t), u64::MAX))
                .await
                .map_err(join_err)??;
        if size != total || back != crc {
            return Err(SyncError::Verify {
                key,
                detail: format!(
                    "copy reads back {size} bytes crc {back:08x}, wrote {total} bytes crc {crc:08x}"
                ),
            });
        }
        Ok(Done {
            etag: None,
            checksum: checksum::b64(crc),
            local: Some((crc, vec![])),
            md5_etag: None,
        })
    }
}

/// fsync a directory (after a rename into it).
fn sync_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SyncError::io(dir, e))
}

pub(crate) fn join_err(e: tokio::task::JoinError) -> SyncError {
    SyncError::Transient {
        code: "join".into(),
        message: e.to_string(),
    }
}

/// Object metadata from the clip manifest: top-level scalar fields, keys lower-cased to
/// `[a-z0-9-]`, values printable ASCII, at most ~1.5 KiB in total (S3 allows 2 KiB).
pub fn manifest_metadata(manifest: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(obj) = manifest.as_object() else {
        return out;
    };
    let mut total = 0;
    for (k, v) in obj {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        let key: String = k
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        let value = crate::keys::sanitize_metadata(&value);
        if key.is_empty() || total + key.len() + value.len() > 1536 {
            continue;
        }
        total += key.len() + value.len();
        out.insert(format!("edgemask-{key}"), value);
    }
    out
}

/// Shared state of the upload jobs.
pub struct Worker {
    pub cfg: Arc<Config>,
    pub journal: Journal,
    pub dest: Arc<Dest>,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// `upload.max_files` transfer slots shared by all jobs.
    pub transfers: Arc<tokio::sync::Semaphore>,
}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// Leave the file queued and retry later.
    Later(SyncError),
    /// The destination is unusable: stop dispatching.
    DestinationDown(SyncError),
    Cancelled,
}

impl Worker {
    fn metadata_for(&self, row: &FileRow) -> BTreeMap<String, String> {
        if !self.cfg.upload.metadata_from_manifest {
            return BTreeMap::new();
        }
        let rules = self.cfg.name_rules();
        let name = row
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = row.path.with_file_name(rules.manifest_for(&name));
        // The scanner judged (and reported) the manifest; here it only lends its fields.
        match tree::Source::new(&self.cfg.watch, &manifest, self.cfg.file_policy(), None)
            .and_then(|s| s.read_capped(tree::MAX_MANIFEST_BYTES))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            Some(v) => manifest_metadata(&v),
            None => BTreeMap::new(),
        }
    }

    /// Upload one journal row and apply the after-upload rule.
    pub async fn run(&self, row: FileRow, cancel: CancellationToken) -> Outcome {
        match self.run_inner(&row, &cancel).await {
            Ok(()) => Outcome::Done,
            Err(SyncError::Cancelled) => Outcome::Cancelled,
            Err(e) => {
                self.metrics.failure(e.kind());
                let msg = e.to_string();
                match &e {
                    SyncError::Fatal { .. } => {
                        let _ = self.journal.note_error(row.id, &msg);
                        Outcome::DestinationDown(e)
                    }
                    SyncError::Conflict { .. } => {
                        warn!(path = %row.path.display(), key = %row.key, error = %msg, "conflict: kept locally");
                        if let Err(je) = self.journal.mark(&row, Event::Conflict, Some(&msg)) {
                            return Outcome::Later(je);
                        }
                        Outcome::Done
                    }
                    SyncError::Refused { path, reason, detail } => {
                        // Found ready, then swapped for a link, linked again, given away…:
                        // kept, never read; its clip's manifest waits as for a rejected file.
                        tree::report(Some(&self.journal), &self.metrics, path, *reason, detail);
                        if matches!(row.state, State::Pending | State::Uploading)
                            && let Err(je) = self.journal.mark(&row, Event::Rejected, Some(&msg))
                        {
                            return Outcome::Later(je);
                        }
                        Outcome::Done
                    }
                    SyncError::Rejected { .. } => {
                        warn!(path = %row.path.display(), key = %row.key, error = %msg, "object refused: kept locally");
                        if let Err(je) = self.journal.mark(&row, Event::Rejected, Some(&msg)) {
                            return Outcome::Later(je);
                        }
                        Outcome::Done
                    }
                    _ if cancel.is_cancelled() => Outcome::Cancelled,
                    _ => {
                        warn!(path = %row.path.display(), key = %row.key, error = %msg, "upload failed; will retry");
                        let _ = self.journal.note_error(row.id, &msg);
                        Outcome::Later(e)
                    }
                }
            }
        }
    }

    async fn run_inner(&self, row: &FileRow, cancel: &CancellationToken) -> Result<()> {
        let row = &self.journal.get(row.id)?;
        if row.state == State::Pending || row.state == State::Uploading {
            let policy = self.cfg.file_policy();
            let src = tree::Source::new(&self.cfg.watch, &row.path, policy, Some(ident(row)))?;
            // Looked at without following a link; judged as the scanner judged it.
            let now = match tree::stat(&src.root, &src.rel) {
                Ok(id) => Some(id),
                Err(e) if tree::is_not_found(&e) => None,
                Err(e) => return Err(e),
            };
            let Some(now) = now else {
                warn!(path = %row.path.display(), "file vanished before its upload; nothing to send");
                self.journal
                    .mark(row, Event::Vanished, Some("file vanished before upload"))?;
                return Ok(());
            };
            if let Err((reason, detail)) = now.check(&policy) {
                return Err(SyncError::Refused {
                    path: row.path.clone(),
                    reason,
                    detail,
                });
            }
            if !now.is(&ident(row)) {
                // Not finished after all: forget it; readiness decides again.
                warn!(path = %row.path.display(), "file changed after it was judged ready; re-queued");
                if let (Dest::S3(s), Some(id)) = (&*self.dest, &row.upload_id) {
                    s.abort(&row.key, id, cancel).await;
                }
                self.journal.forget(row.id)?;
                return Ok(());
            }
            self.journal.mark_uploading(row)?;
            debug!(path = %row.path.display(), key = %row.key, bytes = row.size, "upload starting");
            let ctx = UploadCtx {
                row,
                src: src.clone(),
                journal: &self.journal,
                cancel,
                limiter: &self.limiter,
                transfers: &self.transfers,
                metadata: self.metadata_for(row),
                multipart_threshold: self.cfg.upload.multipart_threshold,
                part_size: self.cfg.upload.part_size,
                part_concurrency: self.cfg.upload.part_concurrency,
            };
            let started = std::time::Instant::now();
            let done = self.dest.upload(&ctx).await?;
            // The file must not have changed while it was read.
            if !tree::stat(&src.root, &src.rel).is_ok_and(|after| after.is(&ident(row))) {
                return Err(SyncError::Changed(row.path.clone()));
            }
            // Keeping the file needs nothing done to it: recorded with the upload.
            let keep = (self.cfg.after_upload == AfterUpload::Retain).then_some(Event::Kept);
            self.journal
                .mark_uploaded(row, done.etag.as_deref(), &done.checksum, keep)?;
            self.metrics.uploaded(row.size);
            info!(path = %row.path.display(), key = %row.key, bytes = row.size,
                  checksum = %done.checksum, secs = started.elapsed().as_secs_f64(), "uploaded and verified");
            if keep.is_some() {
                return Ok(());
            }
        }
        let row = &self.journal.get(row.id)?;
        if row.state == State::Uploaded {
            match self.cfg.after_upload {
                AfterUpload::Delete => {
                    remove_uploaded(&self.cfg.watch, row)?;
                    self.journal.mark(row, Event::Deleted, None)?;
                }
                AfterUpload::Retain => {
                    self.journal.mark(row, Event::Kept, None)?;
                }
            }
        }
        Ok(())
    }
}

/// The identity the journal recorded for `row`'s file.
pub fn ident(row: &FileRow) -> Ident {
    Ident {
        dev_ino: row.ident,
        size: row.size,
        mtime_ns: row.mtime_ns,
    }
}

/// Delete the file a row describes, only if its name still holds that very file (dev,
/// inode, size, mtime): a writer that reused the name keeps its new file, a name swapped
/// for a symlink deletes nothing through it. A file already gone is fine; a file that is
/// not the row's is kept and logged. Either way the row is done with.
pub fn remove_uploaded(roots: &[PathBuf], row: &FileRow) -> Result<()> {
    let kept = |why: &str| {
        warn!(path = %row.path.display(), why, "not deleted: the name no longer holds the uploaded file; kept");
        Ok(())
    };
    let Some((root, rel)) = tree::split(roots, &row.path) else {
        return kept("not beneath a watched directory");
    };
    match tree::remove_if_same(root, rel, &ident(row)) {
        Ok(Removal::Removed | Removal::Gone) => Ok(()),
        Ok(Removal::Different) => kept("another file (or a link) holds the name now"),
        Err(SyncError::Refused { detail, .. }) => kept(&detail),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_from_manifest_is_safe() {
        let m = serde_json::json!({
            "camera": "door", "Host": "gpu-01", "frames": 250, "fresh": true,
            "coverage": [0.1, 0.2], "model": {"sha256": "x"}, "note": "été\n"
        });
        let md = manifest_metadata(&m);
        assert_eq!(md.get("edgemask-camera").map(String::as_str), Some("door"));
        assert_eq!(md.get("edgemask-host").map(String::as_str), Some("gpu-01"));
        assert_eq!(md.get("edgemask-frames").map(String::as_str), Some("250"));
        assert_eq!(md.get("edgemask-fresh").map(String::as_str), Some("true"));
        assert_eq!(md.get("edgemask-note").map(String::as_str), Some("_t__"));
        assert!(!md.contains_key("edgemask-coverage"));
        assert!(!md.contains_key("edgemask-model"));
        let mut big = serde_json::Map::new();
        for k in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            big.insert(k.into(), "x".repeat(1000).into());
        }
        let md = manifest_metadata(&serde_json::Value::Object(big));
        // Values are cut at 256 bytes; at most ~1.5 KiB in total: 5 fields of 1 + 256.
        assert_eq!(md.len(), 5);
        assert!(md.values().all(|v| v.len() == 256));
    }
}
