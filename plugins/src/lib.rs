// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

//! GStreamer plugin `unetmask`: person segmentation with any ONNX UNet on every frame.
//!
//! The element runs the model through ONNX Runtime on the CPU or a CUDA GPU and attaches
//! the mask to every buffer as a [`meta::MaskMeta`]; its `mode` property decides what the
//! frames become (untouched, the mask, RGBA with alpha, an overlay, a blurred or replaced
//! background).

use gst::glib;

pub mod meta;
pub mod unetmask;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    meta::register();
    unetmask::register(plugin)
}

gst::plugin_define!(
    unetmask,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
