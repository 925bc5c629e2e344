// SPDX-License-Identifier: MPL-2.0

//! The kernels' sources, entry points and parameters: each `repr(C)` struct here is, field
//! for field, the struct of the same name in `kernels/*.cu` (4-byte fields only, so no
//! padding differs), and each constructor computes on the host what the kernel must not
//! recompute per thread. The CPU mirrors of the kernels (`mirror/`, tests only) take the
//! same parameters.

use crate::unetmask::cpu::composite::{
    BlurGrid, FixedYuv, PlaneGeom, Weights, blur_cells, fixed_taps, grid_taps,
};
use crate::unetmask::cpu::postprocess::{MaskStats, UNCERTAIN_BAND};
use crate::unetmask::frame::{FrameSpec, PixelFormat, YuvMatrix};
use crate::unetmask::model::contract::{Activation, Layout, OutputLayout, OutputSpec, TensorSpec};

// Pre-processing: frame -> the model's input tensor (`kernels/preprocess.cu`).

/// The kernel's CUDA C source.
pub const PREPROCESS_CU: &str = include_str!("kernels/preprocess.cu");
/// The kernel's entry point.
pub const PREPROCESS_FN: &str = "edgemask_preprocess";

/// The kernel's parameters, passed by value: identical to `struct PreParams` in
/// `kernels/preprocess.cu` (`repr(C)`, 4-byte fields only, so no padding differs).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreParams {
    /// 0: packed RGB(x), 1: NV12, 2: I420.
    pub kind: i32,
    /// Bytes per pixel (packed formats).
    pub bpp: i32,
    /// Byte offset in a pixel of the value for model channel `k` (packed formats).
    pub offsets: [i32; 3],
    pub width: i32,
    pub height: i32,
    /// Row strides of the planes, bytes.
    pub strides: [i32; 3],
    pub tensor_w: i32,
    pub tensor_h: i32,
    /// 1: NHWC, 0: NCHW.
    pub nhwc: i32,
    /// Model channel `k` takes RGB channel `rgb_index[k]` (YUV formats).
    pub rgb_index: [i32; 3],
    /// `tensor = value * mul[k] + add[k]`.
    pub mul: [f32; 3],
    pub add: [f32; 3],
    /// YUV -> RGB: `y_mul, y_off, r_v, g_u, g_v, b_u`.
    pub yuv: [f32; 6],
}

impl PreParams {
    /// The parameters for frames of `format`, `width` x `height` with `strides`, to a
    /// tensor of `tensor_size` — the same inputs as the CPU path's `Preprocessor::new`.
    pub fn new(frame: &FrameSpec, strides: [usize; 3], tensor: &TensorSpec) -> PreParams {
        let FrameSpec {
            format,
            width,
            height,
            matrix,
        } = *frame;
        let TensorSpec {
            size: tensor_size,
            layout,
            order,
            norm,
        } = *tensor;
        let rgb_index = order.rgb_index();
        let (mul, add) = norm.affine();
        let (kind, bpp, offsets) = match format.packed_rgb() {
            Some((off, bpp)) => (0, bpp as i32, rgb_index.map(|c| off[c] as i32)),
            None if format == PixelFormat::Nv12 => (1, 1, [0; 3]),
            None => (2, 1, [0; 3]),
        };
        let c = matrix.to_rgb_coeffs();
        PreParams {
            kind,
            bpp,
            offsets,
            width: width as i32,
            height: height as i32,
            strides: strides.map(|s| s as i32),
            tensor_w: tensor_size.0 as i32,
            tensor_h: tensor_size.1 as i32,
            nhwc: (layout == Layout::Nhwc) as i32,
            rgb_index: rgb_index.map(|i| i as i32),
            mul,
            add,
            yuv: [c.y_mul, c.y_off, c.r_v, c.g_u, c.g_v, c.b_u],
        }
    }

    /// Number of `f32` values of the tensor.
    pub fn tensor_len(&self) -> usize {
        self.tensor_w as usize * self.tensor_h as usize * 3
    }
}

// Post-processing: network output -> smoothed probability -> mask (`kernels/postprocess.cu`).

/// The kernel's CUDA C source.
pub const POSTPROCESS_CU: &str = include_str!("kernels/postprocess.cu");
/// The kernel's entry point.
pub const POSTPROCESS_FN: &str = "edgemask_postprocess";

/// The kernel's parameters, passed by value: identical to `struct PostParams` in
/// `kernels/postprocess.cu` (`repr(C)`, 4-byte fields only).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostParams {
    pub pixels: i32,
    pub channels: i32,
    pub person: i32,
    /// 1: channels last, 0: channels first.
    pub channels_last: i32,
    /// 0: none (probabilities), 1: sigmoid, 2: softmax.
    pub activation: i32,
    /// 1: the state buffer holds the previous frame's smoothed map.
    pub has_state: i32,
    /// Weight of the previous frame; 0 = off.
    pub smoothing: f32,
    pub threshold: f32,
    pub band_lo: f32,
    pub band_hi: f32,
}

impl PostParams {
    /// The parameters for one frame: `pixels` model pixels of `spec`, `smoothing` as the
    /// element's property, `has_state` false on the first frame after a reset.
    pub fn new(
        spec: &OutputSpec,
        pixels: usize,
        smoothing: f32,
        has_state: bool,
        threshold: Option<f32>,
    ) -> Self {
        PostParams {
            pixels: pixels as i32,
            channels: spec.channels as i32,
            person: spec.person as i32,
            channels_last: (spec.layout == OutputLayout::ChannelsLast) as i32,
            activation: match spec.activation {
                Activation::None => 0,
                Activation::Sigmoid => 1,
                Activation::Softmax => 2,
            },
            has_state: has_state as i32,
            smoothing: smoothing.max(0.0),
            threshold: threshold.unwrap_or(0.5),
            band_lo: UNCERTAIN_BAND.0,
            band_hi: UNCERTAIN_BAND.1,
        }
    }
}

/// The mask's statistics from the kernel's counts (above the threshold, in the uncertainty
/// band) over `pixels` model pixels.
pub fn stats_of([person, uncertain]: [u32; 2], pixels: usize) -> MaskStats {
    let n = pixels.max(1) as f32;
    MaskStats {
        coverage: person as f32 / n,
        uncertain: uncertain as f32 / n,
    }
}

// Compositing: mask -> weights -> the frame mixed, or the mask or RGBA written (`kernels/composite.cu`).

/// The kernels' CUDA C source.
pub const COMPOSITE_CU: &str = include_str!("kernels/composite.cu");
/// Entry points: mix a plane; write the GRAY8 mask.
pub const MIX_FN: &str = "edgemask_mix";
pub const MASK_FN: &str = "edgemask_mask";
/// Entry point: the frame as RGBA with the mask as alpha.
pub const ALPHA_FN: &str = "edgemask_alpha";

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

/// The `alpha` kernel's parameters: identical to `struct AlphaParams` in
/// `kernels/composite.cu` (`repr(C)`, 4-byte fields only).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaParams {
    /// The mask's size and weights, at the frame's size (stride and channels unused).
    pub mask: MixParams,
    /// 0: packed RGB(x), 1: NV12, 2: I420.
    pub kind: i32,
    /// Packed: bytes per pixel and the offsets of R, G, B in a pixel.
    pub bpp: i32,
    pub offs: [i32; 3],
    /// Input plane strides, bytes.
    pub strides: [i32; 3],
    /// RGBA output stride, bytes.
    pub out_stride: i32,
    /// Fixed-point YUV -> RGB (12 fractional bits): y_mul, y_off, r_v, g_u, g_v, b_u.
    pub yuv: [i32; 6],
}

impl AlphaParams {
    /// Parameters for `frame`'s `format` and size (`strides` of its planes), a `model`
    /// size mask, `weights`, YUV `matrix`, and an RGBA output `out_stride` bytes a row.
    pub fn new(
        format: PixelFormat,
        (width, height): (usize, usize),
        strides: [usize; 3],
        model: (usize, usize),
        weights: &Weights,
        matrix: YuvMatrix,
        out_stride: usize,
    ) -> AlphaParams {
        let geom = PlaneGeom::gray(width, height);
        let c = FixedYuv::new(matrix);
        let (kind, offs, bpp) = match format.packed_rgb() {
            Some((off, bpp)) => (0, off.map(|o| o as i32), bpp as i32),
            None if format == PixelFormat::Nv12 => (1, [0; 3], 1),
            None => (2, [0; 3], 1),
        };
        AlphaParams {
            mask: MixParams::new(model, &geom, width, weights, &[], None),
            kind,
            bpp,
            offs,
            strides: strides.map(|s| s as i32),
            out_stride: out_stride as i32,
            yuv: [c.y_mul, c.y_off, c.r_v, c.g_u, c.g_v, c.b_u],
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

// Blur: the background blurred without the person on a reduced grid (`kernels/blur.cu`).

/// The kernels' CUDA C source (compiled after `composite.cu`).
pub const BLUR_CU: &str = include_str!("kernels/blur.cu");
/// Entry points, in the order they run.
pub const BLUR_GRID_FN: &str = "edgemask_blur_grid";
pub const BOX_ROWS_FN: &str = "edgemask_box_rows";
pub const BOX_COLS_FN: &str = "edgemask_box_cols";
pub const BLUR_ROWS_FN: &str = "edgemask_blur_rows";
pub const BLUR_MIX_FN: &str = "edgemask_blur_mix";

/// Identical to `struct BlurParams` in `kernels/blur.cu` (`repr(C)`, 4-byte fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurParams {
    /// The plane, the model mask and the background's weights.
    pub bg: MixParams,
    pub factor: i32,
    pub step: i32,
    pub sw: i32,
    pub sh: i32,
}

/// Identical to `struct BoxParams` in `kernels/blur.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxParams {
    pub w: i32,
    pub h: i32,
    /// Values per cell.
    pub c: i32,
    pub r: i32,
    pub norm: f32,
}

/// Everything the five launches need for one plane: parameters and the taps the host
/// uploads once per caps.
#[derive(Debug, Clone)]
pub struct BlurPlan {
    /// Its `bg` (the background's weights) is also the mix towards the background.
    pub blur: BlurParams,
    /// Box passes over the weighted sums (`c` = colour bytes) and the weights (`c` = 1).
    pub box_acc: BoxParams,
    pub box_wsum: BoxParams,
    /// Grid taps, `(i0, i1, f)` per plane column and row.
    pub gx: Vec<u32>,
    pub gy: Vec<u32>,
}

impl BlurPlan {
    /// One plane (`geom`, rows `stride` apart) with a `model` size mask, the user's mask
    /// `weights` and the blur `radius` in pixels.
    pub fn new(
        model: (usize, usize),
        geom: &PlaneGeom,
        stride: usize,
        weights: &Weights,
        radius: usize,
    ) -> Self {
        let g = BlurGrid::of(geom.width, geom.height);
        let r = blur_cells(radius, g.factor);
        let pass = |c: usize| BoxParams {
            w: g.sw as i32,
            h: g.sh as i32,
            c: c as i32,
            r: r as i32,
            norm: 1.0 / (2 * r + 1) as f32,
        };
        let flat = |t: Vec<(u32, u32, u32)>| t.into_iter().flat_map(|(a, b, f)| [a, b, f]).collect();
        BlurPlan {
            blur: BlurParams {
                bg: MixParams::new(model, geom, stride, &weights.inverted(), &[], None),
                factor: g.factor as i32,
                step: g.step as i32,
                sw: g.sw as i32,
                sh: g.sh as i32,
            },
            box_acc: pass(geom.chans.len()),
            box_wsum: pass(1),
            gx: flat(grid_taps(g.sw, geom.width, g.factor)),
            gy: flat(grid_taps(g.sh, geom.height, g.factor)),
        }
    }
}
