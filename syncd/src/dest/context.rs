//! What one upload is given, and what it hands back.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::journal::{FileRow, Journal};
use crate::ratelimit::RateLimiter;
use crate::tree;

/// A verified upload.
#[derive(Debug, Clone)]
pub struct Done {
    pub etag: Option<String>,
    /// The checksum as the destination reports it.
    pub checksum: String,
    /// Local full-object CRC32C and per-part CRC32Cs, when computed.
    pub local: Option<(u32, Vec<u32>)>,
    /// With Content-MD5: the ETag the content should have (the MD5, or the MD5 of the
    /// part MD5s and `-<parts>`).
    pub md5_etag: Option<String>,
}

/// Everything one upload needs.
pub struct UploadCtx<'a> {
    pub row: &'a FileRow,
    /// The only way to read the row's file: beneath its watch root, no symlink followed,
    /// still the file the journal recorded.
    pub src: tree::Source,
    pub journal: &'a Journal,
    pub cancel: &'a CancellationToken,
    pub limiter: &'a RateLimiter,
    /// Transfer slots (`upload.max_files`): taken for the data, not for metadata requests.
    pub transfers: &'a tokio::sync::Semaphore,
    pub metadata: BTreeMap<String, String>,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: usize,
}
