//! Frame -> model input tensor in one pass.
//!
//! Bilinear sampling with half-pixel centres (as `torch.nn.functional.interpolate(...,
//! align_corners=False)` and OpenCV's `INTER_LINEAR`): every output value reads the 2x2
//! source pixels around its centre and nothing else, so a 4K frame costs no more than a
//! 720p one. Colour conversion, channel order, scaling, mean/std normalisation and the
//! tensor layout are folded into the same loop; sampling tables are built once per caps
//! and the tensor is written in place, so a frame allocates nothing.

use super::contract::Layout;
use super::frame::{Frame, PixelFormat, YuvMatrix, YuvToRgb, chroma_size};
use super::resize::Downscaler;

/// How the frame is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    /// 2x2 bilinear taps per tensor pixel: reads only the pixels it needs (fastest).
    Bilinear,
    /// Triangle-filter convolution over the whole frame (Pillow/torchvision antialiased
    /// bilinear): what models trained on resized photos expect.
    Antialias,
}

/// Frame -> tensor: an optional anti-aliased downscale, then [`Preprocessor`].
pub struct TensorBuilder {
    down: Option<Downscaler>,
    pre: Preprocessor,
}

impl TensorBuilder {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        filter: ResizeFilter,
        format: PixelFormat,
        width: usize,
        height: usize,
        tensor_size: (usize, usize),
        layout: Layout,
        order: ChannelOrder,
        norm: Normalization,
        matrix: YuvMatrix,
    ) -> Self {
        let down = (filter == ResizeFilter::Antialias && (width, height) != tensor_size)
            .then(|| Downscaler::new(format, tensor_size));
        let src = if down.is_some() {
            tensor_size
        } else {
            (width, height)
        };
        let pre = Preprocessor::new(format, src.0, src.1, tensor_size, layout, order, norm, matrix);
        Self { down, pre }
    }

    pub fn tensor_len(&self) -> usize {
        self.pre.tensor_len()
    }

    /// Writes the tensor for `frame` into `out`.
    pub fn run(&mut self, frame: &Frame<'_>, out: &mut [f32]) {
        match self.down.as_mut() {
            Some(d) => {
                let small = d.run(frame);
                self.pre.run(&small, out)
            }
            None => self.pre.run(frame, out),
        }
    }
}

/// Model channel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// `tensor = (pixel * scale - mean) / std`, per model channel (in the model's order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalization {
    /// RGB in [0, 1]: the original UNet contract and MediaPipe's.
    fn default() -> Self {
        Self {
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }
}

/// One output coordinate's two source neighbours and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
}

/// Bilinear taps mapping `dst` samples onto `src` samples (half-pixel centres, clamped edges).
fn taps(src: usize, dst: usize, step: usize) -> Vec<Tap> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src - 1);
            Tap {
                i0: i0 * step,
                i1: i1 * step,
                f: (s - i0 as f64) as f32,
            }
        })
        .collect()
}

/// Converts frames of one format and size into tensors of one shape.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    format: PixelFormat,
    width: usize,
    height: usize,
    tw: usize,
    th: usize,
    layout: Layout,
    /// Per model channel: `value * mul + add`.
    mul: [f32; 3],
    add: [f32; 3],
    /// Packed formats: byte offset of each model channel inside a pixel.
    offsets: [usize; 3],
    xs: Vec<Tap>,
    ys: Vec<Tap>,
    /// 4:2:0 formats: taps in the chroma planes.
    xs_c: Vec<Tap>,
    ys_c: Vec<Tap>,
    yuv: YuvToRgb,
    /// Model channel k takes RGB component `rgb_index[k]`.
    rgb_index: [usize; 3],
}

impl Preprocessor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        format: PixelFormat,
        width: usize,
        height: usize,
        tensor_size: (usize, usize),
        layout: Layout,
        order: ChannelOrder,
        norm: Normalization,
        matrix: YuvMatrix,
    ) -> Self {
        let (tw, th) = tensor_size;
        let rgb_index = match order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let mul = std::array::from_fn(|k| norm.scale / norm.std[k]);
        let add = std::array::from_fn(|k| -norm.mean[k] / norm.std[k]);
        let (offsets, step) = match format.packed_rgb() {
            Some((off, bpp)) => (rgb_index.map(|c| off[c]), bpp),
            None => ([0; 3], 1),
        };
        let (cw, ch) = chroma_size(width, height);
        let chroma_step = if format == PixelFormat::Nv12 { 2 } else { 1 };
        Self {
            format,
            width,
            height,
            tw,
            th,
            layout,
            mul,
            add,
            offsets,
            xs: taps(width, tw, step),
            ys: taps(height, th, 1),
            xs_c: if format.is_yuv() {
                taps(cw, tw, chroma_step)
            } else {
                Vec::new()
            },
            ys_c: if format.is_yuv() {
                taps(ch, th, 1)
            } else {
                Vec::new()
            },
            yuv: matrix.to_rgb_coeffs(),
            rgb_index,
        }
    }

    /// Number of f32 values of the tensor.
    pub fn tensor_len(&self) -> usize {
        self.tw * self.th * 3
    }

    /// Writes the tensor for `frame` into `out` (`tensor_len()` values).
    pub fn run(&self, frame: &Frame<'_>, out: &mut [f32]) {
        assert_eq!(
            (frame.format, frame.width, frame.height),
            (self.format, self.width, self.height)
        );
        assert_eq!(out.len(), self.tensor_len());
        match (self.format.is_yuv(), self.layout) {
            (false, Layout::Nchw) => self.packed::<false>(frame, out),
            (false, Layout::Nhwc) => self.packed::<true>(frame, out),
            (true, Layout::Nchw) => self.yuv420::<false>(frame, out),
            (true, Layout::Nhwc) => self.yuv420::<true>(frame, out),
        }
    }

    #[inline(always)]
    fn store<const NHWC: bool>(&self, out: &mut [f32], idx: usize, v: [f32; 3]) {
        let plane = self.tw * self.th;
        for k in 0..3 {
            let val = v[k] * self.mul[k] + self.add[k];
            if NHWC {
                out[idx * 3 + k] = val;
            } else {
                out[k * plane + idx] = val;
            }
        }
    }

    fn packed<const NHWC: bool>(&self, frame: &Frame<'_>, out: &mut [f32]) {
        let (data, stride) = (frame.planes[0], frame.strides[0]);
        let o = self.offsets;
        for (oy, ty) in self.ys.iter().enumerate() {
            let r0 = &data[ty.i0 * stride..];
            let r1 = &data[ty.i1 * stride..];
            let fy = ty.f;
            for (ox, tx) in self.xs.iter().enumerate() {
                let fx = tx.f;
                let v = std::array::from_fn(|k| {
                    let a = r0[tx.i0 + o[k]] as f32;
                    let b = r0[tx.i1 + o[k]] as f32;
                    let c = r1[tx.i0 + o[k]] as f32;
                    let d = r1[tx.i1 + o[k]] as f32;
                    let top = a + (b - a) * fx;
                    let bot = c + (d - c) * fx;
                    top + (bot - top) * fy
                });
                self.store::<NHWC>(out, oy * self.tw + ox, v);
            }
        }
    }

    fn yuv420<const NHWC: bool>(&self, frame: &Frame<'_>, out: &mut [f32]) {
        let lerp2 = |r0: &[u8], r1: &[u8], tx: &Tap, fy: f32, off: usize| {
            let a = r0[tx.i0 + off] as f32;
            let b = r0[tx.i1 + off] as f32;
            let c = r1[tx.i0 + off] as f32;
            let d = r1[tx.i1 + off] as f32;
            let top = a + (b - a) * tx.f;
            top + (c + (d - c) * tx.f - top) * fy
        };
        let nv12 = self.format == PixelFormat::Nv12;
        let (y_plane, ys) = (frame.planes[0], frame.strides[0]);
        for oy in 0..self.th {
            let (ty, tc) = (&self.ys[oy], &self.ys_c[oy]);
            let (y0, y1) = (&y_plane[ty.i0 * ys..], &y_plane[ty.i1 * ys..]);
            let us = frame.strides[1];
            let (u0, u1) = (&frame.planes[1][tc.i0 * us..], &frame.planes[1][tc.i1 * us..]);
            let (v0, v1, v_off) = if nv12 {
                (u0, u1, 1)
            } else {
                let vs = frame.strides[2];
                (&frame.planes[2][tc.i0 * vs..], &frame.planes[2][tc.i1 * vs..], 0)
            };
            for ox in 0..self.tw {
                let (tx, txc) = (&self.xs[ox], &self.xs_c[ox]);
                let y = lerp2(y0, y1, tx, ty.f, 0);
                let u = lerp2(u0, u1, txc, tc.f, 0);
                let v = lerp2(v0, v1, txc, tc.f, v_off);
                let rgb = self.yuv.rgb(y, u, v).map(|c| c.clamp(0.0, 255.0));
                let idx = self.rgb_index;
                self.store::<NHWC>(out, oy * self.tw + ox, [rgb[idx[0]], rgb[idx[1]], rgb[idx[2]]]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgba_frame(w: usize, h: usize, f: impl Fn(usize, usize) -> [u8; 4]) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 4);
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&f(x, y));
            }
        }
        v
    }

    #[test]
    fn taps_match_half_pixel_bilinear() {
        // 4 -> 2: centres at 0.5 and 2.5.
        let t = taps(4, 2, 1);
        assert_eq!((t[0].i0, t[0].i1, t[0].f), (0, 1, 0.5));
        assert_eq!((t[1].i0, t[1].i1, t[1].f), (2, 3, 0.5));
        // Upscaling clamps at the edges.
        let t = taps(2, 4, 3);
        assert_eq!((t[0].i0, t[0].f), (0, 0.0));
        assert_eq!((t[3].i0, t[3].i1, t[3].f), (3, 3, 0.0));
    }

    #[test]
    fn identity_size_copies_pixels_in_both_layouts() {
        let (w, h) = (5, 3);
        let data = rgba_frame(w, h, |x, y| [(x * 10) as u8, (y * 20) as u8, 7, 255]);
        let frame = Frame {
            format: PixelFormat::Rgba,
            width: w,
            height: h,
            planes: [&data, &[], &[]],
            strides: [w * 4, 0, 0],
        };
        let norm = Normalization {
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let p = Preprocessor::new(
            PixelFormat::Rgba,
            w,
            h,
            (w, h),
            Layout::Nchw,
            ChannelOrder::Rgb,
            norm,
            YuvMatrix::BT601,
        );
        let mut out = vec![0.0; p.tensor_len()];
        p.run(&frame, &mut out);
        assert_eq!(out[2 * w + 4], 40.0); // R at (4,2)
        assert_eq!(out[w * h + 2 * w + 4], 40.0); // G at (4,2)
        assert_eq!(out[2 * w * h], 7.0); // B
        let p = Preprocessor::new(
            PixelFormat::Rgba,
            w,
            h,
            (w, h),
            Layout::Nhwc,
            ChannelOrder::Bgr,
            norm,
            YuvMatrix::BT601,
        );
        p.run(&frame, &mut out);
        assert_eq!(&out[(2 * w + 4) * 3..(2 * w + 4) * 3 + 3], &[7.0, 40.0, 40.0]);
    }

    #[test]
    fn normalisation_and_bgrx_order() {
        let data = [10u8, 20, 30, 0]; // B G R x
        let frame = Frame {
            format: PixelFormat::Bgrx,
            width: 1,
            height: 1,
            planes: [&data, &[], &[]],
            strides: [4, 0, 0],
        };
        let norm = Normalization {
            scale: 1.0 / 255.0,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 2.0],
        };
        let p = Preprocessor::new(
            PixelFormat::Bgrx,
            1,
            1,
            (2, 2),
            Layout::Nchw,
            ChannelOrder::Rgb,
            norm,
            YuvMatrix::BT601,
        );
        let mut out = vec![0.0; 12];
        p.run(&frame, &mut out);
        let expect = [
            (30.0 / 255.0 - 0.5) / 0.5,
            (20.0 / 255.0 - 0.25) / 0.25,
            (10.0 / 255.0) / 2.0,
        ];
        for k in 0..3 {
            for i in 0..4 {
                assert!((out[k * 4 + i] - expect[k]).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn downscale_averages_neighbours() {
        // 4x1 -> 2x1: each output is the mean of two inputs.
        let data = rgba_frame(4, 1, |x, _| [(x * 60) as u8, 0, 0, 0]);
        let frame = Frame {
            format: PixelFormat::Rgbx,
            width: 4,
            height: 1,
            planes: [&data, &[], &[]],
            strides: [16, 0, 0],
        };
        let norm = Normalization {
            scale: 1.0,
            ..Default::default()
        };
        let p = Preprocessor::new(
            PixelFormat::Rgbx,
            4,
            1,
            (2, 1),
            Layout::Nhwc,
            ChannelOrder::Rgb,
            norm,
            YuvMatrix::BT601,
        );
        let mut out = vec![0.0; 6];
        p.run(&frame, &mut out);
        assert_eq!((out[0], out[3]), (30.0, 150.0));
    }

    #[test]
    fn yuv_formats_agree_with_rgb() {
        // A flat colour in I420 and NV12 (odd size) comes out as that colour.
        let (w, h) = (5, 3);
        let m = YuvMatrix::BT709;
        let [y, u, v] = m.rgb_to_yuv([200, 60, 30]);
        let (cw, ch) = chroma_size(w, h);
        let yp = vec![y; w * h];
        let up = vec![u; cw * ch];
        let vp = vec![v; cw * ch];
        let uv: Vec<u8> = (0..cw * ch).flat_map(|_| [u, v]).collect();
        let norm = Normalization {
            scale: 1.0,
            ..Default::default()
        };
        for (fmt, planes, strides) in [
            (PixelFormat::I420, [&yp[..], &up[..], &vp[..]], [w, cw, cw]),
            (PixelFormat::Nv12, [&yp[..], &uv[..], &[][..]], [w, cw * 2, 0]),
        ] {
            let frame = Frame {
                format: fmt,
                width: w,
                height: h,
                planes,
                strides,
            };
            let p = Preprocessor::new(fmt, w, h, (4, 4), Layout::Nchw, ChannelOrder::Rgb, norm, m);
            let mut out = vec![0.0; p.tensor_len()];
            p.run(&frame, &mut out);
            for (k, want) in [200.0, 60.0, 30.0].into_iter().enumerate() {
                assert!(
                    (out[k * 16 + 5] - want).abs() < 3.0,
                    "{fmt:?} channel {k}: {}",
                    out[k * 16 + 5]
                );
            }
        }
    }
}
