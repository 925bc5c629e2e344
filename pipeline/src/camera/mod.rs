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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;

use crate::clip::FrameSummary;
use crate::config::{Camera, Source};
use crate::error::{Error, Result};
use crate::props;
use crate::recorder::{MaskFrame, Recorder};
use crate::timing::DtsGuard;

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

/// Creates the `unetmask` element configured for `cam`, in `meta` mode. Every value is
/// checked against the element's own ranges, nicks and start-up rules: a bad one is a
/// configuration error naming its key (`check` and `run` build this before any pipeline
/// starts), never an abort inside a `pad-added` handler.
pub fn unetmask(cam: &Camera) -> Result<gst::Element> {
    let m = &cam.model;
    let e = make("unetmask")?;
    let key = |k: &str| format!("cameras.{}.model.{k}", cam.name);
    props::set_str(&e, &key("path"), "model", &m.path.to_string_lossy())?;
    // 0: this camera's share of the cores, within what the element allows (a host with
    // more cores than its maximum gets the maximum, not a refusal).
    let threads = match m.threads {
        0 => props::clamp_u32(&e, "threads", m.auto_threads),
        n => n,
    };
    props::set(&e, &key("threads"), "threads", threads)?;
    props::set_str(&e, "mode", "mode", "meta")?;
    props::set(&e, &key("threshold"), "threshold", m.threshold)?;
    props::set(
        &e,
        &key("inference_interval"),
        "inference-interval",
        m.inference_interval,
    )?;
    props::set(&e, &key("pipelined"), "pipelined", m.pipelined)?;
    let stats_every = match &cam.source {
        Source::TestPattern { fps, .. } => *fps,
        _ => 30,
    };
    props::set(&e, "stats_interval", "stats-interval", stats_every)?;
    // Text values: config key, property, value. The same table names the key of a value
    // the element refuses only when it starts (below).
    let texts = [
        ("device", "device", Some(&m.device)),
        ("resize", "resize", m.resize.as_ref()),
        ("layout", "layout", m.layout.as_ref()),
        ("channel_order", "channel-order", m.channel_order.as_ref()),
        ("activation", "output-activation", m.activation.as_ref()),
        ("input_size", "input-size", m.input_size.as_ref()),
        ("mean", "mean", m.mean.as_ref()),
        ("std", "std", m.std.as_ref()),
    ];
    for (k, prop, v) in texts {
        if let Some(v) = v {
            props::set_str(&e, &key(k), prop, v)?;
        }
    }
    if let Some(p) = m.person_class {
        props::set(&e, &key("person_class"), "person-class", p)?;
    }
    if let Some(s) = m.scale {
        props::set(&e, &key("scale"), "scale", s)?;
    }
    // What the element refuses only when it starts (device, input size, mean, std).
    let element = e
        .downcast_ref::<gstunetmask::unetmask::UnetMask>()
        .expect("the unetmask factory makes UnetMask elements");
    if let Err(bad) = element.check_settings() {
        let (k, _, v) = texts
            .into_iter()
            .find(|(_, prop, _)| *prop == bad.property)
            .unwrap_or(texts[0]);
        return Err(Error::invalid(
            key(k),
            format!("\"{}\"", v.map_or("", String::as_str)),
            bad.reason,
        ));
    }
    Ok(e)
}

fn png_gray(data: &[u8], w: u32, h: u32) -> Option<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::with_capacity(data.len() / 4);
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    )
    .write_image(data, w, h, image::ExtendedColorType::L8)
    .ok()?;
    Some(out)
}

/// The mask branch's end. For a live source it syncs to the clock and sends QoS upstream,
/// so that an element that falls behind skips inference for late frames (their masks are
/// carried over, counted) instead of holding back the tee and, through it, the recording
/// and the camera's connection; no mask is dropped for lateness (`max-lateness` -1). A
/// file is processed as fast as it goes.
fn mask_sink(
    recorder: Arc<Mutex<Recorder>>,
    flow: Arc<Flow>,
    epoch: Instant,
    live: bool,
) -> gst_app::AppSink {
    let sink = gst_app::AppSink::builder()
        .sync(live)
        .max_lateness(-1)
        .max_buffers(4)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let Some(meta) = gstunetmask::meta::MaskMeta::from_buffer(buffer) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let info = sample
                        .caps()
                        .and_then(|c| gst_video::VideoInfo::from_caps(c).ok());
                    let frame_size = info.map_or((0, 0), |i| (i.width(), i.height()));
                    let pts = buffer.pts().map_or(0, |p| p.nseconds());
                    let rt = sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                        .and_then(|s| s.to_running_time(buffer.pts()))
                        .map_or(pts, |r| r.nseconds());
                    let png = {
                        let map = meta.mask.map_readable().map_err(|_| gst::FlowError::Error)?;
                        png_gray(&map, meta.width, meta.height).ok_or(gst::FlowError::Error)?
                    };
                    flow.frames.fetch_add(1, Ordering::Relaxed);
                    flow.last_frame_ms
                        .store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                    let frame = MaskFrame {
                        running_time: rt,
                        summary: FrameSummary {
                            pts,
                            fresh: meta.fresh,
                            coverage: meta.coverage,
                            uncertain: meta.uncertain,
                        },
                        png,
                        mask_size: (meta.width, meta.height),
                        threshold: meta.threshold,
                        frame_size,
                    };
                    recorder
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_mask(frame);
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(|_| tracing::debug!("mask branch reached EOS"))
                .build(),
        )
        .build();
    sink.set_property("qos", live);
    sink
}

/// In-memory mode (capture policies): the recording branch ends here, every compressed
/// buffer goes to the recorder's pre-roll ring with its running time.
fn video_sink(recorder: Arc<Mutex<Recorder>>) -> gst_app::AppSink {
    let mut last_rt = 0u64;
    gst_app::AppSink::builder()
        .sync(false)
        .enable_last_sample(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps_owned()) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let ts = buffer.pts().or(buffer.dts());
                    let rt = sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                        .and_then(|s| s.to_running_time(ts))
                        .or(ts)
                        .map_or(last_rt, |r| r.nseconds());
                    last_rt = rt;
                    recorder
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_video(buffer, rt, &caps);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build()
}

/// rtspsrc's jitter buffer latency, milliseconds.
const RTSP_LATENCY_MS: u32 = 200;

/// The parser for a compressed stream of the recording branch; in memory mode it repeats
/// the parameter sets at every key frame so that a clip can start at any GOP.
fn parser(caps_name: &str, in_memory: bool) -> Result<Option<gst::Element>> {
    let p = match caps_name {
        "video/x-h264" => make("h264parse")?,
        "video/x-h265" => make("h265parse")?,
        _ => return Ok(None),
    };
    if in_memory {
        p.set_property("config-interval", -1i32);
    }
    Ok(Some(p))
}

fn splitmux(cam: &Camera, recorder: &Arc<Mutex<Recorder>>) -> Result<gst::Element> {
    let rec = &cam.recording;
    let s = make("splitmuxsink")?;
    s.set_property("muxer-factory", rec.container.muxer());
    s.set_property("max-size-time", rec.clip_duration.as_nanos() as u64);
    s.set_property("max-size-bytes", rec.clip_max_bytes);
    s.set_property("send-keyframe-requests", true);
    let r = recorder.clone();
    s.connect("format-location", false, move |_| {
        let loc = r.lock().unwrap_or_else(|e| e.into_inner()).next_location();
        Some(loc.to_string_lossy().to_string().to_value())
    });
    Ok(s)
}

/// Removes a clock offset between the camera's DTS and PTS before the muxer sees it
/// ([`DtsGuard`]); starts over at every discontinuity (a reconnect).
fn guard_dts(queue: &gst::Element, camera: &str) {
    let guard = Mutex::new(DtsGuard::default());
    let camera = camera.to_string();
    let pad = queue.static_pad("src").expect("queue has a src pad");
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(buf)) = info.data.as_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
        if buf.flags().contains(gst::BufferFlags::DISCONT) {
            *g = DtsGuard::default();
        }
        let known = g.shift().is_some();
        let (pts, dts) = (buf.pts().map(|t| t.nseconds()), buf.dts().map(|t| t.nseconds()));
        let fixed = g.fix(pts, dts);
        if !known && let Some(shift) = g.shift().filter(|&s| s != 0) {
            tracing::warn!(
                camera = %camera,
                gap_s = shift as f64 / 1e9,
                "the stream's DTS runs behind its PTS by more than any reordering: recording with the DTS moved up \
                 (mp4 clips would otherwise play as empty)"
            );
        }
        if fixed != dts {
            buf.make_mut().set_dts(fixed.map(gst::ClockTime::from_nseconds));
        }
        gst::PadProbeReturn::Ok
    });
}

/// The name of the `intervideosink`/`intervideosrc` channel that carries a camera's
/// processed video to the runner's RTSP server.
pub fn restream_channel(camera: &str) -> String {
    format!("edgemask-{camera}")
}

/// The on-screen display sink of `cam`, created and checked before the pipeline is built:
/// a missing element, no display to show on, or a sink that cannot open its display is an
/// [`Error::Display`] for this camera only (the other cameras go on). `autovideosink` is
/// not even tried without a display: with none, some of its candidates crash the process.
pub fn display_sink(cam: &Camera) -> Result<Option<gst::Element>> {
    let Some(name) = cam.display.as_deref() else {
        return Ok(None);
    };
    let err = |reason: String| Error::Display {
        camera: cam.name.clone(),
        reason,
    };
    let env_set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if name == "autovideosink"
        && !env_set("DISPLAY")
        && !env_set("WAYLAND_DISPLAY")
        && !Path::new("/dev/dri").exists()
    {
        return Err(err(
            "no display available (DISPLAY and WAYLAND_DISPLAY are unset and there is no /dev/dri): \
             run it in a graphical session, or set display = false, or name a sink (display = \"<element>\")"
                .into(),
        ));
    }
    let sink = gst::ElementFactory::make(name).build().map_err(|_| {
        err(format!(
            "video sink element '{name}' does not exist: install the plugin that provides it, or choose another"
        ))
    })?;
    // Opening the display happens on NULL→READY: try it in a scratch pipeline to get the reason.
    let scratch = gst::Pipeline::new();
    scratch.add(&sink)?;
    let ready = scratch.set_state(gst::State::Ready);
    let reason = scratch
        .bus()
        .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(crate::redact::redact(&e.error().to_string())),
            _ => None,
        });
    let _ = scratch.set_state(gst::State::Null);
    scratch.remove(&sink)?;
    if ready.is_err() {
        return Err(err(format!(
            "video sink '{name}' cannot open its display: {}",
            reason.unwrap_or_else(|| "it refused to start".into())
        )));
    }
    Ok(Some(sink))
}

/// Tints the person (mask from the buffer's `GstUnetMaskMeta`, at frame size) yellow at 50 %
/// in an RGBx frame, in place.
fn tint(buffer: &mut gst::BufferRef, info: &gst_video::VideoInfo) {
    let Some(meta) = gstunetmask::meta::MaskMeta::from_buffer(buffer) else {
        return;
    };
    let (w, h) = (info.width() as usize, info.height() as usize);
    let stride = info.stride()[0] as usize;
    let mask = meta.to_frame_size(w, h);
    let Ok(mut map) = buffer.map_writable() else {
        return;
    };
    for (y, mrow) in mask.chunks_exact(w).enumerate().take(h) {
        let Some(row) = map.get_mut(y * stride..y * stride + w * 4) else {
            return;
        };
        for (px, &m) in row.chunks_exact_mut(4).zip(mrow) {
            if m > 127 {
                px[0] = ((px[0] as u16 + 255) / 2) as u8;
                px[1] = ((px[1] as u16 + 255) / 2) as u8;
                px[2] /= 2;
            }
        }
    }
}

/// QoS events going upstream end at `pad`. (The probe returns Handled, not Drop: a Rust
/// probe that drops an event leaves its data NULL, which GStreamer 1.22 then unrefs.)
fn stop_upstream_qos(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, |_, info| match info.event() {
        Some(e) if e.type_() == gst::EventType::Qos => gst::PadProbeReturn::Handled,
        _ => gst::PadProbeReturn::Ok,
    });
}

/// The preview branch after the element: a leaky queue (it never holds back the recording
/// or the masks), conversion to RGBx, the person tinted from the mask meta (the model does
/// not run again), then the display sink and/or an `intervideosink` for the RTSP server.
fn preview_branch(
    cam: &Camera,
    display: Option<gst::Element>,
) -> Result<Vec<(gst::Element, Vec<gst::Element>)>> {
    let q = make("queue")?;
    q.set_property_from_str("leaky", "downstream");
    q.set_property("max-size-buffers", 2u32);
    q.set_property("max-size-time", 0u64);
    q.set_property("max-size-bytes", 0u32);
    // A synced display that falls behind sends QoS upstream; through the tee it would
    // reach the element, which then skips inference for the recorded frames too. The
    // preview's lateness stays in the preview: its leaky queues drop frames instead.
    stop_upstream_qos(&q.static_pad("sink").expect("queue has a sink pad"));
    let convert = make("videoconvert")?;
    let caps = make("capsfilter")?;
    caps.set_property(
        "caps",
        gst::Caps::builder("video/x-raw").field("format", "RGBx").build(),
    );
    let srcpad = caps.static_pad("src").expect("capsfilter has a src pad");
    srcpad.add_probe(gst::PadProbeType::BUFFER, |pad, info| {
        if let Some(info_caps) = pad.current_caps()
            && let Ok(vinfo) = gst_video::VideoInfo::from_caps(&info_caps)
            && let Some(gst::PadProbeData::Buffer(buffer)) = info.data.as_mut()
        {
            tint(buffer.make_mut(), &vinfo);
        }
        gst::PadProbeReturn::Ok
    });
    let tee = make("tee")?;
    let head = vec![q.clone(), convert, caps, tee.clone()];
    let mut outs = Vec::new();
    if let Some(sink) = display {
        let q = make("queue")?;
        q.set_property_from_str("leaky", "downstream");
        q.set_property("max-size-buffers", 2u32);
        outs.push(vec![q, make("videoconvert")?, sink]);
    }
    if cam.restream {
        let q = make("queue")?;
        q.set_property_from_str("leaky", "downstream");
        q.set_property("max-size-buffers", 2u32);
        let sink = make("intervideosink")?;
        sink.set_property("channel", restream_channel(&cam.name));
        sink.set_property("sync", false);
        outs.push(vec![q, sink]);
    }
    Ok(std::iter::once((q, head))
        .chain(outs.into_iter().map(|o| (tee.clone(), o)))
        .collect())
}

/// Links `pad` (the source's video) into a tee with the two branches; `compressed` says
/// whether it carries an encoded stream (then recorded as is) or raw video (then encoded).
#[allow(clippy::too_many_arguments)]
fn attach_video(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    caps_name: &str,
    cam: &Camera,
    recorder: &Arc<Mutex<Recorder>>,
    flow: &Arc<Flow>,
    epoch: Instant,
    display: Option<gst::Element>,
) -> Result<gst::Pad> {
    // An empty `caps_name`: compressed, codec not known yet.
    let compressed = !caps_name.starts_with("video/x-raw");
    let mut unlinked: Option<gst::Element> = None;
    let tee = make("tee")?;
    let q_rec = make("queue")?;
    let q_mask = make("queue")?;
    for q in [&q_rec, &q_mask] {
        q.set_property("max-size-time", 2_000_000_000u64);
        q.set_property("max-size-buffers", 0u32);
        q.set_property("max-size-bytes", 0u32);
    }
    let mut rec_chain: Vec<gst::Element> = vec![q_rec.clone()];
    let in_memory = recorder.lock().unwrap_or_else(|e| e.into_inner()).in_memory();
    if cam.recording.enabled {
        if compressed {
            if caps_name.is_empty() {
                unlinked = Some(make("parsebin")?);
            } else if let Some(p) = parser(caps_name, in_memory)? {
                rec_chain.push(p);
            }
        } else {
            let fps = match &cam.source {
                Source::TestPattern { fps, .. } => *fps,
                _ => 30,
            };
            let enc = make("x264enc")?;
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property("key-int-max", fps.max(1));
            enc.set_property("threads", 1u32);
            rec_chain.extend([make("videoconvert")?, enc, make("h264parse")?]);
        }
        let sink: gst::Element = if in_memory {
            video_sink(recorder.clone()).upcast()
        } else {
            if compressed {
                guard_dts(&q_rec, &cam.name);
            }
            splitmux(cam, recorder)?
        };
        if let Some(parsebin) = unlinked.take() {
            rec_chain.push(parsebin.clone());
            let sink_weak = sink.downgrade();
            let pipeline_weak = pipeline.downgrade();
            parsebin.connect_pad_added(move |_, p| {
                let (Some(sink), Some(pipeline)) = (sink_weak.upgrade(), pipeline_weak.upgrade()) else {
                    return;
                };
                let caps = p.current_caps().unwrap_or_else(|| p.query_caps(None));
                let Some(name) = caps
                    .structure(0)
                    .map(|s| s.name().to_string())
                    .filter(|n| n.starts_with("video/"))
                else {
                    return;
                };
                let target = if in_memory {
                    // A parser that repeats the parameter sets, then the ring's appsink.
                    let sinkpad = sink.static_pad("sink").expect("appsink has a sink pad");
                    match parser(&name, true) {
                        Ok(Some(parse)) => {
                            let linked = pipeline.add(&parse).is_ok()
                                && parse.link(&sink).is_ok()
                                && parse.sync_state_with_parent().is_ok();
                            if !linked {
                                tracing::error!("cannot insert the parser of the recording branch");
                                return;
                            }
                            parse.static_pad("sink")
                        }
                        _ => Some(sinkpad),
                    }
                } else {
                    sink.request_pad_simple("video")
                };
                match target {
                    Some(target) => {
                        if let Err(e) = p.link(&target) {
                            tracing::error!(error = ?e, "cannot link the parsed stream to the recording sink");
                        }
                    }
                    None => tracing::error!("the recording sink gives no video pad"),
                }
            });
            // Added to the pipeline below with the rest, linked when parsebin has typed the stream.
            unlinked = Some(sink);
        } else {
            rec_chain.push(sink);
        }
    } else {
        let fake = make("fakesink")?;
        fake.set_property("sync", false);
        fake.set_property("async", false);
        rec_chain.push(fake);
    }
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

    // A source whose video pad appears later: link its first video pad, discard the rest.
    let dynamic = |src: &gst::Element| {
        let pipeline_weak = pipeline.downgrade();
        let cam = cam.clone();
        let rec = recorder.clone();
        let flow = flow.clone();
        let entry = entry.clone();
        let display = display.clone();
        src.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipeline_weak.upgrade() else { return };
            // Fixed caps name the codec; otherwise (a parser before the stream is known)
            // the codec is decided by a parsebin in the recording branch.
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let name = if caps.is_fixed() {
                caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default()
            } else if !caps.is_any() && !caps.is_empty() && caps.iter().all(|s| s.name().starts_with("video/x-raw")) {
                "video/x-raw".to_string()
            } else {
                String::new()
            };
            // Unfixed caps that are all video (a demuxer's parser that has not settled its
            // stream-format yet, e.g. MPEG-TS through parsebin) are video too.
            let all_video =
                !caps.is_any() && !caps.is_empty() && caps.iter().all(|s| s.name().starts_with("video/"));
            let is_video = name.starts_with("video/") || pad.name().starts_with("video") || all_video;
            let mut slot = entry.lock().unwrap_or_else(|e| e.into_inner());
            if !is_video || slot.is_some() {
                tracing::debug!(camera = %cam.name, pad = %pad.name(), caps = %caps, "source pad not used");
                discard(&pipeline, pad);
                return;
            }
            tracing::debug!(camera = %cam.name, pad = %pad.name(), caps = %caps, "source video pad");
            match attach_video(&pipeline, pad, &name, &cam, &rec, &flow, epoch, display.clone()) {
                Ok(p) => *slot = Some(p),
                Err(e) => {
                    tracing::error!(camera = %cam.name, error = %e, "cannot build the recording/mask branches");
                    let msg = gst::message::Error::builder(gst::CoreError::Negotiation, &e.to_string()).build();
                    let _ = pipeline.post_message(msg);
                }
            }
        });
    };

    // Raw sources (v4l2, test pattern): source ! capsfilter, then the two branches.
    let attach_raw = |src: &gst::Element, caps: &gst::Element| -> Result<()> {
        pipeline.add_many([src, caps])?;
        src.link(caps)?;
        let pad = caps.static_pad("src").expect("capsfilter has a src pad");
        let p = attach_video(
            &pipeline,
            &pad,
            "video/x-raw",
            cam,
            &recorder,
            &flow,
            epoch,
            display.clone(),
        )?;
        *entry.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(())
    };

    let src = source_element(cam)?;
    #[cfg(feature = "fault-injection")]
    crate::fault::on_source(&src);
    match &cam.source {
        Source::File { .. } => {
            let parse = make("parsebin")?;
            pipeline.add_many([&src, &parse])?;
            src.link(&parse)?;
            dynamic(&parse);
        }
        Source::Rtsp { url, tcp, .. } => {
            // rtspsrc gives one RTP pad per stream it set up (only video: select-stream);
            // parsebin depayloads and parses it. Reconnecting is the runner's job: a stream
            // that ends or breaks drains to EOS, so every frame that arrived is in a clip.
            let parse = make("parsebin")?;
            pipeline.add_many([&src, &parse])?;
            let pipeline_weak = pipeline.downgrade();
            let parse_weak = parse.downgrade();
            src.connect_pad_added(move |_, pad| {
                let (Some(pipeline), Some(parse)) = (pipeline_weak.upgrade(), parse_weak.upgrade()) else {
                    return;
                };
                let sink = parse.static_pad("sink").expect("parsebin has a sink pad");
                if sink.is_linked() || pad.link(&sink).is_err() {
                    discard(&pipeline, pad);
                }
            });
            dynamic(&parse);
            tracing::info!(camera = %cam.name, url = %crate::redact::redact(url), transport = if *tcp { "tcp" } else { "udp" }, "RTSP source");
        }
        Source::V4l2 { .. } => {
            let caps = make("capsfilter")?;
            caps.set_property("caps", gst::Caps::builder("video/x-raw").build());
            attach_raw(&src, &caps)?;
        }
        Source::TestPattern {
            width, height, fps, ..
        } => {
            let caps = make("capsfilter")?;
            caps.set_property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", *width as i32)
                    .field("height", *height as i32)
                    .field("framerate", gst::Fraction::new(*fps as i32, 1))
                    .build(),
            );
            attach_raw(&src, &caps)?;
        }
    }
    Ok(Built { pipeline, entry })
}

/// The camera's source element with every configured property set (checked against the
/// element's own ranges where a value comes from the config).
fn source_element(cam: &Camera) -> Result<gst::Element> {
    Ok(match &cam.source {
        Source::File { path } => {
            let src = make("filesrc")?;
            src.set_property("location", path.to_string_lossy().as_ref());
            src
        }
        Source::Rtsp {
            url,
            tcp,
            credentials,
        } => {
            let src = make("rtspsrc")?;
            src.set_property("location", url.as_str());
            // The jitter buffer's latency is the pipeline's: the mask branch syncs to it, and
            // holds that much decoded video. TCP needs no reordering; 200 ms covers a LAN.
            src.set_property("latency", RTSP_LATENCY_MS);
            src.set_property_from_str("protocols", if *tcp { "tcp" } else { "udp" });
            // The login goes to rtspsrc's properties, never into the URL it logs.
            if let Some(login) = credentials {
                src.set_property("user-id", login.user.as_str());
                src.set_property("user-pw", login.password.as_str());
            }
            // Video only: an audio stream is not even set up.
            src.connect("select-stream", false, |args| {
                let video = args
                    .get(2)
                    .and_then(|v| v.get::<gst::Caps>().ok())
                    .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("media").ok()))
                    .is_some_and(|m| m == "video");
                Some(video.to_value())
            });
            src
        }
        Source::V4l2 { device } => {
            let src = make("v4l2src")?;
            src.set_property("device", device.to_string_lossy().as_ref());
            src
        }
        Source::TestPattern {
            pattern,
            num_frames,
            live,
            ..
        } => {
            let src = make("videotestsrc")?;
            props::set_str(&src, &format!("cameras.{}.pattern", cam.name), "pattern", pattern)?;
            src.set_property("is-live", *live);
            if let Some(n) = num_frames {
                src.set_property("num-buffers", i32::try_from(*n).unwrap_or(i32::MAX));
            }
            src
        }
    })
}

/// Builds the camera's configured elements (the source and `unetmask`) without starting
/// anything, so that every value the config gives an element is checked by the element's
/// own rules: `check` (the unit's `ExecStartPre=`) catches what would abort a pipeline.
pub fn check_elements(cam: &Camera) -> Result<gst::Element> {
    source_element(cam)?;
    unetmask(cam)
}

/// Checks that a camera's source is there: a file exists, a v4l2 device node exists, an
/// RTSP camera accepts a TCP connection within `timeout` (only when `probe_network`).
pub fn check_source(cam: &Camera, probe_network: bool, timeout: std::time::Duration) -> Result<()> {
    let err = |reason: String| Error::Source {
        camera: cam.name.clone(),
        reason,
    };
    match &cam.source {
        Source::File { path } if !path.is_file() => {
            Err(err(format!("file '{}' does not exist", path.display())))
        }
        Source::V4l2 { device } if !device.exists() => Err(err(format!(
            "v4l2 device '{}' does not exist (is the camera plugged in, and the user in group 'video'?)",
            device.display()
        ))),
        Source::Rtsp { url, .. } if probe_network => {
            let (host, port) = crate::config::rtsp_host_port(url).ok_or_else(|| err("bad URL".into()))?;
            use std::net::ToSocketAddrs;
            let addrs: Vec<_> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| err(format!("cannot resolve {host}: {e}")))?
                .collect();
            let ok = addrs
                .iter()
                .any(|a| std::net::TcpStream::connect_timeout(a, timeout).is_ok());
            if ok {
                Ok(())
            } else {
                Err(err(format!(
                    "RTSP camera {} is unreachable (no TCP connection to {host}:{port})",
                    crate::redact::redact(url)
                )))
            }
        }
        _ => Ok(()),
    }
}

/// Creates the camera's output directory and checks it is writable.
/// A setgid parent means "shared with the group" (the units: the upload daemon runs as its
/// own user in the runner's group and deletes uploaded clips): a directory of ours beneath
/// it gets the parent's mode, so the group may delete there too, whatever the umask took.
fn share_like_parent(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(parent) = dir.parent() else { return Ok(()) };
    let (pm, dm) = (std::fs::metadata(parent)?, std::fs::metadata(dir)?);
    let shared = pm.mode() & 0o2000 != 0;
    let ours = dm.uid() == nix::unistd::geteuid().as_raw();
    if shared && ours && dm.mode() & 0o7777 != pm.mode() & 0o7777 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(pm.mode() & 0o7777))?;
    }
    Ok(())
}

pub fn prepare_output(dir: &Path) -> Result<()> {
    let err = |reason: String| Error::Output {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    share_like_parent(dir).map_err(|e| err(format!("cannot set its mode: {e}")))?;
    let probe: PathBuf = dir.join(".edgemask-write-test.part");
    std::fs::write(&probe, b"x").map_err(|e| err(format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn camera_directories_share_a_setgid_output_directory_with_its_group() {
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)).unwrap();
        prepare_output(&shared.join("front")).unwrap();
        assert_eq!(mode(&shared.join("front")), 0o2770);
        // Without the setgid bit the umask decides, as before.
        let plain = t.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o750)).unwrap();
        prepare_output(&plain.join("front")).unwrap();
        assert_eq!(mode(&plain.join("front")) & 0o2000, 0);
    }
}
