// SPDX-License-Identifier: MPL-2.0

//! The per-stream processor: one type with a CPU and a GPU implementation, so that the
//! element's per-frame code is the same on both paths and the GPU build differs here (and
//! where the element chooses the path) only.

use crate::unetmask::cpu::composite::{Look, PlaneGeom, Weights};
use crate::unetmask::cpu::postprocess::MaskStats;
use crate::unetmask::cpu::processor::CpuProcessor;
use crate::unetmask::frame::{Frame, FrameSpec, YuvMatrix};
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::frames::{GpuError, GpuFrames};
use crate::unetmask::model::engine::{Engine, EngineError};
use crate::unetmask::stages::StageTimes;

/// Where a stream's frames are pre-processed, post-processed and composited (inference runs
/// on the session's provider either way).
// One per stream, made at caps and never moved per frame: boxing a variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Processor {
    Cpu(CpuProcessor),
    /// The GPU path (feature `cuda`, a session on a CUDA device).
    #[cfg(feature = "cuda")]
    Gpu(GpuFrames),
    /// Tests only: a GPU path whose every step fails as a device would, so that the
    /// fall-back to the CPU is exercised on machines without a GPU.
    #[cfg(test)]
    FailingGpu,
}

/// Why a frame could not be processed.
#[derive(Debug)]
pub enum ProcessError {
    /// The model failed (as on either path): the stream cannot go on.
    Model(EngineError),
    /// The GPU failed: the stream can go on on the CPU (only the GPU path fails so).
    #[cfg_attr(not(any(feature = "cuda", test)), allow(dead_code))]
    Device(String),
}

#[cfg(feature = "cuda")]
impl From<GpuError> for ProcessError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Device(e) => Self::Device(e),
            GpuError::Inference(e) => Self::Model(e),
        }
    }
}

impl Processor {
    /// Where pre- and post-processing run, for the `stats` message: `cpu` or `gpu`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Self::Gpu(_) => "gpu",
            #[cfg(test)]
            Self::FailingGpu => "gpu",
        }
    }

    /// On the GPU path, whether ONNX Runtime queues on its stream (`shared`: one wait per
    /// frame) or runs on a stream of its own (`separate`), for the `stats` message.
    pub fn gpu_stream(&self) -> Option<&'static str> {
        match self {
            Self::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Self::Gpu(g) => Some(if g.shares_stream() { "shared" } else { "separate" }),
            #[cfg(test)]
            Self::FailingGpu => None,
        }
    }

    /// The CPU implementation, for the modes only it has (pipelined).
    pub fn cpu(&mut self) -> Option<&mut CpuProcessor> {
        match self {
            Self::Cpu(c) => Some(c),
            #[cfg(feature = "cuda")]
            Self::Gpu(_) => None,
            #[cfg(test)]
            Self::FailingGpu => None,
        }
    }

    /// Forgets the temporal-smoothing history (DISCONT, flush).
    pub fn reset(&mut self) {
        match self {
            Self::Cpu(c) => c.reset(),
            #[cfg(feature = "cuda")]
            Self::Gpu(g) => g.reset(),
            #[cfg(test)]
            Self::FailingGpu => {}
        }
    }

    /// A fresh mask for `frame` (model resolution) into `mask`, with its statistics and the
    /// time of each stage. `smoothing` and `threshold` as the element's properties.
    pub fn make_mask(
        &mut self,
        engine: &mut Engine,
        frame: &Frame<'_>,
        smoothing: f32,
        threshold: Option<f32>,
        mask: &mut Vec<u8>,
    ) -> Result<(MaskStats, StageTimes), ProcessError> {
        match self {
            Self::Cpu(c) => c
                .make_mask(engine, frame, smoothing, threshold, mask)
                .map_err(ProcessError::Model),
            #[cfg(feature = "cuda")]
            Self::Gpu(g) => Ok(g.run(engine, frame, smoothing, threshold, mask)?),
            #[cfg(test)]
            Self::FailingGpu => Err(injected()),
        }
    }

    /// `overlay`, `replace` or `blur` on the frame's `planes` (rows `strides` apart, laid
    /// out as `geoms`) with the mask in use (`mask`, which the GPU path already holds).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn composite(
        &mut self,
        frame: &FrameSpec,
        geoms: &[PlaneGeom],
        planes: &mut [&mut [u8]],
        strides: [usize; 3],
        mask: &[u8],
        look: &Look<'_>,
    ) -> Result<(), ProcessError> {
        match self {
            Self::Cpu(c) => {
                c.composite(geoms, planes, strides, mask, look);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Self::Gpu(g) => g
                .composite_in_place(
                    frame.format,
                    (frame.width, frame.height),
                    planes,
                    strides,
                    geoms,
                    look,
                )
                .map_err(ProcessError::Device),
            #[cfg(test)]
            Self::FailingGpu => Err(injected()),
        }
    }

    /// `mask` mode: the GRAY8 mask at frame size into `out` (rows `stride` apart).
    pub fn render_mask(
        &mut self,
        size: (usize, usize),
        mask: &[u8],
        lut: &Weights,
        out: &mut [u8],
        stride: usize,
    ) -> Result<(), ProcessError> {
        match self {
            Self::Cpu(c) => {
                c.render_mask(mask, lut, out, stride, size.1);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Self::Gpu(g) => g
                .render_mask(size, out, stride, lut)
                .map_err(ProcessError::Device),
            #[cfg(test)]
            Self::FailingGpu => Err(injected()),
        }
    }

    /// `alpha` mode: `frame` as RGBA with the mask as alpha into `out` (rows `stride` apart).
    pub fn render_alpha(
        &mut self,
        frame: &Frame<'_>,
        matrix: YuvMatrix,
        mask: &[u8],
        lut: &Weights,
        out: &mut [u8],
        stride: usize,
    ) -> Result<(), ProcessError> {
        match self {
            Self::Cpu(c) => {
                c.render_alpha(frame, matrix, mask, lut, out, stride);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Self::Gpu(g) => g
                .render_alpha(frame, matrix, out, stride, lut)
                .map_err(ProcessError::Device),
            #[cfg(test)]
            Self::FailingGpu => Err(injected()),
        }
    }
}

#[cfg(test)]
fn injected() -> ProcessError {
    ProcessError::Device("injected device failure".into())
}
