//! Aborting multipart uploads: one, or those a crash left behind.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::S3Dest;
use super::call::S3Fail;
use crate::checkpoint::Checkpoints;
use crate::error::Result;
use crate::retry::ErrorClass;

impl S3Dest {
    pub async fn abort(&self, key: &str, upload_id: &str, cancel: &CancellationToken) {
        let r = self
            .call("AbortMultipartUpload", key, cancel, || async {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await
                    .map_err(S3Fail::from_sdk)
            })
            .await;
        match r {
            Ok(_) => info!(key, upload_id, "aborted stale multipart upload"),
            Err(e) if e.class == ErrorClass::NoSuchUpload || e.class == ErrorClass::NotFound => {}
            Err(e) => {
                warn!(key, upload_id, code = %e.code, error = %e.message, "could not abort multipart upload")
            }
        }
    }

    /// Abort multipart uploads under the prefix that belong to keys the checkpoints know
    /// but are not the upload they rely on (left behind by a crash).
    pub async fn abort_orphans(
        &self,
        checkpoints: &dyn Checkpoints,
        cancel: &CancellationToken,
    ) -> Result<usize> {
        let live = checkpoints.live_uploads()?;
        let mut aborted = 0;
        let (mut km, mut um): (Option<String>, Option<String>) = (None, None);
        for _page in 0..1_000 {
            let (k2, u2) = (km.clone(), um.clone());
            let prefix = (!self.prefix.is_empty()).then(|| format!("{}/", self.prefix));
            let r = self
                .call("ListMultipartUploads", "", cancel, || {
                    let req = self
                        .client
                        .list_multipart_uploads()
                        .bucket(&self.bucket)
                        .set_prefix(prefix.clone())
                        .set_key_marker(k2.clone())
                        .set_upload_id_marker(u2.clone());
                    async move { req.send().await.map_err(S3Fail::from_sdk) }
                })
                .await
                .map_err(S3Fail::into_error)?;
            for u in r.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                if live.get(key).map(String::as_str) != Some(id) && checkpoints.knows_key(key)? {
                    self.abort(key, id, cancel).await;
                    aborted += 1;
                }
            }
            if r.is_truncated() == Some(true)
                && (r.next_key_marker().is_some() || r.next_upload_id_marker().is_some())
            {
                km = r.next_key_marker().map(str::to_string);
                um = r.next_upload_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        Ok(aborted)
    }
}
