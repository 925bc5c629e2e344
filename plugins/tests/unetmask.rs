//! The `unetmask` element against real ONNX Runtime, real GStreamer and real models.

mod common;

use common::*;
use gst::prelude::*;
use gstunetmask::meta::MaskMeta;

#[test]
fn both_shared_models_match_the_references_in_every_format() {
    for (model_file, reference) in REFERENCES {
        let (want, _, _) = reference_mask(reference);
        for format in FORMATS {
            let input = frame(&testdata(PHOTO), format, None);
            let (out, caps) = run_once(
                &format!("model={} mode=mask threshold=0.5", model(model_file)),
                &input,
            );
            let (mask, w, h, bpp) = packed_rows(&out, &caps);
            assert_eq!((w, h, bpp), (400, 600, 1), "mask caps {caps}");
            let iou = iou(&mask, &want);
            println!("{model_file} {format}: IoU {iou:.4}");
            assert!(iou >= 0.97, "{model_file} on {format}: IoU {iou:.4} < 0.97");
        }
    }
}

#[test]
fn mask_mode_equals_the_meta_and_is_gray8_at_frame_size() {
    modes::mask_mode_equals_the_meta_and_is_gray8_at_frame_size("");
}

#[test]
fn alpha_mode_is_rgba_with_the_mask_as_alpha() {
    modes::alpha_mode_is_rgba_with_the_mask_as_alpha("");
}

#[test]
fn overlay_tints_the_person_and_leaves_the_background_untouched() {
    modes::overlay_tints_the_person_and_leaves_the_background_untouched("");
}

#[test]
fn overlay_on_nv12_leaves_background_luma_and_chroma_untouched() {
    modes::overlay_on_nv12_leaves_background_luma_and_chroma_untouched("");
}

#[test]
fn blur_changes_the_background_and_not_the_person() {
    modes::blur_changes_the_background_and_not_the_person("");
}

#[test]
fn replace_puts_a_colour_or_a_picture_behind_the_person() {
    modes::replace_puts_a_colour_or_a_picture_behind_the_person("");
}

#[test]
fn odd_sizes_in_every_format() {
    let (want, ..) = reference_mask("person_400x600.mask.selfie_256x256.png");
    for format in FORMATS {
        for (w, h) in [(401u32, 601u32), (257, 143)] {
            let input = frame(&testdata(PHOTO), format, Some((w, h)));
            for mode in ["mask", "overlay", "blur", "alpha"] {
                let (out, caps) = run_once(&format!("model={} mode={mode}", model(SELFIE)), &input);
                let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
                assert_eq!((info.width(), info.height()), (w, h), "{format} {mode}");
                assert!(MaskMeta::from_buffer(&out).is_some());
                if mode == "mask" && w == 401 {
                    // The same photo one pixel larger: compare the common 400x600 area.
                    let (mask, ..) = packed_rows(&out, &caps);
                    let cropped: Vec<u8> = (0..600)
                        .flat_map(|y| mask[y * 401..y * 401 + 400].to_vec())
                        .collect();
                    let iou = iou(&cropped, &want);
                    assert!(iou > 0.95, "{format} {w}x{h}: IoU {iou}");
                }
            }
        }
    }
}

#[test]
fn timestamps_duration_and_flags_pass_through() {
    let input = frame(&testdata(PHOTO), "I420", Some((200, 300)));
    for mode in ["meta", "overlay", "mask", "alpha"] {
        let mut h = harness(&format!("model={} mode={mode}", model(LANDSCAPE)), &input);
        for (i, flags) in [
            (0, gst::BufferFlags::DISCONT),
            (1, gst::BufferFlags::DELTA_UNIT),
            (2, gst::BufferFlags::MARKER),
        ] {
            let out = h.push_and_pull(stamped(&input, i, flags)).unwrap();
            assert_eq!(out.pts(), Some(gst::ClockTime::from_mseconds(40 * i)), "{mode}");
            assert_eq!(out.dts(), Some(gst::ClockTime::from_mseconds(40 * i)), "{mode}");
            assert_eq!(out.duration(), Some(gst::ClockTime::from_mseconds(40)), "{mode}");
            assert!(
                out.flags().contains(flags),
                "{mode}: {:?} lost from {:?}",
                flags,
                out.flags()
            );
            assert_eq!(MaskMeta::from_buffer(&out).unwrap().frame, i);
        }
    }
}

/// A flat grey frame in the caps of `sample`: nobody there.
#[test]
fn inference_interval_reuses_the_mask_between_runs() {
    let input = frame(&testdata(PHOTO), "RGBA", Some((200, 300)));
    let mut h = harness(
        &format!("model={} mode=meta inference-interval=3", model(SELFIE)),
        &input,
    );
    let mut fresh = Vec::new();
    let mut masks = Vec::new();
    for i in 0..7 {
        let out = h
            .push_and_pull(stamped(&input, i, gst::BufferFlags::empty()))
            .unwrap();
        let (m, bytes) = meta_of(&out);
        fresh.push(m.fresh);
        masks.push(bytes);
    }
    assert_eq!(fresh, [true, false, false, true, false, false, true]);
    assert_eq!(masks[1], masks[0]);
    assert_eq!(masks[2], masks[0]);
    let stats = element_of(&h).property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("fresh").unwrap(), 3);
    assert_eq!(stats.get::<u64>("carried").unwrap(), 4);
}

#[test]
fn smoothing_averages_over_time_and_resets_on_discont() {
    let person = frame(&testdata(PHOTO), "RGBA", Some((200, 300)));
    let blank = grey_like(&person);
    let soft = |s: &gst::Sample| {
        let (out, _) = run_once(&format!("model={} mode=meta threshold=-1", model(SELFIE)), s);
        meta_of(&out).1
    };
    let (p, g) = (soft(&person), soft(&blank));
    let mut h = harness(
        &format!("model={} mode=meta threshold=-1 smoothing=0.5", model(SELFIE)),
        &person,
    );
    let first = meta_of(
        &h.push_and_pull(stamped(&person, 0, gst::BufferFlags::DISCONT))
            .unwrap(),
    )
    .1;
    assert_eq!(first, p, "the first frame passes unsmoothed");
    let second = meta_of(
        &h.push_and_pull(stamped(&blank, 1, gst::BufferFlags::empty()))
            .unwrap(),
    )
    .1;
    for i in 0..p.len() {
        let want = (p[i] as f32 + g[i] as f32) / 2.0;
        assert!(
            (second[i] as f32 - want).abs() <= 1.5,
            "pixel {i}: {} vs {want}",
            second[i]
        );
    }
    let third = meta_of(
        &h.push_and_pull(stamped(&blank, 2, gst::BufferFlags::DISCONT))
            .unwrap(),
    )
    .1;
    assert_eq!(third, g, "DISCONT resets the average");
}

#[test]
fn qos_lateness_skips_inference_and_marks_masks_carried() {
    let input = frame(&testdata(PHOTO), "RGBA", Some((200, 300)));
    let mut h = harness(&format!("model={} mode=meta", model(SELFIE)), &input);
    h.play();
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    assert!(
        meta_of(
            &h.push_and_pull(stamped(&input, 0, gst::BufferFlags::empty()))
                .unwrap()
        )
        .0
        .fresh
    );
    // Downstream: frame 0 arrived one second late.
    let qos = gst::event::Qos::new(gst::QOSType::Underflow, 2.0, 1_000_000_000, gst::ClockTime::ZERO);
    assert!(h.push_upstream_event(qos));
    for i in 1..4 {
        let m = meta_of(
            &h.push_and_pull(stamped(&input, i, gst::BufferFlags::empty()))
                .unwrap(),
        )
        .0;
        assert!(!m.fresh, "frame {i} should reuse the mask");
    }
    let stats = element_of(&h).property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("qos-skipped").unwrap(), 3);
    // Back on time: inference resumes.
    let qos = gst::event::Qos::new(
        gst::QOSType::Overflow,
        0.5,
        -1_000_000,
        gst::ClockTime::from_mseconds(160),
    );
    assert!(h.push_upstream_event(qos));
    assert!(
        meta_of(
            &h.push_and_pull(stamped(&input, 4, gst::BufferFlags::empty()))
                .unwrap()
        )
        .0
        .fresh
    );
}

#[test]
fn the_original_unet_contract_works_out_of_the_box() {
    let dir = fixtures("unet");
    let input = frame(&dir.join("unet_input.png").display().to_string(), "RGB", None);
    let (out, _) = run_once(
        &format!("model={} mode=meta", dir.join("unet_240x160.onnx").display()),
        &input,
    );
    let (meta, mask) = meta_of(&out);
    assert_eq!(
        (meta.width, meta.height),
        (160, 240),
        "NCHW [1,3,240,160] detected"
    );
    let reference: Vec<f32> = std::fs::read(dir.join("unet_reference.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(reference.len(), mask.len());
    let mut worst = 0f32;
    for (m, r) in mask.iter().zip(&reference) {
        worst = worst.max((*m as f32 / 255.0 - r).abs());
    }
    assert!(worst <= 2.0 / 255.0, "largest probability difference {worst}");
    let hard: Vec<u8> = reference.iter().map(|&p| if p > 0.5 { 255 } else { 0 }).collect();
    let ours: Vec<u8> = mask.iter().map(|&m| if m > 127 { 255 } else { 0 }).collect();
    let iou = iou(&ours, &hard);
    assert!(iou >= 0.99, "IoU with the sigmoid > 0.5 reference: {iou}");
    assert!(
        meta.coverage > 0.3 && meta.coverage < 0.7,
        "calibrated to about half: {}",
        meta.coverage
    );
}

#[test]
fn dynamic_size_multiclass_model() {
    let dir = fixtures("small");
    let m = dir.join("small_dynamic.onnx").display().to_string();
    let input = frame(&testdata(PHOTO), "I420", None);
    let (out, _) = run_once(&format!("model={m} mode=meta input-size=64x48"), &input);
    let meta = MaskMeta::from_buffer(&out).unwrap();
    assert_eq!((meta.width, meta.height), (64, 48));
    let (out, _) = run_once(&format!("model={m} mode=meta"), &input);
    let meta = MaskMeta::from_buffer(&out).unwrap();
    assert_eq!(
        (meta.width, meta.height),
        (224, 320),
        "aspect kept, long side 320, multiples of 32"
    );
}

#[test]
fn latency_query_includes_the_inference_time() {
    init();
    let desc = format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240 ! unetmask name=seg model={} ! fakesink",
        model(SELFIE)
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(30));
    res.unwrap();
    // Ask the element's source pad: the answer is upstream's plus the element's own.
    let src = pipeline.by_name("seg").unwrap().static_pad("src").unwrap();
    let mut q = gst::query::Latency::new();
    assert!(src.query(&mut q));
    let (live, min, _) = q.result();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(live);
    // videotestsrc alone reports one frame (33 ms at 30 fps); the element adds its own.
    assert!(min > gst::ClockTime::from_mseconds(33), "min latency {min}");
}

#[test]
fn stats_messages_and_property() {
    let desc = format!(
        "videotestsrc num-buffers=4 ! video/x-raw,width=320,height=240 ! unetmask model={} stats-interval=2 ! fakesink",
        model(LANDSCAPE)
    );
    let (err, _, elements) = run_pipeline(&desc);
    assert!(err.is_none(), "{err:?}");
    let stats: Vec<_> = elements.iter().filter(|s| s.name() == "unetmask-stats").collect();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[1].get::<u64>("frames").unwrap(), 4);
    assert_eq!(stats[1].get::<&str>("provider").unwrap(), "cpu");
    assert_eq!(stats[1].get::<&str>("processing").unwrap(), "cpu");
    // Only the GPU path says which stream ONNX Runtime ran on.
    assert!(!stats[1].has_field("gpu-stream"), "{:?}", stats[1]);
    assert!(stats[1].get::<f64>("inference-ms").unwrap() > 0.0);
    for field in ["fresh", "carried", "qos-skipped"] {
        assert!(stats[1].has_field(field), "{field}");
    }
}

/// `spin` is `in-run` by default; the deprecated `spin-wait` still means what it said
/// (true: spin between runs too, false: never) and reads back from `spin`.
#[test]
fn spin_defaults_to_in_run_and_spin_wait_maps_onto_it() {
    init();
    let e = gst::ElementFactory::make("unetmask").build().unwrap();
    let nick = |e: &gst::Element| {
        let v = e.property_value("spin");
        gst::glib::EnumValue::from_value(&v).unwrap().1.nick().to_owned()
    };
    assert_eq!(nick(&e), "in-run");
    assert!(!e.property::<bool>("spin-wait"));
    e.set_property("spin-wait", true);
    assert_eq!(nick(&e), "always");
    assert!(e.property::<bool>("spin-wait"));
    e.set_property("spin-wait", false);
    assert_eq!(nick(&e), "never");
    e.set_property_from_str("spin", "in-run");
    assert_eq!(nick(&e), "in-run");
    assert!(!e.property::<bool>("spin-wait"));
    for spin in ["never", "in-run", "always"] {
        let desc = format!(
            "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48 ! unetmask model={} device=cpu \
             spin={spin} stats-interval=2 ! fakesink",
            model(LANDSCAPE)
        );
        let (err, _, elements) = run_pipeline(&desc);
        assert!(err.is_none(), "spin={spin}: {err:?}");
        let stats = elements.iter().find(|s| s.name() == "unetmask-stats").unwrap();
        assert_eq!(stats.get::<u64>("fresh").unwrap(), 2, "spin={spin}");
    }
}

/// `gpu-path` is on by default and only matters on a CUDA session: on the CPU, off changes
/// nothing.
#[test]
fn gpu_path_is_on_by_default_and_a_cpu_session_ignores_it() {
    init();
    let e = gst::ElementFactory::make("unetmask").build().unwrap();
    assert!(e.property::<bool>("gpu-path"));
    let desc = format!(
        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48 ! unetmask model={} device=cpu \
         gpu-path=false stats-interval=2 ! fakesink",
        model(LANDSCAPE)
    );
    let (err, _, elements) = run_pipeline(&desc);
    assert!(err.is_none(), "{err:?}");
    let stats = elements
        .iter()
        .find(|s| s.name() == "unetmask-stats")
        .expect("stats");
    assert_eq!(stats.get::<u64>("frames").unwrap(), 2);
    assert_eq!(stats.get::<&str>("processing").unwrap(), "cpu");
}

fn start_error(props: &str) -> String {
    let desc =
        format!("videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! unetmask {props} ! fakesink");
    let (err, _, _) = run_pipeline(&desc);
    err.unwrap_or_else(|| panic!("`unetmask {props}` should fail"))
}

#[test]
fn errors_name_the_problem_and_the_fix() {
    let bad = fixtures("bad");
    let small = fixtures("small").join("small_dynamic.onnx").display().to_string();
    let cases = [
        (String::new(), "no model set"),
        ("model=/nonexistent/model.onnx".to_string(), "does not exist"),
        (
            format!("model={}", bad.join("not_onnx.onnx").display()),
            "is not a valid ONNX model",
        ),
        (
            format!("model={}", bad.join("u8_input.onnx").display()),
            "'img' u8 [1,3,64,64] is not float32",
        ),
        (
            format!("model={}", bad.join("four_channels.onnx").display()),
            "does not take 3 colour channels",
        ),
        (
            format!("model={small} person-class=5"),
            "person-class=5 is out of range",
        ),
        (
            format!("model={small} output-activation=sigmoid"),
            "output-activation=sigmoid does not fit",
        ),
        (
            format!("model={small} device=gpu0"),
            "device 'gpu0' is not understood",
        ),
        (format!("model={small} mean=1,2"), "mean='1,2' is not understood"),
        (format!("model={small} input-size=big"), "input-size='big'"),
        (
            format!("model={small} mode=replace replace-image=/nonexistent.png"),
            "replace-image '/nonexistent.png' does not exist",
        ),
    ];
    for (props, want) in cases {
        let err = start_error(&props);
        assert!(err.contains(want), "`{props}`: {err}");
    }
    #[cfg(not(feature = "cuda"))]
    {
        let err = start_error(&format!("model={small} device=cuda:0"));
        assert!(
            err.contains("no CUDA support") && err.contains("--features cuda"),
            "{err}"
        );
    }
}

#[test]
fn unsupported_caps_are_named_with_the_fix() {
    let dir = modes::tempdir("gray");
    let gray = image::GrayImage::from_fn(64, 48, |x, _| image::Luma([x as u8]));
    let path = dir.join("gray.png");
    gray.save(&path).unwrap();
    let desc = format!(
        "filesrc location={} ! pngdec ! unetmask model={} ! fakesink",
        path.display(),
        model(SELFIE)
    );
    let (err, warnings, _) = run_pipeline(&desc);
    assert!(err.is_some(), "GRAY8 cannot be negotiated");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("format GRAY8") && w.contains("videoconvert")),
        "{warnings:?}"
    );
}

/// Runs `frames` through a harness and returns every output buffer, pulling after each
/// push and after EOS (which drains a pipelined element).
fn outputs(props: &str, input: &gst::Sample, frames: &[gst::Buffer]) -> (Vec<gst::Buffer>, Vec<usize>) {
    let mut h = harness(props, input);
    let (mut out, mut after_push) = (Vec::new(), Vec::new());
    for b in frames {
        h.push(b.clone()).unwrap();
        while let Some(o) = h.try_pull() {
            out.push(o);
        }
        after_push.push(out.len());
    }
    assert!(h.push_event(gst::event::Eos::new()));
    while let Some(o) = h.try_pull() {
        out.push(o);
    }
    (out, after_push)
}

#[test]
fn pipelined_mode_gives_the_same_frames_one_frame_later() {
    let person = frame(&testdata(PHOTO), "NV12", Some((200, 300)));
    let grey = grey_like(&person);
    // Person and nobody alternating, a DISCONT in the middle: every mask differs from the
    // one before, and smoothing carries state from frame to frame.
    let frames: Vec<gst::Buffer> = (0..9u64)
        .map(|i| {
            let s = if i % 3 == 2 { &grey } else { &person };
            let flags = if i == 0 || i == 5 {
                gst::BufferFlags::DISCONT
            } else {
                gst::BufferFlags::empty()
            };
            stamped(s, i, flags)
        })
        .collect();
    for (mode, extra) in [
        ("meta", "threshold=-1 smoothing=0.5"),
        ("overlay", "inference-interval=2"),
        ("mask", "smoothing=0.3"),
        ("alpha", "inference-interval=2 smoothing=0.5"),
        ("blur", ""),
    ] {
        let props = format!("model={} mode={mode} {extra}", model(SELFIE));
        let (want, _) = outputs(&props, &person, &frames);
        let (got, after_push) = outputs(&format!("{props} pipelined=true"), &person, &frames);
        assert_eq!(want.len(), frames.len(), "{mode}: without pipelining");
        assert_eq!(got.len(), frames.len(), "{mode}: pipelined, after EOS");
        // A fresh frame waits for the next push; the first one always does.
        assert_eq!(after_push[0], 0, "{mode}: the first frame is held");
        assert!(
            after_push.iter().enumerate().all(|(i, &n)| n == i || n == i + 1),
            "{mode}: at most one frame held: {after_push:?}"
        );
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let what = format!("{mode} frame {i}");
            assert_eq!(g.pts(), w.pts(), "{what}: order");
            assert_eq!(g.flags(), w.flags(), "{what}: flags");
            let ((wm, wb), (gm, gb)) = (meta_of(w), meta_of(g));
            assert_eq!((gm.fresh, gm.frame), (wm.fresh, wm.frame), "{what}: meta");
            assert!(gb == wb, "{what}: masks differ");
            let (wd, gd) = (w.map_readable().unwrap(), g.map_readable().unwrap());
            assert!(wd.as_slice() == gd.as_slice(), "{what}: frames differ");
        }
        // Not vacuous: the masks do change along the sequence.
        let masks: Vec<Vec<u8>> = want.iter().map(|b| meta_of(b).1).collect();
        assert!(
            masks.windows(2).any(|w| w[0] != w[1]),
            "{mode}: one mask throughout"
        );
    }
}

#[test]
fn pipelined_mode_drops_its_held_frame_on_flush_and_reports_the_extra_latency() {
    let input = frame(&testdata(PHOTO), "RGBA", Some((200, 300)));
    let props = format!("model={} mode=meta", model(SELFIE));
    let mut h = harness(&format!("{props} pipelined=true"), &input);
    h.push(stamped(&input, 0, gst::BufferFlags::DISCONT)).unwrap();
    assert!(h.try_pull().is_none(), "held until the next frame");
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert!(h.push_event(gst::event::Segment::new(
        &gst::FormattedSegment::<gst::ClockTime>::new()
    )));
    h.push(stamped(&input, 1, gst::BufferFlags::DISCONT)).unwrap();
    h.push(stamped(&input, 2, gst::BufferFlags::empty())).unwrap();
    let first = h.try_pull().expect("frame 1 once frame 2 arrives");
    assert_eq!(
        first.pts(),
        Some(gst::ClockTime::from_mseconds(40)),
        "the flushed frame is gone"
    );
    assert!(h.try_pull().is_none());
    assert!(h.push_event(gst::event::Eos::new()));
    assert_eq!(
        h.try_pull().unwrap().pts(),
        Some(gst::ClockTime::from_mseconds(80))
    );

    // At 5 fps a frame lasts 200 ms, far beyond any inference time here: the pipelined
    // element adds that frame, the plain one does not.
    let mut caps = input.caps().unwrap().to_owned();
    caps.make_mut().set("framerate", gst::Fraction::new(5, 1));
    let input = gst::Sample::builder()
        .buffer(&input.buffer_owned().unwrap())
        .caps(&caps)
        .build();
    let latency = |props: &str| {
        let mut h = harness(props, &input);
        h.push(stamped(&input, 0, gst::BufferFlags::DISCONT)).unwrap();
        h.push(stamped(&input, 1, gst::BufferFlags::empty())).unwrap();
        let mut q = gst::query::Latency::new();
        assert!(element_of(&h).static_pad("src").unwrap().query(&mut q));
        q.result().1
    };
    let (plain, pipelined) = (latency(&props), latency(&format!("{props} pipelined=true")));
    let frame = gst::ClockTime::from_mseconds(200);
    assert!(
        pipelined >= frame && plain < frame,
        "latency: pipelined {pipelined} (one frame of 200 ms and the inference), plain {plain} (the inference)"
    );
}

#[test]
fn pipelined_mode_in_a_real_pipeline_outputs_every_frame_before_eos() {
    // 12 frames, a stats message every 4 outputs: three messages, the last one once all
    // 12 frames are out, the held one included (pushed before EOS).
    let desc = format!(
        "videotestsrc num-buffers=12 pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         unetmask model={} mode=overlay pipelined=true stats-interval=4 ! fakesink",
        model(SELFIE)
    );
    let (err, _, elements) = run_pipeline(&desc);
    assert_eq!(err, None);
    let frames: Vec<u64> = elements
        .iter()
        .filter(|s| s.name() == "unetmask-stats")
        .map(|s| s.get::<u64>("frames").unwrap())
        .collect();
    assert_eq!(frames.len(), 3, "one stats message per 4 outputs: {frames:?}");
    assert_eq!(*frames.last().unwrap(), 12, "every frame was output before EOS");
}
