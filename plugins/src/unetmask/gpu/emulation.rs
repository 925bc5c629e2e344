// SPDX-License-Identifier: MPL-2.0

//! Tests only: the GPU kernels' own CUDA C source executed on the CPU, and the check that
//! holds any kernel runner (this emulation, or the real GPU through `gpu_launch`) to the
//! kernels' Rust mirrors.
//!
//! `kernels/host_emulation.cpp` includes the four `.cu` files with the CUDA built-ins they
//! use defined for the host, and runs a launch one (block, thread) after another. The test
//! compiles it with the system's C++ compiler (`build-essential`, installed by
//! `scripts/setup.sh`) and loads it, so every machine runs the kernels as written —
//! indexing, bounds, arithmetic, argument order — not only their mirrors. Launch shapes
//! are the ones `gpu_launch` uses.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::unetmask::cpu::composite::{PlaneGeom, Weights, plane_colors, planes_of};
use crate::unetmask::frame::{Frame, FrameSpec, PixelFormat, YuvMatrix, plane_bytes};
use crate::unetmask::gpu::mirror::blur as gpu_blur;
use crate::unetmask::gpu::mirror::composite as gpu_composite;
use crate::unetmask::gpu::mirror::post as gpu_post;
use crate::unetmask::gpu::mirror::pre as gpu_pre;
use crate::unetmask::gpu::params::{
    self, AlphaParams, BlurParams, BlurPlan, BoxParams, MixParams, PostParams, PreParams,
};
use crate::unetmask::model::contract::OutputSpec;
use crate::unetmask::model::contract::{
    Activation, ChannelOrder, Layout, Normalization, OutputLayout, TensorSpec,
};
use crate::unetmask::test_bytes::{bytes, frame, frame_planes};

/// What the kernel checks need from a runner: host data in, host data out.
pub trait KernelRunner {
    fn preprocess(&self, p: &PreParams, frame: &Frame<'_>) -> Result<Vec<f32>, String>;
    fn postprocess(
        &self,
        p: &PostParams,
        out: &[f32],
        state: &mut Vec<f32>,
    ) -> Result<(Vec<u8>, [u32; 2]), String>;
    fn mix(&self, p: &MixParams, mask: &[u8], plane: &[u8], target: &[u8]) -> Result<Vec<u8>, String>;
    fn mask(&self, p: &MixParams, mask: &[u8]) -> Result<Vec<u8>, String>;
    fn alpha(&self, p: &AlphaParams, mask: &[u8], frame: &Frame<'_>) -> Result<Vec<u8>, String>;
    fn blur(&self, plan: &BlurPlan, mask: &[u8], plane: &[u8]) -> Result<Vec<u8>, String>;
}

/// Half an ulp of `x`: the most that rounding a result of `x`'s size can move it.
fn half_ulp(x: f32) -> f32 {
    f32::from_bits(x.abs().to_bits() & 0x7f80_0000) * f32::EPSILON / 2.0
}

/// How far a fused build of `edgemask_preprocess` can put a tensor value from its mirror's.
/// The sampling positions and weights are computed without fusion (`_rn`), so they are the
/// mirror's; what a compiler may fuse is each bilinear step `a + (b - a) * f` (three per
/// sample, results within 0..=255), the YUV matrix (`y * m + c`, then one fused step per
/// chroma term) and the final `value * mul + add`. Each fused step differs from the two
/// rounded operations it replaces by at most half an ulp of its result; the errors of a
/// step's inputs are carried through its coefficients.
pub fn tensor_bound(p: &PreParams) -> f32 {
    let sample = 3.0 * half_ulp(255.0);
    let rgb = if p.kind == 0 {
        sample
    } else {
        let [ym, yc, rv, gu, gv, bu] = p.yuv.map(f32::abs);
        let y = ym * sample + half_ulp(ym * 255.0 + yc);
        // R: y + rv * v; G: y + gu * u + gv * v (two steps); B: y + bu * u.
        let chroma = rv.max(gu + gv).max(bu) * sample;
        y + chroma + 2.0 * half_ulp(255.0)
    };
    let mul = p.mul.iter().fold(0f32, |m, v| m.max(v.abs()));
    let top = (0..3).fold(0f32, |m, k| m.max(255.0 * p.mul[k].abs() + p.add[k].abs()));
    mul * rgb + half_ulp(top)
}

/// `edgemask_preprocess` through `k` against its mirror, for `frame` into a `model`-sized
/// tensor in both layouts: exactly, or within [`tensor_bound`] for a fused build.
fn check_preprocess(
    k: &dyn KernelRunner,
    arithmetic: Contraction,
    format: PixelFormat,
    frame: &Frame<'_>,
    model: (usize, usize),
) {
    for layout in [Layout::Nchw, Layout::Nhwc] {
        let p = PreParams::new(
            &FrameSpec {
                format,
                width: frame.width,
                height: frame.height,
                matrix: YuvMatrix::BT709,
            },
            frame.strides,
            &TensorSpec {
                size: model,
                layout,
                order: ChannelOrder::Rgb,
                norm: Normalization::default(),
            },
        );
        let mut want = vec![0f32; p.tensor_len()];
        gpu_pre::reference(&p, frame, &mut want);
        let got = k.preprocess(&p, frame).expect("preprocess");
        assert_eq!(got.len(), want.len());
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let bound = match arithmetic {
            Contraction::Off => 0.0,
            Contraction::Fused => tensor_bound(&p),
        };
        assert!(
            worst <= bound,
            "{format:?} {}x{} {layout:?}: tensor differs by {worst:e}, more than {bound:e} ({arithmetic:?})",
            frame.width,
            frame.height
        );
    }
}

/// Every kernel through `k` against its CPU mirror, on 1921x1081 frames with padded rows in
/// five formats: tensors for every format and layout, masks (two frames, with smoothing),
/// and the compositing kernels (`mix` towards a colour and a picture, `mask`, `alpha`, the
/// five `blur` steps), which use only integer arithmetic and `_rn` intrinsics and so must
/// match byte for byte on any build. Built as `arithmetic` says: without fusion the kernels
/// compute exactly what their mirrors do, so tensors and masks must match exactly; fused,
/// as NVRTC builds them, tensors within [`tensor_bound`] and masks within one level (a
/// probability a few ulps off can round to the next level; `expf` itself differs by up to
/// two ulps between CUDA and the host's libm).
pub fn check_kernels(k: &dyn KernelRunner, arithmetic: Contraction) {
    let (w, h) = (1921, 1081);
    let model = (256, 144);
    let mask = bytes(model.0 * model.1, 11);
    let mut changed = 0;
    for format in [
        PixelFormat::Rgba,
        PixelFormat::Bgrx,
        PixelFormat::Rgb,
        PixelFormat::Nv12,
        PixelFormat::I420,
    ] {
        let geoms = planes_of(format, w, h);
        let (data, strides) = frame_planes(format, w, h, 3, 3);
        let frame = frame(format, w, h, &data, strides);
        check_preprocess(k, arithmetic, format, &frame, model);
        // 309 rows into 144: row 119's source position is where one rounding and two
        // differ (see `tap` in preprocess.cu), so a fused position would show here.
        let (small, small_strides) = frame_planes(format, 400, 309, 3, 4);
        let small = crate::unetmask::test_bytes::frame(format, 400, 309, &small, small_strides);
        check_preprocess(k, arithmetic, format, &small, model);
        let wt = Weights::mask(None).inverted();
        let p = AlphaParams::new(format, (w, h), strides, model, &wt, YuvMatrix::BT709, w * 4 + 8);
        let mut want = vec![0u8; (w * 4 + 8) * h];
        gpu_composite::reference_alpha(&p, &mask, &frame, &mut want);
        assert!(
            k.alpha(&p, &mask, &frame).expect("alpha") == want,
            "{format:?}: alpha"
        );

        let gray = PlaneGeom::gray(w, h);
        for wt in [Weights::mask(Some(0.4)), Weights::mask(None)] {
            let p = MixParams::new(model, &gray, w + 5, &wt, &[], None);
            let mut want = vec![0u8; (w + 5) * h];
            gpu_composite::reference_mask(&p, &mask, &mut want);
            assert!(
                k.mask(&p, &mask).expect("mask") == want,
                "{format:?} {wt:?}: mask"
            );
        }

        let colors = plane_colors(format, YuvMatrix::BT709, [250, 200, 10]);
        let (picture, _) = frame_planes(format, w, h, 0, 9);
        // Hard and soft masks, opacity, the background's weights.
        let weights = [
            Weights::mask(Some(0.4)).scaled(200),
            Weights::mask(None).scaled(130),
            Weights::mask(None).inverted(),
        ];
        for (i, g) in geoms.iter().enumerate() {
            for (n, wt) in weights.iter().enumerate() {
                let p = MixParams::new(model, g, strides[i], wt, &colors[i], None);
                let mut want = data[i].clone();
                gpu_composite::reference_mix(&p, &mask, &mut want, &[]);
                assert!(
                    k.mix(&p, &mask, &data[i], &[]).expect("mix") == want,
                    "{format:?} plane {i} weights {n}: mix towards a colour"
                );
                changed += (want != data[i]) as usize;
            }
            let wt = Weights::mask(None).inverted();
            let p = MixParams::new(model, g, strides[i], &wt, &colors[i], Some(g.width * g.pstride));
            let mut want = data[i].clone();
            gpu_composite::reference_mix(&p, &mask, &mut want, &picture[i]);
            assert!(
                k.mix(&p, &mask, &data[i], &picture[i]).expect("mix") == want,
                "{format:?} plane {i}: mix towards a picture"
            );
            let plan = BlurPlan::new(model, g, strides[i], &Weights::mask(None), 21);
            let mut want = data[i].clone();
            gpu_blur::reference(&plan, &mask, &mut want);
            assert!(
                k.blur(&plan, &mask, &data[i]).expect("blur") == want,
                "{format:?} plane {i}: blur"
            );
            changed += (want != data[i]) as usize;
        }
    }
    assert!(changed > 0, "the compositing checks compared changed planes");
    for (layout, channels, activation) in [
        (OutputLayout::ChannelsFirst, 1, Activation::Sigmoid),
        (OutputLayout::ChannelsLast, 2, Activation::Softmax),
        (OutputLayout::ChannelsFirst, 3, Activation::Softmax),
    ] {
        let spec = OutputSpec {
            layout,
            channels,
            person: channels - 1,
            activation,
        };
        let n = model.0 * model.1;
        let out: Vec<f32> = bytes(n * channels, 5)
            .iter()
            .map(|&b| b as f32 / 16.0 - 8.0)
            .collect();
        let (mut s_run, mut s_cpu) = (vec![0f32; n], vec![0f32; n]);
        for frame in 0..2 {
            let p = PostParams::new(&spec, n, 0.6, frame > 0, Some(0.45));
            let mut want = vec![0u8; n];
            let stats = gpu_post::reference(&p, &out, &mut s_cpu, &mut want);
            let (got, counts) = k.postprocess(&p, &out, &mut s_run).expect("postprocess");
            let worst = want.iter().zip(&got).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            let bound = match arithmetic {
                Contraction::Off => 0,
                Contraction::Fused => 1,
            };
            assert!(
                worst <= bound,
                "{spec:?}: post-processing differs by {worst} levels, more than {bound} ({arithmetic:?})"
            );
            let got_stats = params::stats_of(counts, n);
            assert!(
                (got_stats.coverage - stats.coverage).abs() <= 2.0 / n as f32,
                "{spec:?}: coverage"
            );
            assert!(
                (got_stats.uncertain - stats.uncertain).abs() <= 2.0 / n as f32,
                "{spec:?}: uncertain"
            );
        }
    }
}

/// A launch shape as `gpu_launch` makes it: grid and block sizes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Launch {
    gx: u32,
    gy: u32,
    bx: u32,
    by: u32,
}

/// `gpu_launch::grid`: `w` x `h` threads in 16 x 16 blocks.
fn grid(w: i32, h: i32) -> Launch {
    Launch {
        gx: (w.max(1) as u32).div_ceil(16),
        gy: (h.max(1) as u32).div_ceil(16),
        bx: 16,
        by: 16,
    }
}

/// cudarc's `LaunchConfig::for_num_elems`: 1024 threads a block.
fn lines(n: i32) -> Launch {
    Launch {
        gx: (n.max(1) as u32).div_ceil(1024),
        gy: 1,
        bx: 1024,
        by: 1,
    }
}

type U8 = *const u8;
type U32 = *const u32;

/// The kernels compiled for the host and loaded.
pub struct HostKernels {
    pre: unsafe extern "C" fn(Launch, PreParams, U8, U8, U8, *mut f32),
    post: unsafe extern "C" fn(Launch, PostParams, *const f32, *mut f32, *mut u8, *mut u32),
    mix: unsafe extern "C" fn(Launch, MixParams, U8, U32, U32, *mut u8, U8),
    mask: unsafe extern "C" fn(Launch, MixParams, U8, U32, U32, *mut u8),
    alpha: unsafe extern "C" fn(Launch, AlphaParams, U8, U32, U32, U8, U8, U8, *mut u8),
    blur_grid: unsafe extern "C" fn(Launch, BlurParams, U8, U32, U32, U8, *mut f32, *mut f32),
    box_rows: unsafe extern "C" fn(Launch, BoxParams, *const f32, *mut f32),
    box_cols: unsafe extern "C" fn(Launch, BoxParams, *const f32, *mut f32),
    blur_rows: unsafe extern "C" fn(Launch, BlurParams, *const f32, *const f32, U32, *mut u16),
    blur_mix: unsafe extern "C" fn(Launch, MixParams, U8, U32, U32, U32, *const u16, *mut u8),
    _lib: libloading::Library,
}

/// How the host compiler treats `a * b + c` in the kernels' source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contraction {
    /// Each operation rounded on its own, as the Rust mirrors compute.
    Off,
    /// Multiply-adds fused wherever the compiler can, as NVRTC does by default
    /// (`--fmad=true`); needs a CPU with FMA.
    Fused,
}

impl HostKernels {
    /// Compiles and loads the emulation once per test process and contraction; `None` for
    /// [`Contraction::Fused`] on a CPU without FMA.
    pub fn get(contraction: Contraction) -> Option<&'static HostKernels> {
        static OFF: OnceLock<HostKernels> = OnceLock::new();
        static FUSED: OnceLock<HostKernels> = OnceLock::new();
        let load = || Self::load(contraction).unwrap_or_else(|e| panic!("{e}"));
        match contraction {
            Contraction::Off => Some(OFF.get_or_init(load)),
            Contraction::Fused if std::arch::is_x86_feature_detected!("fma") => Some(FUSED.get_or_init(load)),
            Contraction::Fused => None,
        }
    }

    fn load(contraction: Contraction) -> Result<HostKernels, String> {
        let src =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/unetmask/gpu/kernels/host_emulation.cpp");
        let dir =
            std::env::temp_dir().join(format!("edgemask-kernels-{}-{contraction:?}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let lib = dir.join("host_emulation.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = std::process::Command::new(&cxx)
            .args(["-std=c++17", "-O2"])
            .args(match contraction {
                Contraction::Off => &["-ffp-contract=off"][..],
                Contraction::Fused => &["-mfma", "-ffp-contract=fast"][..],
            })
            .args(["-fPIC", "-shared", "-Wall", "-Werror", "-o"])
            .arg(&lib)
            .arg(&src)
            .output()
            .map_err(|e| format!("{cxx} (build-essential; scripts/setup.sh installs it): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "compiling the kernels for the host failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // SAFETY: our own library, with no initialisers; the symbols below have exactly
        // these C signatures (`host_emulation.cpp`), with the `repr(C)` parameter structs
        // laid out as the kernels' (checked by the `params_match_the_kernel_struct` tests).
        unsafe {
            let l = libloading::Library::new(&lib).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&dir);
            macro_rules! sym {
                ($name:literal) => {
                    *l.get($name).map_err(|e| e.to_string())?
                };
            }
            Ok(HostKernels {
                pre: sym!(b"emu_preprocess\0"),
                post: sym!(b"emu_postprocess\0"),
                mix: sym!(b"emu_mix\0"),
                mask: sym!(b"emu_mask\0"),
                alpha: sym!(b"emu_alpha\0"),
                blur_grid: sym!(b"emu_blur_grid\0"),
                box_rows: sym!(b"emu_box_rows\0"),
                box_cols: sym!(b"emu_box_cols\0"),
                blur_rows: sym!(b"emu_blur_rows\0"),
                blur_mix: sym!(b"emu_blur_mix\0"),
                _lib: l,
            })
        }
    }
}

/// The bytes of each plane a launch may read (an empty plane: one byte, as on the GPU).
fn planes_of_frame(frame: &Frame<'_>) -> [Vec<u8>; 3] {
    let used = plane_bytes(frame);
    std::array::from_fn(|i| {
        let mut v = frame.planes[i][..used[i]].to_vec();
        v.resize(v.len().max(1), 0);
        v
    })
}

// SAFETY (every call below): the buffers are as large as the parameters say the kernel
// reads or writes, exactly as `gpu_launch` allocates them on the device.
impl KernelRunner for HostKernels {
    fn preprocess(&self, p: &PreParams, frame: &Frame<'_>) -> Result<Vec<f32>, String> {
        let p = PreParams {
            strides: frame.strides.map(|s| s as i32),
            ..*p
        };
        let planes = planes_of_frame(frame);
        let mut out = vec![0f32; p.tensor_len()];
        let [a, b, c] = &planes;
        unsafe {
            (self.pre)(
                grid(p.tensor_w, p.tensor_h),
                p,
                a.as_ptr(),
                b.as_ptr(),
                c.as_ptr(),
                out.as_mut_ptr(),
            )
        };
        Ok(out)
    }

    fn postprocess(
        &self,
        p: &PostParams,
        out: &[f32],
        state: &mut Vec<f32>,
    ) -> Result<(Vec<u8>, [u32; 2]), String> {
        let n = p.pixels as usize;
        assert!(out.len() >= n * p.channels as usize && state.len() >= n);
        let mut mask = vec![0u8; n];
        let mut counts = [0u32; 2];
        unsafe {
            (self.post)(
                lines(p.pixels),
                *p,
                out.as_ptr(),
                state.as_mut_ptr(),
                mask.as_mut_ptr(),
                counts.as_mut_ptr(),
            )
        };
        Ok((mask, counts))
    }

    fn mix(&self, p: &MixParams, mask: &[u8], plane: &[u8], target: &[u8]) -> Result<Vec<u8>, String> {
        let (xt, yt) = params::taps(p);
        let mut out = plane.to_vec();
        let target = if target.is_empty() { &[0u8][..] } else { target };
        unsafe {
            (self.mix)(
                grid(p.width, p.height),
                *p,
                mask.as_ptr(),
                xt.as_ptr(),
                yt.as_ptr(),
                out.as_mut_ptr(),
                target.as_ptr(),
            )
        };
        Ok(out)
    }

    fn mask(&self, p: &MixParams, mask: &[u8]) -> Result<Vec<u8>, String> {
        let (xt, yt) = params::taps(p);
        let mut out = vec![0u8; p.stride as usize * p.height as usize];
        unsafe {
            (self.mask)(
                grid(p.width, p.height),
                *p,
                mask.as_ptr(),
                xt.as_ptr(),
                yt.as_ptr(),
                out.as_mut_ptr(),
            )
        };
        Ok(out)
    }

    fn alpha(&self, p: &AlphaParams, mask: &[u8], frame: &Frame<'_>) -> Result<Vec<u8>, String> {
        let (xt, yt) = params::taps(&p.mask);
        let planes = planes_of_frame(frame);
        let [a, b, c] = &planes;
        let mut out = vec![0u8; p.out_stride as usize * p.mask.height as usize];
        unsafe {
            (self.alpha)(
                grid(p.mask.width, p.mask.height),
                *p,
                mask.as_ptr(),
                xt.as_ptr(),
                yt.as_ptr(),
                a.as_ptr(),
                b.as_ptr(),
                c.as_ptr(),
                out.as_mut_ptr(),
            )
        };
        Ok(out)
    }

    fn blur(&self, plan: &BlurPlan, mask: &[u8], plane: &[u8]) -> Result<Vec<u8>, String> {
        let p = &plan.blur;
        let (xt, yt) = params::taps(&p.bg);
        let cells = (p.sw * p.sh) as usize;
        let n = p.bg.nchans as usize;
        let (mut acc, mut wsum, mut tmp) = (vec![0f32; cells * n], vec![0f32; cells], vec![0f32; cells * n]);
        let mut hrows = vec![0u16; p.sh as usize * p.bg.width as usize * p.bg.pstride as usize];
        let mut out = plane.to_vec();
        unsafe {
            (self.blur_grid)(
                grid(p.sw, p.sh),
                *p,
                mask.as_ptr(),
                xt.as_ptr(),
                yt.as_ptr(),
                out.as_ptr(),
                acc.as_mut_ptr(),
                wsum.as_mut_ptr(),
            );
            for (b, data) in [(&plan.box_acc, &mut acc), (&plan.box_wsum, &mut wsum)] {
                for _ in 0..2 {
                    (self.box_rows)(lines(b.h * b.c), *b, data.as_ptr(), tmp.as_mut_ptr());
                    (self.box_cols)(lines(b.w * b.c), *b, tmp.as_ptr(), data.as_mut_ptr());
                }
            }
            (self.blur_rows)(
                grid(p.bg.width, p.sh),
                *p,
                acc.as_ptr(),
                wsum.as_ptr(),
                plan.gx.as_ptr(),
                hrows.as_mut_ptr(),
            );
            (self.blur_mix)(
                grid(p.bg.width, p.bg.height),
                p.bg,
                mask.as_ptr(),
                xt.as_ptr(),
                yt.as_ptr(),
                plan.gy.as_ptr(),
                hrows.as_ptr(),
                out.as_mut_ptr(),
            );
        }
        Ok(out)
    }
}

#[test]
fn the_kernels_source_run_on_the_cpu_matches_their_mirrors() {
    check_kernels(
        HostKernels::get(Contraction::Off).expect("always built"),
        Contraction::Off,
    );
}

/// The kernels with their multiply-adds fused, as NVRTC builds them: still within the
/// bounds `check_kernels` derives.
#[test]
fn the_kernels_source_with_fused_multiply_adds_stays_within_the_bounds() {
    match HostKernels::get(Contraction::Fused) {
        Some(k) => check_kernels(k, Contraction::Fused),
        None => eprintln!("skipped: this CPU has no FMA"),
    }
}
