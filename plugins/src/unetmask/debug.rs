// SPDX-License-Identifier: MPL-2.0

//! The element's `GST_DEBUG` category, `unetmask`: in a module of its own so that the
//! model and GPU code log to it without importing the element.

use std::sync::LazyLock;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "unetmask",
        gst::DebugColorFlags::empty(),
        Some("ONNX person segmentation"),
    )
});
