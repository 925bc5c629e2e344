//! One request to the store: its failure classified, and the one retry layer.

use std::future::Future;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::{Result, SyncError};
use crate::metrics::Metrics;
use crate::retry::{ErrorClass, RetryPolicy, classify};

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
    pub(super) fn from_sdk<E>(e: SdkError<E, HttpResponse>) -> S3Fail
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

    pub(super) fn into_error(self) -> SyncError {
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
