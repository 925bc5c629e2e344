// SPDX-License-Identifier: MPL-2.0

//! The element's settings: the properties' values, the ones read once per frame, and the
//! one check of them that `start` and applications share.

use std::path::PathBuf;
use std::str::FromStr;

use crate::unetmask::enums::{
    ActivationChoice, ChannelOrderChoice, LayoutChoice, Mode, ResizeChoice, SettingError, SpinChoice,
};
use crate::unetmask::model::contract::{Activation, Layout, Normalization, Overrides};
use crate::unetmask::model::engine::{DeviceRequest, EngineConfig};

pub(super) const DEFAULT_OVERLAY_COLOR: u32 = 0xFFFF00;
pub(super) const DEFAULT_REPLACE_COLOR: u32 = 0x00B140;

/// Properties that may change while playing; read once per frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Live {
    pub(super) threshold: f64,
    pub(super) smoothing: f64,
    pub(super) inference_interval: u32,
    pub(super) skip_late: bool,
    pub(super) overlay_color: u32,
    pub(super) overlay_opacity: f64,
    pub(super) blur_radius: u32,
    pub(super) replace_color: u32,
    pub(super) stats_interval: u32,
}

impl Live {
    /// The hard-mask threshold, or `None` for a soft mask (a negative property value).
    pub(super) fn threshold(&self) -> Option<f64> {
        (self.threshold >= 0.0).then_some(self.threshold)
    }
}

impl Default for Live {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            smoothing: 0.0,
            inference_interval: 1,
            skip_late: true,
            overlay_color: DEFAULT_OVERLAY_COLOR,
            overlay_opacity: 0.5,
            blur_radius: 24,
            replace_color: DEFAULT_REPLACE_COLOR,
            stats_interval: 300,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) model: Option<PathBuf>,
    pub(super) library: Option<PathBuf>,
    pub(super) device: String,
    pub(super) threads: u32,
    pub(super) spin: SpinChoice,
    pub(super) mode: Mode,
    pub(super) layout: LayoutChoice,
    pub(super) channel_order: ChannelOrderChoice,
    pub(super) resize: ResizeChoice,
    pub(super) input_size: String,
    pub(super) scale: f64,
    pub(super) mean: String,
    pub(super) std: String,
    pub(super) activation: ActivationChoice,
    pub(super) person_class: i32,
    pub(super) replace_image: Option<PathBuf>,
    /// Infer frame n on a worker while frame n+1 is pre-processed (one frame of latency).
    pub(super) pipelined: bool,
    /// On a CUDA session, pre/post-processing and compositing on the GPU too.
    pub(super) gpu_path: bool,
    pub(super) live: Live,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            library: None,
            device: "auto".into(),
            threads: 0,
            spin: SpinChoice::InRun,
            mode: Mode::Overlay,
            layout: LayoutChoice::Auto,
            channel_order: ChannelOrderChoice::Rgb,
            resize: ResizeChoice::Antialias,
            input_size: String::new(),
            scale: 1.0 / 255.0,
            mean: "0,0,0".into(),
            std: "1,1,1".into(),
            activation: ActivationChoice::Auto,
            person_class: -1,
            replace_image: None,
            pipelined: false,
            gpu_path: true,
            live: Live::default(),
        }
    }
}

/// `mean` and `std`: "a,b,c", or one number for all three channels. Only finite numbers:
/// `nan` and `inf` parse as f32 and would turn every tensor, and so every mask, into garbage.
/// Errors read after the property's name (`mean=…`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PerChannel(pub(super) [f32; 3]);

impl FromStr for PerChannel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let v: Result<Vec<f32>, _> = s.split(',').map(|p| p.trim().parse::<f32>()).collect();
        match v.as_deref() {
            Ok(v) if v.iter().any(|x| !x.is_finite()) => Err(format!(
                "'{s}' holds a value that is not a finite number: give three numbers, e.g. 0.485,0.456,0.406"
            )),
            Ok([a]) => Ok(Self([*a; 3])),
            Ok([a, b, c]) => Ok(Self([*a, *b, *c])),
            _ => Err(format!(
                "'{s}' is not understood: give three comma-separated numbers, e.g. 0.485,0.456,0.406"
            )),
        }
    }
}

/// `input-size`: WIDTHxHEIGHT, or empty for the model's own (or, for a model that takes any
/// size, one chosen per stream). Errors read after the property's name (`input-size=…`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct InputSizeSetting(pub(super) Option<(u32, u32)>);

impl FromStr for InputSizeSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self(None));
        }
        let err = || format!("'{s}' is not understood: give WIDTHxHEIGHT, e.g. 320x192");
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
        match (w.parse::<u32>(), h.parse::<u32>()) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok(Self(Some((w, h)))),
            _ => Err(err()),
        }
    }
}

pub(super) fn rgb_of(c: u32) -> [u8; 3] {
    [(c >> 16) as u8, (c >> 8) as u8, c as u8]
}

impl Settings {
    /// The engine configuration and normalisation these settings describe, or the first
    /// setting that `start` refuses (its property and why). One parser of the settings, for
    /// `start` and for applications that check a configuration before they run it.
    pub(super) fn checked(&self) -> Result<(EngineConfig, Normalization), SettingError> {
        let s = self;
        let err = |property: &'static str| move |reason: String| SettingError { property, reason };
        let device: DeviceRequest = s.device.parse().map_err(err("device"))?;
        let InputSizeSetting(input_size) = s
            .input_size
            .parse()
            .map_err(|e| err("input-size")(format!("input-size={e}")))?;
        let normalization = s.normalization()?;
        let config = EngineConfig {
            model: s.model.clone().unwrap_or_default(),
            library: s.library.clone(),
            device,
            threads: s.threads,
            spin: s.spin.into(),
            overrides: Overrides {
                layout: match s.layout {
                    LayoutChoice::Auto => None,
                    LayoutChoice::Nchw => Some(Layout::Nchw),
                    LayoutChoice::Nhwc => Some(Layout::Nhwc),
                },
                input_size,
                activation: match s.activation {
                    ActivationChoice::Auto => None,
                    ActivationChoice::None => Some(Activation::None),
                    ActivationChoice::Sigmoid => Some(Activation::Sigmoid),
                    ActivationChoice::Softmax => Some(Activation::Softmax),
                },
                person_class: u32::try_from(s.person_class).ok(),
            },
        };
        Ok((config, normalization))
    }

    pub(super) fn normalization(&self) -> Result<Normalization, SettingError> {
        let s = self;
        let err = |property: &'static str| move |reason: String| SettingError { property, reason };
        let PerChannel(mean) = s.mean.parse().map_err(|e| err("mean")(format!("mean={e}")))?;
        let PerChannel(std) = s.std.parse().map_err(|e| err("std")(format!("std={e}")))?;
        if std.contains(&0.0) {
            return Err(err("std")(format!(
                "std='{}' contains 0: every channel needs a non-zero std",
                s.std
            )));
        }
        Ok(Normalization {
            scale: s.scale as f32,
            mean,
            std,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplets_and_sizes() {
        assert_eq!("0.5".parse(), Ok(PerChannel([0.5; 3])));
        assert_eq!("1, 2,3".parse(), Ok(PerChannel([1.0, 2.0, 3.0])));
        assert!(
            "1,2"
                .parse::<PerChannel>()
                .unwrap_err()
                .contains("'1,2' is not understood")
        );
        for bad in ["nan", "0.5,NaN,0.5", "inf,1,1", "1,-inf,1"] {
            let e = bad.parse::<PerChannel>().unwrap_err();
            assert!(e.contains("not a finite number"), "{bad}: {e}");
        }
        assert_eq!("".parse(), Ok(InputSizeSetting(None)));
        assert_eq!("320x192".parse(), Ok(InputSizeSetting(Some((320, 192)))));
        assert!(
            "320"
                .parse::<InputSizeSetting>()
                .unwrap_err()
                .contains("WIDTHxHEIGHT")
        );
        assert!("0x10".parse::<InputSizeSetting>().is_err());
        // What `start` and applications see names the property.
        let s = Settings {
            std: "1,0,1".into(),
            ..Settings::default()
        };
        let e = s.checked().unwrap_err();
        assert_eq!(e.property, "std");
        let s = Settings {
            mean: "1,2".into(),
            ..Settings::default()
        };
        assert!(
            s.checked()
                .unwrap_err()
                .reason
                .starts_with("mean='1,2' is not understood")
        );
        let s = Settings {
            input_size: "320".into(),
            ..Settings::default()
        };
        let e = s.checked().unwrap_err();
        assert!(
            e.property == "input-size" && e.reason.starts_with("input-size='320'"),
            "{e:?}"
        );
        assert_eq!(rgb_of(0xFFAA01), [255, 170, 1]);
    }
}
