//! The model contract: which tensor the element feeds and how it reads the answer.
//!
//! Detection works on the shapes ONNX Runtime reports for the model's inputs and outputs
//! (dynamic dimensions are `-1`) and on the element's override properties. Everything here
//! is plain data and plain functions, so it is unit-tested without a model.

use std::fmt;

/// Memory layout of a 4-D image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]` (PyTorch's default export).
    Nchw,
    /// `[N, H, W, C]` (TensorFlow/Keras exports).
    Nhwc,
}

/// How the raw network output becomes a person probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The output already holds probabilities in [0, 1].
    None,
    /// One-channel logits: `p = 1 / (1 + exp(-x))`.
    Sigmoid,
    /// C-channel logits: softmax over the channel axis, then the person channel.
    Softmax,
}

/// What the element knows about one model input or output, as ONNX Runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Element type as ONNX Runtime names it (`f32`, `u8`, ...). `None`: not a tensor.
    pub elem: Option<String>,
    /// Dimensions; `-1` for a dynamic one.
    pub shape: Vec<i64>,
}

impl TensorInfo {
    fn describe(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| if *d < 0 { "?".to_string() } else { d.to_string() })
            .collect();
        format!(
            "'{}' {} [{}]",
            self.name,
            self.elem.as_deref().unwrap_or("non-tensor"),
            dims.join(",")
        )
    }
}

/// User overrides from the element's properties. `None` means "detect".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub layout: Option<Layout>,
    pub input_size: Option<(u32, u32)>,
    pub activation: Option<Activation>,
    pub person_class: Option<u32>,
}

/// The model's spatial input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSize {
    Fixed(u32, u32),
    /// Dynamic height and width: chosen per stream by [`dynamic_input_size`].
    Dynamic,
}

/// Where the class/channel axis of the output sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLayout {
    /// `[1, C, H, W]` or `[1, H, W]`.
    ChannelsFirst,
    /// `[1, H, W, C]`.
    ChannelsLast,
}

/// Model channel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

impl ChannelOrder {
    /// The RGB channel (0 R, 1 G, 2 B) that model channel k takes.
    pub fn rgb_index(self) -> [usize; 3] {
        match self {
            Self::Rgb => [0, 1, 2],
            Self::Bgr => [2, 1, 0],
        }
    }
}

/// `tensor = (pixel * scale - mean) / std`, per model channel (in the model's order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// The same per channel as one multiply-add, `tensor = pixel * mul[k] + add[k]`: the
    /// form both paths compute.
    pub fn affine(&self) -> ([f32; 3], [f32; 3]) {
        (
            std::array::from_fn(|k| self.scale / self.std[k]),
            std::array::from_fn(|k| -self.mean[k] / self.std[k]),
        )
    }
}

impl Default for Normalization {
    /// RGB in [0, 1]: the original UNet contract and MediaPipe's.
    fn default() -> Self {
        Self {
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }
}

/// What the model's input tensor is: its size (width, height), layout, channel order and
/// normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorSpec {
    pub size: (usize, usize),
    pub layout: Layout,
    pub order: ChannelOrder,
    pub norm: Normalization,
}

/// How to read the person probability out of the output tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputSpec {
    pub layout: OutputLayout,
    pub channels: usize,
    pub person: usize,
    pub activation: Activation,
}

/// What the element detected, before the output activation is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub input_name: String,
    pub layout: Layout,
    pub input_size: InputSize,
    pub output_name: String,
    pub output_layout: OutputLayout,
    /// Output channel count when the model states it; `None` when dynamic.
    pub output_channels: Option<u32>,
}

/// Why a model cannot be served. Each message names the shape and what to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ContractError {
    NoInput,
    TooManyInputs(Vec<String>),
    InputNotFloat(String),
    InputRank(String),
    InputChannels(String),
    AmbiguousLayout(String),
    FixedSizeOverride(String, (u32, u32)),
    NoOutput(Vec<String>),
    PersonClassNeeded(u32),
    PersonClassOutOfRange(u32, u32),
    ActivationMismatch(Activation, u32),
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoInput => write!(f, "the model has no input tensor; unetmask needs one image input"),
            Self::TooManyInputs(v) => write!(
                f,
                "the model has {} inputs ({}); unetmask feeds exactly one float32 image tensor. \
                 Re-export the network with a single image input",
                v.len(),
                v.join(", ")
            ),
            Self::InputNotFloat(d) => write!(
                f,
                "model input {d} is not float32; unetmask feeds float32 [1,3,H,W] (NCHW) or [1,H,W,3] (NHWC). \
                 Re-export the network with a float32 input"
            ),
            Self::InputRank(d) => write!(
                f,
                "model input {d} is not a 4-D image tensor; unetmask feeds [1,3,H,W] (NCHW) or [1,H,W,3] (NHWC)"
            ),
            Self::InputChannels(d) => write!(
                f,
                "model input {d} does not take 3 colour channels; unetmask feeds RGB or BGR images \
                 as [1,3,H,W] or [1,H,W,3]"
            ),
            Self::AmbiguousLayout(d) => write!(
                f,
                "cannot tell whether model input {d} is NCHW or NHWC; set the layout property to nchw or nhwc"
            ),
            Self::FixedSizeOverride(d, (w, h)) => write!(
                f,
                "model input {d} has a fixed size, so input-size={w}x{h} cannot be served; \
                 unset input-size or re-export the model with dynamic height and width"
            ),
            Self::NoOutput(v) => write!(
                f,
                "no model output is a float32 mask of shape [1,C,H,W], [1,H,W,C] or [1,H,W] (outputs: {}); \
                 re-export the network so its first output is the segmentation map",
                v.join(", ")
            ),
            Self::PersonClassNeeded(c) => write!(
                f,
                "the model outputs {c} classes and unetmask cannot tell which one is the person; \
                 set person-class to its index (0..{})",
                c.saturating_sub(1)
            ),
            Self::PersonClassOutOfRange(p, c) => write!(
                f,
                "person-class={p} is out of range: the model outputs {c} classes (0..{})",
                c.saturating_sub(1)
            ),
            Self::ActivationMismatch(a, c) => write!(
                f,
                "output-activation={} does not fit a {c}-channel output; use sigmoid or none for one channel, \
                 softmax or none for several",
                activation_name(*a)
            ),
        }
    }
}

impl std::error::Error for ContractError {}

pub fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::None => "none",
        Activation::Sigmoid => "sigmoid",
        Activation::Softmax => "softmax",
    }
}

fn dim(d: i64) -> Option<u32> {
    (d > 0).then_some(d as u32)
}

/// Detects the contract from the model's inputs and outputs.
pub fn detect(
    inputs: &[TensorInfo],
    outputs: &[TensorInfo],
    ov: &Overrides,
) -> Result<Contract, ContractError> {
    let input = match inputs {
        [] => return Err(ContractError::NoInput),
        [one] => one,
        many => {
            return Err(ContractError::TooManyInputs(
                many.iter().map(TensorInfo::describe).collect(),
            ));
        }
    };
    if input.elem.as_deref() != Some("f32") {
        return Err(ContractError::InputNotFloat(input.describe()));
    }
    if input.shape.len() != 4 || dim(input.shape[0]).is_some_and(|n| n != 1) {
        return Err(ContractError::InputRank(input.describe()));
    }
    let s = &input.shape;
    let layout = match ov.layout {
        Some(l) => l,
        None => match (dim(s[1]) == Some(3), dim(s[3]) == Some(3)) {
            (true, false) => Layout::Nchw,
            (false, true) => Layout::Nhwc,
            // [1,3,H,3] only happens for a 3-pixel-wide image: take PyTorch's default.
            (true, true) => Layout::Nchw,
            (false, false) => {
                if s[1] < 0 || s[3] < 0 {
                    return Err(ContractError::AmbiguousLayout(input.describe()));
                }
                return Err(ContractError::InputChannels(input.describe()));
            }
        },
    };
    let (c, h, w) = match layout {
        Layout::Nchw => (s[1], s[2], s[3]),
        Layout::Nhwc => (s[3], s[1], s[2]),
    };
    if dim(c).is_some_and(|c| c != 3) {
        return Err(ContractError::InputChannels(input.describe()));
    }
    let input_size = match (dim(w), dim(h), ov.input_size) {
        (Some(w), Some(h), None) => InputSize::Fixed(w, h),
        (Some(w), Some(h), Some(o)) if o == (w, h) => InputSize::Fixed(w, h),
        (Some(_), Some(_), Some(o)) => return Err(ContractError::FixedSizeOverride(input.describe(), o)),
        (_, _, Some((w, h))) => InputSize::Fixed(w, h),
        _ => InputSize::Dynamic,
    };

    let output = outputs
        .iter()
        .find(|o| o.elem.as_deref() == Some("f32") && (o.shape.len() == 3 || o.shape.len() == 4))
        .ok_or_else(|| ContractError::NoOutput(outputs.iter().map(TensorInfo::describe).collect()))?;
    let o = &output.shape;
    let (output_layout, output_channels) = if o.len() == 3 {
        (OutputLayout::ChannelsFirst, Some(1))
    } else {
        match (dim(o[1]), dim(o[3])) {
            (Some(1), _) => (OutputLayout::ChannelsFirst, Some(1)),
            (_, Some(1)) => (OutputLayout::ChannelsLast, Some(1)),
            _ => match layout {
                Layout::Nchw => (OutputLayout::ChannelsFirst, dim(o[1])),
                Layout::Nhwc => (OutputLayout::ChannelsLast, dim(o[3])),
            },
        }
    };
    if let (Some(c), Some(p)) = (output_channels, ov.person_class)
        && c > 1
        && p >= c
    {
        return Err(ContractError::PersonClassOutOfRange(p, c));
    }
    Ok(Contract {
        input_name: input.name.clone(),
        layout,
        input_size,
        output_name: output.name.clone(),
        output_layout,
        output_channels,
    })
}

/// The person channel for a `channels`-channel output.
pub fn person_class(channels: u32, requested: Option<u32>) -> Result<u32, ContractError> {
    match (channels, requested) {
        (1, _) => Ok(0),
        (c, Some(p)) if p < c => Ok(p),
        (c, Some(p)) => Err(ContractError::PersonClassOutOfRange(p, c)),
        // Background/person pairs: MediaPipe, most two-class UNets.
        (2, None) => Ok(1),
        // PASCAL VOC (torchvision DeepLabV3/FCN/LRASPP exports): class 15 is "person".
        (21, None) => Ok(15),
        (c, None) => Err(ContractError::PersonClassNeeded(c)),
    }
}

/// Decides the output activation from a probe run: the outputs of the model on a few
/// sample images. Probabilities stay within [0, 1] (and sum to 1 over the classes of a
/// multi-channel output); logits do not.
pub fn detect_activation(
    requested: Option<Activation>,
    channels: u32,
    probe: &[f32],
    layout: OutputLayout,
) -> Result<Activation, ContractError> {
    if let Some(a) = requested {
        let fits = match a {
            Activation::None => true,
            Activation::Sigmoid => channels == 1,
            Activation::Softmax => channels > 1,
        };
        return if fits {
            Ok(a)
        } else {
            Err(ContractError::ActivationMismatch(a, channels))
        };
    }
    let in_unit = probe.iter().all(|v| (-1e-4..=1.0 + 1e-4).contains(v));
    if channels == 1 {
        return Ok(if in_unit {
            Activation::None
        } else {
            Activation::Sigmoid
        });
    }
    if !in_unit {
        return Ok(Activation::Softmax);
    }
    let c = channels as usize;
    let pixels = probe.len() / c;
    let sums_to_one = (0..pixels).all(|i| {
        let sum: f32 = match layout {
            OutputLayout::ChannelsLast => probe[i * c..(i + 1) * c].iter().sum(),
            OutputLayout::ChannelsFirst => (0..c).map(|k| probe[k * pixels + i]).sum(),
        };
        (sum - 1.0).abs() < 1e-3
    });
    Ok(if sums_to_one {
        Activation::None
    } else {
        Activation::Softmax
    })
}

/// Input size for a model with dynamic height and width: the frame's aspect ratio with the
/// long side at `long_side`, both sides rounded to a multiple of 32 (what a UNet with five
/// poolings accepts).
pub fn dynamic_input_size(frame_w: u32, frame_h: u32, long_side: u32) -> (u32, u32) {
    let round = |v: f64| ((v / 32.0).round().max(1.0) as u32) * 32;
    let (fw, fh) = (frame_w.max(1) as f64, frame_h.max(1) as f64);
    let scale = long_side as f64 / fw.max(fh);
    (round(fw * scale), round(fh * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, elem: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            elem: Some(elem.into()),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn original_unet_contract() {
        let c = detect(
            &[t("input", "f32", &[1, 3, 240, 160])],
            &[t("logits", "f32", &[1, 1, 240, 160])],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.layout, Layout::Nchw);
        assert_eq!(c.input_size, InputSize::Fixed(160, 240));
        assert_eq!(c.output_layout, OutputLayout::ChannelsFirst);
        assert_eq!(c.output_channels, Some(1));
    }

    #[test]
    fn mediapipe_contracts() {
        let c = detect(
            &[t("input_1:0", "f32", &[1, 256, 256, 3])],
            &[t("activation_10", "f32", &[1, 256, 256, 1])],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            (c.layout, c.output_layout),
            (Layout::Nhwc, OutputLayout::ChannelsLast)
        );
        let c = detect(
            &[t("input_1:0", "f32", &[1, 144, 256, 3])],
            &[t("segment:0", "f32", &[1, 144, 256, 2])],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.input_size, InputSize::Fixed(256, 144));
        assert_eq!(
            (c.output_layout, c.output_channels),
            (OutputLayout::ChannelsLast, Some(2))
        );
    }

    #[test]
    fn dynamic_sizes_and_overrides() {
        let inputs = [t("x", "f32", &[-1, 3, -1, -1])];
        let outputs = [t("y", "f32", &[-1, 1, -1, -1])];
        let c = detect(&inputs, &outputs, &Overrides::default()).unwrap();
        assert_eq!(c.input_size, InputSize::Dynamic);
        let ov = Overrides {
            input_size: Some((320, 192)),
            ..Default::default()
        };
        assert_eq!(
            detect(&inputs, &outputs, &ov).unwrap().input_size,
            InputSize::Fixed(320, 192)
        );
        let fixed = [t("x", "f32", &[1, 3, 240, 160])];
        let err = detect(&fixed, &outputs, &ov).unwrap_err();
        assert!(err.to_string().contains("fixed size"), "{err}");
    }

    #[test]
    fn unservable_inputs_are_named() {
        let out = [t("y", "f32", &[1, 1, 8, 8])];
        let e = detect(&[t("img", "u8", &[1, 3, 8, 8])], &out, &Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("'img' u8 [1,3,8,8]") && e.to_string().contains("float32"),
            "{e}"
        );
        let e = detect(&[t("img", "f32", &[1, 4, 8, 8])], &out, &Overrides::default()).unwrap_err();
        assert!(matches!(e, ContractError::InputChannels(_)), "{e}");
        let e = detect(&[t("img", "f32", &[1, -1, 8, -1])], &out, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("layout property"), "{e}");
        let e = detect(&[t("img", "f32", &[3, 8, 8])], &out, &Overrides::default()).unwrap_err();
        assert!(matches!(e, ContractError::InputRank(_)), "{e}");
        let two = [t("a", "f32", &[1, 3, 8, 8]), t("b", "f32", &[1])];
        let e = detect(&two, &out, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("2 inputs"), "{e}");
        let e = detect(
            &[t("a", "f32", &[1, 3, 8, 8])],
            &[t("s", "f32", &[1, 10])],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("'s' f32 [1,10]"), "{e}");
    }

    #[test]
    fn person_class_defaults() {
        assert_eq!(person_class(1, None), Ok(0));
        assert_eq!(person_class(2, None), Ok(1));
        assert_eq!(person_class(21, None), Ok(15));
        assert_eq!(person_class(5, Some(3)), Ok(3));
        assert!(
            person_class(5, None)
                .unwrap_err()
                .to_string()
                .contains("person-class")
        );
        assert!(matches!(
            person_class(5, Some(5)),
            Err(ContractError::PersonClassOutOfRange(5, 5))
        ));
    }

    #[test]
    fn activation_from_probe() {
        let cl = OutputLayout::ChannelsLast;
        assert_eq!(
            detect_activation(None, 1, &[0.0, 0.3, 1.0], cl),
            Ok(Activation::None)
        );
        assert_eq!(
            detect_activation(None, 1, &[-3.0, 0.3, 4.0], cl),
            Ok(Activation::Sigmoid)
        );
        assert_eq!(
            detect_activation(None, 2, &[0.2, 0.8, 0.6, 0.4], cl),
            Ok(Activation::None)
        );
        assert_eq!(
            detect_activation(None, 2, &[0.2, 0.3, 0.6, 0.4], cl),
            Ok(Activation::Softmax)
        );
        assert_eq!(
            detect_activation(None, 2, &[-2.0, 0.3, 5.0, 0.4], cl),
            Ok(Activation::Softmax)
        );
        // Channels-first: [c0 p0, c0 p1, c1 p0, c1 p1]
        let cf = OutputLayout::ChannelsFirst;
        assert_eq!(
            detect_activation(None, 2, &[0.2, 0.6, 0.8, 0.4], cf),
            Ok(Activation::None)
        );
        assert!(detect_activation(Some(Activation::Sigmoid), 2, &[], cl).is_err());
        assert_eq!(
            detect_activation(Some(Activation::Softmax), 3, &[], cl),
            Ok(Activation::Softmax)
        );
    }

    #[test]
    fn dynamic_size_keeps_aspect_in_multiples_of_32() {
        assert_eq!(dynamic_input_size(1920, 1080, 320), (320, 192));
        assert_eq!(dynamic_input_size(400, 600, 320), (224, 320));
        assert_eq!(dynamic_input_size(1, 1, 320), (320, 320));
    }
}
