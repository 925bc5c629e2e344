// SPDX-License-Identifier: MPL-2.0

//! What applications may ask the element before they run it: what it makes of a model with
//! its current properties, and whether its GPU path can run on a device. The answers come
//! from the element's own code (its settings check, its engine, its kernels), so an
//! application's check cannot disagree with what the element will do.

use std::time::Duration;

use gst::subclass::prelude::ObjectSubclassIsExt;

use super::UnetMask;
use super::model::contract::{InputSize, activation_name};
use super::model::engine::Engine;

/// The element's model, opened the way the element opens it (library, session, contract),
/// with one inference thread and no spinning: enough to answer questions about it.
pub struct Model {
    engine: Engine,
}

/// What the element makes of its model for frames of one size.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReport {
    pub input_name: String,
    /// `Nchw` or `Nhwc`.
    pub layout: String,
    /// The model's fixed input size; `None` when it takes any size.
    pub fixed_input_size: Option<(u32, u32)>,
    /// The input size frames of the asked size get.
    pub input_size: (u32, u32),
    pub output_name: String,
    /// `ChannelsFirst` or `ChannelsLast`.
    pub output_layout: String,
    pub output_channels: usize,
    /// The mask's size (the model's output resolution).
    pub output_size: (u32, u32),
    /// `none`, `sigmoid` or `softmax`, as detected or set.
    pub activation: &'static str,
    /// The output channel read as the person.
    pub person_channel: usize,
    /// Median time of one inference during the warm-up runs.
    pub inference_time: Duration,
}

impl Model {
    /// Opens `element`'s model with its current properties, checked as `start` checks them;
    /// the error names the problem and the fix.
    pub fn open(element: &UnetMask) -> Result<Model, String> {
        let mut cfg = element.imp().current_engine_config().map_err(|e| e.reason)?;
        cfg.threads = 1;
        cfg.spin = crate::unetmask::model::engine::Spin::Never;
        let engine = super::imp::UnetMask::open_engine(&cfg).map_err(|e| e.to_string())?;
        Ok(Model { engine })
    }

    /// Where inference runs: `cpu`, `cuda:N` or `tensorrt:N`.
    pub fn provider(&self) -> &str {
        &self.engine.provider
    }

    /// Whether the element's GPU path can run this model for frames of `frame` (width,
    /// height): the kernels compiled and loaded on the session's device, and the model's
    /// input and output bound to device buffers once (ONNX Runtime's IoBinding), as the
    /// element sets them up at its caps. `None` when the session is not on a CUDA device
    /// or the build has no `cuda` feature.
    pub fn gpu_path(&mut self, frame: (u32, u32)) -> Option<Result<(), String>> {
        #[cfg(feature = "cuda")]
        {
            use super::frame::{FrameSpec, PixelFormat, YuvMatrix};
            use super::gpu::frames::GpuFrames;
            use super::gpu::launch::kernels_for;
            use super::model::contract::{ChannelOrder, Normalization, TensorSpec};
            let kernels = kernels_for(&self.engine)?;
            let set_up = || -> Result<(), String> {
                let kernels = std::sync::Arc::new(kernels?);
                let input = self.engine.input_size_for(frame);
                let prepared = self.engine.prepare(input).map_err(|e| e.to_string())?;
                let size = (frame.0 as usize, frame.1 as usize);
                let spec = FrameSpec {
                    format: PixelFormat::Rgba,
                    width: size.0,
                    height: size.1,
                    matrix: YuvMatrix::BT709,
                };
                let tensor = TensorSpec {
                    size: (input.0 as usize, input.1 as usize),
                    layout: self.engine.contract.layout,
                    order: ChannelOrder::Rgb,
                    norm: Normalization::default(),
                };
                let strides = [size.0 * 4, 0, 0];
                GpuFrames::new(kernels, &self.engine, &prepared, &tensor, &spec, strides, None).map(|_| ())
            };
            Some(set_up())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = frame;
            None
        }
    }

    /// The contract and sizes for frames of `frame` (width, height), with a few warm-up
    /// inferences to time the model.
    pub fn report(&mut self, frame: (u32, u32)) -> Result<ModelReport, String> {
        let c = self.engine.contract.clone();
        let input_size = self.engine.input_size_for(frame);
        let p = self.engine.prepare(input_size).map_err(|e| e.to_string())?;
        Ok(ModelReport {
            input_name: c.input_name,
            layout: format!("{:?}", c.layout),
            fixed_input_size: match c.input_size {
                InputSize::Fixed(w, h) => Some((w, h)),
                InputSize::Dynamic => None,
            },
            input_size,
            output_name: c.output_name,
            output_layout: format!("{:?}", c.output_layout),
            output_channels: p.spec.channels,
            output_size: p.output_size,
            activation: activation_name(p.spec.activation),
            person_channel: p.spec.person,
            inference_time: p.inference_time,
        })
    }
}

/// The number of CUDA devices, or why there are none (always an error without `cuda`).
pub fn cuda_devices() -> Result<u32, String> {
    #[cfg(feature = "cuda")]
    {
        super::model::device::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build of unetmask has no CUDA support (feature `cuda`)".into())
    }
}

/// The directory the element keeps caches under (TensorRT engines): systemd's
/// `CACHE_DIRECTORY`, else `XDG_CACHE_HOME`, else `$HOME/.cache`; `var` reads the
/// environment.
pub fn cache_base(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
    super::model::cache::cache_base(var)
}
