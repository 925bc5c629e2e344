//! The S3 destination: probing, single and multipart uploads (resumable), verification.
//!
//! The SDK's retries are disabled: [`S3Dest::call`] is the daemon's one retry layer.
//! The SDK's default request checksums are off (`WhenRequired`): the daemon computes
//! CRC32C itself while reading and sends it as `x-amz-checksum-crc32c`, so it knows the
//! value it later compares with HeadObject's (checksum mode), and stores that reject the
//! SDK's aws-chunked trailers keep working. Where the probe finds that a store does not
//! take or does not report that header, the daemon falls back to `Content-MD5` on every
//! PUT and part, and verifies size and ETag (the MD5, or the MD5 of the part MD5s).

mod abort;
mod call;
mod caps;
mod compare;
mod exists;
mod multipart;
mod probe;
mod put;
mod upload;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, IntegritySetting};
use crate::dest::context::UploadCtx;
use crate::keys;
use crate::listing::Listings;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use call::{S3Fail, call_static};
pub use caps::{Caps, Integrity, ProbeSeen, decide};

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

    fn metadata(&self, ctx: &UploadCtx<'_>) -> Option<HashMap<String, String>> {
        (!ctx.metadata.is_empty()).then(|| ctx.metadata.clone().into_iter().collect())
    }
}
