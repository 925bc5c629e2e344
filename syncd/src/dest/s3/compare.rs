//! Whether the object already under a key is the local file.

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::S3Dest;
use super::call::S3Fail;
use super::exists::{Existing, HEAD_403_ADVICE, Head};
use crate::checksum;
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, SyncError, join_err};

impl S3Dest {
    /// Compare an existing object with the local file. `Ok(Some(done))` when identical.
    pub(super) async fn compare_existing(
        &self,
        ctx: &UploadCtx<'_>,
        head: &Head,
        part_size: u64,
    ) -> Result<Option<Done>> {
        if head.size != ctx.job.size {
            return Ok(None);
        }
        let path = ctx.src.clone();
        if let Some(reported) = head.crc32c.as_deref() {
            let (_, full, parts) =
                tokio::task::spawn_blocking(move || checksum::file_checksums(&path, part_size))
                    .await
                    .map_err(join_err)??;
            return Ok(checksum::matches(reported, full, &parts).then(|| Done {
                etag: head.etag.clone(),
                checksum: reported.to_string(),
                local: Some((full, parts)),
                md5_etag: None,
            }));
        }
        // No CRC32C stored with the object (written with Content-MD5, or by another
        // client). An MD5 ETag that matches (one PUT, or our part size) proves it.
        if self.caps().etag_is_md5
            && let Some(etag) = head.etag.as_deref()
        {
            let p = path.clone();
            let (full, parts) = tokio::task::spawn_blocking(move || checksum::file_md5s(&p, part_size))
                .await
                .map_err(join_err)??;
            for expected in [checksum::md5_etag(&full), checksum::multipart_etag(&parts)] {
                if checksum::etag_is(etag, &expected) {
                    return Ok(Some(Done {
                        etag: Some(etag.to_string()),
                        checksum: format!("md5:{expected}"),
                        local: None,
                        md5_etag: Some(expected),
                    }));
                }
            }
        }
        // Otherwise read it back and compare byte checksums; same size alone proves nothing.
        let (_, full, _) = tokio::task::spawn_blocking(move || checksum::file_checksums(&path, u64::MAX))
            .await
            .map_err(join_err)??;
        let remote = self.remote_crc32c(&ctx.job.key, ctx.cancel).await?;
        Ok((remote == full).then(|| Done {
            etag: head.etag.clone(),
            checksum: checksum::b64(full),
            local: Some((full, vec![])),
            md5_etag: None,
        }))
    }

    /// CRC32C of an object's content, streamed (constant memory).
    async fn remote_crc32c(&self, key: &str, cancel: &CancellationToken) -> Result<u32> {
        let out = self
            .call("GetObject", key, cancel, || async {
                self.client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(S3Fail::from_sdk)
            })
            .await
            .map_err(S3Fail::into_error)?;
        let mut body = out.body;
        let mut crc = 0u32;
        while let Some(chunk) = body.try_next().await.map_err(|e| SyncError::Transient {
            code: "GetObjectBody".into(),
            message: e.to_string(),
        })? {
            crc = crc32c::crc32c_append(crc, &chunk);
        }
        Ok(crc)
    }

    /// A create-only write found an object: identical counts as uploaded, else conflict.
    pub(super) async fn existing_after_race(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.job.key.as_str();
        let part_size = ctx.job.part_size.unwrap_or(ctx.part_size);
        match self.head(key, ctx.cancel).await? {
            Existing::Present(h) => match self.compare_existing(ctx, &h, part_size).await? {
                Some(d) => {
                    info!(
                        key,
                        "create-only write refused: already in the bucket with the same checksum; counted as uploaded"
                    );
                    Ok(d)
                }
                None => Err(SyncError::Conflict {
                    key: key.to_string(),
                    detail: "create-only write refused and contents differ".into(),
                }),
            },
            Existing::Absent => Err(SyncError::Transient {
                code: "PreconditionFailed".into(),
                message: "create-only write refused but no object found".into(),
            }),
            Existing::Unknown => Err(SyncError::Transient {
                code: "ExistenceUnknown".into(),
                message: format!(
                    "create-only write of {key} refused (the object exists) and {HEAD_403_ADVICE}: grant s3:GetObject on the prefix to compare it"
                ),
            }),
        }
    }
}
