// SPDX-License-Identifier: MPL-2.0

//! The element's properties: names, ranges, defaults and what each does.

use gst::glib;
use gst::prelude::*;

use crate::unetmask::enums::{
    ActivationChoice, ChannelOrderChoice, LayoutChoice, Mode, ResizeChoice, SpinChoice,
};

use super::settings::{DEFAULT_OVERLAY_COLOR, DEFAULT_REPLACE_COLOR, Live};

/// Every property, in the order `gst-inspect-1.0` lists them.
pub(super) fn specs() -> Vec<glib::ParamSpec> {
    let live = Live::default();
    vec![
        glib::ParamSpecString::builder("model")
            .nick("Model")
            .blurb("Path of the ONNX segmentation model (float32 [1,3,H,W] or [1,H,W,3] input)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("onnxruntime-library")
            .nick("ONNX Runtime library")
            .blurb(
                "Path of libonnxruntime.so (>= 1.31). Unset: ORT_DYLIB_PATH, then the project's \
                 .deps/onnxruntime/lib, then the system library path. First load wins per process",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("device")
            .nick("Device")
            .blurb("auto (CUDA when a GPU and the provider are present, else CPU), cpu, cuda:N or tensorrt:N")
            .default_value(Some("auto"))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("threads")
            .nick("Threads")
            .blurb("ONNX Runtime intra-op threads (0 = ONNX Runtime's default: one per core)")
            .maximum(256)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("spin", SpinChoice::InRun)
            .nick("Spin")
            .blurb(
                "When ONNX Runtime's threads busy-wait for work. in-run: briefly, inside an \
                 inference only: nearly as fast as always for one stream, while a live camera's \
                 workers sleep between frames and many streams cost about the CPU of never",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("spin-wait")
            .nick("Spin wait")
            .blurb("Deprecated, use spin: true sets spin=always, false sets spin=never")
            .default_value(false)
            .deprecated()
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("pipelined")
            .nick("Pipelined")
            .blurb(
                "Run the model on frame n in a worker thread while frame n+1 is pre-processed: more \
                 frames per second where pre-processing is a large share of the work, one frame more \
                 latency (added to the LATENCY query). Same masks and output as without",
            )
            .default_value(false)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("gpu-path")
            .nick("GPU path")
            .blurb(
                "When the model runs on a CUDA device, do pre- and post-processing and compositing \
                 there too (feature cuda). Off: they run on the CPU and only inference on the GPU, to \
                 compare the two paths or to work round a problem in the GPU path",
            )
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("mode", Mode::Overlay)
            .nick("Mode")
            .blurb("What to output; the mask meta is attached in every mode")
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("threshold")
            .nick("Threshold")
            .blurb("Person where probability > threshold (hard mask); < 0 keeps the soft mask")
            .minimum(-1.0)
            .maximum(1.0)
            .default_value(live.threshold)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("smoothing")
            .nick("Smoothing")
            .blurb(
                "Temporal smoothing: weight of the previous mask in an exponential average (0 = off); \
                 reset on DISCONT and flush",
            )
            .minimum(0.0)
            .maximum(0.99)
            .default_value(live.smoothing)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("inference-interval")
            .nick("Inference interval")
            .blurb("Run the model every N frames and reuse the mask in between")
            .minimum(1)
            .maximum(1000)
            .default_value(live.inference_interval)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("skip-late")
            .nick("Skip late frames")
            .blurb("When downstream reports lateness (QoS), reuse the last mask instead of running the model")
            .default_value(live.skip_late)
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder_with_default("layout", LayoutChoice::Auto)
            .nick("Layout")
            .blurb("Model input layout (auto: from the input shape)")
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("channel-order", ChannelOrderChoice::Rgb)
            .nick("Channel order")
            .blurb("Colour order the model was trained on")
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("resize", ResizeChoice::Antialias)
            .nick("Resize filter")
            .blurb("How frames are scaled to the model's input size")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("input-size")
            .nick("Input size")
            .blurb(
                "WIDTHxHEIGHT for models with dynamic height/width (empty: the model's fixed size, or \
                 the frame's aspect with the long side at 320, multiples of 32)",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecDouble::builder("scale")
            .nick("Scale")
            .blurb("Pixel scale before mean/std: tensor = (pixel * scale - mean) / std")
            .minimum(f64::MIN_POSITIVE)
            .maximum(1.0)
            .default_value(1.0 / 255.0)
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("mean")
            .nick("Mean")
            .blurb("Per-channel mean in the model's channel order, e.g. 0.485,0.456,0.406")
            .default_value(Some("0,0,0"))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("std")
            .nick("Std")
            .blurb("Per-channel standard deviation, e.g. 0.229,0.224,0.225")
            .default_value(Some("1,1,1"))
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("output-activation", ActivationChoice::Auto)
            .nick("Output activation")
            .blurb("How the output becomes a probability (auto: detected with a probe run)")
            .mutable_ready()
            .build(),
        glib::ParamSpecInt::builder("person-class")
            .nick("Person class")
            .blurb("Person channel of a C-channel output (-1: 1 for 2 classes, 15 for 21 VOC classes)")
            .minimum(-1)
            .maximum(1023)
            .default_value(-1)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("overlay-color")
            .nick("Overlay colour")
            .blurb("Tint of the person in overlay mode, 0xRRGGBB")
            .maximum(0xFFFFFF)
            .default_value(DEFAULT_OVERLAY_COLOR)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("overlay-opacity")
            .nick("Overlay opacity")
            .blurb("Opacity of the tint in overlay mode")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(live.overlay_opacity)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("blur-radius")
            .nick("Blur radius")
            .blurb("Background blur radius in pixels (blur mode)")
            .minimum(1)
            .maximum(512)
            .default_value(live.blur_radius)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("replace-color")
            .nick("Replacement colour")
            .blurb("Background colour in replace mode when no replace-image is set, 0xRRGGBB")
            .maximum(0xFFFFFF)
            .default_value(DEFAULT_REPLACE_COLOR)
            .mutable_playing()
            .build(),
        glib::ParamSpecString::builder("replace-image")
            .nick("Replacement image")
            .blurb("PNG or JPEG shown behind the person in replace mode (scaled to the frame)")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("stats-interval")
            .nick("Stats interval")
            .blurb("Post an 'unetmask-stats' element message every N frames (0 = never)")
            .default_value(live.stats_interval)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Statistics")
            .blurb(
                "frames, fresh, carried, qos-skipped, inference-ms, preprocess-ms, postprocess-ms, fps, \
                 provider",
            )
            .read_only()
            .build(),
    ]
}
