//! The element's GPU path on a real GPU (feature `cuda`): masks of both shared models
//! against the references, every mode through the CPU path's checks, the GPU path against
//! the CPU path frame by frame (smoothing and DISCONT included), and 10,000 frames without
//! losing memory. Each test says "skipped: no
//! GPU" and passes where there is none; on a GPU host (after `scripts/setup.sh`, which
//! installs onnxruntime-gpu and NVRTC there):
//! `cargo test -p gst-plugin-unetmask --features cuda --test gpu -- --nocapture`.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use gst::prelude::*;

fn have_gpu() -> bool {
    match gstunetmask::unetmask::probe::cuda_devices() {
        Ok(n) => {
            eprintln!("{n} CUDA device(s)");
            true
        }
        Err(why) => {
            eprintln!("skipped: no GPU ({why})");
            false
        }
    }
}

/// The element's stats after a run: inference on `cuda:0`, and the GPU path used
/// (`common::assert_gpu_path`).
fn assert_on_gpu(h: &gst_check::Harness) {
    let stats = element_of(h).property::<gst::Structure>("stats");
    assert_eq!(stats.get::<&str>("provider").unwrap(), "cuda:0", "{stats}");
    assert_gpu_path(h, "cuda:0");
}

#[test]
fn both_shared_models_match_the_references_on_the_gpu_path() {
    if !have_gpu() {
        return;
    }
    for (model_file, reference) in REFERENCES {
        let (want, _, _) = reference_mask(reference);
        for format in FORMATS {
            let input = frame(&testdata(PHOTO), format, None);
            let props = format!(
                "model={} device=cuda:0 mode=mask threshold=0.5",
                model(model_file)
            );
            let mut h = harness(&props, &input);
            let out = h.push_and_pull(input.buffer_owned().unwrap()).unwrap();
            assert_on_gpu(&h);
            let caps = h.sinkpad().unwrap().current_caps().unwrap();
            let (mask, ..) = packed_rows(&out, &caps);
            let iou = iou(&mask, &want);
            println!("GPU {model_file} {format}: IoU {iou:.4}");
            assert!(iou >= 0.97, "{model_file} on {format}: IoU {iou:.4} < 0.97");
        }
    }
}

/// Every compositing mode on the GPU path (device upload, the `composite.cu`/`blur.cu`
/// kernels, the download), in every format, runs there; and passes the checks the CPU path
/// passes (`common::modes`), each of which asserts the path it ran on.
#[test]
fn every_mode_passes_the_cpu_paths_checks_on_the_gpu_path() {
    if !have_gpu() {
        return;
    }
    for format in FORMATS {
        let input = frame(&testdata(PHOTO), format, None);
        for mode in ["meta", "mask", "alpha", "overlay", "blur", "replace"] {
            let mut h = harness(
                &format!("model={} device=cuda:0 mode={mode}", model(SELFIE)),
                &input,
            );
            h.push_and_pull(input.buffer_owned().unwrap()).unwrap();
            assert_on_gpu(&h);
        }
    }
    let dev = "device=cuda:0";
    modes::mask_mode_equals_the_meta_and_is_gray8_at_frame_size(dev);
    modes::alpha_mode_is_rgba_with_the_mask_as_alpha(dev);
    modes::overlay_tints_the_person_and_leaves_the_background_untouched(dev);
    modes::overlay_on_nv12_leaves_background_luma_and_chroma_untouched(dev);
    modes::blur_changes_the_background_and_not_the_person(dev);
    modes::replace_puts_a_colour_or_a_picture_behind_the_person(dev);
}

/// Person and grey frames in turn with smoothing, a DISCONT in the middle: the GPU path's
/// masks follow the CPU path's (bilinear resize, as on the GPU) with the same CUDA
/// inference (`gpu-path=false`), so that only the kernels differ: the tensor by less than
/// `tensor_bound` (a few 1e-7, which can tip a probability over a rounding edge: one
/// level) and the post-processing by one level (`expf` against the CPU path's
/// polynomial), two levels in all; smoothing averages frames and adds nothing.
#[test]
fn the_gpu_path_follows_the_cpu_path_frame_by_frame() {
    if !have_gpu() {
        return;
    }
    let person = frame(&testdata(PHOTO), "NV12", Some((640, 960)));
    let grey = grey_like(&person);
    let frames: Vec<gst::Buffer> = (0..8)
        .map(|i| {
            let src = if i % 3 == 2 { &grey } else { &person };
            let flags = if i == 5 {
                gst::BufferFlags::DISCONT
            } else {
                gst::BufferFlags::empty()
            };
            stamped(src, i, flags)
        })
        .collect();
    let masks = |gpu_path: bool| {
        let props = format!(
            "model={} device=cuda:0 gpu-path={gpu_path} resize=bilinear mode=meta smoothing=0.6 \
             threshold=-1",
            model(SELFIE)
        );
        let mut h = harness(&props, &person);
        let out: Vec<Vec<u8>> = frames
            .iter()
            .map(|b| meta_of(&h.push_and_pull(b.clone()).unwrap()).1)
            .collect();
        (h, out)
    };
    let (h, gpu) = masks(true);
    assert_on_gpu(&h);
    let (h, cpu) = masks(false);
    let stats = element_of(&h).property::<gst::Structure>("stats");
    assert_eq!(stats.get::<&str>("provider").unwrap(), "cuda:0", "{stats}");
    assert_eq!(stats.get::<&str>("processing").unwrap(), "cpu", "{stats}");
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        let worst = g.iter().zip(c).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        let mean = g.iter().zip(c).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / g.len() as f64;
        println!("frame {i}: GPU path vs CPU path, same inference: mean {mean:.4} levels, worst {worst}");
        assert!(worst <= 2, "frame {i}: mean {mean}, worst {worst}");
    }
}

/// 10,000 frames through the GPU path: device memory and the process's resident memory
/// come back to where they were after warm-up.
#[test]
fn ten_thousand_frames_on_the_gpu_path_without_a_leak() {
    if !have_gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).expect("CUDA context");
    let free = || ctx.mem_get_info().expect("cuMemGetInfo").0;
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    };
    let input = frame(&testdata(PHOTO), "NV12", Some((320, 480)));
    let props = format!("model={} device=cuda:0 mode=overlay", model(LANDSCAPE));
    let mut h = harness(&props, &input);
    let mut buf = input.buffer().unwrap().copy_deep().unwrap();
    buf.get_mut().unwrap().unset_flags(gst::BufferFlags::DISCONT);
    for _ in 0..200 {
        buf = h.push_and_pull(buf).unwrap();
    }
    assert_on_gpu(&h);
    let (free0, rss0) = (free(), rss());
    for _ in 0..10_000 {
        buf = h.push_and_pull(buf).unwrap();
    }
    let (free1, rss1) = (free(), rss());
    println!("device free {free0} -> {free1} bytes, resident {rss0} -> {rss1} bytes");
    assert!(
        free1 + (16 << 20) >= free0,
        "device memory fell by {} bytes",
        free0 - free1
    );
    assert!(
        rss1 <= rss0 + (32 << 20),
        "resident memory grew by {} bytes",
        rss1 - rss0
    );
}

/// Without a GPU (CI, this machine): `device=auto` runs on the CPU and says so in its stats;
/// an explicit `cuda:0` fails the start with an error naming what is missing.
#[test]
fn without_a_gpu_auto_falls_back_and_cuda_0_names_what_is_missing() {
    if gstunetmask::unetmask::probe::cuda_devices().is_ok() {
        eprintln!("skipped: a GPU is present (the other tests cover it)");
        return;
    }
    let input = frame(&testdata(PHOTO), "NV12", Some((200, 300)));
    let mut h = harness(
        &format!("model={} device=auto mode=overlay", model(LANDSCAPE)),
        &input,
    );
    let out = h.push_and_pull(input.buffer_owned().unwrap()).unwrap();
    assert!(meta_of(&out).0.fresh);
    let stats = element_of(&h).property::<gst::Structure>("stats");
    assert_eq!(stats.get::<&str>("provider").unwrap(), "cpu", "{stats}");
    assert_eq!(stats.get::<&str>("processing").unwrap(), "cpu", "{stats}");

    let desc = format!(
        "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! unetmask model={} device=cuda:0 ! fakesink",
        model(LANDSCAPE)
    );
    let (err, _, _) = run_pipeline(&desc);
    let err = err.expect("device=cuda:0 without a GPU fails");
    assert!(
        err.contains("no CUDA execution provider")
            || err.contains("no NVIDIA driver")
            || err.contains("no CUDA device"),
        "{err}"
    );
    assert!(err.contains("device=cuda:0"), "{err}");
}
