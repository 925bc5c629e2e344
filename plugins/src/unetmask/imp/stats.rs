// SPDX-License-Identifier: MPL-2.0

//! Running counters for the `stats` message and property.

use std::time::{Duration, Instant};

/// Running counters for the stats message and property.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) frames: u64,
    /// Frames finished and output (pipelined: one behind `frames`); paces the message.
    pub(super) output: u64,
    pub(super) fresh: u64,
    pub(super) carried: u64,
    pub(super) qos_skipped: u64,
    pub(super) window_start: Instant,
    pub(super) window_frames: u64,
    pub(super) window_fresh: u64,
    pub(super) pre: Duration,
    pub(super) infer: Duration,
    pub(super) post: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            frames: 0,
            output: 0,
            fresh: 0,
            carried: 0,
            qos_skipped: 0,
            window_start: Instant::now(),
            window_frames: 0,
            window_fresh: 0,
            pre: Duration::ZERO,
            infer: Duration::ZERO,
            post: Duration::ZERO,
        }
    }
}

impl Stats {
    /// `gpu_stream`: on the GPU path, whether ONNX Runtime shares the element's stream.
    pub(super) fn structure(
        &self,
        provider: &str,
        processing: &str,
        gpu_stream: Option<&str>,
    ) -> gst::Structure {
        let ms = |d: Duration, n: u64| {
            if n == 0 {
                0.0
            } else {
                d.as_secs_f64() * 1e3 / n as f64
            }
        };
        let secs = self.window_start.elapsed().as_secs_f64();
        gst::Structure::builder("unetmask-stats")
            .field("frames", self.frames)
            .field("fresh", self.fresh)
            .field("carried", self.carried)
            .field("qos-skipped", self.qos_skipped)
            .field("inference-ms", ms(self.infer, self.window_fresh))
            .field("preprocess-ms", ms(self.pre, self.window_fresh))
            .field("postprocess-ms", ms(self.post, self.window_frames))
            .field(
                "fps",
                if secs > 0.0 {
                    self.window_frames as f64 / secs
                } else {
                    0.0
                },
            )
            .field("provider", provider)
            .field("processing", processing)
            .field_if_some("gpu-stream", gpu_stream)
            .build()
    }

    pub(super) fn reset_window(&mut self) {
        self.window_start = Instant::now();
        self.window_frames = 0;
        self.window_fresh = 0;
        self.pre = Duration::ZERO;
        self.infer = Duration::ZERO;
        self.post = Duration::ZERO;
    }
}
