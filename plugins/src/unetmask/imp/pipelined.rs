// SPDX-License-Identifier: MPL-2.0

//! `pipelined=true`: frame n is inferred on a worker while frame n+1 is pre-processed.

use std::time::{Duration, Instant};

use crate::meta::MaskMeta;

use super::process::{
    Element, begin_frame, composite_in_place, element_error, finish_mask, infer, infer_current,
    map_for_reading, render_to_output,
};
use super::settings::Live;
use super::state::{Held, LastMask, State, Stream};
use super::video::frame_of;

/// Pipelined mode: runs the held frame's inference now (no next frame to overlap with)
/// and queues the finished frame.
pub(super) fn complete_held(el: &dyn Element, state: &mut State, live: &Live) -> Result<(), gst::FlowError> {
    let Some(h) = state.held.take() else {
        return Ok(());
    };
    infer_current(el, state)?;
    finish_and_queue(el, state, live, h.buffer, h.index, true)
}

/// Pipelined mode: finishes frame `index` (post-processing if `fresh`, meta,
/// compositing) and queues its output buffer for `generate_output`.
pub(super) fn finish_and_queue(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    buffer: gst::Buffer,
    index: u64,
    fresh: bool,
) -> Result<(), gst::FlowError> {
    let ready = finish_mask(state, live, index, fresh);
    let out = render(el, state, live, buffer, ready)?;
    state.ready.push_back(out);
    Ok(())
}

/// Pipelined mode: the output buffer of `buffer` with its mask.
pub(super) fn render(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    mut buffer: gst::Buffer,
    ready: (LastMask, MaskMeta),
) -> Result<gst::Buffer, gst::FlowError> {
    let mode = state.stream.as_ref().ok_or(gst::FlowError::NotNegotiated)?.mode;
    if mode.in_place() {
        composite_in_place(el, state, live, buffer.make_mut(), Some(ready))?;
        return Ok(buffer);
    }
    let mut out = el.output_buffer(&buffer)?;
    render_to_output(el, state, live, &buffer, out.make_mut(), Some(ready))?;
    Ok(out)
}

/// Pipelined mode, one input buffer. A fresh frame is held until the next one: its
/// inference runs on a worker thread while the next frame is pre-processed here, then
/// it is finished (post-processing, meta, compositing) and queued for `generate_output`.
/// Frames that reuse a mask (inference-interval, QoS) and DISCONT frames first finish
/// the held one, so every frame sees the same masks, smoothing and order as without
/// pipelining.
/// The element drains a DISCONT frame's predecessors before calling this.
pub(super) fn submit(
    el: &dyn Element,
    state: &mut State,
    live: &Live,
    inbuf: gst::Buffer,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let stream = state.stream.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
    let (info, format) = (stream.in_info.clone(), stream.format);
    let (index, fresh) = begin_frame(el, state, live, &inbuf);
    if !fresh {
        complete_held(el, state, live)?;
        finish_and_queue(el, state, live, inbuf, index, false)?;
        return Ok(gst::FlowSuccess::Ok);
    }
    let vframe = map_for_reading(el, inbuf.as_ref(), &info)?;
    let frame = frame_of(&vframe, format);
    let held = state.held.take();
    if held.is_some() && state.worker.is_none() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "unetmask-infer".into())
            .build()
            .map_err(|e| {
                element_error!(
                    el,
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
                let r = infer(el, engine, prepared, input, prob);
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
        finish_and_queue(el, state, live, h.buffer, h.index, true)?;
    }
    state.held = Some(Held { buffer: inbuf, index });
    Ok(gst::FlowSuccess::Ok)
}
