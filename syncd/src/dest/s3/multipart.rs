//! Resumable multipart uploads.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::S3Dest;
use super::call::{S3Fail, call_static};
use super::caps::Caps;
use crate::checkpoint::{Checkpoints, PartRow};
use crate::checksum;
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, SyncError, join_err};
use crate::metrics::Metrics;
use crate::retry::{ErrorClass, RetryPolicy};

/// A part the store already holds (ListParts).
struct StoredPart {
    etag: String,
    /// Where the store reports it.
    crc32c: Option<String>,
    size: u64,
}

/// The multipart upload to send into: just created, or resumed with what the store holds.
struct Target {
    upload_id: String,
    part_size: u64,
    stored: BTreeMap<i32, StoredPart>,
    /// What the endpoint supports, read once for the whole upload.
    caps: Caps,
}

/// The parts of one upload (sent or reused), and the checksums of the bytes read for them.
struct Sent {
    parts: BTreeMap<i32, PartRow>,
    /// Full-object CRC32C, and each part's.
    full: u32,
    crcs: Vec<u32>,
    /// Content-MD5 mode: each part's MD5.
    md5s: Vec<[u8; 16]>,
}

/// The local checksums in the forms a completed upload may be reported with.
struct LocalSums {
    full: String,
    composite: String,
    /// Content-MD5 mode: the multipart ETag the content should have.
    md5_etag: Option<String>,
}

/// One part to send.
struct Part {
    number: i32,
    data: Bytes,
    crc32c: String,
    /// Content-MD5 mode: sent instead of the CRC32C.
    md5: Option<[u8; 16]>,
}

/// What the UploadPart tasks of one upload share: each task runs on its own, so it owns
/// its handles.
struct PartSender {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    /// The file the checkpoints are recorded under.
    file: i64,
    checkpoints: Arc<dyn Checkpoints>,
    cancel: CancellationToken,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    sign: bool,
    caps: Caps,
}

impl S3Dest {
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<i32, StoredPart>> {
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
                        StoredPart {
                            etag: etag.to_string(),
                            crc32c: p.checksum_crc32_c().map(str::to_string),
                            size: p.size().unwrap_or(0).max(0) as u64,
                        },
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
        let target = self.resume_or_create(ctx).await?;
        let sent = self.send_parts(ctx, &target).await?;
        self.complete(ctx, &target, sent).await
    }

    /// The journal's upload if the store still has it (with the parts it holds), else a
    /// new one, checkpointed before any part is sent.
    async fn resume_or_create(&self, ctx: &UploadCtx<'_>) -> Result<Target> {
        let key = ctx.job.key.as_str();
        if let Some(id) = &ctx.job.upload_id {
            match self.list_parts(key, id, ctx.cancel).await {
                Ok(parts) => {
                    info!(key = %key, upload_id = %id, parts = parts.len(), "resuming multipart upload");
                    return Ok(Target {
                        upload_id: id.clone(),
                        part_size: ctx.job.part_size.unwrap_or(ctx.part_size),
                        stored: parts,
                        caps: self.caps(),
                    });
                }
                Err(SyncError::NoSuchUpload(_)) | Err(SyncError::Rejected { .. }) => {
                    info!(key = %key, upload_id = %id, "multipart upload gone; starting over");
                    ctx.checkpoints.clear_upload(ctx.job.id)?;
                }
                Err(e) => return Err(e),
            }
        }
        let part_size = ctx.part_size;
        let id = self.create_upload(ctx).await?;
        ctx.checkpoints.set_upload(ctx.job.id, &id, part_size)?;
        debug!(key = %key, upload_id = %id, "multipart upload created");
        Ok(Target {
            upload_id: id,
            part_size,
            stored: BTreeMap::new(),
            caps: self.caps(),
        })
    }

    /// Read every part, reuse those the store provably holds, send the others
    /// (`upload.part_concurrency` at a time, each under its share of the memory limit).
    async fn send_parts(&self, ctx: &UploadCtx<'_>, target: &Target) -> Result<Sent> {
        let (size, part_size, caps) = (ctx.job.size, target.part_size, target.caps);
        let n_parts = size.div_ceil(part_size) as i32;
        let sender = Arc::new(PartSender {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: ctx.job.key.clone(),
            upload_id: target.upload_id.clone(),
            file: ctx.job.id,
            checkpoints: ctx.checkpoints.clone(),
            cancel: ctx.cancel.clone(),
            retry: self.retry.clone(),
            metrics: self.metrics.clone(),
            sign: self.sign_payload,
            caps,
        });
        let sem = Arc::new(tokio::sync::Semaphore::new(ctx.part_concurrency));
        let mut tasks: JoinSet<Result<PartRow>> = JoinSet::new();
        let mut sent = Sent {
            parts: BTreeMap::new(),
            full: 0,
            crcs: Vec::with_capacity(n_parts as usize),
            md5s: Vec::new(),
        };
        let mut reused = 0;
        for n in 1..=n_parts {
            if ctx.cancel.is_cancelled() {
                break;
            }
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => p.expect("semaphore never closed"),
                Some(r) = tasks.join_next() => {
                    let p = r.map_err(join_err)??;
                    sent.parts.insert(p.number, p);
                    sem.clone().acquire_owned().await.expect("semaphore never closed")
                }
            };
            let offset = (n as u64 - 1) * part_size;
            let len = part_size.min(size - offset) as usize;
            let (data, buffer) = self.read_part(ctx, offset, len).await?;
            let (crc32c, md5) = sent.add(&data, caps);
            if let Some(etag) = reusable(target.stored.get(&n), len as u64, &crc32c, md5.as_ref()) {
                reused += 1;
                let size = len as u64;
                sent.parts.insert(
                    n,
                    PartRow {
                        number: n,
                        etag,
                        crc32c,
                        size,
                    },
                );
                drop((permit, buffer));
                continue;
            }
            ctx.limiter.acquire(len as u64).await;
            let part = Part {
                number: n,
                data: Bytes::from(data),
                crc32c,
                md5,
            };
            let sender = sender.clone();
            tasks.spawn(async move {
                let _permit = (permit, buffer);
                sender.send(part).await
            });
        }
        // Let the parts in flight finish (they are checkpointed) even on shutdown; the next
        // start resumes after them.
        if let Some(e) = join_parts(&mut tasks, &mut sent.parts).await {
            if matches!(e, SyncError::NoSuchUpload(_)) {
                ctx.checkpoints.clear_upload(ctx.job.id)?;
            }
            return Err(e);
        }
        if ctx.cancel.is_cancelled() || sent.parts.len() != n_parts as usize {
            return Err(SyncError::Cancelled);
        }
        if reused > 0 {
            info!(key = %ctx.job.key, reused, total = n_parts, "reused parts already on the store");
        }
        Ok(sent)
    }

    /// `len` bytes at `offset`, read on the blocking pool once they fit under the memory
    /// limit; the permit holds their share until the part is sent.
    async fn read_part(
        &self,
        ctx: &UploadCtx<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
        let buffer = self.reserve(len as u64).await;
        let path = ctx.src.clone();
        let data = tokio::task::spawn_blocking(move || checksum::read_range(&path, offset, len))
            .await
            .map_err(join_err)??;
        Ok((data, buffer))
    }

    /// CompleteMultipartUpload (create-only where the store honours it), checked against
    /// the local checksums.
    async fn complete(&self, ctx: &UploadCtx<'_>, target: &Target, sent: Sent) -> Result<Done> {
        let (key, caps) = (ctx.job.key.as_str(), target.caps);
        let parts: Vec<CompletedPart> = sent
            .parts
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
            .call("CompleteMultipartUpload", key, ctx.cancel, || {
                let mut req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&target.upload_id)
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
        let local = LocalSums {
            full: checksum::b64(sent.full),
            composite: checksum::composite(&sent.crcs),
            md5_etag: (!caps.crc()).then(|| checksum::multipart_etag(&sent.md5s)),
        };
        match r {
            Ok(out) => {
                let checksum = completed_checksum(caps, &local, out.e_tag(), out.checksum_crc32_c())
                    .map_err(|detail| SyncError::Verify {
                        key: key.to_string(),
                        detail,
                    })?;
                Ok(Done {
                    etag: out.e_tag().map(str::to_string),
                    checksum,
                    local: Some((sent.full, sent.crcs)),
                    md5_etag: local.md5_etag,
                })
            }
            // A Complete that succeeded but whose answer was lost looks like NoSuchUpload
            // on the retry: the object tells.
            Err(e) if matches!(e.class, ErrorClass::NoSuchUpload | ErrorClass::PreconditionFailed) => {
                let done = self.existing_after_race(ctx).await?;
                // A refused create-only Complete leaves the upload open: its parts would
                // be billed until the orphan sweep of a later start.
                self.abort(key, &target.upload_id, ctx.cancel).await;
                Ok(done)
            }
            Err(e) => Err(e.into_error()),
        }
    }
}

impl Sent {
    /// Account for one part's bytes, in order; returns its CRC32C (base64) and, in
    /// Content-MD5 mode, its MD5.
    fn add(&mut self, data: &[u8], caps: Caps) -> (String, Option<[u8; 16]>) {
        let crc = crc32c::crc32c(data);
        self.full = crc32c::crc32c_append(self.full, data);
        self.crcs.push(crc);
        let md5 = (!caps.crc()).then(|| checksum::md5(data));
        self.md5s.extend(md5);
        (checksum::b64(crc), md5)
    }
}

impl PartSender {
    /// UploadPart through the retry layer; in Content-MD5 mode its ETag must be our MD5
    /// (where ETags are MD5s). Checkpointed as soon as the store acknowledges it.
    async fn send(&self, part: Part) -> Result<PartRow> {
        let Part {
            number: n,
            data,
            crc32c,
            md5,
        } = part;
        let r = call_static(
            &self.retry,
            &self.metrics,
            "UploadPart",
            &self.key,
            &self.cancel,
            || {
                let mut req = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .part_number(n)
                    .content_length(data.len() as i64)
                    .body(ByteStream::from(data.clone()));
                req = match &md5 {
                    None => req.checksum_crc32_c(&crc32c),
                    Some(m) => req.content_md5(checksum::md5_b64(m)),
                };
                let sign = self.sign;
                async move {
                    if sign {
                        req.send().await
                    } else {
                        req.customize().disable_payload_signing().send().await
                    }
                    .map_err(S3Fail::from_sdk)
                }
            },
        )
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
            && self.caps.etag_is_md5
            && !checksum::etag_is(&etag, &checksum::md5_etag(m))
        {
            return Err(SyncError::Verify {
                key: self.key.clone(),
                detail: format!(
                    "part {n}: store reports ETag {etag}, local MD5 {}",
                    checksum::md5_etag(m)
                ),
            });
        }
        let part = PartRow {
            number: n,
            etag,
            crc32c,
            size: data.len() as u64,
        };
        self.checkpoints.record_part(self.file, &self.upload_id, &part)?;
        self.metrics.add_bytes(data.len() as u64);
        self.metrics.touch();
        Ok(part)
    }
}

/// Wait for every part task; the parts done go into `parts`, and the first failure is
/// returned.
async fn join_parts(
    tasks: &mut JoinSet<Result<PartRow>>,
    parts: &mut BTreeMap<i32, PartRow>,
) -> Option<SyncError> {
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(p)) => {
                parts.insert(p.number, p);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(join_err(e));
            }
        }
    }
    first_err
}

/// The ETag of a part the store already holds, when it provably holds these bytes: the
/// same size, and its CRC32C or (Content-MD5 mode) its ETag is ours.
fn reusable(stored: Option<&StoredPart>, len: u64, crc32c: &str, md5: Option<&[u8; 16]>) -> Option<String> {
    let stored = stored.filter(|s| s.size == len)?;
    let same = match md5 {
        None => stored.crc32c.as_deref() == Some(crc32c),
        Some(m) => checksum::etag_is(&stored.etag, &checksum::md5_etag(m)),
    };
    same.then(|| stored.etag.clone())
}

/// The checksum a completed upload is recorded with, or why the store's answer contradicts
/// the local parts. Content-MD5 mode: the MD5 ETag (compared where ETags are MD5s). Else
/// the CRC32C the store computed, full-object or composite; where it reports none, ours.
fn completed_checksum(
    caps: Caps,
    local: &LocalSums,
    store_etag: Option<&str>,
    store_crc32c: Option<&str>,
) -> std::result::Result<String, String> {
    match (&local.md5_etag, store_crc32c) {
        (Some(e), _) => {
            if caps.etag_is_md5
                && let Some(got) = store_etag
                && !checksum::etag_is(got, e)
            {
                return Err(format!("store computed ETag {got}, local {e}"));
            }
            Ok(format!("md5:{e}"))
        }
        (None, Some(c)) if c != local.full && c != local.composite => Err(format!(
            "store computed {c}, local {} / {}",
            local.composite, local.full
        )),
        (None, Some(c)) => Ok(c.to_string()),
        (None, None) => Ok(local.composite.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::s3::caps::Integrity;

    fn stored(etag: &str, crc32c: Option<&str>, size: u64) -> StoredPart {
        StoredPart {
            etag: etag.into(),
            crc32c: crc32c.map(str::to_string),
            size,
        }
    }

    #[test]
    fn a_stored_part_is_reused_only_when_it_holds_these_bytes() {
        let data = b"part bytes";
        let crc = checksum::b64(crc32c::crc32c(data));
        let md5 = checksum::md5(data);
        let etag = format!("\"{}\"", checksum::md5_etag(&md5));
        let len = data.len() as u64;
        // CRC32C mode: the stored CRC32C decides.
        let p = stored("e", Some(&crc), len);
        assert_eq!(reusable(Some(&p), len, &crc, None).as_deref(), Some("e"));
        assert_eq!(reusable(Some(&p), len + 1, &crc, None), None);
        assert_eq!(
            reusable(Some(&stored("e", Some("AAAAAA=="), len)), len, &crc, None),
            None
        );
        assert_eq!(reusable(Some(&stored("e", None, len)), len, &crc, None), None);
        assert_eq!(reusable(None, len, &crc, None), None);
        // Content-MD5 mode: the ETag must be our MD5.
        let p = stored(&etag, None, len);
        assert_eq!(reusable(Some(&p), len, &crc, Some(&md5)), Some(etag.clone()));
        let other = checksum::md5(b"other bytes");
        assert_eq!(reusable(Some(&p), len, &crc, Some(&other)), None);
    }

    #[test]
    fn a_completed_upload_must_match_the_local_parts() {
        let caps = |integrity, etag_is_md5| Caps {
            conditional_writes: false,
            integrity,
            etag_is_md5,
        };
        let crc_mode = caps(Integrity::Crc32c, true);
        let sums = LocalSums {
            full: "full".into(),
            composite: "comp-2".into(),
            md5_etag: None,
        };
        // The store's CRC32C, full-object or composite, else ours.
        assert_eq!(
            completed_checksum(crc_mode, &sums, None, Some("full")),
            Ok("full".into())
        );
        assert_eq!(
            completed_checksum(crc_mode, &sums, None, Some("comp-2")),
            Ok("comp-2".into())
        );
        assert_eq!(
            completed_checksum(crc_mode, &sums, None, None),
            Ok("comp-2".into())
        );
        assert!(completed_checksum(crc_mode, &sums, None, Some("other")).is_err());
        // Content-MD5: the multipart ETag, compared only where ETags are MD5s.
        let sums = LocalSums {
            md5_etag: Some("abc-2".into()),
            ..sums
        };
        let md5_mode = caps(Integrity::ContentMd5, true);
        let md5 = Ok("md5:abc-2".to_string());
        assert_eq!(completed_checksum(md5_mode, &sums, Some("\"abc-2\""), None), md5);
        assert!(completed_checksum(md5_mode, &sums, Some("\"def-2\""), None).is_err());
        assert_eq!(completed_checksum(md5_mode, &sums, None, None), md5);
        let kms = caps(Integrity::ContentMd5, false);
        assert_eq!(completed_checksum(kms, &sums, Some("\"def-2\""), None), md5);
    }
}
