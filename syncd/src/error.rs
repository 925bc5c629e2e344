//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the daemon, typed by what the caller must do about it.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Bad configuration: names the key, the value and what is allowed.
    #[error("config: {0}")]
    Config(String),
    /// The local journal (SQLite) failed.
    #[error("journal: {0}")]
    Journal(#[from] rusqlite::Error),
    /// Local file I/O failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The destination refuses us as a whole (credentials, bucket, permissions): stop it,
    /// keep every file.
    #[error("destination refused ({code}): {message}")]
    Fatal { code: String, message: String },
    /// Worth retrying: timeouts, connection resets, 5xx, SlowDown.
    #[error("transient ({code}): {message}")]
    Transient { code: String, message: String },
    /// This one object was refused (e.g. a 400 for its key); the file is kept.
    #[error("object refused ({code}): {message}")]
    Rejected { code: String, message: String },
    /// A different object already exists under the key: never clobbered.
    #[error("{key} already exists with different content ({detail}); local file kept")]
    Conflict { key: String, detail: String },
    /// The store reports a checksum that does not match ours.
    #[error("verification failed for {key}: {detail}")]
    Verify { key: String, detail: String },
    /// The multipart upload no longer exists on the store.
    #[error("multipart upload {0} no longer exists")]
    NoSuchUpload(String),
    /// The local file changed or vanished under us.
    #[error("{0} changed or vanished during upload")]
    Changed(PathBuf),
    /// One file under a watch root is not uploaded (a symlink, a hard link, a bad
    /// manifest…): logged, counted and skipped; never fatal to the daemon.
    #[error("{path}: refused ({}): {detail}", reason.as_str())]
    Refused {
        path: PathBuf,
        reason: crate::refusal::Refusal,
        detail: String,
    },
    /// Shutdown was requested.
    #[error("cancelled")]
    Cancelled,
    /// The file watcher failed.
    #[error("watch: {0}")]
    Watch(#[from] notify::Error),
}

impl SyncError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SyncError::Io {
            path: path.into(),
            source,
        }
    }

    /// A short label for metrics (`failures_total{kind=…}`).
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Config(_) => "config",
            SyncError::Journal(_) => "journal",
            SyncError::Io { .. } => "io",
            SyncError::Fatal { .. } => "fatal",
            SyncError::Transient { .. } => "transient",
            SyncError::Rejected { .. } => "rejected",
            SyncError::Conflict { .. } => "conflict",
            SyncError::Verify { .. } => "verify",
            SyncError::NoSuchUpload(_) => "no_such_upload",
            SyncError::Changed(_) => "changed",
            SyncError::Refused { .. } => "refused",
            SyncError::Cancelled => "cancelled",
            SyncError::Watch(_) => "watch",
        }
    }
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;

/// A task that panicked or was aborted: worth another try.
pub(crate) fn join_err(e: tokio::task::JoinError) -> SyncError {
    SyncError::Transient {
        code: "join".into(),
        message: e.to_string(),
    }
}
