//! `file:///dir`: copies into a local directory.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::checksum;
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, SyncError, join_err};
use crate::metrics::Metrics;

/// `file:///dir`: the embedded default destination. Copies into `dir/<key>` through a
/// temporary name, fsyncs, renames, and verifies by reading the copy back.
pub struct FileDest {
    pub dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl FileDest {
    pub fn new(dir: PathBuf, metrics: Arc<Metrics>) -> FileDest {
        FileDest { dir, metrics }
    }

    /// Create the directory; `Fatal` when that fails.
    pub fn probe(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| SyncError::Fatal {
            code: "Unwritable".into(),
            message: format!("{}: {e}", self.dir.display()),
        })?;
        Ok(())
    }

    pub async fn upload(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let target = self.dir.join(&ctx.job.key);
        let src = ctx.job.path.clone();
        let key = ctx.job.key.clone();
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
        if total != ctx.job.size {
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
