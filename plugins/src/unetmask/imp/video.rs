// SPDX-License-Identifier: MPL-2.0

//! GStreamer's video frames and caps as the plain frames and formats of `frame.rs`, and the
//! replacement picture in a frame's planes.

use gst_video::VideoFrameExt;

use crate::unetmask::cpu::composite;
use crate::unetmask::frame::{Frame, PixelFormat, YuvMatrix};

pub(super) const FORMATS: [gst_video::VideoFormat; 8] = [
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::I420,
];

pub(super) fn matrix_of(info: &gst_video::VideoInfo) -> YuvMatrix {
    let c = info.colorimetry();
    let mut m = match c.matrix() {
        gst_video::VideoColorMatrix::Bt709 => YuvMatrix::BT709,
        gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::BT2020,
        _ => YuvMatrix::BT601,
    };
    m.full_range = c.range() == gst_video::VideoColorRange::Range0_255;
    m
}

pub(super) fn pixel_format(f: gst_video::VideoFormat) -> Option<PixelFormat> {
    use gst_video::VideoFormat as V;
    Some(match f {
        V::Rgba => PixelFormat::Rgba,
        V::Bgra => PixelFormat::Bgra,
        V::Rgbx => PixelFormat::Rgbx,
        V::Bgrx => PixelFormat::Bgrx,
        V::Rgb => PixelFormat::Rgb,
        V::Bgr => PixelFormat::Bgr,
        V::Nv12 => PixelFormat::Nv12,
        V::I420 => PixelFormat::I420,
        _ => return None,
    })
}

/// Loads the replacement picture and lays it out in the frame's planes.
pub(super) fn load_replace_image(
    path: &std::path::Path,
    format: PixelFormat,
    matrix: YuvMatrix,
    width: usize,
    height: usize,
) -> Result<Vec<Vec<u8>>, String> {
    use fast_image_resize as fr;
    let img = image::open(path)
        .map_err(|e| {
            format!(
                "replace-image '{}' cannot be read ({e}); give a PNG or JPEG file",
                path.display()
            )
        })?
        .to_rgb8();
    let src = fr::images::Image::from_vec_u8(img.width(), img.height(), img.into_raw(), fr::PixelType::U8x3)
        .map_err(|e| e.to_string())?;
    let mut dst = fr::images::Image::new(width as u32, height as u32, fr::PixelType::U8x3);
    // Typed (U8x3 only): the untyped `resize` would instantiate every pixel type here.
    let (Some(src_view), Some(mut dst_view)) = (
        src.typed_image::<fr::pixels::U8x3>(),
        dst.typed_image_mut::<fr::pixels::U8x3>(),
    ) else {
        return Err("replace-image: internal pixel type mismatch".into());
    };
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize_typed(&src_view, &mut dst_view, &options)
        .map_err(|e| e.to_string())?;
    drop(dst_view);
    let rgb = dst.buffer();
    let planes = composite::planes_of(format, width, height);
    let mut out: Vec<Vec<u8>> = planes
        .iter()
        .map(|p| vec![0u8; p.width * p.height * p.pstride])
        .collect();
    match format.packed_rgb() {
        Some((off, bpp)) => {
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for k in 0..3 {
                    out[0][i * bpp + off[k]] = px[k];
                }
            }
        }
        None => {
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                let (x, y) = (i % width, i / width);
                let yuv = matrix.rgb_to_yuv([px[0], px[1], px[2]]);
                out[0][i] = yuv[0];
                if x % 2 == 0 && y % 2 == 0 {
                    let ci = (y / 2) * planes[1].width + x / 2;
                    if format == PixelFormat::Nv12 {
                        out[1][ci * 2] = yuv[1];
                        out[1][ci * 2 + 1] = yuv[2];
                    } else {
                        out[1][ci] = yuv[1];
                        out[2][ci] = yuv[2];
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The row strides of up to three planes as GStreamer gives them (0 for absent planes).
pub(super) fn strides_of(strides: &[i32]) -> [usize; 3] {
    let mut out = [0usize; 3];
    for (o, &s) in out.iter_mut().zip(strides) {
        *o = s.max(0) as usize;
    }
    out
}

pub(super) fn frame_of<T>(frame: &gst_video::VideoFrameRef<T>, format: PixelFormat) -> Frame<'_> {
    let n = frame.n_planes() as usize;
    let mut planes: [&[u8]; 3] = [&[]; 3];
    for (i, p) in planes.iter_mut().enumerate().take(n) {
        *p = frame.plane_data(i as u32).unwrap_or(&[]);
    }
    Frame {
        format,
        width: frame.width() as usize,
        height: frame.height() as usize,
        planes,
        strides: strides_of(frame.plane_stride()),
    }
}
