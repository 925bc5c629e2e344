//! Frame -> model input tensor in one pass.
//!
//! Bilinear sampling with half-pixel centres (as `torch.nn.functional.interpolate(...,
//! align_corners=False)` and OpenCV's `INTER_LINEAR`): every output value reads the 2x2
//! source pixels around its centre and nothing else, so a 4K frame costs no more than a
//! 720p one. Colour conversion, channel order, scaling, mean/std normalisation and the
//! tensor layout are folded into the same loop; sampling tables are built once per caps
//! and the tensor is written in place, so a frame allocates nothing.

use multiversion::multiversion;

use crate::unetmask::cpu::bilinear_x86;
use crate::unetmask::cpu::resize::Downscaler;
use crate::unetmask::frame::{Frame, FrameSpec, PixelFormat, YuvToRgb, chroma_size, half_pixel_tap};
use crate::unetmask::model::contract::{Layout, TensorSpec};

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
    pub fn new(filter: ResizeFilter, frame: &FrameSpec, tensor: &TensorSpec) -> Self {
        let (width, height) = (frame.width, frame.height);
        let down = (filter == ResizeFilter::Antialias && (width, height) != tensor.size)
            .then(|| Downscaler::new(frame.format, tensor.size));
        let (width, height) = if down.is_some() {
            tensor.size
        } else {
            (width, height)
        };
        let pre = Preprocessor::new(
            &FrameSpec {
                width,
                height,
                ..*frame
            },
            tensor,
        );
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

/// One output coordinate's two source neighbours and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
}

/// Bilinear taps mapping `dst` samples onto `src` samples (half-pixel centres, clamped edges).
fn taps(src: usize, dst: usize, step: usize) -> Vec<Tap> {
    (0..dst)
        .map(|o| {
            let (i0, i1, f) = half_pixel_tap(o, src, dst);
            Tap {
                i0: i0 * step,
                i1: i1 * step,
                f: f as f32,
            }
        })
        .collect()
}

/// One output row of the tensor, in either layout.
enum OutRow<'a> {
    /// NCHW: the row in each of the three channel planes.
    Planar([&'a mut [f32]; 3]),
    /// NHWC: interleaved.
    Interleaved(&'a mut [f32]),
}

impl<'a> OutRow<'a> {
    fn new<const NHWC: bool>(out: &'a mut [f32], tw: usize, th: usize, oy: usize) -> Self {
        let base = oy * tw;
        if NHWC {
            OutRow::Interleaved(&mut out[base * 3..(base + tw) * 3])
        } else {
            let plane = tw * th;
            let (c0, rest) = out.split_at_mut(plane);
            let (c1, c2) = rest.split_at_mut(plane);
            OutRow::Planar([
                &mut c0[base..base + tw],
                &mut c1[base..base + tw],
                &mut c2[base..base + tw],
            ])
        }
    }

    #[inline(always)]
    fn set(&mut self, x: usize, v: [f32; 3]) {
        match self {
            OutRow::Planar([c0, c1, c2]) => {
                c0[x] = v[0];
                c1[x] = v[1];
                c2[x] = v[2];
            }
            OutRow::Interleaved(row) => row[x * 3..x * 3 + 3].copy_from_slice(&v),
        }
    }
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
    /// The fast path (frames of at least 2x2): taps whose two neighbours are always
    /// adjacent, so each pair is one load. `None` for degenerate sizes.
    pairs: Option<PairTaps>,
    /// Per-row scratch of the fast path: gathered neighbours, then the three channel rows.
    gathered: Vec<u32>,
    gathered_c: Vec<u32>,
    rows: [Vec<f32>; 3],
}

/// Taps as (first neighbour, weight of the second), the second being the next sample.
#[derive(Debug, Clone)]
struct PairTaps {
    xs: Vec<usize>,
    fx: Vec<f32>,
    ys: Vec<(usize, f32)>,
    xs_c: Vec<usize>,
    fx_c: Vec<f32>,
    ys_c: Vec<(usize, f32)>,
    /// 4-byte pixels on a CPU with AVX2: the taps [`bilinear_x86::row`] computes.
    simd: Option<bilinear_x86::RowTaps>,
    /// 4:2:0 frames on a CPU with AVX2: the taps [`bilinear_x86::yuv_row`] computes.
    simd_yuv: Option<bilinear_x86::YuvTaps>,
}

/// Bilinear taps whose neighbours are `i` and `i + 1` (`src >= 2`): at the far edge the
/// pair is moved one sample back with weight 1 on the second, which reads the same value.
fn pair_taps(src: usize, dst: usize) -> Vec<(usize, f32)> {
    debug_assert!(src >= 2);
    taps(src, dst, 1)
        .into_iter()
        .map(|t| {
            if t.i0 + 1 >= src {
                (src - 2, 1.0)
            } else {
                (t.i0, t.f)
            }
        })
        .collect()
}

impl Preprocessor {
    pub fn new(frame: &FrameSpec, tensor: &TensorSpec) -> Self {
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
        let (tw, th) = tensor_size;
        let rgb_index = order.rgb_index();
        let (mul, add) = norm.affine();
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
            pairs: (width >= 2 && height >= 2 && (!format.is_yuv() || (cw >= 2 && ch >= 2))).then(|| {
                let (xs, fx): (Vec<usize>, Vec<f32>) = pair_taps(width, tw).into_iter().unzip();
                let (xs_c, fx_c) = if format.is_yuv() {
                    pair_taps(cw, tw).into_iter().unzip()
                } else {
                    (Vec::new(), Vec::new())
                };
                let simd = (step == 4 && bilinear_x86::available())
                    .then(|| bilinear_x86::RowTaps::new(&xs, &fx, width * 4));
                let simd_yuv = (format.is_yuv() && bilinear_x86::available())
                    .then(|| bilinear_x86::YuvTaps::new(&xs, &xs_c, width, cw, format == PixelFormat::Nv12));
                PairTaps {
                    simd,
                    simd_yuv,
                    xs,
                    fx,
                    ys: pair_taps(height, th),
                    xs_c,
                    fx_c,
                    ys_c: if format.is_yuv() {
                        pair_taps(ch, th)
                    } else {
                        Vec::new()
                    },
                }
            }),
            gathered: vec![0; tw],
            gathered_c: vec![0; tw],
            rows: std::array::from_fn(|_| vec![0.0; tw]),
        }
    }

    /// Number of f32 values of the tensor.
    pub fn tensor_len(&self) -> usize {
        self.tw * self.th * 3
    }

    /// Writes the tensor for `frame` into `out` (`tensor_len()` values).
    pub fn run(&mut self, frame: &Frame<'_>, out: &mut [f32]) {
        assert_eq!(
            (frame.format, frame.width, frame.height),
            (self.format, self.width, self.height)
        );
        assert_eq!(out.len(), self.tensor_len());
        if self.pairs.is_some() {
            return self.fast(frame, out);
        }
        self.reference(frame, out)
    }

    /// The straightforward per-pixel path: degenerate sizes, and the reference that the
    /// fast path is tested against.
    fn reference(&self, frame: &Frame<'_>, out: &mut [f32]) {
        match (self.format.is_yuv(), self.layout) {
            (false, Layout::Nchw) => self.packed::<false>(frame, out),
            (false, Layout::Nhwc) => self.packed::<true>(frame, out),
            (true, Layout::Nchw) => self.yuv420::<false>(frame, out),
            (true, Layout::Nhwc) => self.yuv420::<true>(frame, out),
        }
    }

    fn packed<const NHWC: bool>(&self, frame: &Frame<'_>, out: &mut [f32]) {
        match self.format.packed_rgb().map(|(_, bpp)| bpp) {
            Some(4) => self.packed_bpp::<NHWC, 4>(frame, out),
            _ => self.packed_bpp::<NHWC, 3>(frame, out),
        }
    }

    /// Packed RGB(x): all channels of a pixel are interpolated together (one 4-lane
    /// multiply-add chain per tap, which the compiler keeps in SIMD registers), then the
    /// three model channels are normalised and stored.
    fn packed_bpp<const NHWC: bool, const BPP: usize>(&self, frame: &Frame<'_>, out: &mut [f32]) {
        let (data, stride) = (frame.planes[0], frame.strides[0]);
        let o = self.offsets;
        let (mul, add) = (self.mul, self.add);
        let row_bytes = self.width * BPP;
        #[inline(always)]
        fn px<const BPP: usize>(row: &[u8], i: usize) -> [f32; BPP] {
            let p: &[u8; BPP] = row[i..i + BPP].try_into().expect("BPP bytes");
            p.map(|v| v as f32)
        }
        let identity = self.width == self.tw && self.height == self.th;
        for (oy, ty) in self.ys.iter().enumerate() {
            let r0 = &data[ty.i0 * stride..][..row_bytes];
            let r1 = &data[ty.i1 * stride..][..row_bytes];
            let fy = ty.f;
            let mut row = OutRow::new::<NHWC>(out, self.tw, self.th, oy);
            if identity {
                // Already at the tensor size (the anti-aliased path): a straight conversion.
                for (ox, p) in r0.chunks_exact(BPP).enumerate() {
                    row.set(ox, std::array::from_fn(|k| p[o[k]] as f32 * mul[k] + add[k]));
                }
                continue;
            }
            for (ox, tx) in self.xs.iter().enumerate() {
                let (a, b) = (px::<BPP>(r0, tx.i0), px::<BPP>(r0, tx.i1));
                let (c, d) = (px::<BPP>(r1, tx.i0), px::<BPP>(r1, tx.i1));
                let fx = tx.f;
                let mut v = [0f32; BPP];
                for k in 0..BPP {
                    let top = a[k] + (b[k] - a[k]) * fx;
                    let bot = c[k] + (d[k] - c[k]) * fx;
                    v[k] = top + (bot - top) * fy;
                }
                row.set(ox, std::array::from_fn(|k| v[o[k]] * mul[k] + add[k]));
            }
        }
    }

    fn yuv420<const NHWC: bool>(&self, frame: &Frame<'_>, out: &mut [f32]) {
        #[inline(always)]
        fn lerp2(r0: &[u8], r1: &[u8], i0: usize, i1: usize, fx: f32, fy: f32) -> f32 {
            let (a, b) = (r0[i0] as f32, r0[i1] as f32);
            let (c, d) = (r1[i0] as f32, r1[i1] as f32);
            let top = a + (b - a) * fx;
            top + (c + (d - c) * fx - top) * fy
        }
        let nv12 = self.format == PixelFormat::Nv12;
        let (cw, _) = chroma_size(self.width, self.height);
        let (y_plane, ys) = (frame.planes[0], frame.strides[0]);
        let (mul, add, idx, yuv) = (self.mul, self.add, self.rgb_index, self.yuv);
        let u_bytes = if nv12 { cw * 2 } else { cw };
        for oy in 0..self.th {
            let (ty, tc) = (&self.ys[oy], &self.ys_c[oy]);
            let y0 = &y_plane[ty.i0 * ys..][..self.width];
            let y1 = &y_plane[ty.i1 * ys..][..self.width];
            let us = frame.strides[1];
            let u0 = &frame.planes[1][tc.i0 * us..][..u_bytes];
            let u1 = &frame.planes[1][tc.i1 * us..][..u_bytes];
            let (v0, v1, v_off) = if nv12 {
                (u0, u1, 1)
            } else {
                let vs = frame.strides[2];
                (
                    &frame.planes[2][tc.i0 * vs..][..cw],
                    &frame.planes[2][tc.i1 * vs..][..cw],
                    0,
                )
            };
            let mut row = OutRow::new::<NHWC>(out, self.tw, self.th, oy);
            for (ox, (tx, txc)) in self.xs.iter().zip(&self.xs_c).enumerate() {
                let y = lerp2(y0, y1, tx.i0, tx.i1, tx.f, ty.f);
                let u = lerp2(u0, u1, txc.i0, txc.i1, txc.f, tc.f);
                let v = lerp2(v0, v1, txc.i0 + v_off, txc.i1 + v_off, txc.f, tc.f);
                let rgb = yuv.rgb(y, u, v).map(|c| c.clamp(0.0, 255.0));
                row.set(ox, std::array::from_fn(|k| rgb[idx[k]] * mul[k] + add[k]));
            }
        }
    }
}

/// The fast path: per tensor row, a gather pass that fetches each 2x2 neighbourhood with
/// few loads (the neighbours are adjacent) into 32-bit words, then an arithmetic pass over
/// the gathered row (byte extraction, interpolation, colour conversion, normalisation) in
/// 32-bit lanes, which the compiler vectorises 8 wide (AVX2).
impl Preprocessor {
    fn fast(&mut self, frame: &Frame<'_>, out: &mut [f32]) {
        let pairs = self.pairs.take().expect("fast path has pair taps");
        let mut gathered = std::mem::take(&mut self.gathered);
        let mut gathered_c = std::mem::take(&mut self.gathered_c);
        let mut rows = std::mem::take(&mut self.rows);
        let (tw, th) = (self.tw, self.th);
        let plane = tw * th;
        type Gather = fn(&[u8], usize, usize, &[usize], &mut Vec<u32>, usize);
        let gather: Gather = match self.format.packed_rgb() {
            Some((_, 4)) => gather_packed::<4>,
            _ => gather_packed::<3>,
        };
        // 4:2:0: the chroma terms of the conversion and the chroma row size, once per frame.
        let (cu, cv) = chroma_coeffs(&self.yuv, self.rgb_index);
        #[cfg(target_arch = "x86_64")]
        let (cw, _) = chroma_size(self.width, self.height);
        for oy in 0..th {
            let (ty, fy) = pairs.ys[oy];
            let base = oy * tw;
            // NCHW rows go straight into the tensor; NHWC through the scratch rows.
            let dst: [&mut [f32]; 3] = match self.layout {
                Layout::Nchw => {
                    let (c0, rest) = out.split_at_mut(plane);
                    let (c1, c2) = rest.split_at_mut(plane);
                    [
                        &mut c0[base..base + tw],
                        &mut c1[base..base + tw],
                        &mut c2[base..base + tw],
                    ]
                }
                Layout::Nhwc => {
                    let [r0, r1, r2] = &mut rows;
                    [&mut r0[..], &mut r1[..], &mut r2[..]]
                }
            };
            let (a, b) = (&self.mul, &self.add);
            match self.format.packed_rgb() {
                Some((_, bpp)) => {
                    // The AVX2 row takes the taps it can (whole groups of 8 inside the
                    // row), the portable path the rest.
                    let (plane, stride) = (frame.planes[0], frame.strides[0]);
                    let [d0, d1, d2] = dst;
                    let done = match &pairs.simd {
                        #[cfg(target_arch = "x86_64")]
                        Some(taps) => {
                            let r0 = &plane[ty * stride..][..self.width * bpp];
                            let r1 = &plane[(ty + 1) * stride..][..self.width * bpp];
                            bilinear_x86::row(taps, r0, r1, fy, self.offsets, *a, *b, [d0, d1, d2]);
                            taps.len()
                        }
                        _ => 0,
                    };
                    if done < tw {
                        gather(plane, stride, ty, &pairs.xs[done..], &mut gathered, self.width);
                        let shifts = self.offsets.map(|o| (8 * o) as u32);
                        let rest = [&mut d0[done..], &mut d1[done..], &mut d2[done..]];
                        interpolate_packed(&gathered, &pairs.fx[done..], fy, shifts, *a, *b, rest);
                    }
                }
                None => {
                    let (tc, fyc) = pairs.ys_c[oy];
                    let [d0, d1, d2] = dst;
                    let done = match &pairs.simd_yuv {
                        #[cfg(target_arch = "x86_64")]
                        Some(taps) => {
                            let row = |p: usize, y: usize, len: usize| {
                                &frame.planes[p][y * frame.strides[p]..][..len]
                            };
                            let nv12 = self.format == PixelFormat::Nv12;
                            let c_len = if nv12 { 2 * cw } else { cw };
                            let rows = bilinear_x86::YuvRows {
                                y0: row(0, ty, self.width),
                                y1: row(0, ty + 1, self.width),
                                u0: row(1, tc, c_len),
                                u1: row(1, tc + 1, c_len),
                                v0: if nv12 { &[] } else { row(2, tc, cw) },
                                v1: if nv12 { &[] } else { row(2, tc + 1, cw) },
                            };
                            let w = bilinear_x86::YuvWeights {
                                fx: &pairs.fx,
                                fx_c: &pairs.fx_c,
                                fy,
                                fy_c: fyc,
                                y_mul: self.yuv.y_mul,
                                y_off: self.yuv.y_off,
                                cu,
                                cv,
                                mul: *a,
                                add: *b,
                            };
                            bilinear_x86::yuv_row(taps, &rows, &w, [d0, d1, d2]);
                            taps.len()
                        }
                        _ => 0,
                    };
                    if done < tw {
                        gather_yuv(
                            frame,
                            ty,
                            tc,
                            &pairs.xs[done..],
                            &pairs.xs_c[done..],
                            &mut gathered,
                            &mut gathered_c,
                        );
                        interpolate_yuv(
                            &gathered,
                            &gathered_c,
                            (&pairs.fx[done..], &pairs.fx_c[done..]),
                            (fy, fyc),
                            (self.yuv.y_mul, self.yuv.y_off),
                            (cu, cv),
                            *a,
                            *b,
                            [&mut d0[done..], &mut d1[done..], &mut d2[done..]],
                        );
                    }
                }
            }
            if self.layout == Layout::Nhwc {
                let dst = &mut out[base * 3..(base + tw) * 3];
                for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                    px.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
                }
            }
        }
        self.pairs = Some(pairs);
        self.gathered = gathered;
        self.gathered_c = gathered_c;
        self.rows = rows;
    }
}

/// Little-endian `u32` from up to 4 bytes.
#[inline(always)]
fn load_u32(bytes: &[u8]) -> u32 {
    match bytes.first_chunk::<4>() {
        Some(b) => u32::from_le_bytes(*b),
        None => {
            let mut b = [0u8; 4];
            b[..bytes.len()].copy_from_slice(bytes);
            u32::from_le_bytes(b)
        }
    }
}

/// Packed pixels: for each tap, pixel `x` of row `y`, pixel `x + 1` of row `y`, then the
/// same two of row `y + 1`, each in the low bytes of a word; `out` holds the four words as
/// four runs of `xs.len()`.
fn gather_packed<const BPP: usize>(
    plane: &[u8],
    stride: usize,
    y: usize,
    xs: &[usize],
    out: &mut Vec<u32>,
    width: usize,
) {
    let n = xs.len();
    out.resize(4 * n, 0);
    let row_bytes = width * BPP;
    let r0 = &plane[y * stride..][..row_bytes];
    let r1 = &plane[(y + 1) * stride..][..row_bytes];
    let (a, rest) = out.split_at_mut(n);
    let (b, rest) = rest.split_at_mut(n);
    let (c, d) = rest.split_at_mut(n);
    // Only the last taps of a row, whose 8 bytes would run past it, take the slower path.
    let fast = xs.partition_point(|&x| x * BPP + 8 <= row_bytes);
    if fast > 0 {
        gather_words(r0, r1, &xs[..fast], BPP, [a, b, c, d]);
    }
    let iter = a.iter_mut().zip(b).zip(c).zip(d).zip(xs).skip(fast);
    for ((((a, b), c), d), &x) in iter {
        let i = x * BPP;
        *a = load_u32(&r0[i..]);
        *b = load_u32(&r0[i + BPP..]);
        *c = load_u32(&r1[i..]);
        *d = load_u32(&r1[i + BPP..]);
    }
}

/// The body of [`gather_packed`] for taps whose 8 bytes lie inside the row (`r0`, `r1` at
/// least 8 bytes long): branch-free (the `min` proves every read in bounds), so that it
/// compiles to vector gathers where the CPU has them.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn gather_words(r0: &[u8], r1: &[u8], xs: &[usize], bpp: usize, out: [&mut [u32]; 4]) {
    let last = r0.len().min(r1.len()) - 8;
    let word = |r: &[u8], i: usize| u32::from_le_bytes(r[i..i + 4].try_into().expect("4 bytes"));
    let [a, b, c, d] = out;
    let iter = a.iter_mut().zip(b.iter_mut()).zip(c.iter_mut()).zip(d.iter_mut());
    for ((((a, b), c), d), &x) in iter.zip(xs) {
        let i = (x * bpp).min(last);
        let j = (i + bpp).min(last + 4);
        *a = word(r0, i);
        *b = word(r0, j);
        *c = word(r1, i);
        *d = word(r1, j);
    }
}

/// 4:2:0 frames: luma neighbours `[y0 x, y0 x+1, y1 x, y1 x+1]` as the bytes of one word in
/// `luma`; chroma as `[u v u v]` words, the top chroma row's in the first half of `chroma`
/// and the bottom row's in the second.
fn gather_yuv(
    frame: &Frame<'_>,
    y: usize,
    cy: usize,
    xs: &[usize],
    xs_c: &[usize],
    luma: &mut Vec<u32>,
    chroma: &mut Vec<u32>,
) {
    let n = xs.len();
    luma.resize(n, 0);
    chroma.resize(2 * n, 0);
    let (w, (cw, _)) = (frame.width, chroma_size(frame.width, frame.height));
    let ys = frame.strides[0];
    let (y0, y1) = (
        &frame.planes[0][y * ys..][..w],
        &frame.planes[0][(y + 1) * ys..][..w],
    );
    let pair = |r: &[u8], x: usize| u16::from_le_bytes(r[x..x + 2].try_into().expect("2 bytes")) as u32;
    for (o, &x) in luma.iter_mut().zip(xs) {
        *o = pair(y0, x) | pair(y1, x) << 16;
    }
    let us = frame.strides[1];
    let (top, bottom) = chroma.split_at_mut(n);
    if frame.format == PixelFormat::Nv12 {
        let u0 = &frame.planes[1][cy * us..][..cw * 2];
        let u1 = &frame.planes[1][(cy + 1) * us..][..cw * 2];
        for ((t, b), &x) in top.iter_mut().zip(bottom).zip(xs_c) {
            *t = u32::from_le_bytes(u0[x * 2..x * 2 + 4].try_into().unwrap());
            *b = u32::from_le_bytes(u1[x * 2..x * 2 + 4].try_into().unwrap());
        }
    } else {
        let vs = frame.strides[2];
        let (u0, u1) = (
            &frame.planes[1][cy * us..][..cw],
            &frame.planes[1][(cy + 1) * us..][..cw],
        );
        let (v0, v1) = (
            &frame.planes[2][cy * vs..][..cw],
            &frame.planes[2][(cy + 1) * vs..][..cw],
        );
        for ((t, b), &x) in top.iter_mut().zip(bottom).zip(xs_c) {
            *t = u32::from_le_bytes([u0[x], v0[x], u0[x + 1], v0[x + 1]]);
            *b = u32::from_le_bytes([u1[x], v1[x], u1[x + 1], v1[x + 1]]);
        }
    }
}

#[inline(always)]
fn byte(q: u32, shift: u32) -> f32 {
    ((q >> shift) & 0xff) as i32 as f32
}

#[inline(always)]
fn bilerp(a: f32, b: f32, c: f32, d: f32, fx: f32, fy: f32) -> f32 {
    let top = a + (b - a) * fx;
    top + (c + (d - c) * fx - top) * fy
}

/// Per model channel: its U and V coefficients in the YUV -> RGB conversion, so that the
/// conversion loops have no data-dependent indexing.
fn chroma_coeffs(yuv: &YuvToRgb, rgb_index: [usize; 3]) -> ([f32; 3], [f32; 3]) {
    let coeff = |c: usize| match c {
        0 => (0.0, yuv.r_v),
        1 => (yuv.g_u, yuv.g_v),
        _ => (yuv.b_u, 0.0),
    };
    let pairs = rgb_index.map(coeff);
    (pairs.map(|p| p.0), pairs.map(|p| p.1))
}

/// Packed pixels: `gathered` holds the four neighbour words per tap as four runs (see
/// [`gather_packed`]); `shifts` are the bit offsets of the model channels inside a pixel.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+sse4.1"
))]
fn interpolate_packed(
    gathered: &[u32],
    fx: &[f32],
    fy: f32,
    shifts: [u32; 3],
    mul: [f32; 3],
    add: [f32; 3],
    out: [&mut [f32]; 3],
) {
    let n = fx.len();
    let (a, rest) = gathered.split_at(n);
    let (b, rest) = rest.split_at(n);
    let (c, d) = rest.split_at(n);
    for (k, row) in out.into_iter().enumerate() {
        let s = shifts[k];
        let iter = row.iter_mut().zip(a).zip(b).zip(c).zip(d).zip(fx);
        for (((((o, &a), &b), &c), &d), &f) in iter {
            let v = bilerp(byte(a, s), byte(b, s), byte(c, s), byte(d, s), f, fy);
            *o = v * mul[k] + add[k];
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+sse4.1"
))]
fn interpolate_yuv(
    luma: &[u32],
    chroma: &[u32],
    (fx, fx_c): (&[f32], &[f32]),
    (fy, fy_c): (f32, f32),
    (y_mul, y_off): (f32, f32),
    (cu, cv): ([f32; 3], [f32; 3]),
    mul: [f32; 3],
    add: [f32; 3],
    out: [&mut [f32]; 3],
) {
    let (top, bottom) = chroma.split_at(fx.len());
    let [r0, r1, r2] = out;
    let iter = r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut());
    let iter = iter.zip(luma).zip(top).zip(bottom).zip(fx).zip(fx_c);
    for (((((((o0, o1), o2), &l), &t), &b), &f), &fc) in iter {
        let y = bilerp(byte(l, 0), byte(l, 8), byte(l, 16), byte(l, 24), f, fy);
        let u = bilerp(byte(t, 0), byte(t, 16), byte(b, 0), byte(b, 16), fc, fy_c) - 128.0;
        let v = bilerp(byte(t, 8), byte(t, 24), byte(b, 8), byte(b, 24), fc, fy_c) - 128.0;
        let yy = y * y_mul + y_off;
        let ch = |k: usize| (yy + cu[k] * u + cv[k] * v).clamp(0.0, 255.0) * mul[k] + add[k];
        *o0 = ch(0);
        *o1 = ch(1);
        *o2 = ch(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unetmask::frame::YuvMatrix;
    use crate::unetmask::model::contract::{ChannelOrder, Normalization};

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
    fn fast_path_equals_the_reference_for_every_format_size_and_layout() {
        let formats = [
            PixelFormat::Rgba,
            PixelFormat::Bgrx,
            PixelFormat::Rgb,
            PixelFormat::Bgr,
            PixelFormat::Nv12,
            PixelFormat::I420,
        ];
        let noise = |n: usize, seed: usize| -> Vec<u8> {
            (0..n).map(|i| ((i * 131 + seed * 17) % 251) as u8).collect()
        };
        for format in formats {
            for (w, h, tw, th) in [(37, 23, 8, 6), (9, 7, 16, 12), (400, 600, 256, 256), (3, 3, 3, 3)] {
                let (cw, ch) = chroma_size(w, h);
                // Padded strides, as GStreamer gives them.
                let (planes, strides): (Vec<Vec<u8>>, [usize; 3]) = match format.packed_rgb() {
                    Some((_, bpp)) => (vec![noise((w * bpp + 5) * h, 1)], [w * bpp + 5, 0, 0]),
                    None if format == PixelFormat::Nv12 => (
                        vec![noise((w + 3) * h, 1), noise((cw * 2 + 4) * ch, 2)],
                        [w + 3, cw * 2 + 4, 0],
                    ),
                    None => (
                        vec![
                            noise((w + 3) * h, 1),
                            noise((cw + 1) * ch, 2),
                            noise((cw + 2) * ch, 3),
                        ],
                        [w + 3, cw + 1, cw + 2],
                    ),
                };
                let mut ps: [&[u8]; 3] = [&[]; 3];
                for (i, p) in planes.iter().enumerate() {
                    ps[i] = p;
                }
                let frame = Frame {
                    format,
                    width: w,
                    height: h,
                    planes: ps,
                    strides,
                };
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let norm = Normalization {
                        scale: 1.0 / 255.0,
                        mean: [0.485, 0.456, 0.406],
                        std: [0.229, 0.224, 0.225],
                    };
                    let mut p = Preprocessor::new(
                        &FrameSpec {
                            format,
                            width: w,
                            height: h,
                            matrix: YuvMatrix::BT709,
                        },
                        &TensorSpec {
                            size: (tw, th),
                            layout,
                            order: ChannelOrder::Bgr,
                            norm,
                        },
                    );
                    let pairs = p.pairs.as_ref().expect("fast path");
                    if bilinear_x86::available() && tw == 256 {
                        // The AVX2 rows take all but the last group of taps here.
                        let simd = match format.packed_rgb() {
                            Some((_, 4)) => pairs.simd.as_ref().map(|t| t.len()),
                            Some(_) => Some(tw),
                            None => pairs.simd_yuv.as_ref().map(|t| t.len()),
                        };
                        assert!(simd.is_some_and(|n| n >= 248), "{format:?}: {simd:?}");
                    }
                    let (mut fast, mut want) = (vec![0.0; p.tensor_len()], vec![0.0; p.tensor_len()]);
                    p.run(&frame, &mut fast);
                    p.reference(&frame, &mut want);
                    for (i, (a, b)) in fast.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() < 1e-4,
                            "{format:?} {w}x{h}->{tw}x{th} {layout:?} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
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
        let spec = FrameSpec {
            format: PixelFormat::Rgba,
            width: w,
            height: h,
            matrix: YuvMatrix::BT601,
        };
        let nchw_rgb = TensorSpec {
            size: (w, h),
            layout: Layout::Nchw,
            order: ChannelOrder::Rgb,
            norm,
        };
        let mut p = Preprocessor::new(&spec, &nchw_rgb);
        let mut out = vec![0.0; p.tensor_len()];
        p.run(&frame, &mut out);
        assert_eq!(out[2 * w + 4], 40.0); // R at (4,2)
        assert_eq!(out[w * h + 2 * w + 4], 40.0); // G at (4,2)
        assert_eq!(out[2 * w * h], 7.0); // B
        let nhwc_bgr = TensorSpec {
            layout: Layout::Nhwc,
            order: ChannelOrder::Bgr,
            ..nchw_rgb
        };
        let mut p = Preprocessor::new(&spec, &nhwc_bgr);
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
        let mut p = Preprocessor::new(
            &FrameSpec {
                format: PixelFormat::Bgrx,
                width: 1,
                height: 1,
                matrix: YuvMatrix::BT601,
            },
            &TensorSpec {
                size: (2, 2),
                layout: Layout::Nchw,
                order: ChannelOrder::Rgb,
                norm,
            },
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
        let mut p = Preprocessor::new(
            &FrameSpec {
                format: PixelFormat::Rgbx,
                width: 4,
                height: 1,
                matrix: YuvMatrix::BT601,
            },
            &TensorSpec {
                size: (2, 1),
                layout: Layout::Nhwc,
                order: ChannelOrder::Rgb,
                norm,
            },
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
            let mut p = Preprocessor::new(
                &FrameSpec {
                    format: fmt,
                    width: w,
                    height: h,
                    matrix: m,
                },
                &TensorSpec {
                    size: (4, 4),
                    layout: Layout::Nchw,
                    order: ChannelOrder::Rgb,
                    norm,
                },
            );
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
