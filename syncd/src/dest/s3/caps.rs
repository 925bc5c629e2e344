//! What the endpoint supports, and the pure decision of how bodies are protected.

use crate::config::IntegritySetting;

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
