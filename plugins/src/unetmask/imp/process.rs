// SPDX-License-Identifier: MPL-2.0

//! Per frame: whether it gets a fresh mask, the mask, the meta, the compositing.

use std::time::Instant;

use gst_video::VideoFrameExt;

use crate::meta::MaskMeta;
use crate::unetmask::Mode;
#[cfg(feature = "cuda")]
use crate::unetmask::cpu::composite::PlaneGeom;
use crate::unetmask::cpu::composite::{self, Target, Weights};
use crate::unetmask::cpu::postprocess::{self, MaskStats};
use crate::unetmask::frame::Frame;
#[cfg(feature = "cuda")]
use crate::unetmask::frame::PixelFormat;
#[cfg(feature = "cuda")]
use crate::unetmask::gpu::frames::{self as gpu_frames, GpuError, GpuFrames};
use crate::unetmask::model::engine::{Engine, Prepared};

use super::settings::{Live, rgb_of};
use super::state::{LastMask, State, Stream};
use super::video::frame_of;
#[cfg(feature = "cuda")]
use super::video::strides_of;

/// What the per-frame code needs of the element (implemented in `imp.rs`).
pub(super) trait Element: Sync {
    /// Posts an error message on the bus (the caller then returns `FlowError::Error`).
    fn post_error(&self, msg: gst::ErrorMessage);
    /// Warns that the GPU path failed at `what` and the stream carries on on the CPU.
    #[cfg(feature = "cuda")]
    fn gpu_failed(&self, what: &str, e: &str);
    /// Whether a frame with `pts` is already late downstream (QoS).
    fn is_late(&self, pts: Option<gst::ClockTime>) -> bool;
    /// Posts the `unetmask-stats` element message.
    fn post_stats(&self, s: gst::Structure);
    /// A new output buffer for `input` (the modes whose output caps differ).
    fn output_buffer(&self, input: &gst::Buffer) -> Result<gst::Buffer, gst::FlowError>;
}

/// `gst::element_imp_error!` for code that sees the element as an [`Element`].
macro_rules! element_error {
    ($el:expr, $domain:expr, ($($msg:tt)*)) => {
        $el.post_error(gst::error_msg!($domain, ($($msg)*)))
    };
}
pub(super) use element_error;

/// Maps an input frame for reading, or posts why it cannot be.
pub(super) fn map_for_reading<'a>(
    el: &dyn Element,
    buf: &'a gst::BufferRef,
    info: &gst_video::VideoInfo,
) -> Result<gst_video::VideoFrameRef<&'a gst::BufferRef>, gst::FlowError> {
    gst_video::VideoFrameRef::from_buffer_ref_readable(buf, info).map_err(|_| {
        element_error!(el, gst::StreamError::Decode, ("cannot map the frame for reading"));
        gst::FlowError::Error
    })
}

/// Counts the frame and decides whether it gets a fresh mask (inference-interval, QoS).
/// Returns the frame's index and whether it is fresh.
pub(super) fn begin_frame(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    buffer: &gst::BufferRef,
) -> (u64, bool) {
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
    let late = live.skip_late && has_mask && el.is_late(buffer.pts());
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
pub(super) fn infer(
    el: &dyn Element,
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
            element_error!(el, gst::StreamError::Failed, ("{}", e));
            gst::FlowError::Error
        })?
        .then_some(())
        .ok_or_else(|| {
            element_error!(el,
                gst::StreamError::Failed,
                ("the model's output size changed between frames; unetmask needs a fixed output size per input size")
            );
            gst::FlowError::Error
        })
}

/// Runs the model on the stream's current tensor (`Stream::input`) into `Stream::prob`,
/// counting the time as inference.
pub(super) fn infer_current(el: &dyn Element, state: &mut State) -> Result<(), gst::FlowError> {
    let stream = state.stream.as_mut().ok_or(gst::FlowError::NotNegotiated)?;
    let t = Instant::now();
    infer(
        el,
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
pub(super) fn finish_mask(state: &mut State, live: &Live, index: u64, fresh: bool) -> (LastMask, MaskMeta) {
    if fresh {
        let t = Instant::now();
        let stream = state.stream.as_mut().expect("caps are set");
        state.smoother.apply(&mut stream.prob, live.smoothing as f32);
        let threshold = live.threshold().map(|t| t as f32);
        state.mask_u8.resize(stream.prob.len(), 0);
        let stats = postprocess::quantize(&stream.prob, threshold, &mut state.mask_u8);
        store_mask(state, stats);
        state.stats.post += t.elapsed();
    }
    mask_meta(state, live, index, fresh)
}

/// The fresh mask in `State::mask_u8` becomes the mask in use.
pub(super) fn store_mask(state: &mut State, stats: MaskStats) {
    let mask = gst::Buffer::from_slice(state.mask_u8.clone());
    state.last = Some(LastMask { buffer: mask, stats });
    state.stats.fresh += 1;
    state.stats.window_fresh += 1;
}

/// The mask in use and the meta that describes it for frame `index`.
pub(super) fn mask_meta(state: &State, live: &Live, index: u64, fresh: bool) -> (LastMask, MaskMeta) {
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
pub(super) fn update_mask(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    frame: &Frame<'_>,
    buffer: &gst::BufferRef,
) -> Result<(LastMask, MaskMeta), gst::FlowError> {
    let (index, fresh) = begin_frame(el, state, live, buffer);
    #[cfg(feature = "cuda")]
    if fresh && mask_on_gpu(el, state, live, frame)? {
        return Ok(mask_meta(state, live, index, fresh));
    }
    if fresh {
        let stream = state.stream.as_mut().expect("caps are set");
        let t0 = Instant::now();
        stream.pre.run(frame, &mut stream.input);
        state.stats.pre += t0.elapsed();
        infer_current(el, state)?;
    }
    Ok(finish_mask(state, live, index, fresh))
}

/// A fresh frame's mask on the GPU path, when the stream has one; `true` when it was
/// made there. A device failure (not the model's) moves the stream to the CPU's pre- and
/// post-processing from this frame on, with a warning.
#[cfg(feature = "cuda")]
pub(super) fn mask_on_gpu(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    frame: &Frame<'_>,
) -> Result<bool, gst::FlowError> {
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
            store_mask(state, stats);
            Ok(true)
        }
        Err(GpuError::Inference(e)) => {
            element_error!(el, gst::StreamError::Failed, ("{}", e));
            Err(gst::FlowError::Error)
        }
        Err(GpuError::Device(e)) => {
            leave_gpu(el, stream, &e, "mask");
            Ok(false)
        }
    }
}

/// A device failure: the stream carries on with pre-processing, post-processing and
/// compositing on the CPU (inference stays on the session's provider), with a warning.
#[cfg(feature = "cuda")]
pub(super) fn leave_gpu(el: &dyn Element, stream: &mut Stream, e: &str, what: &str) {
    el.gpu_failed(what, e);
    stream.gpu = None;
}

/// The in-place modes on the GPU path, on the writable frame `vframe`.
#[cfg(feature = "cuda")]
pub(super) fn composite_on_gpu(
    gpu: &mut GpuFrames,
    vframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    format: PixelFormat,
    geoms: &[PlaneGeom],
    look: &gpu_frames::Look<'_>,
) -> Result<(), String> {
    let (w, h) = (vframe.width() as usize, vframe.height() as usize);
    let strides = strides_of(vframe.plane_stride());
    let [a, b, c, _] = vframe.planes_data_mut();
    gpu.composite_in_place(format, (w, h), &mut [a, b, c], strides, geoms, look)
}

pub(super) fn finish_frame(el: &dyn Element, state: &mut State, live: &Live, t_post: Instant) {
    state.stats.post += t_post.elapsed();
    state.stats.output += 1;
    if live.stats_interval > 0 && state.stats.output.is_multiple_of(live.stats_interval as u64) {
        let s = state.stats_structure();
        state.last_stats = Some(s.clone());
        state.stats.reset_window();
        el.post_stats(s);
    }
}

/// The in-place modes on `buf`, with the mask from `ready` (pipelined) or made now.
pub(super) fn composite_in_place(
    el: &dyn Element,
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
        let vframe = map_for_reading(el, buf_ro, &info)?;
        let frame = frame_of(&vframe, format);
        let (last, meta) = update_mask(el, state, &live, &frame, buf_ro)?;
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
        let mut vframe = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(|_| {
            element_error!(el, gst::StreamError::Failed, ("cannot map the frame for writing"));
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
            match composite_on_gpu(gpu, &mut vframe, format, &stream.planes, &look) {
                Ok(()) => {
                    finish_frame(el, state, &live, t_post);
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(e) => leave_gpu(el, stream, &e, "compositing"),
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
    finish_frame(el, state, &live, t_post);
    Ok(gst::FlowSuccess::Ok)
}

/// `mask` and `alpha` into `outbuf`, with the mask from `ready` (pipelined) or made now.
pub(super) fn render_to_output(
    el: &dyn Element,
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
    let vin = map_for_reading(el, inbuf.as_ref(), &in_info)?;
    let frame = frame_of(&vin, format);
    let (last, meta) = match ready {
        Some(m) => m,
        None => update_mask(el, state, &live, &frame, inbuf)?,
    };
    meta.attach(outbuf);
    let t_post = Instant::now();
    let stream = state.stream.as_mut().unwrap();
    let map = last.buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
    let lut = Weights::mask(live.threshold().map(|t| t as f32));
    let mut vout = gst_video::VideoFrameRef::from_buffer_ref_writable(outbuf, &out_info).map_err(|_| {
        element_error!(el, gst::StreamError::Failed, ("cannot map the output frame"));
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
                finish_frame(el, state, &live, t_post);
                return Ok(gst::FlowSuccess::Ok);
            }
            Err(e) => leave_gpu(el, stream, &e, "compositing"),
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
    finish_frame(el, state, &live, t_post);
    Ok(gst::FlowSuccess::Ok)
}
