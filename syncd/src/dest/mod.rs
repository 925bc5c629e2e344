//! Where files go: an S3 bucket or a local directory, behind one [`Dest`].

pub mod context;
pub mod file;
pub mod s3;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Destination};
use crate::error::Result;
use crate::metrics::Metrics;
use context::{Done, UploadCtx};
use file::FileDest;
use s3::S3Dest;

/// Where files go.
pub enum Dest {
    S3(Box<S3Dest>),
    File(FileDest),
}

impl Dest {
    pub async fn new(cfg: &Config, metrics: Arc<Metrics>) -> Dest {
        match cfg.destination() {
            Destination::S3 { bucket, prefix } => {
                Dest::S3(Box::new(S3Dest::connect(cfg, &bucket, &prefix, metrics).await))
            }
            Destination::File { dir } => Dest::File(FileDest::new(dir, metrics)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Dest::S3(s) => s.describe(),
            Dest::File(f) => format!("file://{}", f.dir.display()),
        }
    }

    /// Check the destination is usable; `Fatal` when it is not.
    pub async fn probe(&self, cfg: &Config, cancel: &CancellationToken) -> Result<()> {
        match self {
            Dest::S3(s) => s.probe(cancel, cfg.s3.probe).await.map(|_| ()),
            Dest::File(f) => f.probe(),
        }
    }

    pub async fn upload(&self, ctx: &UploadCtx<'_>) -> Result<Done> {
        match self {
            Dest::S3(s) => s.upload(ctx).await,
            Dest::File(f) => f.upload(ctx).await,
        }
    }
}
