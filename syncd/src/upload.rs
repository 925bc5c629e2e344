//! The per-file upload job: from a journal row to a verified object, then the
//! after-upload rule.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{AfterUpload, Config};
use crate::dest::Dest;
use crate::dest::context::{Job, UploadCtx};
use crate::error::{Result, SyncError};
use crate::journal::{Event, FileRow, Journal, State};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::tree::{self, Ident, Removal};

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
            let job = job(row);
            let ctx = UploadCtx {
                job: &job,
                src: src.clone(),
                checkpoints: Arc::new(self.journal.clone()),
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

/// What a destination needs to know of `row`'s file.
fn job(row: &FileRow) -> Job {
    Job {
        id: row.id,
        path: row.path.clone(),
        key: row.key.clone(),
        size: row.size,
        attempts: row.attempts,
        upload_id: row.upload_id.clone(),
        part_size: row.part_size,
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
