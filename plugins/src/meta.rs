// SPDX-License-Identifier: MPL-2.0

//! `GstUnetMaskMeta`: the person mask attached to every buffer `unetmask` outputs.
//!
//! It is a `GstCustomMeta` (GStreamer >= 1.20), so any language reads it without linking
//! this crate: `gst_buffer_get_custom_meta(buf, "GstUnetMaskMeta")`, then the fields of
//! its `GstStructure` (named `unetmask`):
//!
//! | field       | type          | meaning |
//! |-------------|---------------|---------|
//! | `mask`      | `GstBuffer`   | person probability, GRAY8, `width` x `height`, rows packed (stride = width), 0 = background, 255 = person; covers the whole frame |
//! | `width`     | `guint`       | mask width (the model's output width) |
//! | `height`    | `guint`       | mask height |
//! | `threshold` | `gdouble`     | the element's threshold; < 0 when the mask is soft. Hard mask at frame size: bilinear upscale, then `value > threshold * 255` |
//! | `fresh`     | `gboolean`    | `TRUE`: computed for this frame; `FALSE`: carried over (inference-interval or QoS) |
//! | `frame`     | `guint64`     | index of the frame in the stream (0-based) |
//! | `coverage`  | `gdouble`     | share of mask pixels that are person (above threshold, 0.5 when soft) |
//! | `uncertain` | `gdouble`     | share of mask pixels with probability in [0.25, 0.75] |
//!
//! The meta has no tags, so transforms that keep untagged metas (videoconvert, videoscale,
//! queues, encoders' input) carry it along; its coordinates are relative to the frame.

use gst::meta::CustomMeta;

use crate::unetmask::cpu::composite::{MaskScaler, Weights};

/// Registered name of the meta.
pub const META_NAME: &str = "GstUnetMaskMeta";
/// Name of the meta's structure.
pub const STRUCTURE_NAME: &str = "unetmask";

/// Registers the meta (idempotent; done by the plugin's init).
pub fn register() {
    if !CustomMeta::is_registered(META_NAME) {
        CustomMeta::register(META_NAME, &[]);
    }
}

/// The contents of a `GstUnetMaskMeta`.
#[derive(Debug, Clone)]
pub struct MaskMeta {
    pub mask: gst::Buffer,
    pub width: u32,
    pub height: u32,
    pub threshold: Option<f64>,
    pub fresh: bool,
    pub frame: u64,
    pub coverage: f64,
    pub uncertain: f64,
}

impl MaskMeta {
    /// Attaches the meta to `buffer`, replacing one that is already there.
    pub fn attach(&self, buffer: &mut gst::BufferRef) {
        register();
        if let Ok(old) = CustomMeta::from_mut_buffer(buffer, META_NAME) {
            let _ = old.remove();
        }
        let mut meta = CustomMeta::add(buffer, META_NAME).expect("GstUnetMaskMeta is registered");
        let s = meta.mut_structure();
        s.set_name(STRUCTURE_NAME);
        s.set("mask", &self.mask);
        s.set("width", self.width);
        s.set("height", self.height);
        s.set("threshold", self.threshold.unwrap_or(-1.0));
        s.set("fresh", self.fresh);
        s.set("frame", self.frame);
        s.set("coverage", self.coverage);
        s.set("uncertain", self.uncertain);
    }

    /// Reads the meta of `buffer`, if it has one.
    pub fn from_buffer(buffer: &gst::BufferRef) -> Option<MaskMeta> {
        let meta = CustomMeta::from_buffer(buffer, META_NAME).ok()?;
        let s = meta.structure();
        let threshold: f64 = s.get("threshold").ok()?;
        Some(MaskMeta {
            mask: s.get("mask").ok()?,
            width: s.get("width").ok()?,
            height: s.get("height").ok()?,
            threshold: (threshold >= 0.0).then_some(threshold),
            fresh: s.get("fresh").ok()?,
            frame: s.get("frame").ok()?,
            coverage: s.get("coverage").ok()?,
            uncertain: s.get("uncertain").ok()?,
        })
    }

    /// The mask at `width` x `height` (GRAY8, packed rows), exactly as the element's `mask`
    /// mode computes it: bilinear upscale, then the threshold when there is one.
    pub fn to_frame_size(&self, width: usize, height: usize) -> Vec<u8> {
        let map = self.mask.map_readable().expect("mask buffer is readable");
        let mut scaler = MaskScaler::new((self.width as usize, self.height as usize), (width, height));
        let lut = Weights::mask(self.threshold.map(|t| t as f32));
        let mut out = vec![0u8; width * height];
        crate::unetmask::cpu::composite::write_mask(&mut out, width, height, &mut scaler, &map, &lut);
        out
    }
}
