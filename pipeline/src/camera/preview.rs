//! The preview branch after the element: the person tinted from the mask, to an on-screen
//! display and/or the runner's RTSP re-stream.

use std::path::Path;

use gst::prelude::*;

use super::{make, stop_upstream_qos};
use crate::config::Camera;
use crate::error::{Error, Result};

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

/// The preview branch after the element: a leaky queue (it never holds back the recording
/// or the masks), conversion to RGBx, the person tinted from the mask meta (the model does
/// not run again), then the display sink and/or an `intervideosink` for the RTSP server.
pub(super) fn preview_branch(
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
