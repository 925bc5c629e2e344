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

/// What a HeadObject answer says about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// 404: the object does not exist.
    Absent,
    /// 403 without an error code (HEAD answers carry no body): AWS answers so for a
    /// missing key when the credentials lack `s3:ListBucket`, and for an existing one when
    /// they lack `s3:GetObject`. It says nothing about existence, and nothing about the
    /// destination as a whole (the probe checks that), so it never stops the destination.
    Unknown,
    /// Any other failure, classified as usual.
    Failed(ErrorClass),
}

/// Classify a failed HeadObject (pure; `status`/`code` as for [`classify`]).
pub fn lookup(status: Option<u16>, code: Option<&str>) -> Lookup {
    match (status, code) {
        (_, Some("NoSuchKey" | "NotFound")) | (Some(404), None) => Lookup::Absent,
        (Some(403), None | Some("AccessDenied" | "Forbidden")) => Lookup::Unknown,
        _ => Lookup::Failed(classify(status, code)),
    }
}

/// How to find out, before writing a key, whether an object is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreCheck {
    /// Nothing: the write is create-only (`If-None-Match: *`), and a 412 says "exists".
    CreateOnly,
    /// A listing of the key's directory (shared by many keys), HeadObject where none
    /// answers.
    Listing,
    /// HeadObject.
    Head,
}

/// The pre-write check (pure). Where the store honours `If-None-Match` the write itself is
/// the check — on retries and resumed multipart uploads too (their CompleteMultipartUpload
/// is create-only): a HEAD first would cost a request and, under a least-privilege key,
/// answer 403 for every missing key. Elsewhere a first attempt may use a listing; a retry
/// asks HeadObject (the listing may predate the attempt that failed).
pub fn pre_check(conditional_writes: bool, first_try: bool) -> PreCheck {
    match (conditional_writes, first_try) {
        (true, _) => PreCheck::CreateOnly,
        (false, true) => PreCheck::Listing,
        (false, false) => PreCheck::Head,
    }
}

/// Whether a "destination refused" answer is about the destination or one file (pure
/// state). A fatal answer for a file stops the destination until its check passes again.
/// If that same file then gets a fatal answer again while the check keeps passing, the
/// answer is about the file (a key the credentials do not cover, an object-level
/// permission), not the destination: stopping everything again would livelock, with the
/// same file failing after every passing check and nothing else uploaded.
#[derive(Debug, Default)]
pub struct Blame {
    /// The file whose fatal answer stopped the destination.
    stopped_by: Option<i64>,
    /// Files that got a fatal answer although the destination then passed its check.
    suspects: std::collections::HashSet<i64>,
}

impl Blame {
    /// A fatal answer for `file`: true when it stops the destination, false when it only
    /// holds this file back.
    pub fn fatal(&mut self, file: i64) -> bool {
        if self.suspects.contains(&file) {
            return false;
        }
        self.stopped_by.get_or_insert(file);
        true
    }

    /// The destination passed its check again.
    pub fn check_passed(&mut self) {
        if let Some(f) = self.stopped_by.take() {
            self.suspects.insert(f);
        }
    }

    /// The file was uploaded (or left the queue): forget it.
    pub fn done(&mut self, file: i64) {
        self.suspects.remove(&file);
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

    #[test]
    fn head_answers() {
        use ErrorClass::*;
        // AWS without s3:ListBucket: a missing key answers 403, and HEAD has no body.
        assert_eq!(lookup(Some(403), None), Lookup::Unknown);
        assert_eq!(lookup(Some(403), Some("AccessDenied")), Lookup::Unknown);
        assert_eq!(lookup(Some(404), None), Lookup::Absent);
        assert_eq!(lookup(Some(404), Some("NoSuchKey")), Lookup::Absent);
        // Credentials that are wrong as a whole still stop the destination.
        assert_eq!(
            lookup(Some(403), Some("InvalidAccessKeyId")),
            Lookup::Failed(Fatal)
        );
        assert_eq!(lookup(Some(404), Some("NoSuchBucket")), Lookup::Failed(Fatal));
        assert_eq!(lookup(Some(503), None), Lookup::Failed(Transient));
        assert_eq!(lookup(None, None), Lookup::Failed(Transient));
    }

    #[test]
    fn create_only_stores_never_head_before_writing() {
        assert_eq!(pre_check(true, true), PreCheck::CreateOnly);
        assert_eq!(pre_check(true, false), PreCheck::CreateOnly, "retries too");
        assert_eq!(pre_check(false, true), PreCheck::Listing);
        assert_eq!(pre_check(false, false), PreCheck::Head);
    }

    #[test]
    fn a_file_refused_after_a_passing_check_holds_back_only_itself() {
        let mut b = Blame::default();
        assert!(b.fatal(7), "the first refusal stops the destination");
        assert!(b.fatal(8), "so does another file's, while it is stopped");
        b.check_passed();
        assert!(!b.fatal(7), "refused again after a passing check: this file only");
        assert!(b.fatal(8), "a file that did not stop it is not suspected");
        b.check_passed();
        assert!(!b.fatal(8));
        b.done(7);
        assert!(b.fatal(7), "an uploaded file starts afresh");
    }
}
