// SPDX-License-Identifier: MPL-2.0

//! How long each stage of a fresh frame took, on either path (the `stats` figures).

use std::time::Duration;

/// Host wall time of each stage of one fresh frame (on the GPU path, each stage waited for).
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    pub pre: Duration,
    pub infer: Duration,
    pub post: Duration,
}
