//! What one upload is given, and what it hands back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::ratelimit::RateLimiter;
use crate::tree;

/// The file to upload, as the journal recorded it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The journal's id of the file: what its checkpoints are recorded under.
    pub id: i64,
    pub path: PathBuf,
    pub key: String,
    pub size: u64,
    /// Attempts before this one.
    pub attempts: u32,
    /// The multipart upload to resume, and its part size.
    pub upload_id: Option<String>,
    pub part_size: Option<u64>,
}

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
    pub job: &'a Job,
    /// The only way to read the job's file: beneath its watch root, no symlink followed,
    /// still the file the journal recorded.
    pub src: tree::Source,
    /// Owned: part uploads run as tasks of their own and checkpoint as they finish.
    pub checkpoints: Arc<dyn Checkpoints>,
    pub cancel: &'a CancellationToken,
    pub limiter: &'a RateLimiter,
    /// Transfer slots (`upload.max_files`): taken for the data, not for metadata requests.
    pub transfers: &'a tokio::sync::Semaphore,
    pub metadata: BTreeMap<String, String>,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: usize,
}
