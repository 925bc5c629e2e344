//! One file to the store: look before writing where needed, send, verify.

use tracing::info;

use super::S3Dest;
use super::exists::{Existing, HEAD_403_ADVICE};
use crate::checksum;
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, SyncError};
use crate::retry::{self, PreCheck};

impl S3Dest {
    /// Upload one file (single PUT or resumable multipart) and verify it.
    pub async fn upload(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.job.key.as_str();
        let part_size = ctx.job.part_size.unwrap_or(ctx.part_size);
        // Already there? (a crash after the upload, before the journal knew; or the
        // fallback for stores without conditional writes: HEAD before PUT). A first
        // attempt on a store with create-only writes skips it: If-None-Match guards.
        let first_try = ctx.job.attempts == 0 && ctx.job.upload_id.is_none();
        let existing = match retry::pre_check(self.caps().conditional_writes, first_try) {
            PreCheck::CreateOnly => {
                self.metrics.existence_check("create_only");
                None
            }
            PreCheck::Listing if let Some(present) = self.listed(key, ctx.cancel).await => {
                self.metrics.existence_check("listing");
                match present {
                    true => self.must_know(key, ctx.cancel).await?,
                    false => None,
                }
            }
            PreCheck::Listing | PreCheck::Head => {
                self.metrics.existence_check("head");
                self.must_know(key, ctx.cancel).await?
            }
        };
        if let Some(head) = existing {
            if let Some(done) = self.compare_existing(ctx, &head, part_size).await? {
                info!(
                    key,
                    "already in the bucket with the same checksum; counted as uploaded"
                );
                if let Some(id) = &ctx.job.upload_id {
                    self.abort(key, id, ctx.cancel).await;
                }
                return Ok(done);
            }
            return Err(SyncError::Conflict {
                key: key.to_string(),
                detail: format!("bucket has {} bytes, checksum {:?}", head.size, head.crc32c),
            });
        }
        let done = {
            let _slot = ctx.transfers.acquire().await.expect("semaphore never closed");
            if ctx.job.size <= ctx.multipart_threshold {
                self.put_single(ctx).await?
            } else {
                self.multipart(ctx).await?
            }
        };
        // Verify what the store reports before the upload counts as done.
        let head = match self.checked_head(key, ctx.cancel).await? {
            Existing::Present(h) => h,
            Existing::Absent => {
                return Err(SyncError::Verify {
                    key: key.to_string(),
                    detail: "object missing right after upload".into(),
                });
            }
            Existing::Unknown => {
                return Err(SyncError::Verify {
                    key: key.to_string(),
                    detail: format!("{HEAD_403_ADVICE}: grant s3:GetObject on the prefix"),
                });
            }
        };
        if head.size != ctx.job.size {
            return Err(SyncError::Verify {
                key: key.to_string(),
                detail: format!("size {} in bucket, {} local", head.size, ctx.job.size),
            });
        }
        let caps = self.caps();
        if caps.crc() {
            let ok = match head.crc32c.as_deref() {
                Some(c) => {
                    c == done.checksum
                        || done
                            .local
                            .as_ref()
                            .is_some_and(|(full, parts)| checksum::matches(c, *full, parts))
                }
                None => false,
            };
            if !ok {
                return Err(SyncError::Verify {
                    key: key.to_string(),
                    detail: format!("bucket reports crc32c {:?}, local {}", head.crc32c, done.checksum),
                });
            }
        } else if caps.etag_is_md5
            && let Some(expected) = &done.md5_etag
            && !head
                .etag
                .as_deref()
                .is_some_and(|e| checksum::etag_is(e, expected))
        {
            return Err(SyncError::Verify {
                key: key.to_string(),
                detail: format!("bucket reports ETag {:?}, local MD5 {expected}", head.etag),
            });
        }
        Ok(Done {
            etag: head.etag.or(done.etag),
            checksum: match head.crc32c {
                Some(c) if caps.crc() => c,
                _ => done.checksum,
            },
            local: done.local,
            md5_etag: done.md5_etag,
        })
    }
}
