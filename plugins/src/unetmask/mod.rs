// SPDX-License-Identifier: MPL-2.0

//! The `unetmask` element: public wrapper, registration and property enums.

use gst::glib;
use gst::prelude::*;

// The element's building blocks. `pub` only so that this crate's benches and tests reach
// them; hidden from the documentation, not an API and not kept stable. Applications use the
// element, its meta and `probe`.
#[doc(hidden)]
pub mod cpu;
mod debug;
#[doc(hidden)]
pub mod frame;
mod gpu;
mod imp;
#[doc(hidden)]
pub mod model;
pub mod probe;
mod processor;
mod stages;
#[cfg(test)]
mod test_bytes;

glib::wrapper! {
    pub struct UnetMask(ObjectSubclass<imp::UnetMask>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

/// A property value that `set_property` accepted but the element refuses when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingError {
    /// The property's name (`mean`, `input-size`, …).
    pub property: &'static str,
    pub reason: String,
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for SettingError {}

impl UnetMask {
    /// Checks the element's current properties the way it checks them when it starts
    /// (device, input size, mean, std), without opening the model: applications validate a
    /// configuration with the element's own rules.
    pub fn check_settings(&self) -> Result<(), SettingError> {
        use gst::subclass::prelude::ObjectSubclassIsExt;
        self.imp().current_engine_config().map(|_| ())
    }
}

/// What the element does to the frames (the mask meta is attached in every mode).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstUnetMaskMode")]
pub enum Mode {
    #[enum_value(
        name = "Meta: frames pass untouched, the mask rides along as GstUnetMaskMeta",
        nick = "meta"
    )]
    Meta = 0,
    #[enum_value(name = "Mask: output the GRAY8 mask at frame size", nick = "mask")]
    Mask = 1,
    #[enum_value(name = "Alpha: output RGBA with the mask as alpha", nick = "alpha")]
    Alpha = 2,
    #[enum_value(
        name = "Overlay: tint the person (overlay-color, overlay-opacity)",
        nick = "overlay"
    )]
    Overlay = 3,
    #[enum_value(name = "Blur: blur the background, without halo (blur-radius)", nick = "blur")]
    Blur = 4,
    #[enum_value(
        name = "Replace: replace the background (replace-color or replace-image)",
        nick = "replace"
    )]
    Replace = 5,
}

impl Mode {
    /// Whether the output has the input's caps (the frame is modified in place).
    pub fn in_place(self) -> bool {
        !matches!(self, Mode::Mask | Mode::Alpha)
    }
}

/// Input tensor layout override.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstUnetMaskLayout")]
pub enum LayoutChoice {
    #[enum_value(name = "Auto: detect from the model's input shape", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "NCHW: [1,3,H,W]", nick = "nchw")]
    Nchw = 1,
    #[enum_value(name = "NHWC: [1,H,W,3]", nick = "nhwc")]
    Nhwc = 2,
}

/// Colour channel order the model expects.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstUnetMaskChannelOrder")]
pub enum ChannelOrderChoice {
    #[enum_value(name = "RGB", nick = "rgb")]
    Rgb = 0,
    #[enum_value(name = "BGR (OpenCV-trained models)", nick = "bgr")]
    Bgr = 1,
}

/// How frames are brought to the model's input size.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstUnetMaskResize")]
pub enum ResizeChoice {
    #[enum_value(
        name = "Antialias: triangle filter over the whole frame (as Pillow/torchvision)",
        nick = "antialias"
    )]
    Antialias = 0,
    #[enum_value(
        name = "Bilinear: 2x2 taps per model pixel, reads only those (fastest)",
        nick = "bilinear"
    )]
    Bilinear = 1,
}

/// Output activation override.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstUnetMaskActivation")]
pub enum ActivationChoice {
    #[enum_value(
        name = "Auto: probabilities if the output stays in [0,1], else logits",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "None: the output already holds probabilities", nick = "none")]
    None = 1,
    #[enum_value(name = "Sigmoid: one-channel logits", nick = "sigmoid")]
    Sigmoid = 2,
    #[enum_value(name = "Softmax: C-channel logits", nick = "softmax")]
    Softmax = 3,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "unetmask", gst::Rank::NONE, UnetMask::static_type())
}
