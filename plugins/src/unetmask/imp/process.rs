// SPDX-License-Identifier: MPL-2.0

//! Per frame: whether it gets a fresh mask, the mask, the meta, the compositing.

use std::time::Instant;

use gst_video::VideoFrameExt;

use crate::meta::MaskMeta;
use crate::unetmask::cpu::composite::{self, Look, PlaneGeom, Weights};
use crate::unetmask::cpu::postprocess::MaskStats;
use crate::unetmask::enums::Mode;
use crate::unetmask::frame::Frame;
use crate::unetmask::processor::{ProcessError, Processor};

use super::settings::{Live, rgb_of};
use super::state::{LastMask, State, Stream};
use super::video::{frame_of, strides_of};

/// What the per-frame code needs of the element (implemented in `imp.rs`).
pub(super) trait Element: Sync {
    /// Posts an error message on the bus (the caller then returns `FlowError::Error`).
    fn post_error(&self, msg: gst::ErrorMessage);
    /// Warns that the GPU path failed at `what` and the stream carries on on the CPU.
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

/// A fresh mask for `frame` into `State::mask_u8`, the mask in use from now on.
pub(super) fn make_mask(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    frame: &Frame<'_>,
) -> Result<(), gst::FlowError> {
    let stream = state.stream.as_mut().ok_or(gst::FlowError::NotNegotiated)?;
    let (smoothing, threshold) = (live.smoothing as f32, live.threshold().map(|t| t as f32));
    let (stats, times) = on_processor(el, stream, "mask", |p, _| {
        p.make_mask(&mut state.engine, frame, smoothing, threshold, &mut state.mask_u8)
    })?;
    state.stats.pre += times.pre;
    state.stats.infer += times.infer;
    state.stats.post += times.post;
    store_mask(state, stats);
    Ok(())
}

/// Runs `step` (`what`, for the warning) on the stream's processor, given the stream's plane
/// layout. A device failure moves the stream to the CPU — pre-processing, post-processing
/// and compositing; inference stays on the session's provider — with a warning, and runs
/// `step` there once more. Any other failure is posted and ends the stream.
pub(super) fn on_processor<T>(
    el: &dyn Element,
    stream: &mut Stream,
    what: &str,
    mut step: impl FnMut(&mut Processor, &[PlaneGeom]) -> Result<T, ProcessError>,
) -> Result<T, gst::FlowError> {
    let mut done = step(&mut stream.processor, &stream.planes);
    if let Err(ProcessError::Device(e)) = &done {
        el.gpu_failed(what, e);
        stream.processor = stream.cpu_processor();
        done = step(&mut stream.processor, &stream.planes);
    }
    done.map_err(|e| model_failed(el, e))
}

/// Posts a failure that ends the stream (the model's; on the CPU, any).
pub(super) fn model_failed(el: &dyn Element, e: ProcessError) -> gst::FlowError {
    let msg = match e {
        ProcessError::Model(e) => e.to_string(),
        ProcessError::Device(e) => e,
    };
    element_error!(el, gst::StreamError::Failed, ("{}", msg));
    gst::FlowError::Error
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
    if fresh {
        make_mask(el, state, live, frame)?;
    }
    Ok(mask_meta(state, live, index, fresh))
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
    let (mode, info, spec) = (stream.mode, stream.in_info.clone(), stream.frame);
    let last = if let Some((last, meta)) = ready {
        meta.attach(buf);
        last
    } else {
        // Read-only mapping for the model; the meta goes on the buffer afterwards.
        let buf_ro: &gst::BufferRef = buf;
        let vframe = map_for_reading(el, buf_ro, &info)?;
        let frame = frame_of(&vframe, spec.format);
        let (last, meta) = update_mask(el, state, &live, &frame, buf_ro)?;
        drop(vframe);
        meta.attach(buf);
        last
    };
    let t_post = Instant::now();
    if mode != Mode::Meta {
        let stream = state.stream.as_mut().expect("caps are set");
        let map = last.buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
        let mask_weights = Weights::mask(live.threshold().map(|t| t as f32));
        let (rgb, weights) = match mode {
            Mode::Overlay => {
                let op = (live.overlay_opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
                (live.overlay_color, mask_weights.scaled(op))
            }
            _ => (live.replace_color, mask_weights.inverted()),
        };
        let colors = composite::plane_colors(spec.format, spec.matrix, rgb_of(rgb));
        // Out of the stream while the look borrows it, so that a fall-back can replace the
        // stream's processor; put back below, before an error returns.
        let picture = stream.replace_planes.take();
        let look = Look {
            mask_weights,
            weights,
            colors: &colors,
            blur_radius: (mode == Mode::Blur).then_some(live.blur_radius as usize),
            picture: picture.as_deref().filter(|_| mode == Mode::Replace),
        };
        let mut vframe = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(|_| {
            element_error!(el, gst::StreamError::Failed, ("cannot map the frame for writing"));
            gst::FlowError::Error
        })?;
        let strides = strides_of(vframe.plane_stride());
        let [a, b, c, _] = vframe.planes_data_mut();
        let planes: &mut [&mut [u8]] = &mut [a, b, c];
        let done = on_processor(el, stream, "compositing", |p, geoms| {
            p.composite(&spec, geoms, planes, strides, &map, &look)
        });
        stream.replace_planes = picture;
        done?;
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
    let (mode, in_info, out_info, spec) = (
        stream.mode,
        stream.in_info.clone(),
        stream.out_info.clone(),
        stream.frame,
    );
    let vin = map_for_reading(el, inbuf.as_ref(), &in_info)?;
    let frame = frame_of(&vin, spec.format);
    let (last, meta) = match ready {
        Some(m) => m,
        None => update_mask(el, state, &live, &frame, inbuf)?,
    };
    meta.attach(outbuf);
    let t_post = Instant::now();
    let stream = state.stream.as_mut().expect("caps are set");
    let map = last.buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
    let lut = Weights::mask(live.threshold().map(|t| t as f32));
    let mut vout = gst_video::VideoFrameRef::from_buffer_ref_writable(outbuf, &out_info).map_err(|_| {
        element_error!(el, gst::StreamError::Failed, ("cannot map the output frame"));
        gst::FlowError::Error
    })?;
    let stride = vout.plane_stride()[0] as usize;
    let out = vout.plane_data_mut(0).map_err(|_| gst::FlowError::Error)?;
    on_processor(el, stream, "compositing", |p, _| match mode {
        Mode::Mask => p.render_mask((frame.width, frame.height), &map, &lut, out, stride),
        _ => p.render_alpha(&frame, spec.matrix, &map, &lut, out, stride),
    })?;
    drop(vout);
    finish_frame(el, state, &live, t_post);
    Ok(gst::FlowSuccess::Ok)
}
