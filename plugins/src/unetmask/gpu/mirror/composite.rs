// SPDX-License-Identifier: MPL-2.0

//! The GPU compositing kernels (`kernels/composite.cu`, compiled at run time by NVRTC) and
//! their CPU mirrors: the mask upscaled to a plane, mapped to weights, and the plane mixed
//! towards a colour or a picture (`overlay`, `replace`), written as GRAY8 (`mask`), or the
//! frame written as RGBA with the weight as alpha (`alpha`).
//! The arithmetic is the CPU path's integer arithmetic (`composite.rs`), so the tests hold
//! the mirrors to it exactly.

use crate::unetmask::cpu::composite::{PlaneGeom, Weights};
use crate::unetmask::frame::{Frame, PixelFormat, YuvMatrix};
use crate::unetmask::gpu::params::{AlphaParams, MixParams, taps};

/// The kernels' `upscaled`.
pub(crate) fn upscaled(p: &MixParams, mask: &[u8], xt: &[u32], yt: &[u32], x: usize, y: usize) -> u32 {
    let (x0, x1, fx) = (xt[3 * x] as usize, xt[3 * x + 1] as usize, xt[3 * x + 2]);
    let (y0, y1, fy) = (yt[3 * y] as usize, yt[3 * y + 1] as usize, yt[3 * y + 2]);
    let mw = p.model_w as usize;
    let (r0, r1) = (&mask[y0 * mw..], &mask[y1 * mw..]);
    let h0 = r0[x0] as u32 * (256 - fx) + r0[x1] as u32 * fx;
    let h1 = r1[x0] as u32 * (256 - fx) + r1[x1] as u32 * fx;
    (h0 * (256 - fy) + h1 * fy + 32768) >> 16
}

/// The kernels' `weight`.
pub(crate) fn weight(p: &MixParams, mut m: u32) -> u32 {
    if p.cut >= 0 {
        m = if m > p.cut as u32 { 255 } else { 0 };
    }
    if p.invert != 0 {
        m = 255 - m;
    }
    if p.scale != 255 {
        let t = m * p.scale as u32 + 128;
        m = (t + (t >> 8)) >> 8;
    }
    m
}

/// The kernels' `mix`.
pub(crate) fn mix(x: u32, o: u32, w: u32) -> u8 {
    let t = x * (255 - w) + o * w + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// `edgemask_mix` on the CPU: every thread of the grid in turn.
pub fn reference_mix(p: &MixParams, mask: &[u8], plane: &mut [u8], target: &[u8]) {
    let (xt, yt) = taps(p);
    for y in 0..p.height as usize {
        for x in 0..p.width as usize {
            let w = weight(p, upscaled(p, mask, &xt, &yt, x, y));
            if w == 0 {
                continue;
            }
            let px = y * p.stride as usize + x * p.pstride as usize;
            let tp = y * p.target_stride as usize + x * p.pstride as usize;
            for k in 0..p.nchans as usize {
                let c = p.chans[k] as usize;
                let o = if p.target_plane != 0 {
                    target[tp + c] as u32
                } else {
                    p.color[k] as u32
                };
                plane[px + c] = mix(plane[px + c] as u32, o, w);
            }
        }
    }
}

/// `edgemask_mask` on the CPU.
pub fn reference_mask(p: &MixParams, mask: &[u8], out: &mut [u8]) {
    let (xt, yt) = taps(p);
    for y in 0..p.height as usize {
        for x in 0..p.width as usize {
            out[y * p.stride as usize + x] = weight(p, upscaled(p, mask, &xt, &yt, x, y)) as u8;
        }
    }
}

/// `edgemask_alpha` on the CPU: `frame` (its planes as the kernel gets them) to RGBA rows
/// of `p.out_stride` bytes in `out`.
pub fn reference_alpha(p: &AlphaParams, mask: &[u8], frame: &Frame<'_>, out: &mut [u8]) {
    let (xt, yt) = taps(&p.mask);
    let s = p.strides.map(|s| s as usize);
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    for y in 0..p.mask.height as usize {
        for x in 0..p.mask.width as usize {
            let o = &mut out[y * p.out_stride as usize + x * 4..][..4];
            if p.kind == 0 {
                let px = &frame.planes[0][y * s[0] + x * p.bpp as usize..];
                for k in 0..3 {
                    o[k] = px[p.offs[k] as usize];
                }
            } else {
                let (cx, cy) = (x / 2, y / 2);
                let (u, v) = if p.kind == 1 {
                    let c = &frame.planes[1][cy * s[1] + cx * 2..];
                    (c[0] as i32, c[1] as i32)
                } else {
                    (
                        frame.planes[1][cy * s[1] + cx] as i32,
                        frame.planes[2][cy * s[2] + cx] as i32,
                    )
                };
                let (u, v) = (u - 128, v - 128);
                let c = p.yuv;
                let yy = frame.planes[0][y * s[0] + x] as i32 * c[0] + c[1];
                o[0] = clamp((yy + c[2] * v) >> 12);
                o[1] = clamp((yy + c[3] * u + c[4] * v) >> 12);
                o[2] = clamp((yy + c[5] * u) >> 12);
            }
            o[3] = weight(&p.mask, upscaled(&p.mask, mask, &xt, &yt, x, y)) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unetmask::cpu::composite::{
        MaskScaler, Scratch, Target, mix_plane, plane_colors, planes_of, write_alpha, write_mask,
    };
    use crate::unetmask::gpu::params::*;
    use crate::unetmask::test_bytes::{bytes, frame, frame_planes};

    /// A person-shaped soft mask: an ellipse with a ramp at its edge, and a hard-edged block.
    fn model_mask(w: usize, h: usize) -> Vec<u8> {
        let mut m = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (
                    (x as f32 - w as f32 * 0.4) / (w as f32 * 0.25),
                    (y as f32 - h as f32 * 0.55) / (h as f32 * 0.35),
                );
                let d = (dx * dx + dy * dy).sqrt();
                m[y * w + x] = ((1.2 - d) * 5.0 * 255.0).clamp(0.0, 255.0) as u8;
                if x > w * 3 / 4 && y < h / 4 {
                    m[y * w + x] = 255;
                }
            }
        }
        m
    }

    #[test]
    fn params_match_the_kernel_struct() {
        assert_eq!(std::mem::size_of::<MixParams>(), 20 * 4);
        assert_eq!(std::mem::size_of::<AlphaParams>(), (20 + 15) * 4);
        assert!(COMPOSITE_CU.contains(&format!("__global__ void {ALPHA_FN}(AlphaParams p")));
        assert!(COMPOSITE_CU.contains(&format!("__global__ void {MIX_FN}(MixParams p")));
        assert!(COMPOSITE_CU.contains(&format!("__global__ void {MASK_FN}(MixParams p")));
    }

    /// Every plane of every format, towards a colour and towards a picture, with a soft
    /// mask, a hard one, the background's weight and an opacity: byte for byte what the
    /// element's CPU compositing writes. The GRAY8 mask too.
    #[test]
    fn kernels_match_the_cpu_compositing_exactly() {
        let model = (40, 30);
        let mask = model_mask(model.0, model.1);
        let formats = [
            PixelFormat::Rgba,
            PixelFormat::Bgrx,
            PixelFormat::Rgb,
            PixelFormat::Nv12,
            PixelFormat::I420,
        ];
        let weights = [
            Weights::mask(None),
            Weights::mask(Some(0.5)),
            Weights::mask(None).inverted(),
            Weights::mask(Some(0.3)).scaled(140),
        ];
        let mut changed = 0usize;
        for (f, format) in formats.into_iter().enumerate() {
            for (w, h) in [(97, 61), (320, 240)] {
                let colors = plane_colors(format, YuvMatrix::BT709, [250, 200, 10]);
                for (p, geom) in planes_of(format, w, h).iter().enumerate() {
                    let stride = geom.width * geom.pstride + 5;
                    let original = bytes(stride * geom.height, (f * 10 + p) as u32 + 1);
                    let picture = bytes(stride * geom.height, 99);
                    for (k, wt) in weights.iter().enumerate() {
                        for to_picture in [false, true] {
                            let what =
                                format!("{format:?} {w}x{h} plane {p} weights {k} picture {to_picture}");
                            let mut want = original.clone();
                            let mut scaler = MaskScaler::new(model, (geom.width, geom.height));
                            let target = if to_picture {
                                Target::Plane {
                                    data: &picture,
                                    stride,
                                }
                            } else {
                                Target::Color(&colors[p])
                            };
                            mix_plane(
                                &mut want,
                                stride,
                                geom,
                                &mut scaler,
                                &mask,
                                wt,
                                target,
                                &mut Scratch::default(),
                            );
                            let params = MixParams::new(
                                model,
                                geom,
                                stride,
                                wt,
                                &colors[p],
                                to_picture.then_some(stride),
                            );
                            let mut got = original.clone();
                            reference_mix(&params, &mask, &mut got, &picture);
                            assert!(want == got, "{what}: mixed planes differ");
                            changed += (want != original) as usize;
                        }
                        let geom_gray = PlaneGeom {
                            pstride: 1,
                            chans: vec![0],
                            ..geom.clone()
                        };
                        let mut want = vec![7u8; geom.width * geom.height];
                        let mut scaler = MaskScaler::new(model, (geom.width, geom.height));
                        write_mask(&mut want, geom.width, geom.height, &mut scaler, &mask, wt);
                        let params = MixParams::new(model, &geom_gray, geom.width, wt, &[], None);
                        let mut got = vec![9u8; want.len()];
                        reference_mask(&params, &mask, &mut got);
                        assert!(
                            want == got,
                            "{format:?} {w}x{h} plane {p} weights {k}: masks differ"
                        );
                    }
                }
            }
        }
        // Every case but none changed something: the comparison is not vacuous.
        assert!(changed > 100, "only {changed} mixes changed the plane");
    }

    /// `alpha` for every input format, odd sizes and padded strides, every kind of
    /// weights: byte for byte what the element's CPU path writes.
    #[test]
    fn alpha_kernel_matches_the_cpu_path_exactly() {
        let model = (40, 30);
        let mask = model_mask(model.0, model.1);
        let weights = [
            Weights::mask(None),
            Weights::mask(Some(0.5)),
            Weights::mask(None).inverted().scaled(140),
        ];
        let mut opaque = 0usize;
        for (f, format) in [
            PixelFormat::Rgba,
            PixelFormat::Bgra,
            PixelFormat::Bgrx,
            PixelFormat::Rgb,
            PixelFormat::Bgr,
            PixelFormat::Nv12,
            PixelFormat::I420,
        ]
        .into_iter()
        .enumerate()
        {
            for (w, h) in [(97, 61), (320, 240)] {
                let (data, strides) = frame_planes(format, w, h, 3, f as u32 + 1);
                let frame = frame(format, w, h, &data, strides);
                for (k, wt) in weights.iter().enumerate() {
                    for matrix in [YuvMatrix::BT601, YuvMatrix::BT709] {
                        let out_stride = w * 4 + 8;
                        let mut want = vec![1u8; out_stride * h];
                        let mut scaler = MaskScaler::new(model, (w, h));
                        write_alpha(
                            &frame,
                            matrix,
                            &mut want,
                            out_stride,
                            &mut scaler,
                            &mask,
                            wt,
                            &mut Scratch::default(),
                        );
                        let p = AlphaParams::new(format, (w, h), strides, model, wt, matrix, out_stride);
                        let mut got = vec![1u8; want.len()];
                        reference_alpha(&p, &mask, &frame, &mut got);
                        let at = want.iter().zip(&got).position(|(a, b)| a != b);
                        assert!(
                            at.is_none(),
                            "{format:?} {w}x{h} weights {k} {matrix:?}: byte {at:?} differs"
                        );
                        opaque += want.chunks(4).filter(|px| px[3] == 255).count();
                    }
                }
            }
        }
        assert!(
            opaque > 1000,
            "the masks were never opaque: the comparison would be vacuous"
        );
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn kernels_compile_with_nvrtc() {
        crate::unetmask::gpu::mirror::pre::tests::nvrtc_compiles(COMPOSITE_CU, ALPHA_FN);
        crate::unetmask::gpu::mirror::pre::tests::nvrtc_compiles(COMPOSITE_CU, MIX_FN);
        crate::unetmask::gpu::mirror::pre::tests::nvrtc_compiles(COMPOSITE_CU, MASK_FN);
    }
}
