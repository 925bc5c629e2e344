//! `edgemask`: the runner. One TOML config becomes supervised GStreamer pipelines built
//! around the `unetmask` element (files, v4l2 cameras, RTSP feeds, test patterns); each
//! records raw clips, the masks of the same frames and a manifest per clip for retraining.
//!
//! Pure parts (config validation, clip naming, manifests, capture policy, backoff) are plain
//! functions with unit tests; GStreamer and file I/O live in `camera`, `recorder`, `runner`.

pub mod backoff;
pub mod camera;
pub mod clip;
pub mod config;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod metrics;
pub mod policy;
pub mod preroll;
pub mod props;
pub mod recorder;
pub mod redact;
pub mod restream;
pub mod runner;
pub mod timing;
