//! Helpers shared by the element's integration tests: real GStreamer, the real plugin,
//! real ONNX Runtime, the real models in ../shared and networks built by
//! `fixtures/make_models.py`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once};

use gst::prelude::*;
use gst_video::prelude::*;

pub mod modes;

/// Every raw format the element takes.
pub const FORMATS: [&str; 8] = ["RGBA", "BGRA", "RGBx", "BGRx", "RGB", "BGR", "NV12", "I420"];
/// The shared photograph of a person, and the two shared models.
pub const PHOTO: &str = "person_400x600.png";
pub const SELFIE: &str = "selfie_segmentation_256x256.onnx";
pub const LANDSCAPE: &str = "selfie_landscape_144x256.onnx";
/// Each shared model with its reference mask of [`PHOTO`].
pub const REFERENCES: [(&str, &str); 2] = [
    (SELFIE, "person_400x600.mask.selfie_256x256.png"),
    (LANDSCAPE, "person_400x600.mask.selfie_landscape_144x256.png"),
];

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstunetmask::plugin_register_static().expect("register unetmask");
    });
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared` beside the checkout (or `$EDGEMASK_SHARED`).
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("EDGEMASK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    assert!(
        dir.join("models/SOURCES.md").is_file(),
        "test data not found at {}: the tests need ../shared beside the checkout (or EDGEMASK_SHARED)",
        dir.display()
    );
    dir
}

pub fn model(name: &str) -> String {
    shared().join("models").join(name).display().to_string()
}

pub fn testdata(name: &str) -> String {
    shared().join("testdata").join(name).display().to_string()
}

/// Builds (once per target dir) the networks of `fixtures/make_models.py` and returns their folder.
pub fn fixtures(kind: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("unetmask-fixtures");
    let marker = dir.join(format!("{kind}.done"));
    if !marker.exists() {
        let python = std::env::var_os("EDGEMASK_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".deps/venv/bin/python"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_models.py");
        let status = Command::new(&python)
            .arg(&script)
            .arg(kind)
            .arg(&dir)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (run scripts/setup.sh first): {e}",
                    python.display()
                )
            });
        assert!(status.success(), "make_models.py {kind} failed");
        std::fs::write(&marker, b"").unwrap();
    }
    dir
}

/// Decodes an image file into one raw frame of `format` (optionally scaled to `size`).
pub fn frame(path: &str, format: &str, size: Option<(u32, u32)>) -> gst::Sample {
    init();
    let scale = match size {
        Some((w, h)) => format!("videoscale ! video/x-raw,width={w},height={h} ! "),
        None => String::new(),
    };
    let desc = format!(
        "filesrc location={path} ! decodebin ! videoconvert ! {scale}videoconvert ! video/x-raw,format={format} ! appsink name=sink"
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let sample = sink.pull_sample().expect("a decoded frame");
    pipeline.set_state(gst::State::Null).unwrap();
    sample
}

/// Runs `unetmask <props>` on one frame in a harness and returns the output buffer and caps.
pub fn run_once(props: &str, input: &gst::Sample) -> (gst::Buffer, gst::Caps) {
    init();
    let mut h = gst_check::Harness::new_parse(&format!("unetmask {props}"));
    h.set_src_caps(input.caps().unwrap().to_owned());
    let buf = h
        .push_and_pull(input.buffer_owned().unwrap())
        .expect("an output buffer");
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    // Every check that runs on a GPU device runs on the GPU path, or says why not: a path
    // that fell back to the CPU would pass the CPU's checks.
    if props.contains("device=cuda") || props.contains("device=tensorrt") {
        assert_gpu_path(&h, props);
    }
    (buf, caps)
}

/// The element in `h` ran on the GPU path, with ONNX Runtime on the element's own stream
/// (one wait per frame); `what` names the run in the message.
pub fn assert_gpu_path(h: &gst_check::Harness, what: &str) {
    let stats = element_of(h).property::<gst::Structure>("stats");
    assert_eq!(
        stats.get::<&str>("processing").unwrap(),
        "gpu",
        "{what}: not on the GPU path (GST_DEBUG=unetmask:4 says why): {stats}"
    );
    assert_eq!(
        stats.get::<&str>("gpu-stream").unwrap(),
        "shared",
        "{what}: ONNX Runtime did not run on the element's stream: {stats}"
    );
}

/// Bytes of a packed single-plane frame with its rows stripped of padding.
pub fn packed_rows(buf: &gst::BufferRef, caps: &gst::CapsRef) -> (Vec<u8>, usize, usize, usize) {
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info).unwrap();
    let (w, h) = (info.width() as usize, info.height() as usize);
    let bpp = info.format_info().pixel_stride()[0] as usize;
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data(0).unwrap();
    let mut out = Vec::with_capacity(w * h * bpp);
    for y in 0..h {
        out.extend_from_slice(&data[y * stride..y * stride + w * bpp]);
    }
    (out, w, h, bpp)
}

/// A reference mask (grey PNG) as bytes.
pub fn reference_mask(name: &str) -> (Vec<u8>, u32, u32) {
    let img = image::open(testdata(name)).unwrap().to_luma8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w, h)
}

/// Intersection over union of two masks thresholded at 127.
pub fn iou(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut i, mut u) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x > 127, y > 127);
        i += (x && y) as usize;
        u += (x || y) as usize;
    }
    if u == 0 { 1.0 } else { i as f64 / u as f64 }
}

/// Grows the person (value > 0) of a mask by `r` pixels (square), to keep tests away from edges.
pub fn dilate(mask: &[u8], w: usize, h: usize, r: usize) -> Vec<u8> {
    let mut out = vec![0u8; mask.len()];
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] > 0 {
                for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
                    for xx in x.saturating_sub(r)..(x + r + 1).min(w) {
                        out[yy * w + xx] = 255;
                    }
                }
            }
        }
    }
    out
}

/// Runs a pipeline to the end (or the first error) and returns the error and warning texts.
pub fn run_pipeline(desc: &str) -> (Option<String>, Vec<String>, Vec<gst::Structure>) {
    init();
    let pipeline = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let bus = pipeline.bus().unwrap();
    let mut warnings = Vec::new();
    let mut elements = Vec::new();
    let mut error = None;
    // A failed state change still leaves its error message on the bus.
    let _ = pipeline.set_state(gst::State::Playing);
    {
        for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => {
                    error = Some(format!("{} | {}", e.error(), e.debug().unwrap_or_default()));
                    break;
                }
                gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure() {
                        elements.push(s.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (error, warnings, elements)
}

/// The `unetmask` inside a harness made with `new_parse` (which wraps it in a bin).
pub fn element_of(h: &gst_check::Harness) -> gst::Element {
    let bin = h.element().unwrap().downcast::<gst::Bin>().unwrap();
    bin.iterate_elements()
        .into_iter()
        .map(|e| e.unwrap())
        .find(|e| e.factory().is_some_and(|f| f.name() == "unetmask"))
        .unwrap()
}

pub fn harness(props: &str, input: &gst::Sample) -> gst_check::Harness {
    init();
    let mut h = gst_check::Harness::new_parse(&format!("unetmask {props}"));
    h.set_src_caps(input.caps().unwrap().to_owned());
    h
}

pub fn stamped(input: &gst::Sample, i: u64, flags: gst::BufferFlags) -> gst::Buffer {
    let mut b = input.buffer().unwrap().copy_deep().unwrap();
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(40 * i));
        b.set_dts(gst::ClockTime::from_mseconds(40 * i));
        b.set_duration(gst::ClockTime::from_mseconds(40));
        b.set_offset(i);
        b.set_offset_end(i + 1);
        let old = b.flags();
        b.unset_flags(old);
        b.set_flags(flags);
    }
    b
}

pub fn grey_like(sample: &gst::Sample) -> gst::Sample {
    let mut b = sample.buffer().unwrap().copy_deep().unwrap();
    b.get_mut().unwrap().map_writable().unwrap().fill(128);
    gst::Sample::builder()
        .buffer(&b)
        .caps(&sample.caps_owned().unwrap())
        .build()
}

pub fn meta_of(b: &gst::Buffer) -> (gstunetmask::meta::MaskMeta, Vec<u8>) {
    let m = gstunetmask::meta::MaskMeta::from_buffer(b).expect("meta");
    let bytes = m.mask.map_readable().unwrap().to_vec();
    (m, bytes)
}
