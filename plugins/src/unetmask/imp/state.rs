// SPDX-License-Identifier: MPL-2.0

//! What the element holds while started (`State`) and per negotiated caps (`Stream`).

use crate::unetmask::cpu::composite::PlaneGeom;
use crate::unetmask::cpu::postprocess::MaskStats;
use crate::unetmask::cpu::preprocess::ResizeFilter;
use crate::unetmask::cpu::processor::CpuProcessor;
#[cfg(feature = "cuda")]
use crate::unetmask::debug::CAT;
use crate::unetmask::enums::Mode;
use crate::unetmask::frame::FrameSpec;
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::frames::GpuFrames;
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::launch::{GpuKernels, kernels_for};
use crate::unetmask::model::contract::TensorSpec;
use crate::unetmask::model::engine::{Engine, Prepared};
use crate::unetmask::processor::Processor;

use super::stats::Stats;
#[cfg(feature = "cuda")]
use super::video::strides_of;

/// What one caps configuration needs.
pub(super) struct Stream {
    pub(super) mode: Mode,
    pub(super) in_info: gst_video::VideoInfo,
    pub(super) out_info: gst_video::VideoInfo,
    pub(super) frame: FrameSpec,
    pub(super) tensor: TensorSpec,
    pub(super) filter: ResizeFilter,
    pub(super) prepared: Prepared,
    pub(super) planes: Vec<PlaneGeom>,
    /// Replacement picture in the frame's own planes.
    pub(super) replace_planes: Option<Vec<Vec<u8>>>,
    /// `pipelined=true` in effect (not on the GPU path, which has one input tensor).
    pub(super) pipelined: bool,
    pub(super) processor: Processor,
}

impl Stream {
    /// The CPU's processor for this stream: the one it starts with, and the one it falls
    /// back to when the GPU fails.
    pub(super) fn cpu_processor(&self) -> Processor {
        Processor::Cpu(CpuProcessor::new(
            &self.frame,
            &self.tensor,
            self.filter,
            &self.prepared,
            self.pipelined,
        ))
    }
}

impl State {
    /// Forgets the temporal-smoothing history (DISCONT, flush), on either path.
    pub(super) fn reset_history(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            stream.processor.reset();
        }
    }

    /// The stats message / property: the window's figures, where inference and where pre-
    /// and post-processing run.
    pub(super) fn stats_structure(&self) -> gst::Structure {
        let processor = self.stream.as_ref().map(|s| &s.processor);
        let processing = processor.map_or("cpu", |p| p.name());
        let gpu_stream = processor.and_then(|p| p.gpu_stream());
        self.stats
            .structure(&self.engine.provider, processing, gpu_stream)
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
    pub(super) last: Option<LastMask>,
    pub(super) frame_index: u64,
    pub(super) since_inference: u32,
    pub(super) stats: Stats,
    pub(super) last_stats: Option<gst::Structure>,
    pub(super) mask_u8: Vec<u8>,
    /// Pipelined: the fresh frame whose tensor is the CPU processor's input, not yet inferred.
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

/// The GPU path for `stream` when the session runs on a CUDA device; `None`, saying why,
/// when it cannot be set up (the stream then stays on the CPU).
#[cfg(feature = "cuda")]
pub(super) fn gpu_processor(
    obj: &gst::Object,
    engine: &Engine,
    kernels: &mut Option<std::sync::Arc<GpuKernels>>,
    stream: &Stream,
) -> Option<Processor> {
    let loaded = match kernels {
        Some(k) => Ok(k.clone()),
        None => kernels_for(engine)?.map(std::sync::Arc::new),
    };
    let strides = strides_of(stream.in_info.stride());
    let replace = stream.replace_planes.as_deref();
    match loaded.and_then(|k| {
        *kernels = Some(k.clone());
        GpuFrames::new(
            k,
            engine,
            &stream.prepared,
            &stream.tensor,
            &stream.frame,
            strides,
            replace,
        )
    }) {
        Ok(gpu) => {
            gst::info!(
                CAT,
                obj = obj,
                "GPU path on {}: frame upload, pre-processing, inference, post-processing and \
                 compositing on the device; only the mask or the finished frame comes back; {}",
                engine.provider,
                if gpu.shares_stream() {
                    "ONNX Runtime runs on the element's CUDA stream, one wait per frame"
                } else {
                    "ONNX Runtime runs on a CUDA stream of its own, waited for around each run"
                }
            );
            if stream.filter == ResizeFilter::Antialias {
                gst::info!(
                    CAT,
                    obj = obj,
                    "the GPU path resizes bilinearly (resize=antialias is the CPU path's)"
                );
            }
            Some(Processor::Gpu(gpu))
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
