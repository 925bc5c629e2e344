// SPDX-License-Identifier: MPL-2.0

//! `pipelined=true`: frame n is inferred on a worker while frame n+1 is pre-processed.

use std::time::Duration;

use crate::meta::MaskMeta;
use crate::unetmask::cpu::processor::CpuProcessor;
use crate::unetmask::processor::ProcessError;

use super::process::{
    Element, begin_frame, composite_in_place, element_error, map_for_reading, mask_meta, model_failed,
    render_to_output, store_mask,
};
use super::settings::Live;
use super::state::{Held, LastMask, State};
use super::video::frame_of;

/// The stream's CPU processor: pipelined mode is the CPU path's (`set_caps` turns it off on
/// the GPU path).
fn cpu(state: &mut State) -> Result<&mut CpuProcessor, gst::FlowError> {
    let stream = state.stream.as_mut().ok_or(gst::FlowError::NotNegotiated)?;
    stream.processor.cpu().ok_or(gst::FlowError::NotSupported)
}

/// After the held frame's inference: smoothing and quantisation make the mask in use.
/// Then, for every frame, the meta that describes the mask in use.
fn finish_mask(
    state: &mut State,
    live: &Live,
    index: u64,
    fresh: bool,
) -> Result<(LastMask, MaskMeta), gst::FlowError> {
    if fresh {
        let threshold = live.threshold().map(|t| t as f32);
        let mut mask = std::mem::take(&mut state.mask_u8);
        let (stats, post) = cpu(state)?.finish(live.smoothing as f32, threshold, &mut mask);
        state.mask_u8 = mask;
        store_mask(state, stats);
        state.stats.post += post;
    }
    Ok(mask_meta(state, live, index, fresh))
}

/// Pipelined mode: runs the held frame's inference now (no next frame to overlap with)
/// and queues the finished frame.
pub(super) fn complete_held(el: &dyn Element, state: &mut State, live: &Live) -> Result<(), gst::FlowError> {
    let Some(h) = state.held.take() else {
        return Ok(());
    };
    let State { engine, stream, .. } = state;
    let cpu = stream.as_mut().and_then(|s| s.processor.cpu());
    let cpu = cpu.ok_or(gst::FlowError::NotNegotiated)?;
    let infer = cpu
        .infer(engine)
        .map_err(|e| model_failed(el, ProcessError::Model(e)))?;
    state.stats.infer += infer;
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
    let ready = finish_mask(state, live, index, fresh)?;
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
    let (info, format) = (stream.in_info.clone(), stream.frame.format);
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
        worker,
        ..
    } = state;
    let cpu = stream.as_mut().and_then(|s| s.processor.cpu());
    let cpu = cpu.ok_or(gst::FlowError::NotNegotiated)?;
    let (pre, infer) = match (&held, worker.as_ref()) {
        (Some(_), Some(worker)) => cpu
            .infer_while_preprocessing(engine, worker, &frame)
            .map_err(|e| model_failed(el, ProcessError::Model(e)))?,
        _ => (cpu.preprocess(&frame), Duration::ZERO),
    };
    state.stats.pre += pre;
    state.stats.infer += infer;
    drop(vframe);
    if let Some(h) = held {
        finish_and_queue(el, state, live, h.buffer, h.index, true)?;
    }
    state.held = Some(Held { buffer: inbuf, index });
    Ok(gst::FlowSuccess::Ok)
}
