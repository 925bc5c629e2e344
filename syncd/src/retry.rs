//! The one retry layer: capped exponential backoff with full jitter, and the pure
//! classification of store answers into transient / fatal / per-object errors.
//!
//! The SDK's own retries are switched off (`RetryConfig::disabled()` in `s3.rs`), so every
//! attempt the daemon makes is one HTTP request and is visible in the logs and metrics.

use std::time::Duration;

use serde::Deserialize;

/// Backoff settings (`[retry]` in the config).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// First delay, milliseconds.
    pub base_ms: u64,
    /// Largest delay, milliseconds.
    pub cap_ms: u64,
    /// Attempts per request before the file is put back in the queue; 0 = unlimited.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 200,
            cap_ms: 30_000,
            max_attempts: 0,
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay before retry number `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ms = self.base_ms.saturating_mul(1u64 << exp).min(self.cap_ms);
        Duration::from_millis(ms)
    }

    /// The delay before retry number `attempt`, given a uniform random `unit` in [0, 1):
    /// "full jitter" — uniformly between half the ceiling and the ceiling, so retries of
    /// many clients spread out but never hammer the store back to back.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceil = self.ceiling(attempt).as_secs_f64();
        let unit = unit.clamp(0.0, 1.0);
        Duration::from_secs_f64(ceil * (0.5 + 0.5 * unit))
    }

    /// Whether another attempt is allowed after `attempts` failed ones.
    pub fn allows(&self, attempts: u32) -> bool {
        self.max_attempts == 0 || attempts < self.max_attempts
    }
}

/// What an error answer means for the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry the request after a backoff.
    Transient,
    /// Stop the whole destination (credentials, bucket, permissions).
    Fatal,
    /// The object does not exist (HEAD 404).
    NotFound,
    /// A conditional write found an existing object (412).
    PreconditionFailed,
    /// The multipart upload is gone.
    NoSuchUpload,
    /// This request is refused for this object only.
    Rejected,
}

/// Classify an answer from its HTTP status (when there was a response) and S3 error code.
/// `None` status means no response at all (timeout, refused or reset connection).
pub fn classify(status: Option<u16>, code: Option<&str>) -> ErrorClass {
    match code.unwrap_or("") {
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "NoSuchBucket"
        | "AllAccessDisabled"
        | "InvalidBucketName"
        | "AccountProblem"
        | "InvalidToken"
        | "ExpiredToken"
        | "TokenRefreshRequired"
        | "InvalidSecurity"
        | "NotSignedUp"
        | "AuthorizationHeaderMalformed"
        | "KMS.NotFoundException"
        | "KMS.DisabledException" => {
            return ErrorClass::Fatal;
        }
        "NoSuchUpload" => return ErrorClass::NoSuchUpload,
        // A 501 for a header or feature the store does not implement: not worth retrying.
        "NotImplemented" => return ErrorClass::Rejected,
        "PreconditionFailed" | "ConditionalRequestConflict" => {
            return ErrorClass::PreconditionFailed;
        }
        "SlowDown"
        | "RequestTimeout"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeTooSkewed"
        | "OperationAborted"
        | "Throttling"
        | "ThrottlingException"
        | "BadDigest"
        | "IncompleteBody" => return ErrorClass::Transient,
        "NoSuchKey" | "NotFound" => return ErrorClass::NotFound,
        _ => {}
    }
    match status {
        None => ErrorClass::Transient,
        Some(401 | 403) => ErrorClass::Fatal,
        Some(404) => ErrorClass::NotFound,
        Some(409) => ErrorClass::Transient,
        Some(412) => ErrorClass::PreconditionFailed,
        Some(408 | 429) => ErrorClass::Transient,
        Some(s) if s >= 500 => ErrorClass::Transient,
        Some(_) => ErrorClass::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            base_ms: 100,
            cap_ms: 1_000,
            max_attempts: 0,
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_millis(1_000));
        assert_eq!(p.ceiling(1_000), Duration::from_millis(1_000));
    }

    #[test]
    fn jitter_stays_between_half_and_full_ceiling() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let c = p.ceiling(attempt);
            for unit in [0.0, 0.3, 0.999, 1.0, -5.0, 7.0] {
                let d = p.delay(attempt, unit);
                assert!(
                    d >= c / 2 && d <= c,
                    "attempt {attempt} unit {unit}: {d:?} vs {c:?}"
                );
            }
        }
        assert_ne!(p.delay(3, 0.0), p.delay(3, 0.9));
    }

    #[test]
    fn attempts_limit() {
        let unlimited = RetryPolicy::default();
        assert!(unlimited.allows(1_000_000));
        let three = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(three.allows(2));
        assert!(!three.allows(3));
    }

    #[test]
    fn classification() {
        use ErrorClass::*;
        assert_eq!(classify(None, None), Transient);
        assert_eq!(classify(Some(503), Some("SlowDown")), Transient);
        assert_eq!(classify(Some(503), None), Transient);
        assert_eq!(classify(Some(500), Some("InternalError")), Transient);
        assert_eq!(classify(Some(403), Some("InvalidAccessKeyId")), Fatal);
        assert_eq!(classify(Some(403), Some("SignatureDoesNotMatch")), Fatal);
        assert_eq!(classify(Some(403), None), Fatal);
        assert_eq!(classify(Some(404), Some("NoSuchBucket")), Fatal);
        assert_eq!(classify(Some(404), Some("NoSuchUpload")), NoSuchUpload);
        assert_eq!(classify(Some(404), None), NotFound);
        assert_eq!(classify(Some(412), None), PreconditionFailed);
        assert_eq!(classify(Some(400), Some("InvalidArgument")), Rejected);
        assert_eq!(classify(Some(400), Some("BadDigest")), Transient);
        assert_eq!(classify(Some(429), None), Transient);
        assert_eq!(classify(Some(501), Some("NotImplemented")), Rejected);
        assert_eq!(classify(Some(501), None), Transient);
    }
}
