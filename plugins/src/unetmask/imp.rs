// SPDX-License-Identifier: MPL-2.0

//! The `unetmask` element (a `GstBaseTransform`).
//!
//! * `start` (READY -> PAUSED) opens the model: missing files, invalid models, models whose
//!   tensors cannot be served and a missing ONNX Runtime fail the state change with an
//!   element error that says what to do.
//! * `set_caps` builds the per-stream machinery once: sampling tables, tensor and mask
//!   buffers, the replacement picture.
//! * Each frame: decide whether to run the model (inference-interval, QoS), pre-process,
//!   infer, post-process, attach `GstUnetMaskMeta`, composite.
//! * `pipelined=true` overrides `submit_input_buffer` / `generate_output`: a fresh frame is
//!   held until the next one arrives, its inference runs on the element's worker thread
//!   while the next frame is pre-processed, then it is finished and output (one frame of
//!   latency). The held frame goes out before serialized events and DISCONT buffers, and
//!   is dropped on flush.
//! * With the `cuda` feature and a session on a CUDA device, `set_caps` also sets up the
//!   GPU path (`gpu_frames`): the mask is made and the frame composited on the device, and
//!   a device failure falls back to the CPU's pre/post-processing with a warning.

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::VideoFrameExt;

use super::cpu::composite::{self, BlurPlane, MaskScaler, PlaneGeom, Scratch, Target, Weights};
use super::cpu::postprocess::{self, MaskStats, Smoother};
use super::cpu::preprocess::{ChannelOrder, Normalization, ResizeFilter, TensorBuilder};
use super::debug::CAT;
use super::frame::{Frame, PixelFormat, YuvMatrix};
#[cfg(feature = "cuda")]
use super::gpu::frames::{self as gpu_frames, GpuError, GpuFrames};
#[cfg(feature = "cuda")]
use super::gpu::launch::GpuKernels;
#[cfg(feature = "cuda")]
use super::gpu::params::PreParams;
use super::model::contract::{Activation, Layout, Overrides};
use super::model::engine::{DeviceRequest, Engine, EngineConfig, EngineError, Prepared};
use super::{ActivationChoice, ChannelOrderChoice, LayoutChoice, Mode, ResizeChoice};
use crate::meta::MaskMeta;

const FORMATS: [gst_video::VideoFormat; 8] = [
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::I420,
];

const DEFAULT_OVERLAY_COLOR: u32 = 0xFFFF00;
const DEFAULT_REPLACE_COLOR: u32 = 0x00B140;

/// Properties that may change while playing; read once per frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Live {
    threshold: f64,
    smoothing: f64,
    inference_interval: u32,
    skip_late: bool,
    overlay_color: u32,
    overlay_opacity: f64,
    blur_radius: u32,
    replace_color: u32,
    stats_interval: u32,
}

impl Live {
    /// The hard-mask threshold, or `None` for a soft mask (a negative property value).
    fn threshold(&self) -> Option<f64> {
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
struct Settings {
    model: Option<PathBuf>,
    library: Option<PathBuf>,
    device: String,
    threads: u32,
    spin_wait: bool,
    mode: Mode,
    layout: LayoutChoice,
    channel_order: ChannelOrderChoice,
    resize: ResizeChoice,
    input_size: String,
    scale: f64,
    mean: String,
    std: String,
    activation: ActivationChoice,
    person_class: i32,
    replace_image: Option<PathBuf>,
    /// Infer frame n on a worker while frame n+1 is pre-processed (one frame of latency).
    pipelined: bool,
    live: Live,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            library: None,
            device: "auto".into(),
            threads: 0,
            spin_wait: false,
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
            live: Live::default(),
        }
    }
}

/// Parses "a,b,c" (or one number for all three channels) of finite numbers: `nan` and
/// `inf` parse as f32 and would turn every tensor, and so every mask, into garbage.
fn parse_triplet(name: &str, s: &str) -> Result<[f32; 3], String> {
    let v: Result<Vec<f32>, _> = s.split(',').map(|p| p.trim().parse::<f32>()).collect();
    match v.as_deref() {
        Ok(v) if v.iter().any(|x| !x.is_finite()) => Err(format!(
            "{name}='{s}' holds a value that is not a finite number: give three numbers, e.g. 0.485,0.456,0.406"
        )),
        Ok([a]) => Ok([*a; 3]),
        Ok([a, b, c]) => Ok([*a, *b, *c]),
        _ => Err(format!(
            "{name}='{s}' is not understood: give three comma-separated numbers, e.g. 0.485,0.456,0.406"
        )),
    }
}

fn parse_size(s: &str) -> Result<Option<(u32, u32)>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    let err = || format!("input-size='{s}' is not understood: give WIDTHxHEIGHT, e.g. 320x192");
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
    match (w.parse::<u32>(), h.parse::<u32>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok(Some((w, h))),
        _ => Err(err()),
    }
}

fn rgb_of(c: u32) -> [u8; 3] {
    [(c >> 16) as u8, (c >> 8) as u8, c as u8]
}

/// Running counters for the stats message and property.
#[derive(Debug)]
struct Stats {
    frames: u64,
    /// Frames finished and output (pipelined: one behind `frames`); paces the message.
    output: u64,
    fresh: u64,
    carried: u64,
    qos_skipped: u64,
    window_start: Instant,
    window_frames: u64,
    window_fresh: u64,
    pre: Duration,
    infer: Duration,
    post: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            frames: 0,
            output: 0,
            fresh: 0,
            carried: 0,
            qos_skipped: 0,
            window_start: Instant::now(),
            window_frames: 0,
            window_fresh: 0,
            pre: Duration::ZERO,
            infer: Duration::ZERO,
            post: Duration::ZERO,
        }
    }
}

impl Stats {
    fn structure(&self, provider: &str, processing: &str) -> gst::Structure {
        let ms = |d: Duration, n: u64| {
            if n == 0 {
                0.0
            } else {
                d.as_secs_f64() * 1e3 / n as f64
            }
        };
        let secs = self.window_start.elapsed().as_secs_f64();
        gst::Structure::builder("unetmask-stats")
            .field("frames", self.frames)
            .field("fresh", self.fresh)
            .field("carried", self.carried)
            .field("qos-skipped", self.qos_skipped)
            .field("inference-ms", ms(self.infer, self.window_fresh))
            .field("preprocess-ms", ms(self.pre, self.window_fresh))
            .field("postprocess-ms", ms(self.post, self.window_frames))
            .field(
                "fps",
                if secs > 0.0 {
                    self.window_frames as f64 / secs
                } else {
                    0.0
                },
            )
            .field("provider", provider)
            .field("processing", processing)
            .build()
    }

    fn reset_window(&mut self) {
        self.window_start = Instant::now();
        self.window_frames = 0;
        self.window_fresh = 0;
        self.pre = Duration::ZERO;
        self.infer = Duration::ZERO;
        self.post = Duration::ZERO;
    }
}

/// What one caps configuration needs.
struct Stream {
    mode: Mode,
    in_info: gst_video::VideoInfo,
    out_info: gst_video::VideoInfo,
    format: PixelFormat,
    matrix: YuvMatrix,
    prepared: Prepared,
    pre: TensorBuilder,
    input: Vec<f32>,
    /// Pipelined: the next frame's tensor, prepared while `input` is inferred.
    input_next: Vec<f32>,
    prob: Vec<f32>,
    planes: Vec<PlaneGeom>,
    /// Mask upscalers: [luma/packed, chroma].
    scalers: Vec<MaskScaler>,
    blur: Vec<BlurPlane>,
    /// Replacement picture in the frame's own planes.
    replace_planes: Option<Vec<Vec<u8>>>,
    scratch: Scratch,
    /// `pipelined=true` in effect (not on the GPU path, which has one input tensor).
    pipelined: bool,
    /// The GPU path (session on a CUDA device, feature `cuda`), when it could be set up.
    #[cfg(feature = "cuda")]
    gpu: Option<GpuFrames>,
}

impl State {
    /// Forgets the temporal-smoothing history (DISCONT, flush), on either path.
    fn reset_history(&mut self) {
        self.smoother.reset();
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.stream.as_mut().and_then(|s| s.gpu.as_mut()) {
            gpu.reset();
        }
    }

    /// The stats message / property: the window's figures, where inference and where pre-
    /// and post-processing run.
    fn stats_structure(&self) -> gst::Structure {
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
struct LastMask {
    buffer: gst::Buffer,
    stats: MaskStats,
}

struct State {
    engine: Engine,
    stream: Option<Stream>,
    smoother: Smoother,
    last: Option<LastMask>,
    frame_index: u64,
    since_inference: u32,
    stats: Stats,
    last_stats: Option<gst::Structure>,
    mask_u8: Vec<u8>,
    /// Pipelined: the fresh frame whose tensor is in `Stream::input`, not yet inferred.
    held: Option<Held>,
    /// Pipelined: finished frames for `generate_output`, in order.
    ready: std::collections::VecDeque<gst::Buffer>,
    /// Pipelined: the thread inference runs on (one, kept: ONNX Runtime keeps per-thread
    /// state, and a new thread per frame costs more than the overlap gains).
    worker: Option<rayon::ThreadPool>,
    /// The GPU path's kernels and this instance's CUDA stream, loaded at the first caps.
    #[cfg(feature = "cuda")]
    gpu_kernels: Option<std::sync::Arc<GpuKernels>>,
}

/// A frame held back by the pipelined mode until its inference has run.
struct Held {
    buffer: gst::Buffer,
    index: u64,
}

#[derive(Default)]
pub struct UnetMask {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// Running time before which frames are late, from downstream QoS events.
    qos_earliest: Mutex<Option<gst::ClockTime>>,
    /// Last caps refused on the sink pad (warned about once).
    refused_caps: Mutex<Option<gst::Caps>>,
}

#[glib::object_subclass]
impl ObjectSubclass for UnetMask {
    const NAME: &'static str = "GstUnetMask";
    type Type = super::UnetMask;
    type ParentType = gst_base::BaseTransform;
}

impl UnetMask {
    /// The engine configuration and normalisation the settings describe, or the first
    /// setting that `start` refuses (its property and why). One parser of the settings, for
    /// `start` and for applications that check a configuration before they run it.
    fn checked(s: &Settings) -> Result<(EngineConfig, Normalization), super::SettingError> {
        let err = |property: &'static str| move |reason: String| super::SettingError { property, reason };
        let device: DeviceRequest = s.device.parse().map_err(err("device"))?;
        let input_size = parse_size(&s.input_size).map_err(err("input-size"))?;
        let normalization = Self::normalization(s)?;
        let config = EngineConfig {
            model: s.model.clone().unwrap_or_default(),
            library: s.library.clone(),
            device,
            threads: s.threads,
            spin: s.spin_wait,
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

    /// [`Self::checked`] on the current settings (the public wrapper's `engine_config`).
    pub(super) fn current_engine_config(&self) -> Result<EngineConfig, super::SettingError> {
        let settings = self.settings.lock().unwrap().clone();
        Self::checked(&settings).map(|(config, _)| config)
    }

    fn normalization(s: &Settings) -> Result<Normalization, super::SettingError> {
        let err = |property: &'static str| move |reason: String| super::SettingError { property, reason };
        let mean = parse_triplet("mean", &s.mean).map_err(err("mean"))?;
        let std = parse_triplet("std", &s.std).map_err(err("std"))?;
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

    fn engine_error(e: &EngineError) -> gst::ErrorMessage {
        match e {
            EngineError::NoModel | EngineError::ModelMissing(_) => {
                gst::error_msg!(gst::ResourceError::NotFound, ("{}", e))
            }
            EngineError::LibraryNotFound(_) => gst::error_msg!(gst::LibraryError::Init, ("{}", e)),
            EngineError::ModelInvalid(..) | EngineError::Contract(_) => {
                gst::error_msg!(gst::StreamError::Format, ("{}", e))
            }
            EngineError::Provider(_) => gst::error_msg!(gst::ResourceError::OpenRead, ("{}", e)),
            EngineError::Inference(_) => gst::error_msg!(gst::StreamError::Failed, ("{}", e)),
        }
    }

    fn matrix_of(info: &gst_video::VideoInfo) -> YuvMatrix {
        let c = info.colorimetry();
        let mut m = match c.matrix() {
            gst_video::VideoColorMatrix::Bt709 => YuvMatrix::BT709,
            gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::BT2020,
            _ => YuvMatrix::BT601,
        };
        m.full_range = c.range() == gst_video::VideoColorRange::Range0_255;
        m
    }

    fn pixel_format(f: gst_video::VideoFormat) -> Option<PixelFormat> {
        use gst_video::VideoFormat as V;
        Some(match f {
            V::Rgba => PixelFormat::Rgba,
            V::Bgra => PixelFormat::Bgra,
            V::Rgbx => PixelFormat::Rgbx,
            V::Bgrx => PixelFormat::Bgrx,
            V::Rgb => PixelFormat::Rgb,
            V::Bgr => PixelFormat::Bgr,
            V::Nv12 => PixelFormat::Nv12,
            V::I420 => PixelFormat::I420,
            _ => return None,
        })
    }

    /// Loads the replacement picture and lays it out in the frame's planes.
    fn load_replace_image(
        path: &std::path::Path,
        format: PixelFormat,
        matrix: YuvMatrix,
        width: usize,
        height: usize,
    ) -> Result<Vec<Vec<u8>>, String> {
        use fast_image_resize as fr;
        let img = image::open(path)
            .map_err(|e| {
                format!(
                    "replace-image '{}' cannot be read ({e}); give a PNG or JPEG file",
                    path.display()
                )
            })?
            .to_rgb8();
        let src =
            fr::images::Image::from_vec_u8(img.width(), img.height(), img.into_raw(), fr::PixelType::U8x3)
                .map_err(|e| e.to_string())?;
        let mut dst = fr::images::Image::new(width as u32, height as u32, fr::PixelType::U8x3);
        // Typed (U8x3 only): the untyped `resize` would instantiate every pixel type here.
        let (Some(src_view), Some(mut dst_view)) = (
            src.typed_image::<fr::pixels::U8x3>(),
            dst.typed_image_mut::<fr::pixels::U8x3>(),
        ) else {
            return Err("replace-image: internal pixel type mismatch".into());
        };
        let options =
            fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        fr::Resizer::new()
            .resize_typed(&src_view, &mut dst_view, &options)
            .map_err(|e| e.to_string())?;
        drop(dst_view);
        let rgb = dst.buffer();
        let planes = composite::planes_of(format, width, height);
        let mut out: Vec<Vec<u8>> = planes
            .iter()
            .map(|p| vec![0u8; p.width * p.height * p.pstride])
            .collect();
        match format.packed_rgb() {
            Some((off, bpp)) => {
                for (i, px) in rgb.chunks_exact(3).enumerate() {
                    for k in 0..3 {
                        out[0][i * bpp + off[k]] = px[k];
                    }
                }
            }
            None => {
                for (i, px) in rgb.chunks_exact(3).enumerate() {
                    let (x, y) = (i % width, i / width);
                    let yuv = matrix.rgb_to_yuv([px[0], px[1], px[2]]);
                    out[0][i] = yuv[0];
                    if x % 2 == 0 && y % 2 == 0 {
                        let ci = (y / 2) * planes[1].width + x / 2;
                        if format == PixelFormat::Nv12 {
                            out[1][ci * 2] = yuv[1];
                            out[1][ci * 2 + 1] = yuv[2];
                        } else {
                            out[1][ci] = yuv[1];
                            out[2][ci] = yuv[2];
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The GPU path for new caps when the session runs on a CUDA device; `None`, saying why,
    /// when it cannot be set up (pre- and post-processing then run on the CPU).
    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn gpu_frames(
        &self,
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
        let strides = Self::strides_of(info.stride());
        let size = (info.width() as usize, info.height() as usize);
        match loaded.and_then(|k| {
            *kernels = Some(k.clone());
            GpuFrames::new(k, engine, prepared, pre, size, strides, replace)
        }) {
            Ok(gpu) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "GPU path on {}: frame upload, pre-processing, inference, post-processing and \
                     compositing on the device; only the mask or the finished frame comes back",
                    engine.provider
                );
                if resize == ResizeChoice::Antialias {
                    gst::info!(
                        CAT,
                        imp = self,
                        "the GPU path resizes bilinearly (resize=antialias is the CPU path's)"
                    );
                }
                Some(gpu)
            }
            Err(e) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "GPU path not available ({e}): pre- and post-processing run on the CPU, inference \
                     on {}",
                    engine.provider
                );
                None
            }
        }
    }

    /// The row strides of up to three planes as GStreamer gives them (0 for absent planes).
    fn strides_of(strides: &[i32]) -> [usize; 3] {
        let mut out = [0usize; 3];
        for (o, &s) in out.iter_mut().zip(strides) {
            *o = s.max(0) as usize;
        }
        out
    }

    fn frame_of<T>(frame: &gst_video::VideoFrameRef<T>, format: PixelFormat) -> Frame<'_> {
        let n = frame.n_planes() as usize;
        let mut planes: [&[u8]; 3] = [&[]; 3];
        for (i, p) in planes.iter_mut().enumerate().take(n) {
            *p = frame.plane_data(i as u32).unwrap_or(&[]);
        }
        Frame {
            format,
            width: frame.width() as usize,
            height: frame.height() as usize,
            planes,
            strides: Self::strides_of(frame.plane_stride()),
        }
    }

    /// Maps an input frame for reading, or posts why it cannot be.
    fn map_for_reading<'a>(
        &self,
        buf: &'a gst::BufferRef,
        info: &gst_video::VideoInfo,
    ) -> Result<gst_video::VideoFrameRef<&'a gst::BufferRef>, gst::FlowError> {
        gst_video::VideoFrameRef::from_buffer_ref_readable(buf, info).map_err(|_| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Decode,
                ("cannot map the frame for reading")
            );
            gst::FlowError::Error
        })
    }

    /// Counts the frame and decides whether it gets a fresh mask (inference-interval, QoS).
    /// Returns the frame's index and whether it is fresh.
    fn begin_frame(&self, state: &mut State, live: &Live, buffer: &gst::BufferRef) -> (u64, bool) {
        let index = state.frame_index;
        state.frame_index += 1;
        state.stats.frames += 1;
        state.stats.window_frames += 1;
        if buffer.flags().contains(gst::BufferFlags::DISCONT) {
            state.reset_history();
        }
        let interval = live.inference_interval.max(1);
        // A held frame (pipelined) will have made a mask by the time this one is shown.
        let has_mask = state.last.is_some() || state.held.is_some();
        let due = !has_mask || state.since_inference + 1 >= interval;
        let late = live.skip_late && has_mask && self.is_late(buffer.pts());
        let fresh = due && !late;
        if due && late {
            state.stats.qos_skipped += 1;
        }
        if fresh {
            state.since_inference = 0;
        } else {
            state.since_inference += 1;
            state.stats.carried += 1;
        }
        (index, fresh)
    }

    /// Runs the model on `input` and leaves the person probability in `prob`.
    fn infer(
        &self,
        engine: &mut Engine,
        prepared: &Prepared,
        input: &[f32],
        prob: &mut [f32],
    ) -> Result<(), gst::FlowError> {
        let spec = prepared.spec;
        let (iw, ih) = prepared.input_size;
        engine
            .run(input, (iw, ih), |_, out| {
                if out.len() == prob.len() * spec.channels {
                    postprocess::person_probability(out, &spec, prob);
                    true
                } else {
                    false
                }
            })
            .map_err(|e| {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", e));
                gst::FlowError::Error
            })?
            .then_some(())
            .ok_or_else(|| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("the model's output size changed between frames; unetmask needs a fixed output size per input size")
                );
                gst::FlowError::Error
            })
    }

    /// Runs the model on the stream's current tensor (`Stream::input`) into `Stream::prob`,
    /// counting the time as inference.
    fn infer_current(&self, state: &mut State) -> Result<(), gst::FlowError> {
        let stream = state.stream.as_mut().ok_or(gst::FlowError::NotNegotiated)?;
        let t = Instant::now();
        self.infer(
            &mut state.engine,
            &stream.prepared,
            &stream.input,
            &mut stream.prob,
        )?;
        state.stats.infer += t.elapsed();
        Ok(())
    }

    /// After inference (fresh frames): smoothing, quantisation, the new mask. Then, for
    /// every frame, the meta that describes the mask in use.
    fn finish_mask(&self, state: &mut State, live: &Live, index: u64, fresh: bool) -> (LastMask, MaskMeta) {
        if fresh {
            let t = Instant::now();
            let stream = state.stream.as_mut().expect("caps are set");
            state.smoother.apply(&mut stream.prob, live.smoothing as f32);
            let threshold = live.threshold().map(|t| t as f32);
            state.mask_u8.resize(stream.prob.len(), 0);
            let stats = postprocess::quantize(&stream.prob, threshold, &mut state.mask_u8);
            Self::store_mask(state, stats);
            state.stats.post += t.elapsed();
        }
        Self::mask_meta(state, live, index, fresh)
    }

    /// The fresh mask in `State::mask_u8` becomes the mask in use.
    fn store_mask(state: &mut State, stats: MaskStats) {
        let mask = gst::Buffer::from_slice(state.mask_u8.clone());
        state.last = Some(LastMask { buffer: mask, stats });
        state.stats.fresh += 1;
        state.stats.window_fresh += 1;
    }

    /// The mask in use and the meta that describes it for frame `index`.
    fn mask_meta(state: &State, live: &Live, index: u64, fresh: bool) -> (LastMask, MaskMeta) {
        let last = state.last.clone().expect("a mask exists after the first frame");
        let stream = state.stream.as_ref().expect("caps are set");
        let meta = MaskMeta {
            mask: last.buffer.clone(),
            width: stream.prepared.output_size.0,
            height: stream.prepared.output_size.1,
            threshold: live.threshold(),
            fresh,
            frame: index,
            coverage: last.stats.coverage as f64,
            uncertain: last.stats.uncertain as f64,
        };
        (last, meta)
    }

    /// Runs the model if this frame needs a fresh mask. Returns the mask to composite with
    /// and the meta to attach.
    fn update_mask(
        &self,
        state: &mut State,
        live: &Live,
        frame: &Frame<'_>,
        buffer: &gst::BufferRef,
    ) -> Result<(LastMask, MaskMeta), gst::FlowError> {
        let (index, fresh) = self.begin_frame(state, live, buffer);
        #[cfg(feature = "cuda")]
        if fresh && self.mask_on_gpu(state, live, frame)? {
            return Ok(Self::mask_meta(state, live, index, fresh));
        }
        if fresh {
            let stream = state.stream.as_mut().expect("caps are set");
            let t0 = Instant::now();
            stream.pre.run(frame, &mut stream.input);
            state.stats.pre += t0.elapsed();
            self.infer_current(state)?;
        }
        Ok(self.finish_mask(state, live, index, fresh))
    }

    /// A fresh frame's mask on the GPU path, when the stream has one; `true` when it was
    /// made there. A device failure (not the model's) moves the stream to the CPU's pre- and
    /// post-processing from this frame on, with a warning.
    #[cfg(feature = "cuda")]
    fn mask_on_gpu(&self, state: &mut State, live: &Live, frame: &Frame<'_>) -> Result<bool, gst::FlowError> {
        let stream = state.stream.as_mut().expect("caps are set");
        let Some(gpu) = stream.gpu.as_mut() else {
            return Ok(false);
        };
        let threshold = live.threshold().map(|t| t as f32);
        match gpu.run(
            &mut state.engine,
            frame,
            live.smoothing as f32,
            threshold,
            &mut state.mask_u8,
        ) {
            Ok((stats, times)) => {
                state.stats.pre += times.pre;
                state.stats.infer += times.infer;
                state.stats.post += times.post;
                Self::store_mask(state, stats);
                Ok(true)
            }
            Err(GpuError::Inference(e)) => {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", e));
                Err(gst::FlowError::Error)
            }
            Err(GpuError::Device(e)) => {
                self.leave_gpu(stream, &e, "mask");
                Ok(false)
            }
        }
    }

    /// A device failure: the stream carries on with pre-processing, post-processing and
    /// compositing on the CPU (inference stays on the session's provider), with a warning.
    #[cfg(feature = "cuda")]
    fn leave_gpu(&self, stream: &mut Stream, e: &str, what: &str) {
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Failed,
            ("the GPU path failed ({what}: {e}); carrying on with pre/post-processing on the CPU")
        );
        stream.gpu = None;
    }

    /// The in-place modes on the GPU path, on the writable frame `vframe`.
    #[cfg(feature = "cuda")]
    fn composite_on_gpu(
        gpu: &mut GpuFrames,
        vframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        format: PixelFormat,
        geoms: &[PlaneGeom],
        look: &gpu_frames::Look<'_>,
    ) -> Result<(), String> {
        let (w, h) = (vframe.width() as usize, vframe.height() as usize);
        let strides = Self::strides_of(vframe.plane_stride());
        let [a, b, c, _] = vframe.planes_data_mut();
        gpu.composite_in_place(format, (w, h), &mut [a, b, c], strides, geoms, look)
    }

    /// Pipelined mode, one input buffer. A fresh frame is held until the next one: its
    /// inference runs on a worker thread while the next frame is pre-processed here, then
    /// it is finished (post-processing, meta, compositing) and queued for `generate_output`.
    /// Frames that reuse a mask (inference-interval, QoS) and DISCONT frames first finish
    /// the held one, so every frame sees the same masks, smoothing and order as without
    /// pipelining.
    fn submit_pipelined(&self, live: &Live, inbuf: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if inbuf.flags().contains(gst::BufferFlags::DISCONT) {
            // Pushed from here, not through `generate_output`: the base class marks the
            // next buffer it outputs after a DISCONT input as DISCONT, and the held frame
            // is not one.
            self.drain()?;
        }
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let stream = state.stream.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
        let (info, format) = (stream.in_info.clone(), stream.format);
        let (index, fresh) = self.begin_frame(state, live, &inbuf);
        if !fresh {
            self.complete_held(state, live)?;
            self.finish_and_queue(state, live, inbuf, index, false)?;
            return Ok(gst::FlowSuccess::Ok);
        }
        let vframe = self.map_for_reading(inbuf.as_ref(), &info)?;
        let frame = Self::frame_of(&vframe, format);
        let held = state.held.take();
        if held.is_some() && state.worker.is_none() {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "unetmask-infer".into())
                .build()
                .map_err(|e| {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Thread,
                        ("cannot start the inference thread: {e}")
                    );
                    gst::FlowError::Error
                })?;
            state.worker = Some(pool);
        }
        let State {
            engine,
            stream,
            stats,
            worker,
            ..
        } = state;
        let stream = stream.as_mut().expect("caps are set");
        let t0 = Instant::now();
        let (pre, infer) = if let (Some(_), Some(worker)) = (&held, worker.as_ref()) {
            let Stream {
                pre,
                input,
                input_next,
                prob,
                prepared,
                ..
            } = stream;
            let mut done = None;
            let mut pre_time = Duration::ZERO;
            worker.in_place_scope(|s| {
                s.spawn(|_| {
                    let t = Instant::now();
                    let r = self.infer(engine, prepared, input, prob);
                    done = Some((r, t.elapsed()));
                });
                pre.run(&frame, input_next);
                pre_time = t0.elapsed();
            });
            let (result, infer_time) = done.expect("the scope ran the inference");
            result?;
            std::mem::swap(input, input_next);
            (pre_time, infer_time)
        } else {
            stream.pre.run(&frame, &mut stream.input);
            (t0.elapsed(), Duration::ZERO)
        };
        stats.pre += pre;
        stats.infer += infer;
        drop(vframe);
        if let Some(h) = held {
            self.finish_and_queue(state, live, h.buffer, h.index, true)?;
        }
        state.held = Some(Held { buffer: inbuf, index });
        Ok(gst::FlowSuccess::Ok)
    }

    /// Pipelined mode: runs the held frame's inference now (no next frame to overlap with)
    /// and queues the finished frame.
    fn complete_held(&self, state: &mut State, live: &Live) -> Result<(), gst::FlowError> {
        let Some(h) = state.held.take() else {
            return Ok(());
        };
        self.infer_current(state)?;
        self.finish_and_queue(state, live, h.buffer, h.index, true)
    }

    /// Pipelined mode: finishes frame `index` (post-processing if `fresh`, meta,
    /// compositing) and queues its output buffer for `generate_output`.
    fn finish_and_queue(
        &self,
        state: &mut State,
        live: &Live,
        buffer: gst::Buffer,
        index: u64,
        fresh: bool,
    ) -> Result<(), gst::FlowError> {
        let ready = self.finish_mask(state, live, index, fresh);
        let out = self.render(state, live, buffer, ready)?;
        state.ready.push_back(out);
        Ok(())
    }

    /// Pipelined mode: the output buffer of `buffer` with its mask.
    fn render(
        &self,
        state: &mut State,
        live: &Live,
        mut buffer: gst::Buffer,
        ready: (LastMask, MaskMeta),
    ) -> Result<gst::Buffer, gst::FlowError> {
        let mode = state.stream.as_ref().ok_or(gst::FlowError::NotNegotiated)?.mode;
        if mode.in_place() {
            self.composite_in_place(state, live, buffer.make_mut(), Some(ready))?;
            return Ok(buffer);
        }
        use gst_base::subclass::base_transform::{InputBuffer, PrepareOutputBufferSuccess};
        let mut out = match self.parent_prepare_output_buffer(InputBuffer::Readable(&buffer))? {
            PrepareOutputBufferSuccess::Buffer(b) => b,
            PrepareOutputBufferSuccess::InputBuffer => return Err(gst::FlowError::NotSupported),
        };
        self.render_to_output(state, live, &buffer, out.make_mut(), Some(ready))?;
        Ok(out)
    }

    /// Pipelined mode: finishes the held frame and pushes everything queued downstream,
    /// before a serialized event (EOS, segment, caps) or a DISCONT buffer passes it.
    fn drain(&self) -> Result<(), gst::FlowError> {
        let live = self.settings.lock().unwrap().live;
        let queued: Vec<gst::Buffer> = {
            let mut guard = self.state.lock().unwrap();
            let Some(state) = guard.as_mut() else {
                return Ok(());
            };
            if state.held.is_none() && state.ready.is_empty() {
                return Ok(());
            }
            self.complete_held(state, &live)?;
            state.ready.drain(..).collect()
        };
        gst::debug!(CAT, imp = self, "draining {} pipelined frame(s)", queued.len());
        for b in queued {
            self.obj().src_pad().push(b)?;
        }
        Ok(())
    }

    /// Whether the negotiated stream runs pipelined (`pipelined=true`, not on the GPU path).
    fn pipelined(&self) -> bool {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|s| s.stream.as_ref())
            .is_some_and(|st| st.pipelined)
    }

    fn is_late(&self, pts: Option<gst::ClockTime>) -> bool {
        let Some(earliest) = *self.qos_earliest.lock().unwrap() else {
            return false;
        };
        let segment = self.obj().segment();
        let Some(segment) = segment.downcast_ref::<gst::ClockTime>() else {
            return false;
        };
        match segment.to_running_time(pts) {
            Some(rt) => rt < earliest,
            None => false,
        }
    }

    fn finish_frame(&self, state: &mut State, live: &Live, t_post: Instant) {
        state.stats.post += t_post.elapsed();
        state.stats.output += 1;
        if live.stats_interval > 0 && state.stats.output.is_multiple_of(live.stats_interval as u64) {
            let s = state.stats_structure();
            state.last_stats = Some(s.clone());
            state.stats.reset_window();
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }
    }

    /// In-place modes: the frame is modified (or not, in meta mode) where it is.
    fn process_in_place(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let live = self.settings.lock().unwrap().live;
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        self.composite_in_place(state, &live, buf, None)
    }

    /// The in-place modes on `buf`, with the mask from `ready` (pipelined) or made now.
    fn composite_in_place(
        &self,
        state: &mut State,
        live: &Live,
        buf: &mut gst::BufferRef,
        ready: Option<(LastMask, MaskMeta)>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let live = *live;
        let stream = state.stream.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
        let (mode, info, format) = (stream.mode, stream.in_info.clone(), stream.format);
        let last = if let Some((last, meta)) = ready {
            meta.attach(buf);
            last
        } else {
            // Read-only mapping for the model; the meta goes on the buffer afterwards.
            let buf_ro: &gst::BufferRef = buf;
            let vframe = self.map_for_reading(buf_ro, &info)?;
            let frame = Self::frame_of(&vframe, format);
            let (last, meta) = self.update_mask(state, &live, &frame, buf_ro)?;
            drop(vframe);
            meta.attach(buf);
            last
        };
        let t_post = Instant::now();
        if mode != Mode::Meta {
            let stream = state.stream.as_mut().unwrap();
            let map = last.buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let mask_weights = Weights::mask(live.threshold().map(|t| t as f32));
            let colors;
            let weights = match mode {
                Mode::Overlay => {
                    let op = (live.overlay_opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
                    colors = composite::plane_colors(format, stream.matrix, rgb_of(live.overlay_color));
                    mask_weights.scaled(op)
                }
                _ => {
                    colors = composite::plane_colors(format, stream.matrix, rgb_of(live.replace_color));
                    mask_weights.inverted()
                }
            };
            let mut vframe =
                gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("cannot map the frame for writing")
                    );
                    gst::FlowError::Error
                })?;
            #[cfg(feature = "cuda")]
            if let Some(gpu) = stream.gpu.as_mut() {
                let look = gpu_frames::Look {
                    mask_weights,
                    weights,
                    colors: &colors,
                    blur_radius: (mode == Mode::Blur).then_some(live.blur_radius as usize),
                    picture: mode == Mode::Replace && stream.replace_planes.is_some(),
                };
                match Self::composite_on_gpu(gpu, &mut vframe, format, &stream.planes, &look) {
                    Ok(()) => {
                        self.finish_frame(state, &live, t_post);
                        return Ok(gst::FlowSuccess::Ok);
                    }
                    Err(e) => self.leave_gpu(stream, &e, "compositing"),
                }
            }
            let Stream {
                planes,
                scalers,
                blur,
                replace_planes,
                scratch,
                ..
            } = stream;
            for (p, geom) in planes.iter().enumerate() {
                let stride = vframe.plane_stride()[p] as usize;
                let scaler = &mut scalers[geom.chroma as usize];
                if mode == Mode::Blur {
                    let data = vframe.plane_data(p as u32).map_err(|_| gst::FlowError::Error)?;
                    blur[p].compute(
                        data,
                        stride,
                        geom,
                        scaler,
                        &map,
                        &mask_weights,
                        live.blur_radius as usize,
                    );
                }
                let target = match (mode, replace_planes.as_ref()) {
                    (Mode::Blur, _) => Target::Blurred(&blur[p]),
                    (Mode::Replace, Some(img)) => Target::Plane {
                        data: &img[p],
                        stride: geom.width * geom.pstride,
                    },
                    _ => Target::Color(&colors[p]),
                };
                let data = vframe
                    .plane_data_mut(p as u32)
                    .map_err(|_| gst::FlowError::Error)?;
                composite::mix_plane(data, stride, geom, scaler, &map, &weights, target, scratch);
            }
        }
        self.finish_frame(state, &live, t_post);
        Ok(gst::FlowSuccess::Ok)
    }

    /// `mask` and `alpha` modes: a new frame in the output caps.
    fn process_to_output(
        &self,
        inbuf: &gst::Buffer,
        outbuf: &mut gst::BufferRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let live = self.settings.lock().unwrap().live;
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        self.render_to_output(state, &live, inbuf, outbuf, None)
    }

    /// `mask` and `alpha` into `outbuf`, with the mask from `ready` (pipelined) or made now.
    fn render_to_output(
        &self,
        state: &mut State,
        live: &Live,
        inbuf: &gst::Buffer,
        outbuf: &mut gst::BufferRef,
        ready: Option<(LastMask, MaskMeta)>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let live = *live;
        let stream = state.stream.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
        let (mode, in_info, out_info, format) = (
            stream.mode,
            stream.in_info.clone(),
            stream.out_info.clone(),
            stream.format,
        );
        let vin = self.map_for_reading(inbuf.as_ref(), &in_info)?;
        let frame = Self::frame_of(&vin, format);
        let (last, meta) = match ready {
            Some(m) => m,
            None => self.update_mask(state, &live, &frame, inbuf)?,
        };
        meta.attach(outbuf);
        let t_post = Instant::now();
        let stream = state.stream.as_mut().unwrap();
        let map = last.buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
        let lut = Weights::mask(live.threshold().map(|t| t as f32));
        let mut vout =
            gst_video::VideoFrameRef::from_buffer_ref_writable(outbuf, &out_info).map_err(|_| {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("cannot map the output frame"));
                gst::FlowError::Error
            })?;
        let stride = vout.plane_stride()[0] as usize;
        let out = vout.plane_data_mut(0).map_err(|_| gst::FlowError::Error)?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = stream.gpu.as_mut() {
            let done = if mode == Mode::Mask {
                gpu.render_mask((frame.width, frame.height), out, stride, &lut)
            } else {
                gpu.render_alpha(&frame, stream.matrix, out, stride, &lut)
            };
            match done {
                Ok(()) => {
                    drop(vout);
                    self.finish_frame(state, &live, t_post);
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(e) => self.leave_gpu(stream, &e, "compositing"),
            }
        }
        if mode == Mode::Mask {
            composite::write_mask(out, stride, frame.height, &mut stream.scalers[0], &map, &lut);
        } else {
            composite::write_alpha(
                &frame,
                stream.matrix,
                out,
                stride,
                &mut stream.scalers[0],
                &map,
                &lut,
                &mut stream.scratch,
            );
        }
        drop(vout);
        self.finish_frame(state, &live, t_post);
        Ok(gst::FlowSuccess::Ok)
    }
}

impl ObjectImpl for UnetMask {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let live = Live::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb("Path of the ONNX segmentation model (float32 [1,3,H,W] or [1,H,W,3] input)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("onnxruntime-library")
                    .nick("ONNX Runtime library")
                    .blurb(
                        "Path of libonnxruntime.so (>= 1.31). Unset: ORT_DYLIB_PATH, then the project's \
                         .deps/onnxruntime/lib, then the system library path. First load wins per process",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("auto (CUDA when a GPU and the provider are present, else CPU), cpu, cuda:N or tensorrt:N")
                    .default_value(Some("auto"))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads (0 = ONNX Runtime's default: one per core)")
                    .maximum(256)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("spin-wait")
                    .nick("Spin wait")
                    .blurb(
                        "Let ONNX Runtime's threads busy-wait between inferences (ONNX Runtime's own default). \
                         Off: an idle worker sleeps instead of burning the CPU that decoding, pre/post-processing \
                         and other cameras need",
                    )
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("pipelined")
                    .nick("Pipelined")
                    .blurb(
                        "Run the model on frame n in a worker thread while frame n+1 is pre-processed: more \
                         frames per second where pre-processing is a large share of the work, one frame more \
                         latency (added to the LATENCY query). Same masks and output as without",
                    )
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", Mode::Overlay)
                    .nick("Mode")
                    .blurb("What to output; the mask meta is attached in every mode")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("threshold")
                    .nick("Threshold")
                    .blurb("Person where probability > threshold (hard mask); < 0 keeps the soft mask")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(live.threshold)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("smoothing")
                    .nick("Smoothing")
                    .blurb(
                        "Temporal smoothing: weight of the previous mask in an exponential average (0 = off); \
                         reset on DISCONT and flush",
                    )
                    .minimum(0.0)
                    .maximum(0.99)
                    .default_value(live.smoothing)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("inference-interval")
                    .nick("Inference interval")
                    .blurb("Run the model every N frames and reuse the mask in between")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(live.inference_interval)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("skip-late")
                    .nick("Skip late frames")
                    .blurb("When downstream reports lateness (QoS), reuse the last mask instead of running the model")
                    .default_value(live.skip_late)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("layout", LayoutChoice::Auto)
                    .nick("Layout")
                    .blurb("Model input layout (auto: from the input shape)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("channel-order", ChannelOrderChoice::Rgb)
                    .nick("Channel order")
                    .blurb("Colour order the model was trained on")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("resize", ResizeChoice::Antialias)
                    .nick("Resize filter")
                    .blurb("How frames are scaled to the model's input size")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("input-size")
                    .nick("Input size")
                    .blurb(
                        "WIDTHxHEIGHT for models with dynamic height/width (empty: the model's fixed size, or \
                         the frame's aspect with the long side at 320, multiples of 32)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("scale")
                    .nick("Scale")
                    .blurb("Pixel scale before mean/std: tensor = (pixel * scale - mean) / std")
                    .minimum(f64::MIN_POSITIVE)
                    .maximum(1.0)
                    .default_value(1.0 / 255.0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mean")
                    .nick("Mean")
                    .blurb("Per-channel mean in the model's channel order, e.g. 0.485,0.456,0.406")
                    .default_value(Some("0,0,0"))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("std")
                    .nick("Std")
                    .blurb("Per-channel standard deviation, e.g. 0.229,0.224,0.225")
                    .default_value(Some("1,1,1"))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output-activation", ActivationChoice::Auto)
                    .nick("Output activation")
                    .blurb("How the output becomes a probability (auto: detected with a probe run)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("person-class")
                    .nick("Person class")
                    .blurb("Person channel of a C-channel output (-1: 1 for 2 classes, 15 for 21 VOC classes)")
                    .minimum(-1)
                    .maximum(1023)
                    .default_value(-1)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("overlay-color")
                    .nick("Overlay colour")
                    .blurb("Tint of the person in overlay mode, 0xRRGGBB")
                    .maximum(0xFFFFFF)
                    .default_value(DEFAULT_OVERLAY_COLOR)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("overlay-opacity")
                    .nick("Overlay opacity")
                    .blurb("Opacity of the tint in overlay mode")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(live.overlay_opacity)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("blur-radius")
                    .nick("Blur radius")
                    .blurb("Background blur radius in pixels (blur mode)")
                    .minimum(1)
                    .maximum(512)
                    .default_value(live.blur_radius)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("replace-color")
                    .nick("Replacement colour")
                    .blurb("Background colour in replace mode when no replace-image is set, 0xRRGGBB")
                    .maximum(0xFFFFFF)
                    .default_value(DEFAULT_REPLACE_COLOR)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("replace-image")
                    .nick("Replacement image")
                    .blurb("PNG or JPEG shown behind the person in replace mode (scaled to the frame)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("stats-interval")
                    .nick("Stats interval")
                    .blurb("Post an 'unetmask-stats' element message every N frames (0 = never)")
                    .default_value(live.stats_interval)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames, fresh, carried, qos-skipped, inference-ms, preprocess-ms, postprocess-ms, fps, \
                         provider",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        let path = |v: &glib::Value| {
            v.get::<Option<String>>()
                .unwrap()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        match pspec.name() {
            "model" => s.model = path(value),
            "onnxruntime-library" => s.library = path(value),
            "device" => {
                s.device = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_else(|| "auto".into())
            }
            "threads" => s.threads = value.get().unwrap(),
            "spin-wait" => s.spin_wait = value.get().unwrap(),
            "pipelined" => s.pipelined = value.get().unwrap(),
            "mode" => {
                let mode = value.get().unwrap();
                if mode != s.mode {
                    s.mode = mode;
                    drop(s);
                    self.obj().reconfigure_src();
                }
            }
            "threshold" => s.live.threshold = value.get().unwrap(),
            "smoothing" => s.live.smoothing = value.get().unwrap(),
            "inference-interval" => s.live.inference_interval = value.get().unwrap(),
            "skip-late" => s.live.skip_late = value.get().unwrap(),
            "layout" => s.layout = value.get().unwrap(),
            "channel-order" => s.channel_order = value.get().unwrap(),
            "resize" => s.resize = value.get().unwrap(),
            "input-size" => s.input_size = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "scale" => s.scale = value.get().unwrap(),
            "mean" => {
                s.mean = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_else(|| "0,0,0".into())
            }
            "std" => {
                s.std = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_else(|| "1,1,1".into())
            }
            "output-activation" => s.activation = value.get().unwrap(),
            "person-class" => s.person_class = value.get().unwrap(),
            "overlay-color" => s.live.overlay_color = value.get().unwrap(),
            "overlay-opacity" => s.live.overlay_opacity = value.get().unwrap(),
            "blur-radius" => s.live.blur_radius = value.get().unwrap(),
            "replace-color" => s.live.replace_color = value.get().unwrap(),
            "replace-image" => s.replace_image = path(value),
            "stats-interval" => s.live.stats_interval = value.get().unwrap(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).to_value();
        match pspec.name() {
            "model" => path(&s.model),
            "onnxruntime-library" => path(&s.library),
            "device" => s.device.to_value(),
            "threads" => s.threads.to_value(),
            "spin-wait" => s.spin_wait.to_value(),
            "pipelined" => s.pipelined.to_value(),
            "mode" => s.mode.to_value(),
            "threshold" => s.live.threshold.to_value(),
            "smoothing" => s.live.smoothing.to_value(),
            "inference-interval" => s.live.inference_interval.to_value(),
            "skip-late" => s.live.skip_late.to_value(),
            "layout" => s.layout.to_value(),
            "channel-order" => s.channel_order.to_value(),
            "resize" => s.resize.to_value(),
            "input-size" => s.input_size.to_value(),
            "scale" => s.scale.to_value(),
            "mean" => s.mean.to_value(),
            "std" => s.std.to_value(),
            "output-activation" => s.activation.to_value(),
            "person-class" => s.person_class.to_value(),
            "overlay-color" => s.live.overlay_color.to_value(),
            "overlay-opacity" => s.live.overlay_opacity.to_value(),
            "blur-radius" => s.live.blur_radius.to_value(),
            "replace-color" => s.live.replace_color.to_value(),
            "replace-image" => path(&s.replace_image),
            "stats-interval" => s.live.stats_interval.to_value(),
            "stats" => {
                drop(s);
                let state = self.state.lock().unwrap();
                match state.as_ref() {
                    Some(st) => st.stats_structure().to_value(),
                    None => Stats::default().structure("none", "none").to_value(),
                }
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for UnetMask {}

impl ElementImpl for UnetMask {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "UNet person mask",
                "Filter/Effect/Video/Analyzer",
                "Runs an ONNX person-segmentation network (UNet, MediaPipe, ...) through ONNX Runtime on \
                 every frame; attaches the mask as GstUnetMaskMeta and outputs the frame, the mask, RGBA \
                 with alpha, an overlay, or a blurred or replaced background",
                "edgemask developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink_caps = gst_video::VideoCapsBuilder::new().format_list(FORMATS).build();
            let mut src_formats = FORMATS.to_vec();
            src_formats.push(gst_video::VideoFormat::Gray8);
            let src_caps = gst_video::VideoCapsBuilder::new()
                .format_list(src_formats)
                .build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &sink_caps,
                )
                .unwrap(),
                gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &src_caps)
                    .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for UnetMask {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::Both;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let (cfg, _) = Self::checked(&settings)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e.reason)))?;
        if let Some(img) = &settings.replace_image
            && !img.is_file()
        {
            return Err(gst::error_msg!(
                gst::ResourceError::NotFound,
                (
                    "replace-image '{}' does not exist: give the path of a PNG or JPEG file",
                    img.display()
                )
            ));
        }
        let mut engine = Engine::open(&cfg).map_err(|e| Self::engine_error(&e))?;
        gst::info!(
            CAT,
            imp = self,
            "model {} on {} (requested device={}), ONNX Runtime {}; contract {:?}",
            cfg.model.display(),
            engine.provider,
            cfg.device,
            engine.library.display(),
            engine.contract
        );
        if let super::model::contract::InputSize::Fixed(w, h) = engine.contract.input_size {
            // Fixed-size models are probed now, so contract errors fail the state change.
            let p = engine.prepare((w, h)).map_err(|e| Self::engine_error(&e))?;
            gst::info!(CAT, imp = self, "probe: {p:?}");
        }
        *self.state.lock().unwrap() = Some(State {
            engine,
            stream: None,
            smoother: Smoother::default(),
            last: None,
            frame_index: 0,
            since_inference: 0,
            stats: Stats::default(),
            last_stats: None,
            mask_u8: Vec::new(),
            held: None,
            ready: Default::default(),
            worker: None,
            #[cfg(feature = "cuda")]
            gpu_kernels: None,
        });
        *self.qos_earliest.lock().unwrap() = None;
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = None;
        Ok(())
    }

    fn transform_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        filter: Option<&gst::Caps>,
    ) -> Option<gst::Caps> {
        let mode = self.settings.lock().unwrap().mode;
        let mut out = caps.clone();
        if !mode.in_place() {
            let out = out.make_mut();
            for s in out.iter_mut() {
                s.remove_fields(["colorimetry", "chroma-site"]);
                if direction == gst::PadDirection::Sink {
                    let f = if mode == Mode::Mask {
                        gst_video::VideoFormat::Gray8
                    } else {
                        gst_video::VideoFormat::Rgba
                    };
                    s.set("format", f.to_str());
                } else {
                    s.set("format", gst::List::new(FORMATS.iter().map(|f| f.to_str())));
                }
            }
        }
        gst::debug!(
            CAT,
            imp = self,
            "transformed {caps:?} ({direction:?}) into {out:?}"
        );
        Some(match filter {
            Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
            None => out,
        })
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let fail = |msg: String| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("{}", msg));
            Err(gst::loggable_error!(CAT, "{}", msg))
        };
        let Ok(in_info) = gst_video::VideoInfo::from_caps(incaps) else {
            return fail(format!(
                "unetmask cannot handle caps {incaps}: it takes raw video in {FORMATS:?}"
            ));
        };
        let Ok(out_info) = gst_video::VideoInfo::from_caps(outcaps) else {
            return fail(format!("unetmask cannot produce caps {outcaps}"));
        };
        let Some(format) = Self::pixel_format(in_info.format()) else {
            return fail(format!(
                "unetmask cannot handle format {:?}: use one of {FORMATS:?} (add videoconvert before it)",
                in_info.format()
            ));
        };
        let settings = self.settings.lock().unwrap().clone();
        let mode = settings.mode;
        let (w, h) = (in_info.width() as usize, in_info.height() as usize);
        let matrix = Self::matrix_of(&in_info);
        let norm = match Self::normalization(&settings) {
            Ok(n) => n,
            Err(e) => return fail(e.reason),
        };
        let replace_planes = match (&settings.replace_image, mode) {
            (Some(p), Mode::Replace) => match Self::load_replace_image(p, format, matrix, w, h) {
                Ok(planes) => Some(planes),
                Err(m) => return fail(m),
            },
            _ => None,
        };
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            return Err(gst::loggable_error!(CAT, "caps before start"));
        };
        let input_size = state.engine.input_size_for((w as u32, h as u32));
        let prepared = match state.engine.prepare(input_size) {
            Ok(p) => p,
            Err(e) => {
                let msg = Self::engine_error(&e);
                self.post_error_message(msg);
                return Err(gst::loggable_error!(CAT, "{}", e));
            }
        };
        let order = match settings.channel_order {
            ChannelOrderChoice::Rgb => ChannelOrder::Rgb,
            ChannelOrderChoice::Bgr => ChannelOrder::Bgr,
        };
        let filter = match settings.resize {
            ResizeChoice::Antialias => ResizeFilter::Antialias,
            ResizeChoice::Bilinear => ResizeFilter::Bilinear,
        };
        let pre = TensorBuilder::new(
            filter,
            format,
            w,
            h,
            (input_size.0 as usize, input_size.1 as usize),
            state.engine.contract.layout,
            order,
            norm,
            matrix,
        );
        let (mw, mh) = (prepared.output_size.0 as usize, prepared.output_size.1 as usize);
        let planes = composite::planes_of(format, w, h);
        let mut scalers = vec![MaskScaler::new((mw, mh), (w, h))];
        if let Some(c) = planes.iter().find(|p| p.chroma) {
            scalers.push(MaskScaler::new((mw, mh), (c.width, c.height)));
        }
        gst::info!(
            CAT,
            imp = self,
            "{mode:?} on {w}x{h} {format:?}: model input {input_size:?}, mask {mw}x{mh}, {:?}",
            prepared.spec
        );
        #[cfg(feature = "cuda")]
        let gpu = self.gpu_frames(
            &state.engine,
            &mut state.gpu_kernels,
            &prepared,
            &in_info,
            PreParams::new(
                format,
                (w, h),
                [0; 3],
                (input_size.0 as usize, input_size.1 as usize),
                state.engine.contract.layout,
                order,
                norm,
                matrix,
            ),
            settings.resize,
            replace_planes.as_deref(),
        );
        #[cfg(feature = "cuda")]
        let on_gpu = gpu.is_some();
        #[cfg(not(feature = "cuda"))]
        let on_gpu = false;
        let pipelined = settings.pipelined && !on_gpu;
        if settings.pipelined && on_gpu {
            gst::info!(
                CAT,
                imp = self,
                "pipelined=true has no effect on the GPU path: frames run in turn"
            );
        }
        state.stream = Some(Stream {
            mode,
            in_info,
            out_info,
            format,
            matrix,
            prepared,
            input: vec![0.0; pre.tensor_len()],
            input_next: if pipelined {
                vec![0.0; pre.tensor_len()]
            } else {
                Vec::new()
            },
            pre,
            prob: vec![0.0; mw * mh],
            blur: planes.iter().map(|_| BlurPlane::default()).collect(),
            planes,
            scalers,
            replace_planes,
            scratch: Scratch::default(),
            pipelined,
            #[cfg(feature = "cuda")]
            gpu,
        });
        state.smoother.reset();
        state.last = None;
        drop(guard);
        let obj = self.obj();
        obj.set_passthrough(false);
        obj.set_in_place(mode.in_place());
        Ok(())
    }

    fn accept_caps(&self, direction: gst::PadDirection, caps: &gst::Caps) -> bool {
        let ok = self.parent_accept_caps(direction, caps);
        if !ok && direction == gst::PadDirection::Sink && caps.is_fixed() {
            let mut refused = self.refused_caps.lock().unwrap();
            if refused.as_ref() != Some(caps) {
                *refused = Some(caps.clone());
                drop(refused);
                let what = caps.structure(0).map(|s| match s.get::<&str>("format") {
                    Ok(f) => format!("{} format {f}", s.name()),
                    Err(_) => s.name().to_string(),
                });
                gst::element_imp_warning!(
                    self,
                    gst::CoreError::Negotiation,
                    (
                        "unetmask cannot handle {}: it takes raw video in RGBA, BGRA, RGBx, BGRx, RGB, BGR, NV12 \
                         or I420 (system memory); put videoconvert before unetmask",
                        what.unwrap_or_else(|| "empty caps".into())
                    ),
                    ["refused caps: {caps}"]
                );
            }
        }
        ok
    }

    /// `mask`/`alpha` write a new frame per buffer: without a pool from downstream, every
    /// frame would be a fresh allocation (page faults for every megabyte), so offer our own
    /// video buffer pool.
    fn decide_allocation(&self, query: &mut gst::query::Allocation) -> Result<(), gst::LoggableError> {
        let has_pool = query.allocation_pools().any(|(pool, ..)| pool.is_some());
        let (caps, _) = query.get_owned();
        if !has_pool
            && let Some(caps) = caps
            && let Ok(info) = gst_video::VideoInfo::from_caps(&caps)
        {
            let pool = gst_video::VideoBufferPool::new();
            let mut config = pool.config();
            config.set_params(Some(&caps), info.size() as u32, 2, 0);
            config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_ref());
            pool.set_config(config)
                .map_err(|e| gst::loggable_error!(CAT, "configuring the output buffer pool: {e}"))?;
            query.add_allocation_pool(Some(&pool), info.size() as u32, 2, 0);
            gst::debug!(
                CAT,
                imp = self,
                "no pool from downstream: using our own for {caps}"
            );
        }
        self.parent_decide_allocation(query)
    }

    fn unit_size(&self, caps: &gst::Caps) -> Option<usize> {
        gst_video::VideoInfo::from_caps(caps).ok().map(|info| info.size())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view() {
            if let Some(state) = self.state.lock().unwrap().as_mut() {
                state.reset_history();
                state.last = None;
                state.since_inference = 0;
                state.held = None;
                state.ready.clear();
            }
            *self.qos_earliest.lock().unwrap() = None;
        } else if event.is_serialized()
            && let Err(e) = self.drain()
        {
            // Flushing or downstream gone: the event would fail the same way.
            gst::debug!(CAT, imp = self, "draining before {:?}: {e:?}", event.type_());
            return false;
        }
        self.parent_sink_event(event)
    }

    fn submit_input_buffer(
        &self,
        is_discont: bool,
        inbuf: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let live = self.settings.lock().unwrap().live;
        if !self.pipelined() {
            return self.parent_submit_input_buffer(is_discont, inbuf);
        }
        self.submit_pipelined(&live, inbuf)
    }

    fn generate_output(
        &self,
    ) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError> {
        use gst_base::subclass::base_transform::GenerateOutputSuccess;
        if !self.pipelined() {
            return self.parent_generate_output();
        }
        let next = self
            .state
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|s| s.ready.pop_front());
        Ok(next.map_or(GenerateOutputSuccess::NoOutput, GenerateOutputSuccess::Buffer))
    }

    fn src_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Qos(q) = event.view() {
            let (_type, _proportion, diff, timestamp) = q.get();
            let earliest = timestamp.map(|ts| {
                if diff > 0 {
                    ts + gst::ClockTime::from_nseconds(2 * diff as u64)
                } else {
                    ts
                }
            });
            gst::trace!(
                CAT,
                imp = self,
                "QoS: diff {diff} ns, frames before {earliest:?} are late"
            );
            *self.qos_earliest.lock().unwrap() = if diff > 0 { earliest } else { None };
        }
        self.parent_src_event(event)
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        if direction == gst::PadDirection::Src
            && let gst::QueryViewMut::Latency(q) = query.view_mut()
        {
            if !BaseTransformImplExt::parent_query(self, direction, q.query_mut()) {
                return false;
            }
            let ours = self
                .state
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|s| s.stream.as_ref())
                .map(|st| {
                    // Pipelined: a frame also waits for the next one.
                    let fps = st.in_info.fps();
                    let frame = if fps.numer() > 0 {
                        Duration::from_nanos(1_000_000_000 * fps.denom() as u64 / fps.numer() as u64)
                    } else {
                        st.prepared.inference_time
                    };
                    st.prepared.inference_time + if st.pipelined { frame } else { Duration::ZERO }
                })
                .unwrap_or(Duration::ZERO);
            let ours = gst::ClockTime::from_nseconds(ours.as_nanos() as u64);
            let (live, min, max) = q.result();
            gst::debug!(CAT, imp = self, "adding {ours} of processing latency");
            q.set(live, min + ours, max.map(|m| m + ours));
            return true;
        }
        BaseTransformImplExt::parent_query(self, direction, query)
    }

    fn transform(
        &self,
        inbuf: &gst::Buffer,
        outbuf: &mut gst::BufferRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.process_to_output(inbuf, outbuf)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.process_in_place(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplets_and_sizes() {
        assert_eq!(parse_triplet("mean", "0.5"), Ok([0.5; 3]));
        assert_eq!(parse_triplet("mean", "1, 2,3"), Ok([1.0, 2.0, 3.0]));
        assert!(parse_triplet("std", "1,2").unwrap_err().contains("std='1,2'"));
        for bad in ["nan", "0.5,NaN,0.5", "inf,1,1", "1,-inf,1"] {
            let e = parse_triplet("mean", bad).unwrap_err();
            assert!(e.contains("not a finite number"), "{bad}: {e}");
        }
        assert_eq!(parse_size(""), Ok(None));
        assert_eq!(parse_size("320x192"), Ok(Some((320, 192))));
        assert!(parse_size("320").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_size("0x10").is_err());
        assert_eq!(rgb_of(0xFFAA01), [255, 170, 1]);
    }
}
