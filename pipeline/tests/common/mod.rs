//! Helpers shared by the runner's integration tests: paths, configs, running the binary,
//! making test videos, reading clips back.
#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gst::prelude::*;

pub use edgemask_tests::{shared, sigterm, wait_for};

pub fn model() -> PathBuf {
    shared().join("models/selfie_segmentation_256x256.onnx")
}

pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gst::init().unwrap();
        gstunetmask::plugin_register_static().unwrap();
    });
}

pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// The runner's metrics endpoint's whole answer; None while nothing answers there.
pub fn metrics_text(port: u16) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    Some(body)
}

/// The value of the sample `key` (the name with its labels, e.g.
/// `edgemask_frames_total{camera="door"}`) in a metrics text.
pub fn metric_in(body: &str, key: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of the sample `key` at the runner's metrics endpoint.
pub fn metric(port: u16, key: &str) -> Option<f64> {
    metric_in(&metrics_text(port)?, key)
}

pub fn edgemask() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgemask"));
    c.env("EDGEMASK_LOG", "info");
    c
}

pub fn spawn(args: &[&str]) -> Child {
    edgemask()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` at most `limit`; kills it and panics when it runs longer.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> (i32, String) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("edgemask did not finish within {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The person photo on a grey 320x240 canvas (RGB), and a frame of the same canvas without it.
pub fn frames_with_and_without_person() -> (Vec<u8>, Vec<u8>) {
    let img = image::open(shared().join("testdata/person_400x600.png"))
        .unwrap()
        .to_rgb8();
    let small = image::imageops::resize(&img, 160, 240, image::imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128]));
    let empty = canvas.clone().into_raw();
    image::imageops::overlay(&mut canvas, &small, 80, 0);
    (canvas.into_raw(), empty)
}

/// Writes an H.264 MP4 at 320x240, 30 fps, key frame every 15 frames: `segments` are
/// (frame count, with person).
pub fn make_video(path: &Path, segments: &[(u32, bool)]) -> u32 {
    let (person, empty) = frames_with_and_without_person();
    let frames: Vec<(u32, &[u8])> = segments
        .iter()
        .map(|&(n, with)| (n, if with { &person[..] } else { &empty[..] }))
        .collect();
    make_video_from(path, &frames)
}

/// The person photo blurred (Gaussian, sigma 5.5) on the grey canvas: a frame the bundled
/// model is unsure about (about 10 % of pixels with a probability in [0.25, 0.75], against
/// about 2 % for the sharp photo and 0 for the empty canvas).
pub fn blurred_person() -> Vec<u8> {
    let (person, _) = frames_with_and_without_person();
    let img = image::RgbImage::from_raw(320, 240, person).unwrap();
    image::imageops::blur(&img, 5.5).into_raw()
}

/// Writes an H.264 MP4 at 320x240, 30 fps, key frame every 15 frames: `segments` are
/// (frame count, RGB frame).
pub fn make_video_from(path: &Path, segments: &[(u32, &[u8])]) -> u32 {
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=320,height=240,framerate=30/1 ! \
         videoconvert ! x264enc speed-preset=ultrafast key-int-max=15 threads=1 ! h264parse ! mp4mux ! \
         filesink location={}",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut n = 0u32;
    for &(count, frame) in segments {
        for _ in 0..count {
            let mut b = gst::Buffer::from_slice(frame.to_vec());
            {
                let b = b.get_mut().unwrap();
                b.set_pts(gst::ClockTime::from_nseconds(n as u64 * 1_000_000_000 / 30));
                b.set_duration(gst::ClockTime::from_nseconds(1_000_000_000 / 30));
            }
            src.push_buffer(b).unwrap();
            n += 1;
        }
    }
    src.end_of_stream().unwrap();
    finish_writing(&pipeline);
    n
}

/// Waits (at most 60 s) for a playing pipeline that writes a file to reach EOS, then stops it.
pub fn finish_writing(pipeline: &gst::Pipeline) {
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("video written within 60 s");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Number of video frames in a clip (demuxed, not decoded).
pub fn count_frames(path: &Path) -> u64 {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! parsebin ! appsink name=s sync=false",
        path.display()
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
    let mut n = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        match sink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
            Some(_) => n += 1,
            None => break,
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    n
}

/// Whether the discoverer finds a playable video stream with a duration.
pub fn playable(path: &Path) -> bool {
    let d = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(10)).unwrap();
    let uri = gst::glib::filename_to_uri(path, None).unwrap();
    match d.discover_uri(&uri) {
        Ok(info) => {
            info.result() == gst_pbutils::DiscovererResult::Ok
                && !info.video_streams().is_empty()
                && info.duration().is_some_and(|d| d > gst::ClockTime::ZERO)
        }
        Err(_) => false,
    }
}

pub struct Clip {
    pub manifest: serde_json::Value,
    pub video: PathBuf,
    pub masks: PathBuf,
}

/// Every clip with a manifest in `dir`, in start order.
pub fn clips(dir: &Path) -> Vec<Clip> {
    let mut v: Vec<Clip> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.file_name().unwrap().to_str().unwrap().starts_with('.')
        })
        .map(|p| {
            let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let video = dir.join(manifest["video"].as_str().unwrap());
            let masks = dir.join(manifest["masks"]["file"].as_str().unwrap());
            Clip {
                manifest,
                video,
                masks,
            }
        })
        .collect();
    v.sort_by_key(|c| c.manifest["video"].as_str().unwrap().to_string());
    v
}

/// Names of files in `dir` that are temporary (`.….part`).
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

/// The masks (model resolution, GRAY8) in an archive, in frame order, and `frames.csv`.
pub fn read_masks(path: &Path) -> (Vec<(u32, u32, Vec<u8>)>, String) {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut masks = Vec::new();
    let mut csv = String::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if name == "frames.csv" {
            csv = String::from_utf8(data).unwrap();
        } else {
            let img = image::load_from_memory(&data).unwrap().to_luma8();
            masks.push((img.width(), img.height(), img.into_raw()));
        }
    }
    (masks, csv)
}
