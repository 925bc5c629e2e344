// SPDX-License-Identifier: MPL-2.0

//! The GPU compositing kernels (`kernels/composite.cu`, compiled at run time by NVRTC) and
//! their CPU mirrors: the mask upscaled to a plane, mapped to weights, and the plane mixed
//! towards a colour or a picture (`overlay`, `replace`), or written as GRAY8 (`mask`).
//! The arithmetic is the CPU path's integer arithmetic (`composite.rs`), so the tests hold
//! the mirrors to it exactly.

use super::composite::{PlaneGeom, Weights, fixed_taps};

/// The kernels' CUDA C source.
pub const COMPOSITE_CU: &str = include_str!("kernels/composite.cu");
/// Entry points: mix a plane; write the GRAY8 mask.
pub const MIX_FN: &str = "edgemask_mix";
pub const MASK_FN: &str = "edgemask_mask";

/// The kernels' parameters, passed by value: identical to `struct MixParams` in
/// `kernels/composite.cu` (`repr(C)`, 4-byte fields only).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixParams {
    pub model_w: i32,
    pub model_h: i32,
    /// The plane's size in pixels.
    pub width: i32,
    pub height: i32,
    /// The plane's row stride, bytes.
    pub stride: i32,
    /// Bytes per pixel in the plane.
    pub pstride: i32,
    /// Colour bytes per pixel and their offsets (alpha or padding bytes are kept).
    pub nchans: i32,
    pub chans: [i32; 4],
    /// Hard mask: `m > cut` is 255, else 0; -1: soft mask.
    pub cut: i32,
    /// 1: the background's weight (`255 - m`).
    pub invert: i32,
    /// Opacity: `weight * scale / 255`.
    pub scale: i32,
    /// 1: mix towards a picture of the same geometry, 0: towards `color`.
    pub target_plane: i32,
    pub target_stride: i32,
    /// The colour, one value per colour byte.
    pub color: [i32; 4],
}

impl MixParams {
    /// Parameters for one plane (`geom`, rows `stride` apart), a `model` size mask and
    /// `weights`; towards `color` (one value per channel of the plane), or, with
    /// `target_stride`, towards a picture.
    pub fn new(
        model: (usize, usize),
        geom: &PlaneGeom,
        stride: usize,
        weights: &Weights,
        color: &[u8],
        target_stride: Option<usize>,
    ) -> MixParams {
        let (cut, invert, scale) = weights.parts();
        let mut chans = [0i32; 4];
        for (c, &o) in chans.iter_mut().zip(&geom.chans) {
            *c = o as i32;
        }
        let mut col = [0i32; 4];
        for (c, &v) in col.iter_mut().zip(color) {
            *c = v as i32;
        }
        MixParams {
            model_w: model.0 as i32,
            model_h: model.1 as i32,
            width: geom.width as i32,
            height: geom.height as i32,
            stride: stride as i32,
            pstride: geom.pstride as i32,
            nchans: geom.chans.len() as i32,
            chans,
            cut: cut.map_or(-1, i32::from),
            invert: invert as i32,
            scale: scale as i32,
            target_plane: target_stride.is_some() as i32,
            target_stride: target_stride.unwrap_or(0) as i32,
            color: col,
        }
    }
}

/// The taps the host uploads once per caps: `(i0, i1, f)` per output column and row.
pub fn taps(p: &MixParams) -> (Vec<u32>, Vec<u32>) {
    let flat = |t: Vec<(u32, u32, u32)>| t.into_iter().flat_map(|(a, b, f)| [a, b, f]).collect();
    (
        flat(fixed_taps(p.model_w as usize, p.width as usize)),
        flat(fixed_taps(p.model_h as usize, p.height as usize)),
    )
}

/// The kernels' `upscaled`.
fn upscaled(p: &MixParams, mask: &[u8], xt: &[u32], yt: &[u32], x: usize, y: usize) -> u32 {
    let (x0, x1, fx) = (xt[3 * x] as usize, xt[3 * x + 1] as usize, xt[3 * x + 2]);
    let (y0, y1, fy) = (yt[3 * y] as usize, yt[3 * y + 1] as usize, yt[3 * y + 2]);
    let mw = p.model_w as usize;
    let (r0, r1) = (&mask[y0 * mw..], &mask[y1 * mw..]);
    let h0 = r0[x0] as u32 * (256 - fx) + r0[x1] as u32 * fx;
    let h1 = r1[x0] as u32 * (256 - fx) + r1[x1] as u32 * fx;
    (h0 * (256 - fy) + h1 * fy + 32768) >> 16
}

/// The kernels' `weight`.
fn weight(p: &MixParams, mut m: u32) -> u32 {
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
fn mix(x: u32, o: u32, w: u32) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unetmask::composite::{
        MaskScaler, Scratch, Target, mix_plane, plane_colors, planes_of, write_mask,
    };
    use crate::unetmask::frame::{PixelFormat, YuvMatrix};
    use crate::unetmask::test_bytes::bytes;

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

    #[cfg(feature = "cuda")]
    #[test]
    fn kernels_compile_with_nvrtc() {
        crate::unetmask::gpu_pre::tests::nvrtc_compiles(COMPOSITE_CU, MIX_FN);
        crate::unetmask::gpu_pre::tests::nvrtc_compiles(COMPOSITE_CU, MASK_FN);
    }
}
