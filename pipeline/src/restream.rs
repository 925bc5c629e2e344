//! The runner's RTSP server (`runner.rtsp_listen`): one mount per camera with
//! `restream = true`, at `rtsp://<rtsp_listen>/<camera>`, serving the processed video (the
//! person tinted from the element's mask meta) for a live preview.
//!
//! Each camera's preview branch ends in `intervideosink channel=edgemask-<camera>`; the
//! mount's media reads the channel with `intervideosrc` and encodes it once per mount
//! (shared between clients). The channel outlives the camera's pipeline, so a camera
//! restart shows as a short freeze/black picture, not as a broken RTSP session.

use std::net::SocketAddr;

use gst::glib;
use gst_rtsp_server::prelude::*;

use crate::camera::restream_channel;
use crate::error::{Error, Result};

/// The running server; dropping it stops serving.
pub struct Restream {
    _server: gst_rtsp_server::RTSPServer,
    source: Option<glib::SourceId>,
    pub port: u16,
}

impl Drop for Restream {
    fn drop(&mut self) {
        if let Some(id) = self.source.take() {
            id.remove();
        }
    }
}

/// The media pipeline of a camera's mount.
pub fn launch_line(camera: &str) -> String {
    format!(
        "( intervideosrc channel={} ! videoconvert ! video/x-raw,format=I420 ! \
         x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 threads=1 ! \
         video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )",
        restream_channel(camera)
    )
}

/// Starts the server on the default main context (the runner's main loop).
pub fn serve(addr: SocketAddr, cameras: &[String]) -> Result<Restream> {
    for f in ["intervideosrc", "intervideosink", "x264enc", "rtph264pay"] {
        if gst::ElementFactory::find(f).is_none() {
            return Err(Error::Gst(format!(
                "GStreamer element '{f}' is missing (needed by runner.rtsp_listen): install the plugin package that provides it"
            )));
        }
    }
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address(&addr.ip().to_string());
    server.set_service(&addr.port().to_string());
    let mounts = server
        .mount_points()
        .ok_or_else(|| Error::Gst("RTSP server without mount points".into()))?;
    for cam in cameras {
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(&launch_line(cam));
        factory.set_shared(true);
        mounts.add_factory(&format!("/{cam}"), factory);
    }
    let source = server
        .attach(None)
        .map_err(|e| Error::invalid("runner.rtsp_listen", addr, format!("cannot listen: {e}")))?;
    let port = u16::try_from(server.bound_port()).unwrap_or(addr.port());
    Ok(Restream {
        _server: server,
        source: Some(source),
        port,
    })
}
