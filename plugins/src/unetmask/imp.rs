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
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::cpu::composite;
use super::cpu::preprocess::ResizeFilter;
use super::cpu::processor::CpuProcessor;
use super::debug::CAT;
use super::enums::{ChannelOrderChoice, Mode, ResizeChoice, SpinChoice};
use super::frame::FrameSpec;
use super::model::contract::{ChannelOrder, TensorSpec};
use super::model::engine::{Engine, EngineConfig, EngineError};
use super::processor::Processor;

mod pipelined;
mod process;
mod properties;
mod settings;
mod state;
mod stats;
mod video;

use settings::{Live, Settings};
use state::{State, Stream};
use stats::Stats;
use video::FORMATS;

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
    /// The checked engine configuration of the current settings (the public wrapper's
    /// `engine_config`).
    pub(super) fn current_engine_config(&self) -> Result<EngineConfig, super::enums::SettingError> {
        let settings = self.settings.lock().unwrap().clone();
        settings.checked().map(|(config, _)| config)
    }

    /// Opens `cfg`'s model as the element runs it: on a GPU, with the session on the CUDA
    /// stream the element's kernels will use.
    pub(super) fn open_engine(cfg: &EngineConfig) -> Result<Engine, EngineError> {
        #[cfg(feature = "cuda")]
        let stream_on: &super::model::engine::StreamOn = &super::gpu::launch::stream_on;
        #[cfg(not(feature = "cuda"))]
        let stream_on: &super::model::engine::StreamOn = &|_| None;
        Engine::open_on(cfg, stream_on)
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

    /// Pipelined mode, one input buffer: see `pipelined::submit`.
    fn submit_pipelined(&self, live: &Live, inbuf: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if inbuf.flags().contains(gst::BufferFlags::DISCONT) {
            // Pushed from here, not through `generate_output`: the base class marks the
            // next buffer it outputs after a DISCONT input as DISCONT, and the held frame
            // is not one.
            self.drain()?;
        }
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        pipelined::submit(self, state, live, inbuf)
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
            pipelined::complete_held(self, state, &live)?;
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

    /// In-place modes: the frame is modified (or not, in meta mode) where it is.
    fn process_in_place(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let live = self.settings.lock().unwrap().live;
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        process::composite_in_place(self, state, &live, buf, None)
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
        process::render_to_output(self, state, &live, inbuf, outbuf, None)
    }
}

/// What the per-frame code needs of the element, so that it does not import it.
impl process::Element for UnetMask {
    fn post_error(&self, msg: gst::ErrorMessage) {
        self.post_error_message(msg);
    }

    fn gpu_failed(&self, what: &str, e: &str) {
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Failed,
            ("the GPU path failed ({what}: {e}); carrying on with pre/post-processing on the CPU")
        );
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

    fn post_stats(&self, s: gst::Structure) {
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn output_buffer(&self, input: &gst::Buffer) -> Result<gst::Buffer, gst::FlowError> {
        use gst_base::subclass::base_transform::{InputBuffer, PrepareOutputBufferSuccess};
        match self.parent_prepare_output_buffer(InputBuffer::Readable(input))? {
            PrepareOutputBufferSuccess::Buffer(b) => Ok(b),
            PrepareOutputBufferSuccess::InputBuffer => Err(gst::FlowError::NotSupported),
        }
    }
}

impl ObjectImpl for UnetMask {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(properties::specs);
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
            "spin" => s.spin = value.get().unwrap(),
            "spin-wait" => {
                s.spin = match value.get().unwrap() {
                    true => SpinChoice::Always,
                    false => SpinChoice::Never,
                }
            }
            "pipelined" => s.pipelined = value.get().unwrap(),
            "gpu-path" => s.gpu_path = value.get().unwrap(),
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
            "spin" => s.spin.to_value(),
            "spin-wait" => (s.spin == SpinChoice::Always).to_value(),
            "pipelined" => s.pipelined.to_value(),
            "gpu-path" => s.gpu_path.to_value(),
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
                    None => Stats::default().structure("none", "none", None).to_value(),
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
        let (cfg, _) = settings
            .checked()
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
        let mut engine = Self::open_engine(&cfg).map_err(|e| Self::engine_error(&e))?;
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
        let Some(format) = video::pixel_format(in_info.format()) else {
            return fail(format!(
                "unetmask cannot handle format {:?}: use one of {FORMATS:?} (add videoconvert before it)",
                in_info.format()
            ));
        };
        let settings = self.settings.lock().unwrap().clone();
        let mode = settings.mode;
        let (w, h) = (in_info.width() as usize, in_info.height() as usize);
        let matrix = video::matrix_of(&in_info);
        let norm = match settings.normalization() {
            Ok(n) => n,
            Err(e) => return fail(e.reason),
        };
        let replace_planes = match (&settings.replace_image, mode) {
            (Some(p), Mode::Replace) => match video::load_replace_image(p, format, matrix, w, h) {
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
        let (mw, mh) = prepared.output_size;
        gst::info!(
            CAT,
            imp = self,
            "{mode:?} on {w}x{h} {format:?}: model input {input_size:?}, mask {mw}x{mh}, {:?}",
            prepared.spec
        );
        let frame = FrameSpec {
            format,
            width: w,
            height: h,
            matrix,
        };
        let tensor = TensorSpec {
            size: (input_size.0 as usize, input_size.1 as usize),
            layout: state.engine.contract.layout,
            order,
            norm,
        };
        #[cfg_attr(not(any(feature = "cuda", test)), allow(unused_mut))]
        let mut stream = Stream {
            mode,
            in_info,
            out_info,
            frame,
            tensor,
            filter,
            prepared,
            planes: composite::planes_of(format, w, h),
            replace_planes,
            pipelined: settings.pipelined,
            processor: Processor::Cpu(CpuProcessor::new(
                &frame,
                &tensor,
                filter,
                &prepared,
                settings.pipelined,
            )),
        };
        // The one place the GPU build differs: the stream moves to the GPU when it can.
        #[cfg(feature = "cuda")]
        if !settings.gpu_path && state.engine.cuda_device.is_some() {
            gst::info!(
                CAT,
                imp = self,
                "gpu-path=false: pre- and post-processing and compositing on the CPU, inference on {}",
                state.engine.provider
            );
        } else if let Some(gpu) = state::gpu_processor(
            self.obj().upcast_ref(),
            &state.engine,
            &mut state.gpu_kernels,
            &stream,
        ) {
            stream.processor = gpu;
            if stream.pipelined {
                gst::info!(
                    CAT,
                    imp = self,
                    "pipelined=true has no effect on the GPU path: frames run in turn"
                );
                stream.pipelined = false;
            }
        }
        #[cfg(test)]
        if tests::FAILING_GPU.get() {
            stream.processor = Processor::FailingGpu;
            stream.pipelined = false;
        }
        state.stream = Some(stream);
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
    use std::cell::Cell;

    use gst::prelude::*;

    thread_local! {
        /// The next caps negotiated on this thread put the stream on a GPU path that fails
        /// at every step ([`Processor::FailingGpu`]).
        pub(super) static FAILING_GPU: Cell<bool> = const { Cell::new(false) };
    }

    /// Three 64x48 RGBA frames through `unetmask mode=<mode>`: the output bytes, the
    /// warnings posted, and where the stats say pre- and post-processing ran.
    fn run(mode: &str, failing_gpu: bool) -> (Vec<Vec<u8>>, Vec<String>, String) {
        static REGISTERED: std::sync::Once = std::sync::Once::new();
        gst::init().unwrap();
        REGISTERED.call_once(|| crate::plugin_register_static().unwrap());
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/selfie_segmentation_256x256.onnx"
        );
        let mut h = gst_check::Harness::new_parse(&format!(
            "unetmask model={model} mode={mode} device=cpu threads=1 stats-interval=1"
        ));
        let element = h.element().unwrap();
        let bus = gst::Bus::new();
        element.set_bus(Some(&bus));
        // The caps reach `set_caps` on this thread, when the harness sets them.
        FAILING_GPU.set(failing_gpu);
        h.set_src_caps_str("video/x-raw,format=RGBA,width=64,height=48,framerate=30/1");
        let mut out = Vec::new();
        for k in 0..3u8 {
            let data: Vec<u8> = (0..64 * 48 * 4).map(|i| (i as u8).wrapping_mul(k + 3)).collect();
            let buf = h
                .push_and_pull(gst::Buffer::from_mut_slice(data))
                .expect("a frame out");
            out.push(buf.map_readable().unwrap().to_vec());
        }
        FAILING_GPU.set(false);
        let warnings = std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Warning]))
            .map(|m| match m.view() {
                gst::MessageView::Warning(w) => w.error().to_string(),
                _ => unreachable!(),
            })
            .collect();
        let unetmask = element
            .downcast_ref::<gst::Bin>()
            .and_then(|b| b.iterate_elements().next().ok().flatten())
            .unwrap_or(element);
        let stats = unetmask.property::<gst::Structure>("stats");
        (out, warnings, stats.get::<String>("processing").unwrap())
    }

    /// A device failure mid-stream moves the stream to the CPU once, with one warning, and
    /// every frame comes out as the CPU path makes it: in a mode that composites in place
    /// (the mask, then compositing, fail), and in both modes that render a new frame.
    #[test]
    fn a_failing_gpu_path_falls_back_to_the_cpu_once_and_loses_no_frame() {
        for mode in ["overlay", "mask", "alpha"] {
            let (cpu, none, path) = run(mode, false);
            assert!(none.is_empty() && path == "cpu", "{mode}: {none:?} {path}");
            let (fell_back, warnings, path) = run(mode, true);
            assert_eq!(fell_back, cpu, "{mode}: every frame as the CPU path makes it");
            assert_eq!(path, "cpu", "{mode}: the stream is on the CPU after the failure");
            assert_eq!(warnings.len(), 1, "{mode}: one warning: {warnings:?}");
            assert!(
                warnings[0].contains("the GPU path failed (mask: injected device failure)"),
                "{mode}: {warnings:?}"
            );
        }
    }
}
