//! Whether an object is under a key: HeadObject, or a listing of the key's directory.

use std::collections::HashSet;
use std::time::Instant;

use aws_sdk_s3::types::ChecksumMode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::S3Dest;
use super::call::S3Fail;
use crate::error::{Result, SyncError};
use crate::listing::{self, Plan};
use crate::retry::{self, Lookup};

/// An object's HEAD.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub etag: Option<String>,
    pub crc32c: Option<String>,
}

/// What HeadObject found under a key.
#[derive(Debug, Clone)]
pub enum Existing {
    Present(Head),
    Absent,
    /// 403: see [`Lookup::Unknown`].
    Unknown,
}

/// The advice a 403 on HeadObject gets, wherever it matters.
pub(super) const HEAD_403_ADVICE: &str = "HeadObject answered 403 (AWS does for a missing key without s3:ListBucket, and for any key without s3:GetObject)";

impl S3Dest {
    pub(super) async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Existing> {
        let r = self
            .call("HeadObject", key, cancel, || async {
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(S3Fail::from_sdk)
            })
            .await;
        match r {
            Ok(h) => Ok(Existing::Present(Head {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: h.e_tag().map(str::to_string),
                crc32c: h.checksum_crc32_c().map(str::to_string),
            })),
            Err(e) => match retry::lookup(e.status, e.sdk_code.as_deref()) {
                Lookup::Absent => Ok(Existing::Absent),
                Lookup::Unknown => Ok(Existing::Unknown),
                Lookup::Failed(_) => Err(e.into_error()),
            },
        }
    }

    /// [`S3Dest::head`] under a check slot (`upload.max_checks`).
    pub(super) async fn checked_head(&self, key: &str, cancel: &CancellationToken) -> Result<Existing> {
        let _slot = self.checks.acquire().await.expect("semaphore never closed");
        self.head(key, cancel).await
    }

    /// Whether an object is under `key`, for a store without create-only writes, where
    /// writing without knowing could clobber. HeadObject first; where it cannot tell
    /// (403), a listing; where neither can, the file waits (not the destination), with
    /// the permission that would settle it named.
    pub(super) async fn must_know(&self, key: &str, cancel: &CancellationToken) -> Result<Option<Head>> {
        match self.checked_head(key, cancel).await? {
            Existing::Present(h) => return Ok(Some(h)),
            Existing::Absent => return Ok(None),
            Existing::Unknown => {}
        }
        match self.listed(key, cancel).await {
            Some(false) => Ok(None),
            Some(true) => Err(SyncError::Transient {
                code: "ExistenceUnknown".into(),
                message: format!("{key} is listed but {HEAD_403_ADVICE}: grant s3:GetObject on the prefix"),
            }),
            None => Err(SyncError::Transient {
                code: "ExistenceUnknown".into(),
                message: format!(
                    "cannot tell whether {key} exists: {HEAD_403_ADVICE}, listing is refused, and the store does not honour If-None-Match; grant s3:ListBucket on the prefix (or use a store with conditional writes); the file stays queued"
                ),
            }),
        }
    }

    /// Whether `key` exists, answered by a listing of its directory when the policy
    /// ([`Listings::plan`]) says one answers or is worth taking; `None`: ask HeadObject.
    pub(super) async fn listed(&self, key: &str, cancel: &CancellationToken) -> Option<bool> {
        let dir = match self.listings.plan(key, Instant::now(), true) {
            Plan::Answer(present) => return Some(present),
            Plan::Head => return None,
            Plan::List(dir) => dir,
        };
        let _gate = self.list_gate.lock().await;
        // The checks that waited for the gate find the listing just taken.
        if let Plan::Answer(present) = self.listings.plan(key, Instant::now(), false) {
            return Some(present);
        }
        let at = Instant::now();
        match self.list_dir(&dir, cancel).await {
            Ok(Some((_, pages))) if self.listings.too_slow(at.elapsed()) => {
                info!(
                    dir,
                    pages,
                    secs = at.elapsed().as_secs_f64(),
                    "listing too slow to answer existence checks; HeadObject there"
                );
                self.listings.leave_to_head(&dir, Instant::now());
                None
            }
            Ok(Some((keys, pages))) => {
                debug!(dir, keys = keys.len(), pages, "listed for existence checks");
                let present = keys.contains(key);
                self.listings.store(&dir, keys, pages, at);
                Some(present)
            }
            Ok(None) => {
                info!(
                    dir,
                    "directory too big to list for existence checks; HeadObject there"
                );
                self.listings.leave_to_head(&dir, at);
                None
            }
            Err(e) if e.code == "AccessDenied" => {
                // Other permanent errors (a wrong key, a missing bucket) fail the HeadObject
                // that follows too, and stop the destination there.
                if self.listings.disable() {
                    warn!(code = %e.code, error = %e.message,
                          "listing refused (s3:ListBucket on the prefix would save one request per file); existence checks by HeadObject");
                }
                None
            }
            Err(e) => {
                debug!(dir, code = %e.code, error = %e.message, "listing failed; HeadObject instead");
                None
            }
        }
    }

    /// The keys directly in `dir` (delimiter `/`), and the pages it took; `None` when it
    /// has more than [`listing::MAX_PAGES`] pages.
    async fn list_dir(
        &self,
        dir: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<(HashSet<String>, u32)>, S3Fail> {
        let _slot = self.checks.acquire().await.expect("semaphore never closed");
        let mut keys = HashSet::new();
        let mut token: Option<String> = None;
        for page in 1..=listing::MAX_PAGES {
            let out = self
                .call("ListObjectsV2", dir, cancel, || async {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(dir)
                        .delimiter("/")
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(S3Fail::from_sdk)
                })
                .await?;
            self.metrics.list_request();
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(Some((keys, page))),
            }
        }
        Ok(None)
    }
}
