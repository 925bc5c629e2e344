//! Resumable multipart uploads.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::S3Dest;
use super::call::{S3Fail, call_static};
use crate::checkpoint::PartRow;
use crate::checksum;
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, SyncError, join_err};
use crate::retry::ErrorClass;

impl S3Dest {
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<i32, (String, Option<String>, u64)>> {
        let mut out = BTreeMap::new();
        let mut marker: Option<String> = None;
        for _page in 0..10_000 {
            let m = marker.clone();
            let r = self
                .call("ListParts", key, cancel, || {
                    let req = self
                        .client
                        .list_parts()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .set_part_number_marker(m.clone());
                    async move { req.send().await.map_err(S3Fail::from_sdk) }
                })
                .await
                .map_err(S3Fail::into_error)?;
            for p in r.parts() {
                if let (Some(n), Some(etag)) = (p.part_number(), p.e_tag()) {
                    out.insert(
                        n,
                        (
                            etag.to_string(),
                            p.checksum_crc32_c().map(str::to_string),
                            p.size().unwrap_or(0).max(0) as u64,
                        ),
                    );
                }
            }
            match (r.is_truncated(), r.next_part_number_marker()) {
                (Some(true), Some(next)) if Some(next) != marker.as_deref() => {
                    marker = Some(next.to_string())
                }
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    async fn create_upload(&self, ctx: &UploadCtx<'_>) -> Result<String> {
        let key = ctx.job.key.as_str();
        let caps = self.caps();
        let out = self
            .call("CreateMultipartUpload", key, ctx.cancel, || {
                let mut req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_metadata(self.metadata(ctx))
                    .set_storage_class(self.storage_class.clone())
                    .set_server_side_encryption(self.sse.clone())
                    .set_ssekms_key_id(self.sse_kms_key_id.clone());
                if caps.crc() {
                    req = req.checksum_algorithm(ChecksumAlgorithm::Crc32C);
                }
                async move { req.send().await.map_err(S3Fail::from_sdk) }
            })
            .await
            .map_err(S3Fail::into_error)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| SyncError::Transient {
                code: "NoUploadId".into(),
                message: "CreateMultipartUpload returned no UploadId".into(),
            })
    }

    pub(super) async fn multipart(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.job.key.clone();
        let size = ctx.job.size;
        let mut part_size = ctx.job.part_size.unwrap_or(ctx.part_size);
        // Resume: reconcile the checkpointed upload with what the store still has.
        let mut remote: BTreeMap<i32, (String, Option<String>, u64)> = BTreeMap::new();
        let mut upload_id = None;
        if let Some(id) = &ctx.job.upload_id {
            match self.list_parts(&key, id, ctx.cancel).await {
                Ok(parts) => {
                    info!(key = %key, upload_id = %id, parts = parts.len(), "resuming multipart upload");
                    remote = parts;
                    upload_id = Some(id.clone());
                }
                Err(SyncError::NoSuchUpload(_)) | Err(SyncError::Rejected { .. }) => {
                    info!(key = %key, upload_id = %id, "multipart upload gone; starting over");
                    ctx.checkpoints.clear_upload(ctx.job.id)?;
                }
                Err(e) => return Err(e),
            }
        }
        let upload_id = match upload_id {
            Some(id) => id,
            None => {
                part_size = ctx.part_size;
                let id = self.create_upload(ctx).await?;
                ctx.checkpoints.set_upload(ctx.job.id, &id, part_size)?;
                debug!(key = %key, upload_id = %id, "multipart upload created");
                id
            }
        };
        let n_parts = size.div_ceil(part_size) as i32;
        let sem = Arc::new(tokio::sync::Semaphore::new(ctx.part_concurrency));
        let mut tasks: JoinSet<Result<PartRow>> = JoinSet::new();
        let mut done: BTreeMap<i32, PartRow> = BTreeMap::new();
        let (mut full, mut crcs) = (0u32, Vec::with_capacity(n_parts as usize));
        let mut md5s: Vec<[u8; 16]> = Vec::new();
        let caps = self.caps();
        let mut reused = 0;
        for n in 1..=n_parts {
            if ctx.cancel.is_cancelled() {
                break;
            }
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => p.expect("semaphore never closed"),
                Some(r) = tasks.join_next() => {
                    let p = r.map_err(join_err)??;
                    done.insert(p.number, p);
                    sem.clone().acquire_owned().await.expect("semaphore never closed")
                }
            };
            let offset = (n as u64 - 1) * part_size;
            let len = part_size.min(size - offset) as usize;
            let buffer = self.reserve(len as u64).await;
            let path = ctx.src.clone();
            let data = tokio::task::spawn_blocking(move || checksum::read_range(&path, offset, len))
                .await
                .map_err(join_err)??;
            let crc = crc32c::crc32c(&data);
            full = crc32c::crc32c_append(full, &data);
            crcs.push(crc);
            let crc_b64 = checksum::b64(crc);
            let md5 = (!caps.crc()).then(|| checksum::md5(&data));
            md5s.extend(md5);
            // A part already on the store is reused only when it provably holds these
            // bytes: its CRC32C, or (Content-MD5 mode) its ETag, is ours.
            if let Some((etag, rc, rsize)) = remote.get(&n)
                && *rsize == len as u64
                && match &md5 {
                    None => rc.as_deref() == Some(crc_b64.as_str()),
                    Some(m) => checksum::etag_is(etag, &checksum::md5_etag(m)),
                }
            {
                reused += 1;
                done.insert(
                    n,
                    PartRow {
                        number: n,
                        etag: etag.clone(),
                        crc32c: crc_b64,
                        size: len as u64,
                    },
                );
                drop((permit, buffer));
                continue;
            }
            ctx.limiter.acquire(len as u64).await;
            let data = Bytes::from(data);
            let client = self.client.clone();
            let (bucket, key2, uid) = (self.bucket.clone(), key.clone(), upload_id.clone());
            let checkpoints = ctx.checkpoints.clone();
            let file_id = ctx.job.id;
            let cancel = ctx.cancel.clone();
            let metrics = self.metrics.clone();
            let retry = self.retry.clone();
            let sign = self.sign_payload;
            tasks.spawn(async move {
                let _permit = (permit, buffer);
                let r = call_static(&retry, &metrics, "UploadPart", &key2, &cancel, || {
                    let mut req = client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key2)
                        .upload_id(&uid)
                        .part_number(n)
                        .content_length(data.len() as i64)
                        .body(ByteStream::from(data.clone()));
                    req = match &md5 {
                        None => req.checksum_crc32_c(&crc_b64),
                        Some(m) => req.content_md5(checksum::md5_b64(m)),
                    };
                    async move {
                        if sign {
                            req.send().await
                        } else {
                            req.customize().disable_payload_signing().send().await
                        }
                        .map_err(S3Fail::from_sdk)
                    }
                })
                .await
                .map_err(S3Fail::into_error)?;
                let etag = r
                    .e_tag()
                    .map(str::to_string)
                    .ok_or_else(|| SyncError::Transient {
                        code: "NoETag".into(),
                        message: format!("UploadPart {n} returned no ETag"),
                    })?;
                if let Some(m) = &md5
                    && caps.etag_is_md5
                    && !checksum::etag_is(&etag, &checksum::md5_etag(m))
                {
                    return Err(SyncError::Verify {
                        key: key2,
                        detail: format!(
                            "part {n}: store reports ETag {etag}, local MD5 {}",
                            checksum::md5_etag(m)
                        ),
                    });
                }
                let part = PartRow {
                    number: n,
                    etag,
                    crc32c: crc_b64.clone(),
                    size: data.len() as u64,
                };
                checkpoints.record_part(file_id, &uid, &part)?;
                metrics.add_bytes(data.len() as u64);
                metrics.touch();
                Ok(part)
            });
        }
        // Let the parts in flight finish (they are checkpointed) even on
        // shutdown; the next start resumes after them.
        let mut first_err = None;
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(p)) => {
                    done.insert(p.number, p);
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(join_err(e));
                }
            }
        }
        if let Some(e) = first_err {
            if matches!(e, SyncError::NoSuchUpload(_)) {
                ctx.checkpoints.clear_upload(ctx.job.id)?;
            }
            return Err(e);
        }
        if ctx.cancel.is_cancelled() || done.len() != n_parts as usize {
            return Err(SyncError::Cancelled);
        }
        if reused > 0 {
            info!(key = %key, reused, total = n_parts, "reused parts already on the store");
        }
        let parts: Vec<CompletedPart> = done
            .values()
            .map(|p| {
                let mut b = CompletedPart::builder().part_number(p.number).e_tag(&p.etag);
                if caps.crc() {
                    b = b.checksum_crc32_c(&p.crc32c);
                }
                b.build()
            })
            .collect();
        let r = self
            .call("CompleteMultipartUpload", &key, ctx.cancel, || {
                let mut req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts.clone()))
                            .build(),
                    );
                if caps.conditional_writes {
                    req = req.if_none_match("*");
                }
                async move { req.send().await.map_err(S3Fail::from_sdk) }
            })
            .await;
        let (local_full, local_composite) = (checksum::b64(full), checksum::composite(&crcs));
        let md5_etag = (!caps.crc()).then(|| checksum::multipart_etag(&md5s));
        match r {
            Ok(out) => {
                let checksum = match (&md5_etag, out.checksum_crc32_c()) {
                    (Some(e), _) => {
                        if caps.etag_is_md5
                            && let Some(got) = out.e_tag()
                            && !checksum::etag_is(got, e)
                        {
                            return Err(SyncError::Verify {
                                key: key.clone(),
                                detail: format!("store computed ETag {got}, local {e}"),
                            });
                        }
                        format!("md5:{e}")
                    }
                    (None, Some(c)) if c != local_full && c != local_composite => {
                        return Err(SyncError::Verify {
                            key: key.clone(),
                            detail: format!("store computed {c}, local {local_composite} / {local_full}"),
                        });
                    }
                    (None, Some(c)) => c.to_string(),
                    (None, None) => local_composite,
                };
                Ok(Done {
                    etag: out.e_tag().map(str::to_string),
                    checksum,
                    local: Some((full, crcs)),
                    md5_etag,
                })
            }
            // A Complete that succeeded but whose answer was lost looks like NoSuchUpload
            // on the retry: the object tells.
            Err(e) if matches!(e.class, ErrorClass::NoSuchUpload | ErrorClass::PreconditionFailed) => {
                let done = self.existing_after_race(ctx).await?;
                // A refused create-only Complete leaves the upload open: its parts would
                // be billed until the orphan sweep of a later start.
                self.abort(&key, &upload_id, ctx.cancel).await;
                Ok(done)
            }
            Err(e) => Err(e.into_error()),
        }
    }
}
