// SPDX-License-Identifier: MPL-2.0

//! The GPU `blur` kernels (`kernels/blur.cu`, compiled at run time by NVRTC together with
//! `composite.cu`, whose mask helpers they use) and their CPU mirror: the background of a
//! plane blurred without the person on a reduced grid, then the plane mixed towards it.
//! Each step of [`reference`] is one kernel, computed one GPU thread at a time, in the CPU
//! path's order of floating-point operations, so the tests hold it to `BlurPlane` and
//! `mix_plane` byte for byte.

use crate::unetmask::cpu::composite::Weights;
use crate::unetmask::gpu::mirror::composite as gpu_composite;
use crate::unetmask::gpu::params::{BlurParams, BlurPlan, BoxParams, MixParams, taps};

/// `edgemask_blur_grid` on the CPU: every cell's weighted sums.
pub fn grid(p: &BlurParams, mask: &[u8], plane: &[u8], acc: &mut [f32], wsum: &mut [f32]) {
    let g = &p.bg;
    let (xt, yt) = taps(g);
    let (f, step, n) = (p.factor as usize, p.step as usize, g.nchans as usize);
    for cy in 0..p.sh as usize {
        for cx in 0..p.sw as usize {
            let cell = cy * p.sw as usize + cx;
            let (mut a, mut ws) = ([0f32; 4], 0f32);
            let y0 = (cy * f).div_ceil(step) * step;
            let x0 = (cx * f).div_ceil(step) * step;
            for y in (y0..((cy + 1) * f).min(g.height as usize)).step_by(step) {
                let row = &plane[y * g.stride as usize..];
                for x in (x0..((cx + 1) * f).min(g.width as usize)).step_by(step) {
                    let w = gpu_composite::weight(g, gpu_composite::upscaled(g, mask, &xt, &yt, x, y)) as f32
                        + 0.01;
                    ws += w;
                    for (k, a) in a.iter_mut().enumerate().take(n) {
                        *a += w * row[x * g.pstride as usize + g.chans[k] as usize] as f32;
                    }
                }
            }
            wsum[cell] = ws;
            acc[cell * n..][..n].copy_from_slice(&a[..n]);
        }
    }
}

/// The kernels' `box_line`: a running sum along `n` values `pitch` apart from `base`.
fn box_line(b: &BoxParams, src: &[f32], dst: &mut [f32], base: usize, pitch: usize, n: usize) {
    let at = |i: isize| src[base + i.clamp(0, n as isize - 1) as usize * pitch];
    let mut sum = 0f32;
    for i in -(b.r as isize)..=b.r as isize {
        sum += at(i);
    }
    for i in 0..n {
        dst[base + i * pitch] = sum * b.norm;
        sum += at((i + b.r as usize + 1) as isize) - at(i as isize - b.r as isize);
    }
}

/// `edgemask_box_rows` then `edgemask_box_cols` on the CPU: one box pass over `data`.
pub fn box_pass(b: &BoxParams, data: &mut [f32], tmp: &mut Vec<f32>) {
    tmp.resize(data.len(), 0.0);
    let (w, h, c) = (b.w as usize, b.h as usize, b.c as usize);
    for t in 0..h * c {
        box_line(b, data, tmp, (t / c) * w * c + t % c, c, w);
    }
    for t in 0..w * c {
        box_line(b, tmp, data, (t / c) * c + t % c, w * c, h);
    }
}

/// `edgemask_blur_rows` on the CPU: the background upscaled horizontally, per grid row.
pub fn rows(p: &BlurParams, acc: &[f32], wsum: &[f32], gx: &[u32], hrows: &mut [u16]) {
    let g = &p.bg;
    let (n, ps, width) = (g.nchans as usize, g.pstride as usize, g.width as usize);
    for i in 0..p.sh as usize {
        for x in 0..width {
            let (x0, x1, fx) = (gx[3 * x] as usize, gx[3 * x + 1] as usize, gx[3 * x + 2]);
            let (c0, c1) = (i * p.sw as usize + x0, i * p.sw as usize + x1);
            for k in 0..n {
                let a = acc[c0 * n + k] / wsum[c0];
                let b = acc[c1 * n + k] / wsum[c1];
                let v = (a + 0.5) as u32 * (256 - fx) + (b + 0.5) as u32 * fx;
                hrows[(i * width + x) * ps + g.chans[k] as usize] = v as u16;
            }
        }
    }
}

/// `edgemask_blur_mix` on the CPU.
pub fn mix(m: &MixParams, mask: &[u8], gy: &[u32], hrows: &[u16], plane: &mut [u8]) {
    let (xt, yt) = taps(m);
    let (ps, rb) = (m.pstride as usize, m.width as usize * m.pstride as usize);
    for y in 0..m.height as usize {
        for x in 0..m.width as usize {
            let w = gpu_composite::weight(m, gpu_composite::upscaled(m, mask, &xt, &yt, x, y));
            if w == 0 {
                continue;
            }
            let (y0, y1, fy) = (gy[3 * y] as usize, gy[3 * y + 1] as usize, gy[3 * y + 2]);
            for k in 0..m.nchans as usize {
                let c = m.chans[k] as usize;
                let (u, v) = (
                    hrows[y0 * rb + x * ps + c] as u32,
                    hrows[y1 * rb + x * ps + c] as u32,
                );
                let o = (u * (256 - fy) + v * fy + 32768) >> 16;
                let px = &mut plane[y * m.stride as usize + x * ps + c];
                *px = gpu_composite::mix(*px as u32, o, w);
            }
        }
    }
}

/// The five kernels in turn on the CPU: `plane` blurred where `mask` says background.
pub fn reference(plan: &BlurPlan, mask: &[u8], plane: &mut [u8]) {
    let p = &plan.blur;
    let cells = (p.sw * p.sh) as usize;
    let (mut acc, mut wsum) = (vec![0f32; cells * p.bg.nchans as usize], vec![0f32; cells]);
    grid(p, mask, plane, &mut acc, &mut wsum);
    let mut tmp = Vec::new();
    for _ in 0..2 {
        box_pass(&plan.box_acc, &mut acc, &mut tmp);
    }
    for _ in 0..2 {
        box_pass(&plan.box_wsum, &mut wsum, &mut tmp);
    }
    let mut hrows = vec![0u16; p.sh as usize * p.bg.width as usize * p.bg.pstride as usize];
    rows(p, &acc, &wsum, &plan.gx, &mut hrows);
    mix(&p.bg, mask, &plan.gy, &hrows, plane);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unetmask::cpu::composite::{BlurPlane, MaskScaler, Scratch, Target, mix_plane, planes_of};
    use crate::unetmask::frame::PixelFormat;
    use crate::unetmask::gpu::params::*;
    use crate::unetmask::test_bytes::bytes;

    #[test]
    fn params_match_the_kernel_structs() {
        assert_eq!(std::mem::size_of::<BlurParams>(), (20 + 4) * 4);
        assert_eq!(std::mem::size_of::<BoxParams>(), 5 * 4);
        for f in [BLUR_GRID_FN, BOX_ROWS_FN, BOX_COLS_FN, BLUR_ROWS_FN, BLUR_MIX_FN] {
            assert!(BLUR_CU.contains(&format!("__global__ void {f}(")), "{f}");
        }
    }

    /// Every plane of every format, sizes that give grid factors 1, 3 and 7 (sampling step
    /// 1 and 3), soft, hard and scaled masks: byte for byte what the element's CPU `blur`
    /// writes (`BlurPlane::compute` then `mix_plane` towards it).
    #[test]
    fn blur_kernels_match_the_cpu_path_exactly() {
        let model = (40, 30);
        let mask: Vec<u8> = (0..model.0 * model.1)
            .map(|i| {
                let (x, y) = ((i % model.0) as f32, (i / model.0) as f32);
                let d = ((x - 16.0) / 9.0).powi(2) + ((y - 17.0) / 11.0).powi(2);
                ((1.3 - d.sqrt()) * 4.0 * 255.0).clamp(0.0, 255.0) as u8
            })
            .collect();
        let weights = [
            Weights::mask(None),
            Weights::mask(Some(0.5)),
            Weights::mask(None).scaled(90),
        ];
        let mut changed = 0usize;
        for (f, format) in [
            PixelFormat::Rgba,
            PixelFormat::Bgrx,
            PixelFormat::Rgb,
            PixelFormat::Nv12,
            PixelFormat::I420,
        ]
        .into_iter()
        .enumerate()
        {
            for (w, h) in [(97, 61), (301, 290), (700, 690)] {
                for (p, geom) in planes_of(format, w, h).iter().enumerate() {
                    let stride = geom.width * geom.pstride + 3;
                    let original = bytes(stride * geom.height, (f * 10 + p) as u32 + 7);
                    for (k, wt) in weights.iter().enumerate() {
                        let radius = 21;
                        let mut want = original.clone();
                        let mut scaler = MaskScaler::new(model, (geom.width, geom.height));
                        let mut blur = BlurPlane::default();
                        blur.compute(&original, stride, geom, &mut scaler, &mask, wt, radius);
                        mix_plane(
                            &mut want,
                            stride,
                            geom,
                            &mut scaler,
                            &mask,
                            &wt.inverted(),
                            Target::Blurred(&blur),
                            &mut Scratch::default(),
                        );
                        let plan = BlurPlan::new(model, geom, stride, wt, radius);
                        let mut got = original.clone();
                        reference(&plan, &mask, &mut got);
                        let at = want.iter().zip(&got).position(|(a, b)| a != b);
                        assert!(
                            at.is_none(),
                            "{format:?} {w}x{h} plane {p} weights {k}: byte {at:?} differs"
                        );
                        changed += (want != original) as usize;
                    }
                }
            }
        }
        assert!(changed > 30, "only {changed} blurs changed the plane");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn kernels_compile_with_nvrtc() {
        let src = format!("{}\n{BLUR_CU}", COMPOSITE_CU);
        for f in [BLUR_GRID_FN, BOX_ROWS_FN, BOX_COLS_FN, BLUR_ROWS_FN, BLUR_MIX_FN] {
            crate::unetmask::gpu::mirror::pre::tests::nvrtc_compiles(&src, f);
        }
    }
}
