// SPDX-License-Identifier: MPL-2.0

//! What the element holds while started (`State`) and per negotiated caps (`Stream`).

use crate::unetmask::Mode;
#[cfg(feature = "cuda")]
use crate::unetmask::ResizeChoice;
use crate::unetmask::cpu::composite::{BlurPlane, MaskScaler, PlaneGeom, Scratch};
use crate::unetmask::cpu::postprocess::{MaskStats, Smoother};
use crate::unetmask::cpu::preprocess::TensorBuilder;
#[cfg(feature = "cuda")]
use crate::unetmask::debug::CAT;
use crate::unetmask::frame::{PixelFormat, YuvMatrix};
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::frames::GpuFrames;
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::launch::GpuKernels;
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::params::PreParams;
use crate::unetmask::model::engine::{Engine, Prepared};

use super::stats::Stats;
#[cfg(feature = "cuda")]
use super::video::strides_of;

/// What one caps configuration needs.
pub(super) struct Stream {
    pub(super) mode: Mode,
    pub(super) in_info: gst_video::VideoInfo,
    pub(super) out_info: gst_video::VideoInfo,
    pub(super) format: PixelFormat,
    pub(super) matrix: YuvMatrix,
    pub(super) prepared: Prepared,
    pub(super) pre: TensorBuilder,
    pub(super) input: Vec<f32>,
    /// Pipelined: the next frame's tensor, prepared while `input` is inferred.
    pub(super) input_next: Vec<f32>,
    pub(super) prob: Vec<f32>,
    pub(super) planes: Vec<PlaneGeom>,
    /// Mask upscalers: [luma/packed, chroma].
    pub(super) scalers: Vec<MaskScaler>,
    pub(super) blur: Vec<BlurPlane>,
    /// Replacement picture in the frame's own planes.
    pub(super) replace_planes: Option<Vec<Vec<u8>>>,
    pub(super) scratch: Scratch,
    /// `pipelined=true` in effect (not on the GPU path, which has one input tensor).
    pub(super) pipelined: bool,
    /// The GPU path (session on a CUDA device, feature `cuda`), when it could be set up.
    #[cfg(feature = "cuda")]
    pub(super) gpu: Option<GpuFrames>,
}

impl State {
    /// Forgets the temporal-smoothing history (DISCONT, flush), on either path.
    pub(super) fn reset_history(&mut self) {
        self.smoother.reset();
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.stream.as_mut().and_then(|s| s.gpu.as_mut()) {
            gpu.reset();
        }
    }

    /// The stats message / property: the window's figures, where inference and where pre-
    /// and post-processing run.
    pub(super) fn stats_structure(&self) -> gst::Structure {
        #[cfg(feature = "cuda")]
        let processing = match self.stream.as_ref().and_then(|s| s.gpu.as_ref()) {
            Some(_) => "gpu",
            None => "cpu",
        };
        #[cfg(not(feature = "cuda"))]
        let processing = "cpu";
        self.stats.structure(&self.engine.provider, processing)
    }
}

/// The last mask and how it was made.
#[derive(Clone)]
pub(super) struct LastMask {
    pub(super) buffer: gst::Buffer,
    pub(super) stats: MaskStats,
}

pub(super) struct State {
    pub(super) engine: Engine,
    pub(super) stream: Option<Stream>,
    pub(super) smoother: Smoother,
    pub(super) last: Option<LastMask>,
    pub(super) frame_index: u64,
    pub(super) since_inference: u32,
    pub(super) stats: Stats,
    pub(super) last_stats: Option<gst::Structure>,
    pub(super) mask_u8: Vec<u8>,
    /// Pipelined: the fresh frame whose tensor is in `Stream::input`, not yet inferred.
    pub(super) held: Option<Held>,
    /// Pipelined: finished frames for `generate_output`, in order.
    pub(super) ready: std::collections::VecDeque<gst::Buffer>,
    /// Pipelined: the thread inference runs on (one, kept: ONNX Runtime keeps per-thread
    /// state, and a new thread per frame costs more than the overlap gains).
    pub(super) worker: Option<rayon::ThreadPool>,
    /// The GPU path's kernels and this instance's CUDA stream, loaded at the first caps.
    #[cfg(feature = "cuda")]
    pub(super) gpu_kernels: Option<std::sync::Arc<GpuKernels>>,
}

/// A frame held back by the pipelined mode until its inference has run.
pub(super) struct Held {
    pub(super) buffer: gst::Buffer,
    pub(super) index: u64,
}

/// The GPU path for new caps when the session runs on a CUDA device; `None`, saying why,
/// when it cannot be set up (pre- and post-processing then run on the CPU).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
pub(super) fn gpu_frames(
    obj: &gst::Object,
    engine: &Engine,
    kernels: &mut Option<std::sync::Arc<GpuKernels>>,
    prepared: &Prepared,
    info: &gst_video::VideoInfo,
    pre: PreParams,
    resize: ResizeChoice,
    replace: Option<&[Vec<u8>]>,
) -> Option<GpuFrames> {
    let device = engine.cuda_device?;
    let loaded = match kernels {
        Some(k) => Ok(k.clone()),
        None => GpuKernels::new(device as usize).map(std::sync::Arc::new),
    };
    let strides = strides_of(info.stride());
    let size = (info.width() as usize, info.height() as usize);
    match loaded.and_then(|k| {
        *kernels = Some(k.clone());
        GpuFrames::new(k, engine, prepared, pre, size, strides, replace)
    }) {
        Ok(gpu) => {
            gst::info!(
                CAT,
                obj = obj,
                "GPU path on {}: frame upload, pre-processing, inference, post-processing and \
                 compositing on the device; only the mask or the finished frame comes back",
                engine.provider
            );
            if resize == ResizeChoice::Antialias {
                gst::info!(
                    CAT,
                    obj = obj,
                    "the GPU path resizes bilinearly (resize=antialias is the CPU path's)"
                );
            }
            Some(gpu)
        }
        Err(e) => {
            gst::warning!(
                CAT,
                obj = obj,
                "GPU path not available ({e}): pre- and post-processing run on the CPU, inference \
                 on {}",
                engine.provider
            );
            None
        }
    }
}
