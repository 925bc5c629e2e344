//! The endpoint probe: bucket and credentials, conditional writes, CRC32C or Content-MD5.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::S3Dest;
use super::call::S3Fail;
use super::caps::{Caps, ProbeSeen, decide};
use super::exists::{Existing, HEAD_403_ADVICE};
use crate::checksum;
use crate::config::IntegritySetting;
use crate::error::{Result, SyncError};
use crate::retry::ErrorClass;

impl S3Dest {
    /// Check the bucket and credentials, then what the endpoint supports. With probing on,
    /// the probe's own PutObject is the bucket check (no `s3:ListBucket` needed); without,
    /// HeadBucket is.
    pub async fn probe(&self, cancel: &CancellationToken, do_probe: bool) -> Result<Caps> {
        if !do_probe {
            self.call("HeadBucket", "", cancel, || async {
                self.client
                    .head_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(S3Fail::from_sdk)
            })
            .await
            .map_err(|e| match e.class {
                ErrorClass::NotFound => SyncError::Fatal {
                    code: "NoSuchBucket".into(),
                    message: format!("bucket {:?} does not exist", self.bucket),
                },
                _ => e.into_error(),
            })?;
            return Ok(self.caps());
        }
        let key = self.probe_key.clone();
        let body = Bytes::from_static(b"edgemask-syncd endpoint probe\n");
        let crc = checksum::b64(crc32c::crc32c(&body));
        let md5 = checksum::md5(&body);
        let put = |with_crc: bool, create_only: bool| {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()));
            req = if with_crc {
                req.checksum_crc32_c(&crc)
            } else {
                req.content_md5(checksum::md5_b64(&md5))
            };
            if create_only {
                req = req.if_none_match("*");
            }
            async move { req.send().await.map(|_| ()).map_err(S3Fail::from_sdk) }
        };
        // 1. A create-only write, with the CRC32C header unless the config rules it out.
        // Create-only because a bucket policy may deny every write without If-None-Match
        // (configs/iam/); a 412 says the probe object is there from an earlier start, and
        // that the store honours the header.
        let mut crc_accepted = self.integrity != IntegritySetting::ContentMd5;
        let mut r = self
            .call("PutObject(probe)", &key, cancel, || put(crc_accepted, true))
            .await;
        if crc_accepted && matches!(&r, Err(e) if e.class == ErrorClass::Rejected) {
            if let Err(e) = &r {
                warn!(code = %e.code, error = %e.message, "endpoint refuses x-amz-checksum-crc32c");
            }
            crc_accepted = false;
            r = self
                .call("PutObject(probe)", &key, cancel, || put(false, true))
                .await;
        }
        let mut conditional_writes = None;
        match r {
            Ok(()) => {}
            Err(e) if e.class == ErrorClass::PreconditionFailed => conditional_writes = Some(true),
            // The conditional header itself refused (501 NotImplemented): a plain write.
            Err(e) if e.class == ErrorClass::Rejected => {
                warn!(code = %e.code, error = %e.message, "endpoint refuses If-None-Match");
                self.call("PutObject(probe)", &key, cancel, || put(crc_accepted, false))
                    .await
                    .map_err(S3Fail::into_error)?;
                conditional_writes = Some(false);
            }
            Err(e) => return Err(e.into_error()),
        }
        // 2. What the store reports back.
        let head = match self.head(&key, cancel).await? {
            Existing::Present(h) => Some(h),
            Existing::Absent => None,
            Existing::Unknown => {
                return Err(SyncError::Fatal {
                    code: "AccessDenied".into(),
                    message: format!(
                        "{HEAD_403_ADVICE} on the probe object {key} just written: grant s3:GetObject on the prefix, which verification needs"
                    ),
                });
            }
        };
        let crc_reported = head.as_ref().and_then(|h| h.crc32c.as_deref()) == Some(crc.as_str());
        let etag_is_md5 = head
            .as_ref()
            .and_then(|h| h.etag.as_deref())
            .is_some_and(|e| checksum::etag_is(e, &checksum::md5_etag(&md5)));
        // 3. Unless already known, a create-only write over it: refused where
        // If-None-Match is honoured.
        let conditional_writes = match conditional_writes {
            Some(known) => known,
            None => match self
                .call("PutObject(probe)", &key, cancel, || put(crc_accepted, true))
                .await
            {
                Err(e) if e.class == ErrorClass::PreconditionFailed => true,
                Err(e) => return Err(e.into_error()),
                Ok(()) => false,
            },
        };
        let seen = ProbeSeen {
            crc_accepted,
            crc_reported,
            etag_is_md5,
            conditional_writes,
        };
        let caps = decide(
            self.integrity,
            &seen,
            self.sse.as_ref() == Some(&ServerSideEncryption::AwsKms),
        );
        if caps.crc() && !(crc_accepted && crc_reported) {
            warn!(
                "s3.integrity = \"crc32c\" but the endpoint does not report CRC32C back; uploads will fail verification"
            );
        }
        if !caps.crc() && !caps.etag_is_md5 {
            warn!(
                "Content-MD5 and ETags that are not MD5s (SSE-KMS or the store's choice): the store checks each body on receipt, the daemon verifies sizes only"
            );
        }
        info!(
            conditional_writes = caps.conditional_writes,
            integrity = ?caps.integrity,
            crc32c_accepted = seen.crc_accepted,
            crc32c_reported = seen.crc_reported,
            etag_is_md5 = caps.etag_is_md5,
            signed_payloads = self.sign_payload,
            "endpoint probed{}{}",
            if caps.conditional_writes {
                ""
            } else {
                " (If-None-Match not honoured: HEAD before PUT)"
            },
            if caps.crc() {
                ""
            } else {
                " (Content-MD5 instead of x-amz-checksum-crc32c)"
            }
        );
        *self.caps.write().unwrap_or_else(|e| e.into_inner()) = caps;
        Ok(caps)
    }
}
