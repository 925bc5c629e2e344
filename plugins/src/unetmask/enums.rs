// SPDX-License-Identifier: MPL-2.0

//! The element's property enums and the error of a setting it refuses when it starts: in a
//! module of their own so that the element's code uses them without importing `mod.rs`.

use gst::glib;

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

/// When ONNX Runtime's worker threads busy-wait for work (see `model::engine::Spin`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstUnetMaskSpin")]
pub enum SpinChoice {
    #[enum_value(name = "Never: idle workers sleep, even inside an inference", nick = "never")]
    Never = 0,
    #[enum_value(
        name = "In run: workers spin (briefly) while an inference runs, sleep when it returns",
        nick = "in-run"
    )]
    InRun = 1,
    #[enum_value(
        name = "Always: workers spin between inferences too (ONNX Runtime's own default)",
        nick = "always"
    )]
    Always = 2,
}

impl From<SpinChoice> for crate::unetmask::model::engine::Spin {
    fn from(c: SpinChoice) -> Self {
        match c {
            SpinChoice::Never => Self::Never,
            SpinChoice::InRun => Self::InRun,
            SpinChoice::Always => Self::Always,
        }
    }
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
