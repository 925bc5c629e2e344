//! The element's modes, as functions of the device properties (`dev`, e.g. "" or
//! "device=cuda:0"), so that the same checks run on the CPU path (`unetmask.rs`) and on
//! the GPU path (`gpu.rs`, on a GPU host).

use super::*;
use gstunetmask::meta::MaskMeta;

pub fn mask_mode_equals_the_meta_and_is_gray8_at_frame_size(dev: &str) {
    let input = frame(&testdata(PHOTO), "NV12", None);
    let (out, caps) = run_once(&format!("{dev} model={} mode=mask", model(SELFIE)), &input);
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<&str>("format").unwrap(), "GRAY8");
    assert_eq!(
        (s.get::<i32>("width").unwrap(), s.get::<i32>("height").unwrap()),
        (400, 600)
    );
    let (mask, ..) = packed_rows(&out, &caps);
    let meta = MaskMeta::from_buffer(&out).expect("mask meta on the output");
    assert_eq!(
        (meta.width, meta.height, meta.threshold, meta.fresh),
        (256, 256, Some(0.5), true)
    );
    assert_eq!(meta.to_frame_size(400, 600), mask);
    assert!(
        mask.iter().all(|&v| v == 0 || v == 255),
        "threshold=0.5 gives a hard mask"
    );
    assert!(
        meta.coverage > 0.1 && meta.coverage < 0.6,
        "coverage {}",
        meta.coverage
    );
    // Soft mask when the threshold is unset.
    let (out, caps) = run_once(
        &format!("{dev} model={} mode=mask threshold=-1", model(SELFIE)),
        &input,
    );
    let (soft, ..) = packed_rows(&out, &caps);
    assert!(
        soft.iter().any(|&v| v > 10 && v < 245),
        "a soft mask has intermediate values"
    );
}

/// The `mask` mode's output for `input`.
pub fn frame_mask(dev: &str, model_file: &str, input: &gst::Sample) -> Vec<u8> {
    let (out, caps) = run_once(&format!("{dev} model={} mode=mask", model(model_file)), input);
    packed_rows(&out, &caps).0
}

pub fn alpha_mode_is_rgba_with_the_mask_as_alpha(dev: &str) {
    for format in ["BGRx", "I420"] {
        let input = frame(&testdata(PHOTO), format, None);
        let mask = frame_mask(dev, SELFIE, &input);
        let (out, caps) = run_once(&format!("{dev} model={} mode=alpha", model(SELFIE)), &input);
        assert_eq!(caps.structure(0).unwrap().get::<&str>("format").unwrap(), "RGBA");
        let (rgba, w, h, _) = packed_rows(&out, &caps);
        let alpha: Vec<u8> = rgba.chunks_exact(4).map(|p| p[3]).collect();
        assert_eq!(alpha, mask, "{format}: alpha equals the mask");
        if format == "BGRx" {
            let (bgrx, ..) = packed_rows(input.buffer().unwrap(), input.caps().unwrap());
            for i in 0..w * h {
                assert_eq!(
                    [rgba[i * 4], rgba[i * 4 + 1], rgba[i * 4 + 2]],
                    [bgrx[i * 4 + 2], bgrx[i * 4 + 1], bgrx[i * 4]]
                );
            }
        }
    }
}

/// Runs an in-place mode on a packed frame and returns (input, output, mask) bytes.
fn in_place(dev: &str, props: &str, format: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, usize, usize, usize) {
    let input = frame(&testdata(PHOTO), format, None);
    let mask = frame_mask(dev, SELFIE, &input);
    let (before, w, h, bpp) = packed_rows(input.buffer().unwrap(), input.caps().unwrap());
    let (out, caps) = run_once(&format!("{dev} model={} {props}", model(SELFIE)), &input);
    assert_eq!(&caps, input.caps().unwrap(), "in-place modes keep the caps");
    let (after, ..) = packed_rows(&out, &caps);
    (before, after, mask, w, h, bpp)
}

pub fn overlay_tints_the_person_and_leaves_the_background_untouched(dev: &str) {
    let (before, after, mask, w, h, bpp) = in_place(dev, "mode=overlay", "RGBA");
    let near_person = dilate(&mask, w, h, 2);
    let mut tinted = 0;
    for i in 0..w * h {
        let (b, a) = (&before[i * bpp..i * bpp + 3], &after[i * bpp..i * bpp + 3]);
        if near_person[i] == 0 {
            assert_eq!(a, b, "background pixel {i} changed");
        } else if mask[i] == 255 {
            // Yellow at 50%: red and green rise (or stay), blue falls (or stays).
            assert!(
                a[2] <= b[2] && a[0] >= b[0].min(254) - 1,
                "pixel {i}: {b:?} -> {a:?}"
            );
            tinted += (a != b) as usize;
        }
        assert_eq!(after[i * bpp + 3], before[i * bpp + 3], "alpha untouched");
    }
    assert!(tinted > 10_000, "only {tinted} person pixels tinted");
}

pub fn overlay_on_nv12_leaves_background_luma_and_chroma_untouched(dev: &str) {
    let input = frame(&testdata(PHOTO), "NV12", None);
    let mask = frame_mask(dev, SELFIE, &input);
    let (out, caps) = run_once(
        &format!(
            "{dev} model={} mode=overlay overlay-color=0x00ff00",
            model(SELFIE)
        ),
        &input,
    );
    let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
    let a = gst_video::VideoFrameRef::from_buffer_ref_readable(input.buffer().unwrap(), &info).unwrap();
    let b = gst_video::VideoFrameRef::from_buffer_ref_readable(out.as_ref(), &info).unwrap();
    let (w, h) = (400, 600);
    let near = dilate(&mask, w, h, 3);
    let (ys, cs) = (a.plane_stride()[0] as usize, a.plane_stride()[1] as usize);
    let (mut changed_y, mut changed_c) = (0, 0);
    for y in 0..h {
        for x in 0..w {
            let (ya, yb) = (
                a.plane_data(0).unwrap()[y * ys + x],
                b.plane_data(0).unwrap()[y * ys + x],
            );
            let (ca, cb) = (
                &a.plane_data(1).unwrap()[(y / 2) * cs + (x / 2) * 2..][..2],
                &b.plane_data(1).unwrap()[(y / 2) * cs + (x / 2) * 2..][..2],
            );
            if near[y * w + x] == 0 {
                assert_eq!(ya, yb, "background luma at {x},{y}");
                assert_eq!(ca, cb, "background chroma at {x},{y}");
            } else if mask[y * w + x] == 255 {
                changed_y += (ya != yb) as usize;
                changed_c += (ca != cb) as usize;
            }
        }
    }
    assert!(
        changed_y > 10_000 && changed_c > 10_000,
        "person tinted: {changed_y} luma, {changed_c} chroma"
    );
}

pub fn blur_changes_the_background_and_not_the_person(dev: &str) {
    let (before, after, mask, w, h, bpp) = in_place(dev, "mode=blur blur-radius=16", "BGRx");
    let inv: Vec<u8> = mask.iter().map(|&m| 255 - m).collect();
    let near_background = dilate(&inv, w, h, 2);
    let mut blurred = 0;
    for i in 0..w * h {
        let (b, a) = (&before[i * bpp..i * bpp + 3], &after[i * bpp..i * bpp + 3]);
        if near_background[i] == 0 {
            assert_eq!(a, b, "person pixel {i} changed");
        } else if mask[i] == 0 {
            blurred += (a != b) as usize;
        }
    }
    let background = mask.iter().filter(|&&m| m == 0).count();
    assert!(
        blurred * 2 > background,
        "only {blurred} of {background} background pixels blurred"
    );
}

pub fn replace_puts_a_colour_or_a_picture_behind_the_person(dev: &str) {
    let (before, after, mask, w, h, bpp) = in_place(dev, "mode=replace replace-color=0x123456", "RGB");
    for i in 0..w * h {
        let (b, a) = (&before[i * bpp..i * bpp + 3], &after[i * bpp..i * bpp + 3]);
        match mask[i] {
            0 => assert_eq!(a, [0x12, 0x34, 0x56], "background pixel {i}"),
            255 => assert_eq!(a, b, "person pixel {i}"),
            _ => unreachable!("hard mask"),
        }
    }
    // A picture of the frame's size replaces the background pixel for pixel.
    let dir = tempdir("replace");
    let pic: image::RgbImage = image::ImageBuffer::from_fn(400, 600, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 77])
    });
    let pic_path = dir.join("background.png");
    pic.save(&pic_path).unwrap();
    let (_, after, ..) = in_place(
        dev,
        &format!("mode=replace replace-image={}", pic_path.display()),
        "RGBA",
    );
    for i in 0..w * h {
        if mask[i] == 0 {
            let (x, y) = (i % w, i / w);
            assert_eq!(
                &after[i * 4..i * 4 + 3],
                &[(x % 256) as u8, (y % 256) as u8, 77],
                "pixel {x},{y}"
            );
        }
    }
}

pub fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("unetmask-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
