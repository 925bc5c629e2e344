//! Multipart checkpoints: what a resumable upload records as it goes, so that a restart
//! resumes it. The S3 destination writes them through [`Checkpoints`]; the journal
//! implements it, and the destination never sees the journal.

use std::collections::HashMap;

use crate::error::Result;

/// A multipart part done.
#[derive(Debug, Clone, PartialEq)]
pub struct PartRow {
    pub number: i32,
    pub etag: String,
    pub crc32c: String,
    pub size: u64,
}

/// Where multipart uploads are checkpointed, by the id of the file they upload. Each call
/// is durable when it returns.
pub trait Checkpoints: Send + Sync {
    /// A multipart upload was created: remember its id before any part is sent.
    fn set_upload(&self, file: i64, upload_id: &str, part_size: u64) -> Result<()>;

    /// Forget the multipart upload (gone from the store, or the file changed).
    fn clear_upload(&self, file: i64) -> Result<()>;

    /// A part the store acknowledged.
    fn record_part(&self, file: i64, upload_id: &str, part: &PartRow) -> Result<()>;

    /// All multipart UploadIds still relied on, by key.
    fn live_uploads(&self) -> Result<HashMap<String, String>>;

    /// Whether `key` belongs to a known file (an upload under another key is not ours to
    /// abort).
    fn knows_key(&self, key: &str) -> Result<bool>;
}
