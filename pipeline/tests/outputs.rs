//! Optional per-camera outputs: the on-screen display (a sink override, and the errors when
//! it cannot be served, which fail that camera only) and the RTSP re-stream of the processed
//! video, received by a real RTSP client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgemask_tests::free_port;
use edgemask_tests::rtsp::Server;
use gst::prelude::*;

#[test]
fn display_sink_override_works_and_a_missing_display_fails_only_its_camera() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("in.mp4");
    let total = make_video(&video, &[(20, false), (25, true)]);
    let out = dir.path().join("out");
    let no_dri = !std::path::Path::new("/dev/dri").exists();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{out}"
disk_floor_mb = 0
progress = false
[model]
path = "{model}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 1
[cameras.shown]
source = "file"
path = "{video}"
display = "fakesink"
[cameras.nosink]
source = "file"
path = "{video}"
display = "nosuchvideosink"
[cameras.nodisplay]
source = "file"
path = "{video}"
display = true
"#,
            out = out.display(),
            model = model().display(),
            video = video.display()
        ),
    );
    let mut child = edgemask()
        .args(["run", cfg.to_str().unwrap()])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(120));
    // A camera failed: exit 1, after the others ran to the end.
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("camera 'nosink': display: video sink element 'nosuchvideosink' does not exist"),
        "{err}"
    );
    if no_dri {
        assert!(
            err.contains("camera 'nodisplay': display: no display available"),
            "{err}"
        );
        assert!(clips(&out.join("nodisplay")).is_empty());
    }
    assert!(clips(&out.join("nosink")).is_empty());
    // The camera with the sink override recorded everything, its preview branch included.
    let shown = clips(&out.join("shown"));
    let frames: u64 = shown
        .iter()
        .map(|c| c.manifest["frame_count"].as_u64().unwrap())
        .sum();
    assert_eq!(frames, total as u64, "{err}");
    for c in &shown {
        assert_eq!(
            count_frames(&c.video),
            c.manifest["frame_count"].as_u64().unwrap()
        );
    }
}

/// An RTSP camera in the test: the person on the grey canvas, as a live H.264 stream.
fn camera(port: u16, png: &std::path::Path) -> Server {
    Server::new(
        port,
        &format!(
            "( filesrc location={} ! pngdec ! imagefreeze is-live=true ! videoconvert ! \
             video/x-raw,format=I420,framerate=15/1 ! \
             x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 threads=1 ! \
             rtph264pay name=pay0 pt=96 config-interval=1 )",
            png.display()
        ),
    )
}

/// The element's own frame-size mask (0/255) of an RGB 320x240 frame.
fn element_mask(frame: &[u8]) -> Vec<u8> {
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=320,height=240,framerate=15/1 ! \
         videoconvert ! unetmask model={} device=cpu threads=1 resize={} mode=meta ! appsink name=s sync=false",
        model().display(),
        edgemask::config::DEFAULT_RESIZE
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("s")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut b = gst::Buffer::from_slice(frame.to_vec());
    b.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
    src.push_buffer(b).unwrap();
    src.end_of_stream().unwrap();
    let s = sink.try_pull_sample(gst::ClockTime::from_seconds(30)).unwrap();
    let m = gstunetmask::meta::MaskMeta::from_buffer(s.buffer().unwrap()).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    m.to_frame_size(320, 240)
}

#[test]
fn restream_serves_the_tinted_video_over_rtsp() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (person, _) = frames_with_and_without_person();
    let png = dir.path().join("person.png");
    image::RgbImage::from_raw(320, 240, person.clone())
        .unwrap()
        .save(&png)
        .unwrap();
    let cam_port = free_port();
    let _camera = camera(cam_port, &png);
    let restream_port = free_port();
    let out = dir.path().join("out");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
rtsp_listen = "127.0.0.1:{restream_port}"
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
enabled = false
[cameras.door]
source = "rtsp"
url = "rtsp://127.0.0.1:{cam_port}/cam"
restream = true
"#,
            out.display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);

    // A real RTSP client: rtspsrc ! decodebin ! appsink, retried until the runner serves.
    let t = Instant::now();
    let mut got: Option<Vec<u8>> = None;
    while got.is_none() && t.elapsed() < Duration::from_secs(60) {
        let client = gst::parse::launch(&format!(
            "rtspsrc location=rtsp://127.0.0.1:{restream_port}/door protocols=tcp latency=100 ! decodebin ! \
             videoconvert ! video/x-raw,format=RGB ! appsink name=s sync=false"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = client
            .by_name("s")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        let _ = client.set_state(gst::State::Playing);
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(2)) else {
                if sink.is_eos() {
                    break;
                }
                continue;
            };
            let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
            if (info.width(), info.height()) != (320, 240) {
                continue; // intervideosrc's placeholder before the camera's frames arrive
            }
            let map = s.buffer().unwrap().map_readable().unwrap();
            let stride = info.stride()[0] as usize;
            let mut rgb = Vec::with_capacity(320 * 240 * 3);
            for y in 0..240 {
                rgb.extend_from_slice(&map[y * stride..y * stride + 320 * 3]);
            }
            // The grey background (not intervideosrc's black): the camera's picture.
            if rgb[(10 * 320 + 10) * 3].abs_diff(128) < 12 {
                got = Some(rgb);
                break;
            }
        }
        let _ = client.set_state(gst::State::Null);
        if got.is_none() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(40));
    let frame =
        got.unwrap_or_else(|| panic!("no frame of the camera over the re-stream; runner log:\n{err}"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("rtsp://127.0.0.1:{restream_port}/door")),
        "the re-stream URL is logged:\n{err}"
    );

    // Yellow tint where the element sees the person, the picture untouched elsewhere.
    let mask = element_mask(&person);
    let (mut inside, mut outside) = ([0f64; 3], [0f64; 3]);
    let (mut n_in, mut n_out) = (0f64, 0f64);
    for i in 0..320 * 240usize {
        let (x, y) = (i % 320, i / 320);
        // Leave out a band around the silhouette: the runner's mask comes from the
        // camera's compressed stream, not from the exact photo.
        let near_edge = (x.saturating_sub(6)..(x + 7).min(320)).any(|xx| mask[y * 320 + xx] != mask[i]);
        if near_edge {
            continue;
        }
        let d: Vec<f64> = (0..3)
            .map(|c| frame[i * 3 + c] as f64 - person[i * 3 + c] as f64)
            .collect();
        if mask[i] == 255 {
            for c in 0..3 {
                inside[c] += d[c];
            }
            n_in += 1.0;
        } else {
            for c in 0..3 {
                outside[c] += d[c].abs();
            }
            n_out += 1.0;
        }
    }
    assert!(n_in > 2000.0, "the element finds the person ({n_in} pixels)");
    let inside: Vec<f64> = inside.iter().map(|v| v / n_in).collect();
    let outside: Vec<f64> = outside.iter().map(|v| v / n_out).collect();
    eprintln!("mean change inside the mask (R,G,B): {inside:?}; mean |change| outside: {outside:?}");
    assert!(
        inside[0] > 15.0 && inside[1] > 15.0 && inside[2] < -25.0,
        "the person is tinted yellow: {inside:?}"
    );
    assert!(
        outside.iter().all(|&v| v < 12.0),
        "the background is not tinted: {outside:?}"
    );
}

/// More than the host carries (a live 1280x720 camera at 240 fps, the model on every
/// frame): the element skips inference for late frames and carries the previous mask
/// (counted), instead of holding back the recording and the source; every frame that
/// reached the runner is recorded, each with a mask.
#[test]
fn an_overloaded_live_camera_carries_masks_and_loses_no_frame() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 2
[cameras.cam]
source = "testpattern"
pattern = "ball"
live = true
width = 1280
height = 720
fps = 240
"#,
            dir.path().join("out").display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(8));
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    let received: u64 = err
        .split("received=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the camera summary gives the frames received");
    let clips = clips(&dir.path().join("out").join("cam"));
    let frames: u64 = clips
        .iter()
        .map(|c| c.manifest["frame_count"].as_u64().unwrap())
        .sum();
    let carried: u64 = clips
        .iter()
        .map(|c| c.manifest["carried_masks"].as_u64().unwrap())
        .sum();
    let masks: u64 = clips.iter().map(|c| read_masks(&c.masks).0.len() as u64).sum();
    assert_eq!(
        (frames, masks),
        (received, received),
        "every frame received is recorded with a mask:\n{err}"
    );
    assert!(
        carried > 0,
        "the skip path fired: {carried} carried masks of {frames}:\n{err}"
    );
    eprintln!("{frames} frames, {carried} masks carried");
}
