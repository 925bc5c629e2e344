//! A single PutObject.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::S3Dest;
use super::call::S3Fail;
use crate::checksum;
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, join_err};
use crate::retry::ErrorClass;

/// Single-PUT files up to this size are read on the task instead of the blocking pool.
const INLINE_READ_MAX: usize = 1 << 20;

impl S3Dest {
    pub(super) async fn put_single(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.job.key.as_str();
        let path = ctx.src.clone();
        let len = ctx.job.size as usize;
        let _buffer = self.reserve(len as u64).await;
        // Small files are read in place (tens of microseconds from the page cache); a
        // blocking-pool round trip would cost more than the read.
        let data = if len <= INLINE_READ_MAX {
            checksum::read_range(&path, 0, len)?
        } else {
            tokio::task::spawn_blocking(move || checksum::read_range(&path, 0, len))
                .await
                .map_err(join_err)??
        };
        let data = Bytes::from(data);
        let crc = crc32c::crc32c(&data);
        let crc_b64 = checksum::b64(crc);
        let caps = self.caps();
        let md5 = (!caps.crc()).then(|| checksum::md5(&data));
        ctx.limiter.acquire(data.len() as u64).await;
        let r = self
            .call("PutObject", key, ctx.cancel, || {
                let mut req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_length(data.len() as i64)
                    .body(ByteStream::from(data.clone()))
                    .set_metadata(self.metadata(ctx))
                    .set_storage_class(self.storage_class.clone())
                    .set_server_side_encryption(self.sse.clone())
                    .set_ssekms_key_id(self.sse_kms_key_id.clone());
                req = match &md5 {
                    None => req.checksum_crc32_c(&crc_b64),
                    Some(m) => req.content_md5(checksum::md5_b64(m)),
                };
                if caps.conditional_writes {
                    req = req.if_none_match("*");
                }
                let sign = self.sign_payload;
                async move {
                    if sign {
                        req.send().await
                    } else {
                        req.customize().disable_payload_signing().send().await
                    }
                    .map_err(S3Fail::from_sdk)
                }
            })
            .await;
        match r {
            Ok(out) => {
                self.metrics.add_bytes(data.len() as u64);
                let md5_etag = md5.as_ref().map(checksum::md5_etag);
                Ok(Done {
                    etag: out.e_tag().map(str::to_string),
                    checksum: match &md5_etag {
                        None => crc_b64,
                        Some(e) => format!("md5:{e}"),
                    },
                    local: Some((crc, vec![crc])),
                    md5_etag,
                })
            }
            Err(e) if e.class == ErrorClass::PreconditionFailed => self.existing_after_race(ctx).await,
            Err(e) => Err(e.into_error()),
        }
    }
}
