//! The camera's source (file, RTSP, v4l2, test pattern): its element, what the pipeline
//! needs in front of the branches for its kind, and the check that the source is there.

use gst::prelude::*;

use super::{discard, make};
use crate::config::{Camera, Source};
use crate::error::{Error, Result};
use crate::props;

/// rtspsrc's jitter buffer latency, milliseconds.
const RTSP_LATENCY_MS: u32 = 200;

/// The camera's source element with every configured property set (checked against the
/// element's own ranges where a value comes from the config).
pub(super) fn source_element(cam: &Camera) -> Result<gst::Element> {
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

/// Where the source's video leaves the part that [`head`] builds.
pub(super) enum Head {
    /// A `parsebin`, whose video pad appears once it has typed the stream.
    Parsed(gst::Element),
    /// The raw video, at a capsfilter's src pad.
    Raw(gst::Pad),
}

/// Adds `src` to `pipeline` with what its kind needs in front of the branches: a parsebin
/// for a compressed stream (file, RTSP), a capsfilter for raw video (v4l2, test pattern).
pub(super) fn head(pipeline: &gst::Pipeline, cam: &Camera, src: &gst::Element) -> Result<Head> {
    match &cam.source {
        Source::File { .. } => {
            let parse = make("parsebin")?;
            pipeline.add_many([src, &parse])?;
            src.link(&parse)?;
            Ok(Head::Parsed(parse))
        }
        Source::Rtsp { url, tcp, .. } => {
            // rtspsrc gives one RTP pad per stream it set up (only video: select-stream);
            // parsebin depayloads and parses it. Reconnecting is the runner's job: a stream
            // that ends or breaks drains to EOS, so every frame that arrived is in a clip.
            let parse = make("parsebin")?;
            pipeline.add_many([src, &parse])?;
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
            tracing::info!(camera = %cam.name, url = %crate::redact::redact(url), transport = if *tcp { "tcp" } else { "udp" }, "RTSP source");
            Ok(Head::Parsed(parse))
        }
        Source::V4l2 { .. } => raw(pipeline, src, gst::Caps::builder("video/x-raw").build()),
        Source::TestPattern {
            width, height, fps, ..
        } => raw(
            pipeline,
            src,
            gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .field("width", *width as i32)
                .field("height", *height as i32)
                .field("framerate", gst::Fraction::new(*fps as i32, 1))
                .build(),
        ),
    }
}

/// Raw sources: `src ! capsfilter caps=<caps>`, then the two branches.
fn raw(pipeline: &gst::Pipeline, src: &gst::Element, caps: gst::Caps) -> Result<Head> {
    let filter = make("capsfilter")?;
    filter.set_property("caps", caps);
    pipeline.add_many([src, &filter])?;
    src.link(&filter)?;
    Ok(Head::Raw(
        filter.static_pad("src").expect("capsfilter has a src pad"),
    ))
}

/// The caps name a source pad's video goes to the branches with, or `None` for a pad that
/// carries no video. Fixed caps name the codec; otherwise (a parser before the stream is
/// known) the name is empty and a parsebin in the recording branch decides the codec, or
/// `video/x-raw` when every choice is raw video.
pub(super) fn video_caps_name(caps: &gst::CapsRef, pad_name: &str) -> Option<String> {
    let all = |prefix: &str| {
        !caps.is_any() && !caps.is_empty() && caps.iter().all(|s| s.name().starts_with(prefix))
    };
    let name = if caps.is_fixed() {
        caps.structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default()
    } else if all("video/x-raw") {
        "video/x-raw".to_string()
    } else {
        String::new()
    };
    // Unfixed caps that are all video (a demuxer's parser that has not settled its
    // stream-format yet, e.g. MPEG-TS through parsebin) are video too.
    let is_video = name.starts_with("video/") || pad_name.starts_with("video") || all("video/");
    is_video.then_some(name)
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

#[cfg(test)]
mod tests {
    use super::video_caps_name;

    #[test]
    fn source_pads_are_told_apart_by_their_caps_and_name() {
        gst::init().unwrap();
        let name = |caps: &str, pad: &str| video_caps_name(&caps.parse::<gst::Caps>().unwrap(), pad);
        let some = |s: &str| Some(s.to_string());
        let h264 = "video/x-h264, stream-format=byte-stream, alignment=au";
        assert_eq!(name(h264, "src_0"), some("video/x-h264"));
        assert_eq!(
            name("video/x-raw, format=I420, width=320, height=240", "src"),
            some("video/x-raw")
        );
        assert_eq!(name("audio/mpeg, mpegversion=4", "src_1"), None);
        // Not settled yet: the codec is decided later, in the recording branch.
        assert_eq!(
            name("video/x-h264, stream-format={ avc, byte-stream }", "src_0"),
            some("")
        );
        assert_eq!(
            name("video/x-raw, format={ I420, NV12 }", "src"),
            some("video/x-raw")
        );
        assert_eq!(name("video/x-h264; audio/mpeg", "src_0"), None);
        assert_eq!(name("video/x-h264; audio/mpeg", "video_0"), some(""));
        assert_eq!(name("ANY", "video_0"), some(""));
        assert_eq!(name("ANY", "src_0"), None);
    }
}
