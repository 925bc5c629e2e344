//! The `unetmask` element's own output, for comparing with what was recorded.

use std::path::Path;

use gst::prelude::*;
use gst_video::prelude::*;

/// The `resize` the runner gives the element when a camera names none
/// (`edgemask::config::DEFAULT_RESIZE`; the runner's tests check that the two agree).
pub const RUNNER_RESIZE: &str = "bilinear";

/// For every frame of the video file `video`, the element's mask as the runner configures
/// it by default (`model`, CPU, one thread, threshold 0.5, [`RUNNER_RESIZE`]):
/// (model-resolution mask from the `GstUnetMaskMeta`, frame-size `mask` mode output).
/// Needs the element registered (`gstunetmask::plugin_register_static`).
pub fn masks_of_video(video: &Path, model: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! unetmask model={} device=cpu threads=1 threshold=0.5 \
         resize={RUNNER_RESIZE} mode=mask ! appsink name=s sync=false",
        video.display(),
        model.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("s")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
        let b = s.buffer().unwrap();
        let meta = gstunetmask::meta::MaskMeta::from_buffer(b).unwrap();
        let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(b, &info).unwrap();
        let (w, h, stride) = (
            info.width() as usize,
            info.height() as usize,
            frame.plane_stride()[0] as usize,
        );
        let data = frame.plane_data(0).unwrap();
        let mut full = Vec::with_capacity(w * h);
        for y in 0..h {
            full.extend_from_slice(&data[y * stride..y * stride + w]);
        }
        out.push((meta.mask.map_readable().unwrap().to_vec(), full));
        assert!(out.len() <= 100_000, "{}: endless video", video.display());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}
