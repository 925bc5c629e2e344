//! The camera's source element (file, RTSP, v4l2, test pattern), and the check that the
//! source is there.

use gst::prelude::*;

use super::make;
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
