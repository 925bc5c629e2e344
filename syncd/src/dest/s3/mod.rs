//! The S3 destination: probing, single and multipart uploads (resumable), verification.
//!
//! The SDK's retries are disabled: [`S3Dest::call`] is the daemon's one retry layer.
//! The SDK's default request checksums are off (`WhenRequired`): the daemon computes
//! CRC32C itself while reading and sends it as `x-amz-checksum-crc32c`, so it knows the
//! value it later compares with HeadObject's (checksum mode), and stores that reject the
//! SDK's aws-chunked trailers keep working. Where the probe finds that a store does not
//! take or does not report that header, the daemon falls back to `Content-MD5` on every
//! PUT and part, and verifies size and ETag (the MD5, or the MD5 of the part MD5s).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use crate::checkpoint::{Checkpoints, PartRow};
use crate::checksum;
use crate::config::{Config, IntegritySetting};
use crate::dest::context::{Done, UploadCtx};
use crate::error::{Result, SyncError, join_err};
use crate::keys;
use crate::listing::{self, Listings, Plan};
use crate::metrics::Metrics;
use crate::retry::{self, ErrorClass, Lookup, PreCheck, RetryPolicy, classify};

/// A store's answer, classified.
#[derive(Debug, Clone)]
pub struct S3Fail {
    pub class: ErrorClass,
    /// The S3 error code, else `HTTP <status>` or the kind of failure (for logs, metrics).
    pub code: String,
    pub message: String,
    /// What the answer was made of, for decisions that depend on more than the class.
    pub status: Option<u16>,
    pub sdk_code: Option<String>,
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
            code: code.clone().unwrap_or_else(|| match status {
                Some(s) => format!("HTTP {s}"),
                None => kind.to_string(),
            }),
            message,
            status,
            sdk_code: code,
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

/// How bodies are protected on the wire and verified afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// `x-amz-checksum-crc32c` on every PUT/part; HeadObject (checksum mode) reports it.
    Crc32c,
    /// `Content-MD5` on every PUT/part (the store rejects a corrupted body); verified by
    /// size and ETag.
    ContentMd5,
}

/// What the endpoint supports (probed at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// `If-None-Match: *` is honoured (create-only writes).
    pub conditional_writes: bool,
    pub integrity: Integrity,
    /// ETags are MD5s (S3's rule for uploads without SSE-KMS/SSE-C): with Content-MD5
    /// they are what verification compares.
    pub etag_is_md5: bool,
}

impl Caps {
    pub fn crc(&self) -> bool {
        self.integrity == Integrity::Crc32c
    }
}

/// What the endpoint probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSeen {
    /// A PUT with `x-amz-checksum-crc32c` was accepted (false: refused, or not tried).
    pub crc_accepted: bool,
    /// HeadObject (checksum mode) reported the probe body's CRC32C back.
    pub crc_reported: bool,
    /// HeadObject's ETag is the probe body's MD5.
    pub etag_is_md5: bool,
    /// `If-None-Match: *` refused the second write.
    pub conditional_writes: bool,
}

/// The decision (pure): CRC32C only where the store both takes and reports it (or the
/// config forces it); else Content-MD5. ETags count as MD5s only where the probe saw one
/// and SSE-KMS (whose ETags are not MD5s) is not configured.
pub fn decide(setting: IntegritySetting, seen: &ProbeSeen, sse_kms: bool) -> Caps {
    let integrity = match setting {
        IntegritySetting::Crc32c => Integrity::Crc32c,
        IntegritySetting::ContentMd5 => Integrity::ContentMd5,
        IntegritySetting::Auto if seen.crc_accepted && seen.crc_reported => Integrity::Crc32c,
        IntegritySetting::Auto => Integrity::ContentMd5,
    };
    Caps {
        conditional_writes: seen.conditional_writes,
        integrity,
        etag_is_md5: seen.etag_is_md5 && !sse_kms,
    }
}

/// An object's HEAD.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub etag: Option<String>,
    pub crc32c: Option<String>,
}

/// What HeadObject found under a key.
#[derive(Debug, Clone)]
pub enum Existing {
    Present(Head),
    Absent,
    /// 403: see [`Lookup::Unknown`].
    Unknown,
}

/// The advice a 403 on HeadObject gets, wherever it matters.
const HEAD_403_ADVICE: &str = "HeadObject answered 403 (AWS does for a missing key without s3:ListBucket, and for any key without s3:GetObject)";

const BUFFER_UNIT: u64 = 64 << 10;

pub struct S3Dest {
    client: Client,
    bucket: String,
    prefix: String,
    /// Where the endpoint probe writes ([`keys::probe_key`]).
    probe_key: String,
    retry: RetryPolicy,
    integrity: IntegritySetting,
    /// SigV4-sign PutObject/UploadPart bodies (`s3.sign_payload`).
    sign_payload: bool,
    caps: std::sync::RwLock<Caps>,
    /// `upload.memory_limit_bytes` in 64 KiB units: a buffer of file data holds its share
    /// until its request is done.
    buffers: Arc<tokio::sync::Semaphore>,
    /// `upload.max_checks`: HEAD requests in flight for existence checks and verification.
    checks: Arc<tokio::sync::Semaphore>,
    /// Existence checks answered by listings (endpoints without create-only writes).
    listings: Listings,
    /// One listing at a time: the checks that want the same one wait for it.
    list_gate: tokio::sync::Mutex<()>,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    metrics: Arc<Metrics>,
}

/// Single-PUT files up to this size are read on the task instead of the blocking pool.
const INLINE_READ_MAX: usize = 1 << 20;

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
            probe_key: keys::probe_key(prefix, &cfg.key_template, &cfg.host_name()),
            retry: cfg.retry.clone(),
            integrity: cfg.s3.integrity,
            sign_payload: cfg.s3.sign_payload.signs(cfg.s3.endpoint_url.as_deref()),
            // Until (or without) a probe: what the config says, CRC32C for `auto`.
            caps: std::sync::RwLock::new(Caps {
                conditional_writes: false,
                integrity: match cfg.s3.integrity {
                    IntegritySetting::ContentMd5 => Integrity::ContentMd5,
                    IntegritySetting::Auto | IntegritySetting::Crc32c => Integrity::Crc32c,
                },
                etag_is_md5: cfg.s3.sse.as_deref() != Some("aws:kms"),
            }),
            buffers: Arc::new(tokio::sync::Semaphore::new(
                cfg.upload.memory_limit_bytes.div_ceil(BUFFER_UNIT) as usize,
            )),
            checks: Arc::new(tokio::sync::Semaphore::new(cfg.upload.max_checks)),
            listings: Listings::new(
                cfg.upload.existence_check,
                Duration::from_secs_f64(cfg.upload.listing_max_age_secs),
            ),
            list_gate: tokio::sync::Mutex::new(()),
            storage_class: cfg.s3.storage_class.as_deref().map(StorageClass::from),
            sse: cfg.s3.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: cfg.s3.sse_kms_key_id.clone(),
            metrics,
        }
    }

    /// Wait until `len` bytes of buffer fit under `upload.memory_limit_bytes`.
    async fn reserve(&self, len: u64) -> tokio::sync::OwnedSemaphorePermit {
        let units = len.div_ceil(BUFFER_UNIT).max(1) as u32;
        self.buffers
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("semaphore never closed")
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

    pub async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Existing> {
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
            Ok(h) => Ok(Existing::Present(Head {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: h.e_tag().map(str::to_string),
                crc32c: h.checksum_crc32_c().map(str::to_string),
            })),
            Err(e) => match retry::lookup(e.status, e.sdk_code.as_deref()) {
                Lookup::Absent => Ok(Existing::Absent),
                Lookup::Unknown => Ok(Existing::Unknown),
                Lookup::Failed(_) => Err(e.into_error()),
            },
        }
    }

    /// [`S3Dest::head`] under a check slot (`upload.max_checks`).
    async fn checked_head(&self, key: &str, cancel: &CancellationToken) -> Result<Existing> {
        let _slot = self.checks.acquire().await.expect("semaphore never closed");
        self.head(key, cancel).await
    }

    /// Whether an object is under `key`, for a store without create-only writes, where
    /// writing without knowing could clobber. HeadObject first; where it cannot tell
    /// (403), a listing; where neither can, the file waits (not the destination), with
    /// the permission that would settle it named.
    async fn must_know(&self, key: &str, cancel: &CancellationToken) -> Result<Option<Head>> {
        match self.checked_head(key, cancel).await? {
            Existing::Present(h) => return Ok(Some(h)),
            Existing::Absent => return Ok(None),
            Existing::Unknown => {}
        }
        match self.listed(key, cancel).await {
            Some(false) => Ok(None),
            Some(true) => Err(SyncError::Transient {
                code: "ExistenceUnknown".into(),
                message: format!("{key} is listed but {HEAD_403_ADVICE}: grant s3:GetObject on the prefix"),
            }),
            None => Err(SyncError::Transient {
                code: "ExistenceUnknown".into(),
                message: format!(
                    "cannot tell whether {key} exists: {HEAD_403_ADVICE}, listing is refused, and the store does not honour If-None-Match; grant s3:ListBucket on the prefix (or use a store with conditional writes); the file stays queued"
                ),
            }),
        }
    }

    /// Whether `key` exists, answered by a listing of its directory when the policy
    /// ([`Listings::plan`]) says one answers or is worth taking; `None`: ask HeadObject.
    async fn listed(&self, key: &str, cancel: &CancellationToken) -> Option<bool> {
        let dir = match self.listings.plan(key, Instant::now(), true) {
            Plan::Answer(present) => return Some(present),
            Plan::Head => return None,
            Plan::List(dir) => dir,
        };
        let _gate = self.list_gate.lock().await;
        // The checks that waited for the gate find the listing just taken.
        if let Plan::Answer(present) = self.listings.plan(key, Instant::now(), false) {
            return Some(present);
        }
        let at = Instant::now();
        match self.list_dir(&dir, cancel).await {
            Ok(Some((_, pages))) if self.listings.too_slow(at.elapsed()) => {
                info!(
                    dir,
                    pages,
                    secs = at.elapsed().as_secs_f64(),
                    "listing too slow to answer existence checks; HeadObject there"
                );
                self.listings.leave_to_head(&dir, Instant::now());
                None
            }
            Ok(Some((keys, pages))) => {
                debug!(dir, keys = keys.len(), pages, "listed for existence checks");
                let present = keys.contains(key);
                self.listings.store(&dir, keys, pages, at);
                Some(present)
            }
            Ok(None) => {
                info!(
                    dir,
                    "directory too big to list for existence checks; HeadObject there"
                );
                self.listings.leave_to_head(&dir, at);
                None
            }
            Err(e) if e.code == "AccessDenied" => {
                // Other permanent errors (a wrong key, a missing bucket) fail the HeadObject
                // that follows too, and stop the destination there.
                if self.listings.disable() {
                    warn!(code = %e.code, error = %e.message,
                          "listing refused (s3:ListBucket on the prefix would save one request per file); existence checks by HeadObject");
                }
                None
            }
            Err(e) => {
                debug!(dir, code = %e.code, error = %e.message, "listing failed; HeadObject instead");
                None
            }
        }
    }

    /// The keys directly in `dir` (delimiter `/`), and the pages it took; `None` when it
    /// has more than [`listing::MAX_PAGES`] pages.
    async fn list_dir(
        &self,
        dir: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<(HashSet<String>, u32)>, S3Fail> {
        let _slot = self.checks.acquire().await.expect("semaphore never closed");
        let mut keys = HashSet::new();
        let mut token: Option<String> = None;
        for page in 1..=listing::MAX_PAGES {
            let out = self
                .call("ListObjectsV2", dir, cancel, || async {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(dir)
                        .delimiter("/")
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(S3Fail::from_sdk)
                })
                .await?;
            self.metrics.list_request();
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(Some((keys, page))),
            }
        }
        Ok(None)
    }

    /// Compare an existing object with the local file. `Ok(Some(done))` when identical.
    async fn compare_existing(
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

    fn metadata(&self, ctx: &UploadCtx<'_>) -> Option<HashMap<String, String>> {
        (!ctx.metadata.is_empty()).then(|| ctx.metadata.clone().into_iter().collect())
    }

    async fn put_single(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
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

    /// A create-only write found an object: identical counts as uploaded, else conflict.
    async fn existing_after_race(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
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

    /// Abort multipart uploads under the prefix that belong to keys the checkpoints know
    /// but are not the upload they rely on (left behind by a crash).
    pub async fn abort_orphans(
        &self,
        checkpoints: &dyn Checkpoints,
        cancel: &CancellationToken,
    ) -> Result<usize> {
        let live = checkpoints.live_uploads()?;
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
                if live.get(key).map(String::as_str) != Some(id) && checkpoints.knows_key(key)? {
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

    async fn multipart(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(crc_accepted: bool, crc_reported: bool, etag_is_md5: bool) -> ProbeSeen {
        ProbeSeen {
            crc_accepted,
            crc_reported,
            etag_is_md5,
            conditional_writes: false,
        }
    }

    #[test]
    fn integrity_falls_back_to_content_md5_per_endpoint() {
        use IntegritySetting::*;
        // AWS S3, Garage, MinIO: take and report CRC32C.
        let c = decide(Auto, &seen(true, true, true), false);
        assert_eq!(c.integrity, Integrity::Crc32c);
        assert!(c.etag_is_md5);
        // Refuses the header (older Ceph, some appliances): Content-MD5.
        assert_eq!(
            decide(Auto, &seen(false, false, true), false).integrity,
            Integrity::ContentMd5
        );
        // Takes the header but drops it (reports nothing back): Content-MD5 too, since a
        // checksum that cannot be read back verifies nothing.
        let c = decide(Auto, &seen(true, false, true), false);
        assert_eq!(c.integrity, Integrity::ContentMd5);
        assert!(c.etag_is_md5);
        // ETags that are not MD5s: the store's choice, or SSE-KMS configured.
        assert!(!decide(Auto, &seen(false, false, false), false).etag_is_md5);
        assert!(!decide(Auto, &seen(false, false, true), true).etag_is_md5);
        // The config forces either way.
        assert_eq!(
            decide(ContentMd5, &seen(true, true, true), false).integrity,
            Integrity::ContentMd5
        );
        assert_eq!(
            decide(Crc32c, &seen(false, false, true), false).integrity,
            Integrity::Crc32c
        );
        // Conditional writes are carried through as seen.
        let mut s = seen(true, true, true);
        s.conditional_writes = true;
        assert!(decide(Auto, &s, false).conditional_writes);
    }
}
