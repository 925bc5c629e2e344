//! One camera's pipeline: source → tee → (raw clip recording) + (decode → unetmask → masks).
//!
//! ```text
//! compressed source (file via parsebin, RTSP via rtspsrc ! parsebin):
//!   src ─ tee ─ queue ─ [h264parse|h265parse] ─ splitmuxsink (mp4mux|matroskamux)
//!             └ queue ─ decodebin ─ videoconvert ─ unetmask mode=meta ─ appsink
//! raw source (test pattern, v4l2):
//!   src ─ tee ─ queue ─ videoconvert ─ x264enc ─ h264parse ─ splitmuxsink
//!             └ queue ─ videoconvert ─ unetmask mode=meta ─ appsink
//! ```

mod mask;
mod preview;
mod record;
mod source;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;

use crate::config::Camera;
use crate::error::{Error, Result};
use crate::recorder::Recorder;

use mask::mask_sink;
pub use mask::unetmask;
use preview::preview_branch;
pub use preview::{display_sink, restream_channel};
pub use record::prepare_output;
pub use source::check_source;
use source::source_element;

/// Live counters of a camera, shared with the streaming threads.
#[derive(Debug, Default)]
pub struct Flow {
    /// Frames that reached the runner from the source (all pipelines of this camera).
    pub received: AtomicU64,
    /// Frames that left the element (all pipelines of this camera).
    pub frames: AtomicU64,
    /// Milliseconds since `epoch` of the last frame; 0: none yet.
    pub last_frame_ms: AtomicU64,
}

pub struct Built {
    pub pipeline: gst::Pipeline,
    /// Where EOS is injected on shutdown (the tee's sink pad, once linked).
    pub entry: Arc<Mutex<Option<gst::Pad>>>,
}

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        Error::Gst(format!(
            "GStreamer element '{factory}' is missing: install the plugin package that provides it"
        ))
    })
}

/// QoS events going upstream end at `pad`. (The probe returns Handled, not Drop: a Rust
/// probe that drops an event leaves its data NULL, which GStreamer 1.22 then unrefs.)
fn stop_upstream_qos(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, |_, info| match info.event() {
        Some(e) if e.type_() == gst::EventType::Qos => gst::PadProbeReturn::Handled,
        _ => gst::PadProbeReturn::Ok,
    });
}

/// What a camera's video branches are built with, whenever its video pad appears.
#[derive(Clone)]
struct Branches {
    cam: Camera,
    recorder: Arc<Mutex<Recorder>>,
    flow: Arc<Flow>,
    epoch: Instant,
    display: Option<gst::Element>,
}

/// Links `pad` (the source's video) into a tee with the two branches; `caps_name` says
/// whether it carries an encoded stream (then recorded as is) or raw video (then encoded).
fn attach_video(pipeline: &gst::Pipeline, pad: &gst::Pad, caps_name: &str, b: &Branches) -> Result<gst::Pad> {
    let Branches {
        cam,
        recorder,
        flow,
        epoch,
        display,
    } = b;
    let (epoch, display) = (*epoch, display.clone());
    // An empty `caps_name`: compressed, codec not known yet.
    let compressed = !caps_name.starts_with("video/x-raw");
    let tee = make("tee")?;
    let q_rec = make("queue")?;
    let q_mask = make("queue")?;
    for q in [&q_rec, &q_mask] {
        q.set_property("max-size-time", 2_000_000_000u64);
        q.set_property("max-size-buffers", 0u32);
        q.set_property("max-size-bytes", 0u32);
    }
    let (rec_chain, unlinked) = record::branch(pipeline, &q_rec, caps_name, compressed, cam, recorder)?;
    let mut mask_chain: Vec<gst::Element> = vec![q_mask.clone()];
    if compressed {
        mask_chain.push(make("decodebin")?);
    }
    let convert = make("videoconvert")?;
    let um = unetmask(cam)?;
    // The element answers lateness by carrying masks; QoS must go no further up, where the
    // converter and the decoder would drop late frames, which then never get a mask and
    // never reach a clip.
    stop_upstream_qos(&um.static_pad("sink").expect("unetmask has a sink pad"));
    let sink = mask_sink(recorder.clone(), flow.clone(), epoch, cam.source.is_live());
    // With a display or a re-stream, a tee after the element feeds the preview branch.
    let preview = if display.is_some() || cam.restream {
        let t = make("tee")?;
        let q = make("queue")?;
        mask_chain.extend([convert.clone(), um, t.clone(), q]);
        let mut branches = preview_branch(cam, display)?;
        branches[0].0 = t;
        branches
    } else {
        mask_chain.extend([convert.clone(), um]);
        Vec::new()
    };
    mask_chain.push(sink.upcast());

    pipeline.add(&tee)?;
    for e in rec_chain.iter().chain(mask_chain.iter()).chain(unlinked.iter()) {
        pipeline.add(e)?;
    }
    for (_, chain) in &preview {
        for e in chain {
            pipeline.add(e)?;
        }
    }
    for (from, chain) in &preview {
        // The head branch's chain starts with the queue the element's tee feeds.
        gst::Element::link_many(chain.iter())?;
        from.link(&chain[0])?;
    }
    gst::Element::link_many(rec_chain.iter())?;
    if compressed {
        // decodebin's pad appears once the stream is typed.
        let conv = convert.clone();
        mask_chain[1].connect_pad_added(move |_, p| {
            if let Some(sinkpad) = conv.static_pad("sink")
                && !sinkpad.is_linked()
                && let Err(e) = p.link(&sinkpad)
            {
                tracing::error!(error = ?e, "cannot link the decoder");
            }
        });
        q_mask.link(&mask_chain[1])?;
        gst::Element::link_many(&mask_chain[2..])?;
    } else {
        gst::Element::link_many(mask_chain.iter())?;
    }
    tee.link(&q_rec)?;
    tee.link(&q_mask)?;
    for e in preview
        .iter()
        .flat_map(|(_, c)| c.iter())
        .chain(rec_chain.iter())
        .chain(mask_chain.iter())
        .chain(unlinked.iter())
        .chain(std::iter::once(&tee))
    {
        e.sync_state_with_parent()?;
    }
    let tee_sink = tee.static_pad("sink").expect("tee has a sink pad");
    let counted = flow.clone();
    tee_sink.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        counted.received.fetch_add(1, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
    pad.link(&tee_sink)
        .map_err(|e| Error::Gst(format!("cannot link the source: {e:?}")))?;
    Ok(tee_sink)
}

fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) {
    if let Ok(f) = make("fakesink") {
        f.set_property("sync", false);
        f.set_property("async", false);
        if pipeline.add(&f).is_ok() {
            let _ = f.sync_state_with_parent();
            if let Some(s) = f.static_pad("sink") {
                let _ = pad.link(&s);
            }
        }
    }
}

/// Builds the camera's pipeline (not started).
pub fn build(cam: &Camera, recorder: Arc<Mutex<Recorder>>, flow: Arc<Flow>, epoch: Instant) -> Result<Built> {
    let display = display_sink(cam)?;
    #[cfg(feature = "fault-injection")]
    if let Some(d) = &display {
        crate::fault::on_display(d);
    }
    let pipeline = gst::Pipeline::with_name(&format!("camera-{}", cam.name));
    let entry: Arc<Mutex<Option<gst::Pad>>> = Arc::new(Mutex::new(None));

    let branches = Branches {
        cam: cam.clone(),
        recorder,
        flow,
        epoch,
        display,
    };
    // A source whose video pad appears later: link its first video pad, discard the rest.
    let dynamic = |src: &gst::Element| {
        let pipeline_weak = pipeline.downgrade();
        let branches = branches.clone();
        let cam = cam.clone();
        let entry = entry.clone();
        src.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipeline_weak.upgrade() else { return };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let mut slot = entry.lock().unwrap_or_else(|e| e.into_inner());
            let name = match source::video_caps_name(&caps, &pad.name()) {
                Some(name) if slot.is_none() => name,
                _ => {
                    tracing::debug!(camera = %cam.name, pad = %pad.name(), caps = %caps, "source pad not used");
                    discard(&pipeline, pad);
                    return;
                }
            };
            tracing::debug!(camera = %cam.name, pad = %pad.name(), caps = %caps, "source video pad");
            match attach_video(&pipeline, pad, &name, &branches) {
                Ok(p) => *slot = Some(p),
                Err(e) => {
                    tracing::error!(camera = %cam.name, error = %e, "cannot build the recording/mask branches");
                    let msg = gst::message::Error::builder(gst::CoreError::Negotiation, &e.to_string()).build();
                    let _ = pipeline.post_message(msg);
                }
            }
        });
    };

    let src = source_element(cam)?;
    #[cfg(feature = "fault-injection")]
    crate::fault::on_source(&src);
    match source::head(&pipeline, cam, &src)? {
        source::Head::Parsed(parse) => dynamic(&parse),
        source::Head::Raw(pad) => {
            let p = attach_video(&pipeline, &pad, "video/x-raw", &branches)?;
            *entry.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
    }
    Ok(Built { pipeline, entry })
}

/// Builds the camera's configured elements (the source and `unetmask`) without starting
/// anything, so that every value the config gives an element is checked by the element's
/// own rules: `check` (the unit's `ExecStartPre=`) catches what would abort a pipeline.
pub fn check_elements(cam: &Camera) -> Result<gst::Element> {
    source_element(cam)?;
    unetmask(cam)
}
