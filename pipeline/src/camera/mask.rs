//! The mask branch: the `unetmask` element configured from the camera's config, and the
//! appsink that hands every frame's mask to the recorder.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;

use super::{Flow, make};
use crate::clip::FrameSummary;
use crate::config::{Camera, Source};
use crate::error::{Error, Result};
use crate::props;
use crate::recorder::{MaskFrame, Recorder};

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
        ("spin", "spin", m.spin.as_ref()),
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
pub(super) fn mask_sink(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// The `unetmask` element the runner builds for a camera whose `[model]` holds `extra`.
    fn element_for(extra: &str) -> gst::Element {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| crate::runner::init_gst().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/selfie_segmentation_256x256.onnx"
        );
        let path = dir.path().join("edgemask.toml");
        std::fs::write(
            &path,
            format!(
                "[runner]\noutput_dir = \"out\"\n[model]\npath = \"{model}\"\n{extra}\n\
                 [cameras.front]\nsource = \"testpattern\"\nnum_frames = 10\n"
            ),
        )
        .unwrap();
        let settings = config::validate(&config::load(&[path]).unwrap(), dir.path()).unwrap();
        unetmask(&settings.cameras[0]).unwrap()
    }

    #[test]
    fn spin_reaches_the_element_and_unset_keeps_the_elements_default() {
        let spin = |e: &gst::Element| {
            let v = e.property_value("spin");
            gst::glib::EnumValue::from_value(&v).unwrap().1.nick().to_owned()
        };
        assert_eq!(spin(&element_for("")), "in-run");
        assert_eq!(spin(&element_for("spin = \"Never\"")), "never");
        assert_eq!(spin(&element_for("spin = \"always\"")), "always");
    }
}
