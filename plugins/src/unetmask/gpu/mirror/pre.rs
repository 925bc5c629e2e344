// SPDX-License-Identifier: MPL-2.0

//! The GPU pre-processing kernel (`kernels/preprocess.cu`, compiled at run time by NVRTC)
//! and its CPU mirror.
//!
//! [`reference`] runs the kernel's arithmetic on the CPU, one iteration per GPU thread, in
//! the same `f32` operations; the tests hold it to the element's CPU path
//! ([`Preprocessor`](crate::unetmask::cpu::preprocess::Preprocessor)) for every format, layout and
//! channel order, so the maths of the GPU path is checked on every machine. With the `cuda`
//! feature, a test also compiles the kernel with NVRTC (`libnvrtc.so.12`, from the
//! `nvidia-cuda-nvrtc-cu12` wheel that `scripts/setup.sh` installs for the tests).

use crate::unetmask::frame::{Frame, PixelFormat, chroma_size};
use crate::unetmask::gpu::params::PreParams;

/// The kernel's `tap`: source neighbours and weight for output coordinate `o`.
fn tap(o: i32, src: i32, dst: i32) -> (i32, i32, f32) {
    let scale = src as f32 / dst as f32;
    let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f32);
    let i0 = s.floor() as i32;
    (i0, (i0 + 1).min(src - 1), s - i0 as f32)
}

/// The kernel's `lerp2`.
fn lerp2(r0: &[u8], r1: &[u8], i0: i32, i1: i32, fx: f32, fy: f32) -> f32 {
    let (a, b) = (r0[i0 as usize] as f32, r0[i1 as usize] as f32);
    let (c, d) = (r1[i0 as usize] as f32, r1[i1 as usize] as f32);
    let top = a + (b - a) * fx;
    top + (c + (d - c) * fx - top) * fy
}

/// What one GPU thread computes: the tensor values of pixel (`ox`, `oy`).
fn thread(p: &PreParams, planes: [&[u8]; 3], ox: i32, oy: i32) -> [f32; 3] {
    let (tx0, tx1, fx) = tap(ox, p.width, p.tensor_w);
    let (ty0, ty1, fy) = tap(oy, p.height, p.tensor_h);
    let row = |plane: usize, y: i32| &planes[plane][y as usize * p.strides[plane] as usize..];
    let (y0, y1) = (row(0, ty0), row(0, ty1));
    if p.kind == 0 {
        return std::array::from_fn(|k| {
            let o = p.offsets[k];
            let x = lerp2(y0, y1, tx0 * p.bpp + o, tx1 * p.bpp + o, fx, fy);
            x * p.mul[k] + p.add[k]
        });
    }
    let (cw, ch) = ((p.width + 1) / 2, (p.height + 1) / 2);
    let (cx0, cx1, fxc) = tap(ox, cw, p.tensor_w);
    let (cy0, cy1, fyc) = tap(oy, ch, p.tensor_h);
    let y = lerp2(y0, y1, tx0, tx1, fx, fy);
    let (u0, u1) = (row(1, cy0), row(1, cy1));
    let (u, w) = if p.kind == 1 {
        (
            lerp2(u0, u1, cx0 * 2, cx1 * 2, fxc, fyc),
            lerp2(u0, u1, cx0 * 2 + 1, cx1 * 2 + 1, fxc, fyc),
        )
    } else {
        let (v0, v1) = (row(2, cy0), row(2, cy1));
        (
            lerp2(u0, u1, cx0, cx1, fxc, fyc),
            lerp2(v0, v1, cx0, cx1, fxc, fyc),
        )
    };
    let yy = y * p.yuv[0] + p.yuv[1];
    let (u, w) = (u - 128.0, w - 128.0);
    let rgb = [
        (yy + p.yuv[2] * w).clamp(0.0, 255.0),
        (yy + p.yuv[3] * u + p.yuv[4] * w).clamp(0.0, 255.0),
        (yy + p.yuv[5] * u).clamp(0.0, 255.0),
    ];
    std::array::from_fn(|k| rgb[p.rgb_index[k] as usize] * p.mul[k] + p.add[k])
}

/// The kernel on the CPU: every thread of the launch grid in turn, writing `out` as the
/// kernel does. `frame` must match the parameters (format, size; its strides are used).
pub fn reference(p: &PreParams, frame: &Frame<'_>, out: &mut [f32]) {
    assert_eq!(out.len(), p.tensor_len(), "tensor size");
    assert_eq!((frame.width, frame.height), (p.width as usize, p.height as usize));
    if p.kind != 0 {
        let (cw, ch) = chroma_size(frame.width, frame.height);
        assert!(
            frame.planes[1].len() >= (ch - 1) * frame.strides[1] + cw,
            "chroma plane"
        );
    }
    let p = PreParams {
        strides: frame.strides.map(|s| s as i32),
        ..*p
    };
    let (tw, th) = (p.tensor_w as usize, p.tensor_h as usize);
    for oy in 0..th {
        for ox in 0..tw {
            let v = thread(&p, frame.planes, ox as i32, oy as i32);
            let px = oy * tw + ox;
            for (k, v) in v.into_iter().enumerate() {
                if p.nhwc != 0 {
                    out[px * 3 + k] = v;
                } else {
                    out[k * tw * th + px] = v;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::unetmask::cpu::preprocess::Preprocessor;
    use crate::unetmask::frame::FrameSpec;
    use crate::unetmask::frame::YuvMatrix;
    use crate::unetmask::gpu::params::*;
    use crate::unetmask::model::contract::Layout;
    use crate::unetmask::model::contract::{ChannelOrder, Normalization, TensorSpec};
    use crate::unetmask::test_bytes::{frame, frame_planes};

    #[test]
    fn params_match_the_kernel_struct() {
        // 28 four-byte values in the CUDA struct.
        assert_eq!(std::mem::size_of::<PreParams>(), 28 * 4);
        assert!(PREPROCESS_CU.contains(&format!("__global__ void {PREPROCESS_FN}(PreParams p")));
    }

    /// The kernel's arithmetic (run on the CPU) against the element's CPU path, within
    /// 1e-3 of the tensor value, for every format, both layouts and channel orders,
    /// downscaling, upscaling, odd sizes, padded strides and a mean/std normalisation.
    #[test]
    fn kernel_arithmetic_matches_the_cpu_path() {
        let imagenet = Normalization {
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        let formats = [
            PixelFormat::Rgba,
            PixelFormat::Bgra,
            PixelFormat::Rgbx,
            PixelFormat::Bgrx,
            PixelFormat::Rgb,
            PixelFormat::Bgr,
            PixelFormat::Nv12,
            PixelFormat::I420,
        ];
        let cases = [
            ((640, 480), (256, 256)),
            ((33, 17), (40, 30)),
            ((7, 5), (4, 3)),
            ((1, 1), (2, 2)),
        ];
        let mut checked = 0;
        for (i, format) in formats.into_iter().enumerate() {
            for ((w, h), tensor) in cases {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    for (order, norm) in [
                        (ChannelOrder::Rgb, Normalization::default()),
                        (ChannelOrder::Bgr, imagenet),
                    ] {
                        let (data, strides) = frame_planes(format, w, h, 8, i as u32 + 7);
                        let frame = frame(format, w, h, &data, strides);
                        let matrix = YuvMatrix::BT709;
                        let mut cpu = Preprocessor::new(
                            &FrameSpec {
                                format,
                                width: w,
                                height: h,
                                matrix,
                            },
                            &TensorSpec {
                                size: tensor,
                                layout,
                                order,
                                norm,
                            },
                        );
                        let mut want = vec![0f32; cpu.tensor_len()];
                        cpu.run(&frame, &mut want);
                        let p = PreParams::new(
                            &FrameSpec {
                                format,
                                width: w,
                                height: h,
                                matrix,
                            },
                            strides,
                            &TensorSpec {
                                size: tensor,
                                layout,
                                order,
                                norm,
                            },
                        );
                        let mut got = vec![f32::NAN; p.tensor_len()];
                        reference(&p, &frame, &mut got);
                        let worst = want
                            .iter()
                            .zip(&got)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        assert!(
                            worst <= 1e-3,
                            "{format:?} {w}x{h} -> {tensor:?} {layout:?} {order:?}: differs by {worst}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 4 * 2 * 2);
    }

    /// NVRTC compiles `src` and the PTX has `entry` (the `cuda` feature; no GPU needed).
    /// Without libnvrtc the test says so and passes, unless `EDGEMASK_REQUIRE_NVRTC=1` (the
    /// test command sets it after installing NVRTC), where a missing library fails it.
    #[cfg(feature = "cuda")]
    pub(crate) fn nvrtc_compiles(src: &str, entry: &str) {
        // SAFETY: probes for the library with dlopen; no NVRTC call is made.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            let msg = "libnvrtc.so.12 not found on the library path (scripts/setup.sh installs it)";
            assert!(
                std::env::var("EDGEMASK_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "{msg}"
            );
            eprintln!("skipped: {msg}");
            return;
        }
        let ptx = cudarc::nvrtc::compile_ptx(src).unwrap_or_else(|e| panic!("NVRTC: {e:?}"));
        let text = ptx.to_src();
        assert!(text.contains(&format!(".entry {entry}")), "{text}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn kernel_compiles_with_nvrtc() {
        nvrtc_compiles(PREPROCESS_CU, PREPROCESS_FN);
    }
}
