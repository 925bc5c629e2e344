//! `edgemask-syncd`: uploads every finished clip from the runner's output directory to S3
//! (or a directory) exactly once — see `syncd/README.md`.

pub mod checkpoint;
pub mod checksum;
pub mod config;
pub mod contract;
pub mod daemon;
pub mod dest;
pub mod error;
pub mod journal;
pub mod keys;
pub mod listing;
pub mod metrics;
pub mod ratelimit;
pub mod ready;
pub mod refusal;
pub mod retention;
pub mod retry;
pub mod scan;
pub mod status;
pub mod tree;
pub mod upload;

pub use error::{Result, SyncError};
