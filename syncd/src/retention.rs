//! Retention: which uploaded (and, if allowed, not yet uploaded) clips leave the disk, and
//! when (`after_upload = "retain"`, `[retain]`).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::config::{AfterUpload, Config};
use crate::error::Result;
use crate::journal::{self, Event, FileRow, Journal};
use crate::metrics::Metrics;
use crate::upload::remove_uploaded;

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

/// Retention of uploaded files: max age, max bytes, disk high-water mark. Only files in
/// the `retained` state (verified in the destination) are deleted here — except, when
/// `retain.drop_not_uploaded` allows it and the disk is still above the mark once no
/// uploaded file is left, the oldest clips not uploaded yet (not in flight), each logged
/// and counted. Returns the multipart uploads of dropped files, to abort.
pub(crate) fn retention(
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
