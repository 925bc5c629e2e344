//! The crate's one error type, and the process exit code each kind maps to.

use std::path::PathBuf;

/// Exit codes of the `edgemask` binary (documented in the README).
pub mod exit {
    /// Everything finished (all file sources done, or a clean shutdown after SIGTERM/SIGINT).
    pub const OK: u8 = 0;
    /// A pipeline failed at run time (a file that cannot be decoded, a write error...).
    pub const RUNTIME: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// The configuration is invalid (syntax, unknown key, wrong type, bad value).
    pub const CONFIG: u8 = 3;
    /// The model cannot be loaded (missing file, not ONNX, contract not servable, no ONNX Runtime).
    pub const MODEL: u8 = 4;
    /// A source is unavailable (file missing, v4l2 device absent, RTSP camera unreachable).
    pub const SOURCE: u8 = 5;
    /// The output directory cannot be created or written.
    pub const OUTPUT: u8 = 6;
    /// Exit after a second SIGTERM/SIGINT (open clips are not finalised).
    pub const FORCED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("configuration: key `{key}` = {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("configuration: unknown key `{key}` (value {value}); allowed keys here: {allowed}")]
    UnknownKey {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("model '{path}': {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("camera '{camera}': source unavailable: {reason}")]
    Source { camera: String, reason: String },
    #[error("output directory '{path}': {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("I/O on '{path}': {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("camera '{camera}' failed: {reason}")]
    Runtime { camera: String, reason: String },
    /// The camera's on-screen display cannot be served (no display, missing sink element).
    #[error("camera '{camera}': display: {reason}")]
    Display { camera: String, reason: String },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Invalid { .. } | Error::UnknownKey { .. } => exit::CONFIG,
            Error::Model { .. } => exit::MODEL,
            Error::Source { .. } => exit::SOURCE,
            Error::Output { .. } => exit::OUTPUT,
            Error::Gst(_) | Error::Io { .. } | Error::Runtime { .. } | Error::Display { .. } => exit::RUNTIME,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            key: key.into(),
            // Every value an error shows goes through the one redaction.
            value: crate::redact::redact(&value.to_string()),
            reason: reason.into(),
        }
    }
}

impl From<gst::glib::Error> for Error {
    fn from(e: gst::glib::Error) -> Self {
        Error::Gst(crate::redact::redact(&e.to_string()))
    }
}

impl From<gst::glib::BoolError> for Error {
    fn from(e: gst::glib::BoolError) -> Self {
        Error::Gst(crate::redact::redact(&e.to_string()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
