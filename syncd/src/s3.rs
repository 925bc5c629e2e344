//! The S3 destination: probing, single and multipart uploads (resumable), verification.
//!
//! The SDK's retries are disabled: [`S3Dest::call`] is the daemon's one retry layer.
//! The SDK's default request checksums are off (`WhenRequired`): the daemon computes
//! CRC32C itself while reading and sends it as `x-amz-checksum-crc32c`, so it knows the
//! value it later compares with HeadObject's (checksum mode), and stores that reject the
//! SDK's aws-chunked trailers keep working.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
    StorageClass,
};
use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checksum;
use crate::config::Config;
use crate::error::{Result, SyncError};
use crate::journal::{Journal, PartRow};
use crate::metrics::Metrics;
use crate::retry::{ErrorClass, RetryPolicy, classify};
use crate::upload::{Done, UploadCtx};

/// A store's answer, classified.
#[derive(Debug, Clone)]
pub struct S3Fail {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
}

impl S3Fail {
    fn from_sdk<E>(e: SdkError<E, HttpResponse>) -> S3Fail
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().map(str::to_string);
        let kind = match &e {
            SdkError::ConstructionFailure(_) => "ConstructionFailure",
            SdkError::TimeoutError(_) => "Timeout",
            SdkError::DispatchFailure(_) => "DispatchFailure",
            SdkError::ResponseError(_) => "ResponseError",
            SdkError::ServiceError(_) => "ServiceError",
            _ => "Unknown",
        };
        let message = e
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| aws_sdk_s3::error::DisplayErrorContext(&e).to_string());
        let class = match &e {
            SdkError::ConstructionFailure(_) => ErrorClass::Rejected,
            _ => classify(status, code.as_deref()),
        };
        S3Fail {
            class,
            code: code.unwrap_or_else(|| match status {
                Some(s) => format!("HTTP {s}"),
                None => kind.to_string(),
            }),
            message,
        }
    }

    fn into_error(self) -> SyncError {
        match self.class {
            ErrorClass::Fatal => SyncError::Fatal {
                code: self.code,
                message: self.message,
            },
            ErrorClass::Transient => SyncError::Transient {
                code: self.code,
                message: self.message,
            },
            ErrorClass::NoSuchUpload => SyncError::NoSuchUpload(self.message),
            ErrorClass::NotFound | ErrorClass::PreconditionFailed | ErrorClass::Rejected => {
                SyncError::Rejected {
                    code: self.code,
                    message: self.message,
                }
            }
        }
    }
}

/// What the endpoint supports (probed at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `If-None-Match: *` is honoured (create-only writes).
    pub conditional_writes: bool,
    /// `x-amz-checksum-crc32c` is accepted and reported back by HeadObject.
    pub checksums: bool,
}

/// An object's HEAD.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub etag: Option<String>,
    pub crc32c: Option<String>,
}

pub struct S3Dest {
    client: Client,
    bucket: String,
    prefix: String,
    retry: RetryPolicy,
    caps: std::sync::RwLock<Caps>,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    metrics: Arc<Metrics>,
}

impl S3Dest {
    pub async fn connect(cfg: &Config, bucket: &str, prefix: &str, metrics: Arc<Metrics>) -> S3Dest {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(p) = &cfg.s3.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &cfg.s3.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let timeout = Duration::from_secs_f64(cfg.upload.request_timeout_secs);
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(timeout)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .force_path_style(cfg.s3.force_path_style);
        if sdk.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(e) = &cfg.s3.endpoint_url {
            b = b.endpoint_url(e);
        }
        S3Dest {
            client: Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            retry: cfg.retry.clone(),
            caps: std::sync::RwLock::new(Caps {
                conditional_writes: false,
                checksums: true,
            }),
            storage_class: cfg.s3.storage_class.as_deref().map(StorageClass::from),
            sse: cfg.s3.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: cfg.s3.sse_kms_key_id.clone(),
            metrics,
        }
    }

    pub fn caps(&self) -> Caps {
        *self.caps.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn call<T, F, Fut>(
        &self,
        what: &str,
        key: &str,
        cancel: &CancellationToken,
        f: F,
    ) -> Result<T, S3Fail>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, S3Fail>>,
    {
        call_static(&self.retry, &self.metrics, what, key, cancel, f).await
    }

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
        let key = if self.prefix.is_empty() {
            ".edgemask-syncd-probe".to_string()
        } else {
            format!("{}/.edgemask-syncd-probe", self.prefix)
        };
        let body = Bytes::from_static(b"edgemask-syncd endpoint probe\n");
        let crc = checksum::b64(crc32c::crc32c(&body));
        let put = |with_checksum: bool| {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .if_none_match("*")
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()));
            if with_checksum {
                req = req.checksum_crc32_c(&crc);
            }
            async move { req.send().await.map(|_| ()).map_err(S3Fail::from_sdk) }
        };
        let mut checksums = true;
        let first = match self.call("PutObject(probe)", &key, cancel, || put(true)).await {
            Err(e) if e.class == ErrorClass::Rejected => {
                warn!(code = %e.code, error = %e.message, "endpoint refuses x-amz-checksum-crc32c; verifying by size only");
                checksums = false;
                self.call("PutObject(probe)", &key, cancel, || put(false)).await
            }
            other => other,
        };
        let conditional = match first {
            Err(e) if e.class == ErrorClass::PreconditionFailed => true,
            Err(e) => return Err(e.into_error()),
            Ok(()) => match self
                .call("PutObject(probe)", &key, cancel, || put(checksums))
                .await
            {
                Err(e) if e.class == ErrorClass::PreconditionFailed => true,
                Err(e) => return Err(e.into_error()),
                Ok(()) => false,
            },
        };
        if checksums {
            let head = self.head(&key, cancel).await?;
            checksums = head.and_then(|h| h.crc32c).as_deref() == Some(crc.as_str());
            if !checksums {
                warn!("endpoint does not report CRC32C checksums; verifying by size only");
            }
        }
        let caps = Caps {
            conditional_writes: conditional,
            checksums,
        };
        info!(
            conditional_writes = caps.conditional_writes,
            checksums = caps.checksums,
            "endpoint probed{}",
            if conditional {
                ""
            } else {
                " (If-None-Match not honoured: HEAD before PUT)"
            }
        );
        *self.caps.write().unwrap_or_else(|e| e.into_inner()) = caps;
        Ok(caps)
    }

    pub async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<Head>> {
        let r = self
            .call("HeadObject", key, cancel, || async {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(S3Fail::from_sdk)
            })
            .await;
        match r {
            Ok(h) => Ok(Some(Head {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: h.e_tag().map(str::to_string),
                crc32c: h.checksum_crc32_c().map(str::to_string),
            })),
            Err(e) if e.class == ErrorClass::NotFound => Ok(None),
            Err(e) => Err(e.into_error()),
        }
    }

    /// Compare an existing object with the local file. `Ok(Some(done))` when identical.
    async fn compare_existing(
        &self,
        ctx: &UploadCtx<'_>,
        head: &Head,
        part_size: u64,
    ) -> Result<Option<Done>> {
        if head.size != ctx.row.size {
            return Ok(None);
        }
        let Some(reported) = head.crc32c.as_deref() else {
            // No CRC32C stored with the object (written by another client): read it back
            // and compare byte checksums; same size alone proves nothing.
            let path = ctx.row.path.clone();
            let (_, full, _) = tokio::task::spawn_blocking(move || checksum::file_checksums(&path, u64::MAX))
                .await
                .map_err(|e| SyncError::Transient {
                    code: "join".into(),
                    message: e.to_string(),
                })??;
            let remote = self.remote_crc32c(&ctx.row.key, ctx.cancel).await?;
            return Ok((remote == full).then(|| Done {
                etag: head.etag.clone(),
                checksum: checksum::b64(full),
                local: Some((full, vec![])),
            }));
        };
        let path = ctx.row.path.clone();
        let (_, full, parts) =
            tokio::task::spawn_blocking(move || checksum::file_checksums(&path, part_size))
                .await
                .map_err(|e| SyncError::Transient {
                    code: "join".into(),
                    message: e.to_string(),
                })??;
        Ok(checksum::matches(reported, full, &parts).then(|| Done {
            etag: head.etag.clone(),
            checksum: reported.to_string(),
            local: Some((full, parts)),
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

    /// Upload one file (single PUT or resumable multipart) and verify it.
    pub async fn upload(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.row.key.as_str();
        let part_size = ctx.row.part_size.unwrap_or(ctx.part_size);
        // Already there? (a crash after the upload, before the journal knew; or the
        // fallback for stores without conditional writes: HEAD before PUT). A first
        // attempt on a store with create-only writes skips it: If-None-Match guards.
        let first_try = ctx.row.attempts == 0 && ctx.row.upload_id.is_none();
        let existing = if self.caps().conditional_writes && first_try {
            None
        } else {
            self.head(key, ctx.cancel).await?
        };
        if let Some(head) = existing {
            if let Some(done) = self.compare_existing(ctx, &head, part_size).await? {
                info!(
                    key,
                    "already in the bucket with the same checksum; counted as uploaded"
                );
                if let Some(id) = &ctx.row.upload_id {
                    self.abort(key, id, ctx.cancel).await;
                }
                return Ok(done);
            }
            return Err(SyncError::Conflict {
                key: key.to_string(),
                detail: format!("bucket has {} bytes, checksum {:?}", head.size, head.crc32c),
            });
        }
        let done = if ctx.row.size <= ctx.multipart_threshold {
            self.put_single(ctx).await?
        } else {
            self.multipart(ctx).await?
        };
        // Verify what the store reports before the upload counts as done.
        let head = self
            .head(key, ctx.cancel)
            .await?
            .ok_or_else(|| SyncError::Verify {
                key: key.to_string(),
                detail: "object missing right after upload".into(),
            })?;
        if head.size != ctx.row.size {
            return Err(SyncError::Verify {
                key: key.to_string(),
                detail: format!("size {} in bucket, {} local", head.size, ctx.row.size),
            });
        }
        if self.caps().checksums {
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
        }
        Ok(Done {
            etag: head.etag.or(done.etag),
            checksum: head.crc32c.unwrap_or(done.checksum),
            local: done.local,
        })
    }

    fn metadata(&self, ctx: &UploadCtx<'_>) -> Option<HashMap<String, String>> {
        (!ctx.metadata.is_empty()).then(|| ctx.metadata.clone().into_iter().collect())
    }

    async fn put_single(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.row.key.as_str();
        let path = ctx.row.path.clone();
        let len = ctx.row.size as usize;
        let data = tokio::task::spawn_blocking(move || checksum::read_range(&path, 0, len))
            .await
            .map_err(|e| SyncError::Transient {
                code: "join".into(),
                message: e.to_string(),
            })??;
        let data = Bytes::from(data);
        let crc = crc32c::crc32c(&data);
        let crc_b64 = checksum::b64(crc);
        ctx.limiter.acquire(data.len() as u64).await;
        let caps = self.caps();
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
                if caps.checksums {
                    req = req.checksum_crc32_c(&crc_b64);
                }
                if caps.conditional_writes {
                    req = req.if_none_match("*");
                }
                async move { req.send().await.map_err(S3Fail::from_sdk) }
            })
            .await;
        match r {
            Ok(out) => {
                self.metrics.add_bytes(data.len() as u64);
                Ok(Done {
                    etag: out.e_tag().map(str::to_string),
                    checksum: crc_b64,
                    local: Some((crc, vec![crc])),
                })
            }
            Err(e) if e.class == ErrorClass::PreconditionFailed => self.existing_after_race(ctx).await,
            Err(e) => Err(e.into_error()),
        }
    }

    /// A create-only write found an object: identical counts as uploaded, else conflict.
    async fn existing_after_race(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.row.key.as_str();
        let part_size = ctx.row.part_size.unwrap_or(ctx.part_size);
        match self.head(key, ctx.cancel).await? {
            Some(h) => match self.compare_existing(ctx, &h, part_size).await? {
                Some(d) => Ok(d),
                None => Err(SyncError::Conflict {
                    key: key.to_string(),
                    detail: "create-only write refused and contents differ".into(),
                }),
            },
            None => Err(SyncError::Transient {
                code: "PreconditionFailed".into(),
                message: "create-only write refused but no object found".into(),
            }),
        }
    }

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

    pub async fn abort(&self, key: &str, upload_id: &str, cancel: &CancellationToken) {
        let r = self
            .call("AbortMultipartUpload", key, cancel, || async {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await
                    .map_err(S3Fail::from_sdk)
            })
            .await;
        match r {
            Ok(_) => info!(key, upload_id, "aborted stale multipart upload"),
            Err(e) if e.class == ErrorClass::NoSuchUpload || e.class == ErrorClass::NotFound => {}
            Err(e) => {
                warn!(key, upload_id, code = %e.code, error = %e.message, "could not abort multipart upload")
            }
        }
    }

    /// Abort multipart uploads under the prefix that belong to keys this journal knows
    /// but are not the upload the journal relies on (left behind by a crash).
    pub async fn abort_orphans(&self, journal: &Journal, cancel: &CancellationToken) -> Result<usize> {
        let live = journal.live_uploads()?;
        let mut aborted = 0;
        let (mut km, mut um): (Option<String>, Option<String>) = (None, None);
        for _page in 0..1_000 {
            let (k2, u2) = (km.clone(), um.clone());
            let prefix = (!self.prefix.is_empty()).then(|| format!("{}/", self.prefix));
            let r = self
                .call("ListMultipartUploads", "", cancel, || {
                    let req = self
                        .client
                        .list_multipart_uploads()
                        .bucket(&self.bucket)
                        .set_prefix(prefix.clone())
                        .set_key_marker(k2.clone())
                        .set_upload_id_marker(u2.clone());
                    async move { req.send().await.map_err(S3Fail::from_sdk) }
                })
                .await
                .map_err(S3Fail::into_error)?;
            for u in r.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                if live.get(key).map(String::as_str) != Some(id) && journal.knows_key(key)? {
                    self.abort(key, id, cancel).await;
                    aborted += 1;
                }
            }
            if r.is_truncated() == Some(true)
                && (r.next_key_marker().is_some() || r.next_upload_id_marker().is_some())
            {
                km = r.next_key_marker().map(str::to_string);
                um = r.next_upload_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        Ok(aborted)
    }

    async fn create_upload(&self, ctx: &UploadCtx<'_>) -> Result<String> {
        let key = ctx.row.key.as_str();
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
                if caps.checksums {
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

    async fn multipart(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        let key = ctx.row.key.clone();
        let size = ctx.row.size;
        let mut part_size = ctx.row.part_size.unwrap_or(ctx.part_size);
        // Resume: reconcile the journal's upload with what the store still has.
        let mut remote: BTreeMap<i32, (String, Option<String>, u64)> = BTreeMap::new();
        let mut upload_id = None;
        if let Some(id) = &ctx.row.upload_id {
            match self.list_parts(&key, id, ctx.cancel).await {
                Ok(parts) => {
                    info!(key = %key, upload_id = %id, parts = parts.len(), "resuming multipart upload");
                    remote = parts;
                    upload_id = Some(id.clone());
                }
                Err(SyncError::NoSuchUpload(_)) | Err(SyncError::Rejected { .. }) => {
                    info!(key = %key, upload_id = %id, "multipart upload gone; starting over");
                    ctx.journal.clear_upload(ctx.row.id)?;
                }
                Err(e) => return Err(e),
            }
        }
        let upload_id = match upload_id {
            Some(id) => id,
            None => {
                part_size = ctx.part_size;
                let id = self.create_upload(ctx).await?;
                ctx.journal.set_upload(ctx.row.id, &id, part_size)?;
                debug!(key = %key, upload_id = %id, "multipart upload created");
                id
            }
        };
        let n_parts = size.div_ceil(part_size) as i32;
        let sem = Arc::new(tokio::sync::Semaphore::new(ctx.part_concurrency));
        let mut tasks: JoinSet<Result<PartRow>> = JoinSet::new();
        let mut done: BTreeMap<i32, PartRow> = BTreeMap::new();
        let (mut full, mut crcs) = (0u32, Vec::with_capacity(n_parts as usize));
        let caps = self.caps();
        let mut reused = 0;
        for n in 1..=n_parts {
            if ctx.cancel.is_cancelled() {
                break;
            }
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => p.expect("semaphore never closed"),
                Some(r) = tasks.join_next() => {
                    let p = r.map_err(|e| SyncError::Transient { code: "join".into(), message: e.to_string() })??;
                    done.insert(p.number, p);
                    sem.clone().acquire_owned().await.expect("semaphore never closed")
                }
            };
            let offset = (n as u64 - 1) * part_size;
            let len = part_size.min(size - offset) as usize;
            let path = ctx.row.path.clone();
            let data = tokio::task::spawn_blocking(move || checksum::read_range(&path, offset, len))
                .await
                .map_err(|e| SyncError::Transient {
                    code: "join".into(),
                    message: e.to_string(),
                })??;
            let crc = crc32c::crc32c(&data);
            full = crc32c::crc32c_append(full, &data);
            crcs.push(crc);
            let crc_b64 = checksum::b64(crc);
            if let Some((etag, rc, rsize)) = remote.get(&n)
                && *rsize == len as u64
                && (rc.as_deref() == Some(crc_b64.as_str()) || (!caps.checksums && rc.is_none()))
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
                drop(permit);
                continue;
            }
            ctx.limiter.acquire(len as u64).await;
            let data = Bytes::from(data);
            let client = self.client.clone();
            let (bucket, key2, uid) = (self.bucket.clone(), key.clone(), upload_id.clone());
            let journal = ctx.journal.clone();
            let file_id = ctx.row.id;
            let cancel = ctx.cancel.clone();
            let metrics = self.metrics.clone();
            let retry = self.retry.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let r = call_static(&retry, &metrics, "UploadPart", &key2, &cancel, || {
                    let mut req = client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key2)
                        .upload_id(&uid)
                        .part_number(n)
                        .content_length(data.len() as i64)
                        .body(ByteStream::from(data.clone()));
                    if caps.checksums {
                        req = req.checksum_crc32_c(&crc_b64);
                    }
                    async move { req.send().await.map_err(S3Fail::from_sdk) }
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
                let part = PartRow {
                    number: n,
                    etag,
                    crc32c: crc_b64.clone(),
                    size: data.len() as u64,
                };
                journal.record_part(file_id, &uid, &part)?;
                metrics.add_bytes(data.len() as u64);
                metrics.touch();
                Ok(part)
            });
        }
        // Let the parts in flight finish (they are checkpointed in the journal) even on
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
                    first_err.get_or_insert(SyncError::Transient {
                        code: "join".into(),
                        message: e.to_string(),
                    });
                }
            }
        }
        if let Some(e) = first_err {
            if matches!(e, SyncError::NoSuchUpload(_)) {
                ctx.journal.clear_upload(ctx.row.id)?;
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
                if caps.checksums {
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
        match r {
            Ok(out) => {
                let checksum = match out.checksum_crc32_c() {
                    Some(c) if caps.checksums && c != local_full && c != local_composite => {
                        return Err(SyncError::Verify {
                            key: key.clone(),
                            detail: format!("store computed {c}, local {local_composite} / {local_full}"),
                        });
                    }
                    Some(c) => c.to_string(),
                    None => local_composite,
                };
                Ok(Done {
                    etag: out.e_tag().map(str::to_string),
                    checksum,
                    local: Some((full, crcs)),
                })
            }
            // A Complete that succeeded but whose answer was lost looks like NoSuchUpload
            // on the retry: the object tells.
            Err(e) if matches!(e.class, ErrorClass::NoSuchUpload | ErrorClass::PreconditionFailed) => {
                self.existing_after_race(ctx).await
            }
            Err(e) => Err(e.into_error()),
        }
    }
}

/// The one retry layer: transient failures are retried with capped exponential backoff
/// and jitter until the policy's attempt limit or cancellation.
pub(crate) async fn call_static<T, F, Fut>(
    retry: &RetryPolicy,
    metrics: &Metrics,
    what: &str,
    key: &str,
    cancel: &CancellationToken,
    mut f: F,
) -> Result<T, S3Fail>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S3Fail>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.class == ErrorClass::Transient && retry.allows(attempt) && !cancel.is_cancelled() => {
                let delay = retry.delay(attempt, rand::random::<f64>());
                warn!(op = what, key, attempt, code = %e.code, error = %e.message,
                      retry_in_ms = delay.as_millis() as u64, "transient failure, retrying");
                metrics.retry(&e.code);
                metrics.touch();
                tokio::select! {
                    _ = cancel.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}
