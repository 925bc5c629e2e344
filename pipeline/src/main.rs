//! `edgemask`: the runner.
//!
//! It will turn one TOML config into supervised GStreamer pipelines built around the
//! `unetmask` element (files, v4l2 cameras, RTSP feeds), record raw clips, masks and
//! manifests for retraining, and run for months under systemd. Until it lands, the
//! element itself is usable from `gst-launch-1.0` (see the README).

use std::process::ExitCode;

const USAGE: &str = "\
edgemask — segmentation runner (not implemented yet)

The runner (config-driven pipelines, clip recording, supervision) is tracked in the
project's runner issue. Today, use the unetmask element directly:

    GST_PLUGIN_PATH=target/release gst-launch-1.0 filesrc location=in.mp4 ! decodebin ! \\
        videoconvert ! unetmask model=models/selfie_segmentation_256x256.onnx mode=overlay ! \\
        videoconvert ! autovideosink
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("edgemask {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
