// SPDX-License-Identifier: MPL-2.0

//! The element's GPU path (feature `cuda`), for a session that runs on a CUDA device.
//!
//! Per caps, device memory is allocated once: the frame's planes, the smoothing state, the
//! mask and its counts, and (through ONNX Runtime's IoBinding, [`DeviceIo`]) the model's
//! input and output. Per fresh frame, on this instance's own CUDA stream:
//!
//! 1. the frame is uploaded once, each plane as negotiated (RGBA/BGRx/RGB/NV12/I420);
//! 2. `edgemask_preprocess` converts colour, resizes, normalises and writes the input tensor
//!    in the model's layout straight into the memory ONNX Runtime reads;
//! 3. the model runs on its CUDA (or TensorRT) provider with the output bound to the GPU;
//! 4. `edgemask_postprocess` applies the activation and the temporal smoothing and writes
//!    the 8-bit mask and its counts;
//! 5. only the mask (model resolution, a few kB) and two counts come back to the host.
//!
//! The compositing modes then run on the device too, on the frame already there (uploaded
//! once more only for a frame that reuses a mask): `overlay` and `replace` (towards a colour
//! or the replacement picture, uploaded once per caps) and `blur` on each plane in place,
//! `mask` (GRAY8) and `alpha` (RGBA) into an output buffer; only the finished frame comes
//! back. In `meta` mode nothing but the mask does.
//!
//! ONNX Runtime runs on the same stream ([`Engine::shares`]; the element opens the session
//! on it), and its runs return once queued, so the whole frame is queued before the host
//! waits once, for the mask. Where the session has a stream of its own (a session opened
//! without one), this stream is synchronised before the run, and the run returns with its
//! outputs complete. Frames travel through page-locked buffers ([`Staging`]); every call
//! that queues a transfer synchronises the stream before it returns, so a staging buffer is
//! never written while a copy from it is queued. Stage times come from CUDA events.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice, sys};

use crate::unetmask::cpu::composite::{Look, PlaneGeom, Weights};
use crate::unetmask::cpu::postprocess::MaskStats;
use crate::unetmask::frame::{Frame, FrameSpec, PixelFormat, YuvMatrix, plane_bytes, rows_bytes};
use crate::unetmask::gpu::launch::{BlurBuffers, GpuKernels, Taps};
use crate::unetmask::gpu::params::{AlphaParams, BlurPlan, MixParams, PostParams, PreParams, stats_of};
use crate::unetmask::gpu::staging::Staging;
use crate::unetmask::model::contract::{OutputSpec, TensorSpec};
use crate::unetmask::model::engine::{DeviceIo, Engine, EngineError, Prepared};
use crate::unetmask::stages::StageTimes;

/// The GPU path of one element instance for one caps configuration.
pub struct GpuFrames {
    /// The element instance's kernels and stream (kept across caps).
    kernels: Arc<GpuKernels>,
    io: DeviceIo,
    /// The pre-processing parameters of the caps; the strides come from each frame.
    pre: PreParams,
    spec: OutputSpec,
    pixels: usize,
    planes: [CudaSlice<u8>; 3],
    state: CudaSlice<f32>,
    mask: CudaSlice<u8>,
    counts: CudaSlice<u32>,
    /// The state holds the previous frame's smoothed map (cleared on DISCONT and flush).
    has_state: bool,
    /// `planes` hold the current frame (uploaded for its mask, not yet composited).
    uploaded: bool,
    /// The mask's size (model output).
    model: (usize, usize),
    /// The replacement picture's planes (`replace` with `replace-image`), uploaded once.
    replace: Option<Vec<CudaSlice<u8>>>,
    /// Stand-in for the picture when mixing towards a colour.
    no_target: CudaSlice<u8>,
    /// Built on first use, per caps: mask taps per plane size, blur buffers per plane
    /// geometry, the `mask`/`alpha` output.
    taps: Vec<Taps>,
    blur: Vec<BlurBuffers>,
    out: Option<CudaSlice<u8>>,
    staging: Staging,
    /// The mask's counts, downloaded with it.
    counts_host: PinnedHostSlice<u32>,
    /// ONNX Runtime queues on `kernels.stream` (no synchronisation around its runs).
    shared: bool,
    /// Recorded before the upload, after pre-processing, after inference and after
    /// post-processing: the stage times of a frame.
    marks: [CudaEvent; 4],
}

/// The mask's plane in [`Staging`] (after the frame's three).
const MASK_SLOT: usize = 3;

/// Why the GPU path failed: device problems (set-up, a kernel, a copy, a run with the bound
/// buffers) move the stream to the CPU's pre- and post-processing; a model whose output does
/// not fit is the model's error, as on the CPU path.
#[derive(Debug)]
pub enum GpuError {
    Device(String),
    Inference(EngineError),
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Device(e) => f.write_str(e),
            Self::Inference(e) => e.fmt(f),
        }
    }
}

impl GpuFrames {
    /// Sets up the path for frames of `frame` with `strides` (the caps' layout; a frame
    /// laid out larger grows the planes' buffers once) into the model's `tensor`: the
    /// IoBinding and the buffers, for `kernels` loaded on the session's device.
    pub fn new(
        kernels: Arc<GpuKernels>,
        engine: &Engine,
        prepared: &Prepared,
        tensor: &TensorSpec,
        frame: &FrameSpec,
        strides: [usize; 3],
        replace: Option<&[Vec<u8>]>,
    ) -> Result<GpuFrames, String> {
        // Strides are set per frame, in `run`.
        let pre = PreParams::new(frame, [0; 3], tensor);
        let frame_size = (frame.width, frame.height);
        let io = engine
            .bind_device(prepared.input_size)
            .map_err(|e| e.to_string())?;
        if io.input_len != pre.tensor_len() {
            return Err(format!(
                "the bound input holds {} values, the kernel writes {}",
                io.input_len,
                pre.tensor_len()
            ));
        }
        let pixels = (prepared.output_size.0 * prepared.output_size.1) as usize;
        let s = &kernels.stream;
        let alloc_u8 = |n: usize| {
            s.alloc_zeros::<u8>(n.max(1))
                .map_err(|e| format!("allocating on the GPU: {e}"))
        };
        let [a, b, c] = rows_bytes(frame_size, strides).map(alloc_u8);
        let planes = [a?, b?, c?];
        let state = s
            .alloc_zeros::<f32>(pixels.max(1))
            .map_err(|e| format!("allocating on the GPU: {e}"))?;
        let mask = alloc_u8(pixels)?;
        let counts = s
            .alloc_zeros::<u32>(2)
            .map_err(|e| format!("allocating on the GPU: {e}"))?;
        let replace = match replace {
            Some(planes) => Some(
                planes
                    .iter()
                    .map(|p| {
                        s.clone_htod(p)
                            .map_err(|e| format!("uploading the replacement picture: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let no_target = alloc_u8(1)?;
        // SAFETY: filled by a download before it is read.
        let counts_host = unsafe { s.context().alloc_pinned_with_flags::<u32>(2, 0) }
            .map_err(|e| format!("allocating page-locked host memory: {e}"))?;
        let mark = || {
            s.context()
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| format!("creating a CUDA event: {e}"))
        };
        let marks = [mark()?, mark()?, mark()?, mark()?];
        let shared = engine.shares(s);
        Ok(GpuFrames {
            kernels,
            io,
            pre,
            spec: prepared.spec,
            pixels,
            planes,
            state,
            mask,
            counts,
            has_state: false,
            uploaded: false,
            model: (prepared.output_size.0 as usize, prepared.output_size.1 as usize),
            replace,
            no_target,
            taps: Vec::new(),
            blur: Vec::new(),
            out: None,
            staging: Staging::default(),
            counts_host,
            shared,
            marks,
        })
    }

    /// Whether ONNX Runtime runs on this path's stream (one synchronisation per frame).
    pub fn shares_stream(&self) -> bool {
        self.shared
    }

    /// Forgets the smoothing history (DISCONT, flush).
    pub fn reset(&mut self) {
        self.has_state = false;
    }

    /// Uploads `frame`: the bytes of each plane that hold its rows, once.
    fn upload(&mut self, frame: &Frame<'_>) -> Result<(), String> {
        let stream = &self.kernels.stream;
        for (i, used) in plane_bytes(frame).into_iter().enumerate() {
            if used == 0 {
                continue;
            }
            if used > self.planes[i].len() {
                // A buffer laid out with larger strides than the caps' (a video meta).
                self.planes[i] = stream
                    .alloc_zeros::<u8>(used)
                    .map_err(|e| format!("allocating on the GPU: {e}"))?;
            }
            self.staging
                .upload(stream, i, &frame.planes[i][..used], &mut self.planes[i])?;
        }
        Ok(())
    }

    /// One fresh frame: its mask (model resolution) into `mask`, with its statistics and
    /// the time of each stage. `smoothing` and `threshold` as the element's properties.
    pub fn run(
        &mut self,
        engine: &mut Engine,
        frame: &Frame<'_>,
        smoothing: f32,
        threshold: Option<f32>,
        mask: &mut Vec<u8>,
    ) -> Result<(MaskStats, StageTimes), GpuError> {
        let stream = self.kernels.stream.clone();
        let mark = |e: &CudaEvent| {
            e.record(&stream)
                .map_err(|e| GpuError::Device(format!("recording a CUDA event: {e}")))
        };
        // Before the host's staging copies, so that the pre-processing stage counts them,
        // the transfer and the kernel.
        mark(&self.marks[0])?;
        self.uploaded = false;
        self.upload(frame).map_err(GpuError::Device)?;
        self.uploaded = true;
        let pre = PreParams {
            strides: frame.strides.map(|s| s as i32),
            ..self.pre
        };
        self.kernels
            .preprocess_to(&pre, &self.planes, self.io.input_ptr)
            .map_err(GpuError::Device)?;
        mark(&self.marks[1])?;
        if !self.shared {
            // ONNX Runtime reads the tensor from its own stream.
            stream
                .synchronize()
                .map_err(|e| GpuError::Device(format!("pre-processing on the GPU: {e}")))?;
        }

        // A failed run with the GPU's bound buffers is the GPU path's failure: the stream
        // falls back to the CPU's pre- and post-processing and runs the model there without
        // the binding. Should the model itself fail, it fails there again, as the model's.
        let (output, len) = engine
            .run_bound(&mut self.io)
            .map_err(|e| GpuError::Device(format!("inference with the GPU's bound buffers: {e}")))?;
        if len != self.pixels * self.spec.channels {
            return Err(GpuError::Inference(EngineError::Inference(format!(
                "the model's output has {len} values, {} x {} expected: unetmask needs a fixed output \
                 size per input size",
                self.pixels, self.spec.channels
            ))));
        }
        mark(&self.marks[2])?;

        let p = PostParams::new(&self.spec, self.pixels, smoothing, self.has_state, threshold);
        self.kernels
            .postprocess_to(&p, output, &mut self.state, &mut self.mask, &mut self.counts)
            .map_err(GpuError::Device)?;
        let download = |e| GpuError::Device(format!("downloading the mask: {e}"));
        self.staging
            .download(&stream, MASK_SLOT, &self.mask.slice(..self.pixels))
            .map_err(GpuError::Device)?;
        stream
            .memcpy_dtoh(&self.counts, &mut self.counts_host)
            .map_err(download)?;
        mark(&self.marks[3])?;
        // The frame's one wait.
        stream.synchronize().map_err(download)?;
        let t = Instant::now();
        mask.resize(self.pixels, 0);
        self.staging
            .take(MASK_SLOT, mask.as_mut_slice())
            .map_err(GpuError::Device)?;
        let c = self.counts_host.as_slice().map_err(download)?;
        let counts = [c[0], c[1]];
        let copied = t.elapsed();
        self.has_state |= smoothing > 0.0;
        let span = |a: usize, b: usize| -> Result<std::time::Duration, GpuError> {
            let ms = self.marks[a]
                .elapsed_ms(&self.marks[b])
                .map_err(|e| GpuError::Device(format!("reading a CUDA event: {e}")))?;
            Ok(std::time::Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
        };
        let times = StageTimes {
            pre: span(0, 1)?,
            infer: span(1, 2)?,
            post: span(2, 3)? + copied,
        };
        Ok((stats_of(counts, self.pixels), times))
    }

    /// The frame on the device: uploaded for its mask already, or now.
    fn frame_on_device(&mut self, frame: &Frame<'_>) -> Result<(), String> {
        if !std::mem::take(&mut self.uploaded) {
            self.upload(frame)?;
        }
        Ok(())
    }

    /// The mask taps for planes of `p`'s size, uploaded on first use.
    fn taps_for(&mut self, p: &MixParams) -> Result<usize, String> {
        let size = (p.model_w, p.model_h, p.width, p.height);
        if let Some(i) = self.taps.iter().position(|t| t.size == size) {
            return Ok(i);
        }
        self.taps.push(self.kernels.upload_taps(p)?);
        Ok(self.taps.len() - 1)
    }

    /// `overlay`, `replace` or `blur` on the frame whose planes are `planes` (host memory,
    /// rows `strides` apart, laid out as `geoms`): composited on the device, written back.
    pub fn composite_in_place(
        &mut self,
        format: PixelFormat,
        (width, height): (usize, usize),
        planes: &mut [&mut [u8]],
        strides: [usize; 3],
        geoms: &[PlaneGeom],
        look: &Look<'_>,
    ) -> Result<(), String> {
        let used = {
            let mut views: [&[u8]; 3] = [&[]; 3];
            for (v, p) in views.iter_mut().zip(planes.iter()) {
                *v = p;
            }
            let frame = Frame {
                format,
                width,
                height,
                planes: views,
                strides,
            };
            self.frame_on_device(&frame)?;
            plane_bytes(&frame)
        };
        for (i, geom) in geoms.iter().enumerate() {
            let stride = strides[i];
            if let Some(radius) = look.blur_radius {
                let plan = BlurPlan::new(self.model, geom, stride, &look.mask_weights, radius);
                let t = self.taps_for(&plan.blur.bg)?;
                let g = &plan.blur.bg;
                let key = (g.width, g.height, g.pstride, g.nchans);
                let b = match self.blur.iter().position(|b| b.geometry == key) {
                    Some(b) => b,
                    None => {
                        self.blur.push(self.kernels.blur_buffers(&plan)?);
                        self.blur.len() - 1
                    }
                };
                self.kernels.blur_on(
                    &plan,
                    &mut self.blur[b],
                    &self.mask,
                    &self.taps[t],
                    &mut self.planes[i],
                )?;
                continue;
            }
            let picture = look.picture.map(|_| geom.width * geom.pstride);
            let p = MixParams::new(self.model, geom, stride, &look.weights, &look.colors[i], picture);
            let t = self.taps_for(&p)?;
            let target = match (&self.replace, picture) {
                (Some(img), Some(_)) => &img[i],
                _ => &self.no_target,
            };
            self.kernels
                .mix_on(&p, &self.mask, &self.taps[t], &mut self.planes[i], target)?;
        }
        let stream = &self.kernels.stream;
        let n = geoms.len().min(planes.len());
        for (i, &len) in used.iter().enumerate().take(n) {
            self.staging.download(stream, i, &self.planes[i].slice(..len))?;
        }
        stream
            .synchronize()
            .map_err(|e| format!("downloading the frame: {e}"))?;
        for (i, host) in planes.iter_mut().enumerate().take(n) {
            self.staging.take(i, host)?;
        }
        Ok(())
    }

    /// The device buffer for the `mask`/`alpha` output, `len` bytes or more.
    fn out_buffer(&mut self, len: usize) -> Result<(), String> {
        if self.out.as_ref().is_none_or(|o| o.len() < len) {
            let buf = self
                .kernels
                .stream
                .alloc_zeros::<u8>(len.max(1))
                .map_err(|e| format!("allocating on the GPU: {e}"))?;
            self.out = Some(buf);
        }
        Ok(())
    }

    /// Downloads the first `out.len()` bytes of the output buffer into `out`.
    fn download_out(&mut self, out: &mut [u8]) -> Result<(), String> {
        let dev = self.out.as_ref().expect("allocated by out_buffer");
        let stream = &self.kernels.stream;
        self.staging.download(stream, 0, &dev.slice(..out.len()))?;
        stream
            .synchronize()
            .map_err(|e| format!("downloading the output: {e}"))?;
        self.staging.take(0, out)
    }

    /// `mask` mode: the GRAY8 mask at frame size into `out` (rows `stride` apart). Needs no
    /// frame on the device.
    pub fn render_mask(
        &mut self,
        (width, height): (usize, usize),
        out: &mut [u8],
        stride: usize,
        weights: &Weights,
    ) -> Result<(), String> {
        self.uploaded = false;
        let geom = PlaneGeom::gray(width, height);
        let p = MixParams::new(self.model, &geom, stride, weights, &[], None);
        let t = self.taps_for(&p)?;
        let len = out.len().min(stride * height);
        self.out_buffer(stride * height)?;
        let dev = self.out.as_mut().expect("allocated");
        self.kernels.mask_on(&p, &self.mask, &self.taps[t], dev)?;
        self.download_out(&mut out[..len])
    }

    /// `alpha` mode: the frame as RGBA with the mask as alpha into `out` (rows `stride`
    /// apart).
    pub fn render_alpha(
        &mut self,
        frame: &Frame<'_>,
        matrix: YuvMatrix,
        out: &mut [u8],
        stride: usize,
        weights: &Weights,
    ) -> Result<(), String> {
        self.frame_on_device(frame)?;
        let p = AlphaParams::new(
            frame.format,
            (frame.width, frame.height),
            frame.strides,
            self.model,
            weights,
            matrix,
            stride,
        );
        let t = self.taps_for(&p.mask)?;
        let len = out.len().min(stride * frame.height);
        self.out_buffer(stride * frame.height)?;
        let dev = self.out.as_mut().expect("allocated");
        self.kernels
            .alpha_on(&p, &self.mask, &self.taps[t], &self.planes, dev)?;
        self.download_out(&mut out[..len])
    }
}
