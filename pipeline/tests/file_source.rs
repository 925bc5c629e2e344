//! File sources: exact frame counts across clips, masks identical to the element's, the
//! temp-rename contract, capture policies, and SIGTERM on a live test pattern.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;
use gst_video::prelude::*;

fn config(out: &std::path::Path, video: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[runner]
output_dir = "{}"
disk_floor_mb = 0
progress = false
[model]
path = "{}"
device = "cpu"
threads = 1
threshold = 0.5
[recording]
clip_seconds = 1
[cameras.cam]
source = "file"
path = "{}"
{extra}
"#,
        out.display(),
        model().display(),
        video.display()
    )
}

/// The element's own output for every frame of `video`: (model-res mask, frame-size mask).
fn element_masks(video: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! unetmask model={} device=cpu threads=1 threshold=0.5 \
         mode=mask ! appsink name=s sync=false",
        video.display(),
        model().display()
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
        if out.len() > 10_000 {
            break;
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

#[test]
fn file_source_records_exact_frames_and_element_masks() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("in.mp4");
    let total = make_video(&video, &[(20, false), (40, true), (15, false)]);
    let out = dir.path().join("out");
    let cfg = write_config(dir.path(), &config(&out, &video, ""));

    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(120));
    assert_eq!(code, 0, "{err}");

    let cam = out.join("cam");
    assert!(
        temp_files(&cam).is_empty(),
        "temporary files left: {:?}",
        temp_files(&cam)
    );
    let clips = clips(&cam);
    assert!(
        clips.len() >= 2,
        "expected several 1-second clips, got {}",
        clips.len()
    );
    let files = std::fs::read_dir(&cam).unwrap().count();
    assert_eq!(
        files,
        clips.len() * 3,
        "each clip is exactly video + masks + manifest"
    );

    let reference = element_masks(&video);
    assert_eq!(reference.len() as u32, total);
    let mut sum = 0u64;
    let mut recovered = Vec::new();
    for c in &clips {
        let m = &c.manifest;
        let n = m["frame_count"].as_u64().unwrap();
        assert_eq!(
            count_frames(&c.video),
            n,
            "video frames of {} = manifest frame_count",
            c.video.display()
        );
        assert!(playable(&c.video), "{} is playable", c.video.display());
        assert_eq!(m["camera"], "cam");
        assert_eq!(m["width"], 320);
        assert_eq!(m["height"], 240);
        assert_eq!(m["model"]["file"], "selfie_segmentation_256x256.onnx");
        assert_eq!(
            m["model"]["sha256"],
            "1511ab5564cb0ae179cba9bcad6ad931003ccc71656f11fd270967023678c6a5"
        );
        assert_eq!(m["model"]["device"], "cpu");
        assert_eq!(
            m["fresh_masks"].as_u64().unwrap() + m["carried_masks"].as_u64().unwrap(),
            n
        );
        assert!(m["first_pts_ns"].as_u64().unwrap() <= m["last_pts_ns"].as_u64().unwrap());
        let secs = m["coverage_per_second"].as_array().unwrap();
        assert!(!secs.is_empty());
        let (masks, csv) = read_masks(&c.masks);
        assert_eq!(masks.len() as u64, n);
        assert_eq!(csv.lines().count() as u64, n + 1);
        for (w, h, data) in masks {
            assert_eq!((w, h), (256, 256));
            recovered.push(data);
        }
        sum += n;
    }
    assert_eq!(sum, total as u64, "frame counts add up across clips");
    // Exact: the model-resolution probabilities are stored losslessly, and the frame-size
    // mask recovered from them equals the element's own `mask` output.
    for (i, (rec, (model_res, full))) in recovered.iter().zip(&reference).enumerate() {
        assert_eq!(rec, model_res, "frame {i}: model-resolution mask");
        let meta = gstunetmask::meta::MaskMeta {
            mask: gst::Buffer::from_slice(rec.clone()),
            width: 256,
            height: 256,
            threshold: Some(0.5),
            fresh: true,
            frame: i as u64,
            coverage: 0.0,
            uncertain: 0.0,
        };
        assert_eq!(&meta.to_frame_size(320, 240), full, "frame {i}: frame-size mask");
    }
    // Coverage reflects the content: the person is in frames 20..60 only.
    let covs: Vec<f64> = clips
        .iter()
        .flat_map(|c| {
            let (_, csv) = read_masks(&c.masks);
            csv.lines()
                .skip(1)
                .map(|l| l.split(',').nth(3).unwrap().parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        covs[..20].iter().all(|&c| c < 0.02),
        "no person in the first frames"
    );
    assert!(
        covs[25..55].iter().all(|&c| c > 0.05),
        "person in the middle frames"
    );
}

#[test]
fn person_policy_keeps_only_clips_near_the_person() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("in.mp4");
    // 0-2 s empty, 2-3.5 s person, 3.5-6.5 s empty (30 fps, key frame every 0.5 s).
    let total = make_video(&video, &[(60, false), (45, true), (90, false)]);
    let out = dir.path().join("out");
    let policy = "[cameras.cam.policy]\nkind = \"person\"\nmin_coverage = 0.05\nmin_duration_s = 0.5\npreroll_s = 0.5\n";
    let cfg = write_config(dir.path(), &config(&out, &video, policy));
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(120));
    assert_eq!(code, 0, "{err}");
    let cam = out.join("cam");
    assert!(temp_files(&cam).is_empty(), "{:?}", temp_files(&cam));
    let clips = clips(&cam);
    assert!(!clips.is_empty(), "the clips with the person are kept");
    let kept: u64 = clips
        .iter()
        .map(|c| c.manifest["frame_count"].as_u64().unwrap())
        .sum();
    assert!(
        kept < total as u64,
        "clips without the person are skipped ({kept} of {total} frames kept)"
    );
    // Every kept clip lies within [person start - preroll - one clip, person end + one clip].
    let s = 1_000_000_000u64;
    for c in &clips {
        let first = c.manifest["first_pts_ns"].as_u64().unwrap();
        let last = c.manifest["last_pts_ns"].as_u64().unwrap();
        assert!(
            last >= s / 2 && first <= 9 * s / 2,
            "clip {first}..{last} ns is near the person (2-3.5 s)"
        );
        assert!(playable(&c.video));
    }
    // All person frames (2.0-3.5 s) are in kept clips.
    let covered = |t: u64| {
        clips.iter().any(|c| {
            c.manifest["first_pts_ns"].as_u64().unwrap() <= t
                && t <= c.manifest["last_pts_ns"].as_u64().unwrap()
        })
    };
    for f in 60..105u64 {
        assert!(covered(f * s / 30), "person frame {f} is recorded");
    }
    // And the end of the file, far from the person, is not.
    assert!(!covered(6 * s), "frame at 6 s (no person) is not recorded");
}

#[test]
fn sigterm_mid_clip_finalises_playable_clips() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
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
[cameras.live]
source = "testpattern"
pattern = "ball"
width = 320
height = 240
fps = 15
live = true
"#,
            out.display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    let cam = out.join("live");
    // At least one full clip, then stop in the middle of the next one.
    assert!(
        wait_for(Duration::from_secs(30), || !clips(&cam).is_empty()),
        "a clip is written while running"
    );
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        !temp_files(&cam).is_empty(),
        "a clip is open when SIGTERM arrives"
    );
    sigterm(&child);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    assert!(
        temp_files(&cam).is_empty(),
        "no temporary file left: {:?}",
        temp_files(&cam)
    );
    let clips = clips(&cam);
    assert!(clips.len() >= 2, "the open clip was finalised too");
    let files = std::fs::read_dir(&cam).unwrap().count();
    assert_eq!(files, clips.len() * 3, "every video has its masks and manifest");
    for c in &clips {
        assert!(playable(&c.video), "{} playable", c.video.display());
        assert_eq!(
            count_frames(&c.video),
            c.manifest["frame_count"].as_u64().unwrap()
        );
    }
}

#[test]
fn disk_floor_stops_keeping_clips_without_failing() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A floor far above any real free space: every clip is under it.
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[runner]
output_dir = "{}"
disk_floor_mb = 1000000000
progress = false
[model]
path = "{}"
device = "cpu"
threads = 1
[recording]
clip_seconds = 1
[cameras.cam]
source = "testpattern"
fps = 15
num_frames = 40
"#,
            out.display(),
            model().display()
        ),
    );
    let mut child = spawn(&["run", cfg.to_str().unwrap()]);
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("free space under the floor"), "logged:\n{err}");
    let cam = out.join("cam");
    let left: Vec<_> = std::fs::read_dir(&cam)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "nothing kept under the disk floor: {left:?}");
    assert!(
        err.contains("skipped_disk=3"),
        "three 1-second clips counted as skipped:\n{err}"
    );
}
