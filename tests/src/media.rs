//! What a player gets out of a recorded file.

use std::path::Path;

use gst::prelude::*;

/// Frames a player gets out of `path`: demuxed and decoded (`decodebin`), counted at an
/// appsink. A clip whose container points past its media (an mp4 edit list gone wrong)
/// gives 0 here even when its frames are in the file.
pub fn decoded_frames(path: &Path) -> u64 {
    let p = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! appsink name=s sync=false",
        path.display()
    ))
    .expect("decode pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = p
        .by_name("s")
        .expect("appsink")
        .downcast::<gst_app::AppSink>()
        .expect("an appsink");
    p.set_state(gst::State::Playing).expect("decode pipeline starts");
    let mut n = 0;
    while sink.try_pull_sample(gst::ClockTime::from_seconds(5)).is_some() {
        n += 1;
    }
    let _ = p.set_state(gst::State::Null);
    n
}
