//! Frame-size work: upscaling the model-resolution mask and the compositing modes.
//!
//! Every mode runs row by row in one pass over each plane: the mask row is upscaled
//! (bilinear, fixed point, separably: see [`MaskScaler`]) into a small reusable buffer,
//! mapped to the mode's weights ([`Weights`]: threshold, inversion, opacity, in integer
//! arithmetic), widened to one weight per byte, and mixed into the pixels with 16-bit
//! arithmetic. Every row loop is a straight loop over slices that the compiler vectorises;
//! the hot ones are compiled for AVX2 and SSE4.1 as well and picked at run time
//! (`multiversion`). Rows whose weights are all 0 are skipped; elsewhere a weight of 0 gives
//! back the pixel exactly, so the background of `overlay` and the person of
//! `blur`/`replace` stay bit-identical to the input.

use multiversion::multiversion;

use crate::unetmask::frame::{Frame, PixelFormat, YuvMatrix, chroma_size, half_pixel_tap};

/// Bilinear upscaling of the model-resolution mask to one plane's size, separably: each
/// model row the frame needs is upscaled horizontally once per frame (the only gathers),
/// and every frame row is then a vertical blend of two of those rows, a straight loop
/// the compiler vectorises.
#[derive(Debug, Clone)]
pub struct MaskScaler {
    mw: usize,
    width: usize,
    xs: Vec<(u32, u32, u32)>,
    ys: Vec<(u32, u32, u32)>,
    /// `col_start[i]`: the first output column whose left neighbour is model column `i`
    /// or later (`mw + 1` entries), so the outputs between two model columns are a range.
    col_start: Vec<u32>,
    /// Horizontally upscaled model rows, `width` values each, in 1/256 steps (0..=65280).
    hrows: Vec<u16>,
    /// Per model row: whether `hrows` holds it for the current mask, and its largest value.
    ready: Vec<bool>,
    peak: Vec<u8>,
}

/// Bilinear taps `(i0, i1, f)` mapping `dst` samples onto `src` (half-pixel centres,
/// clamped edges), `f` the weight of `i1` in 1/256.
pub fn fixed_taps(src: usize, dst: usize) -> Vec<(u32, u32, u32)> {
    (0..dst)
        .map(|o| {
            let (i0, i1, f) = half_pixel_tap(o, src, dst);
            (i0 as u32, i1 as u32, (f * 256.0).round() as u32)
        })
        .collect()
}

impl MaskScaler {
    pub fn new(model: (usize, usize), plane: (usize, usize)) -> Self {
        let xs = fixed_taps(model.0, plane.0);
        let col_start = (0..=model.0)
            .map(|i| xs.partition_point(|&(x0, _, _)| (x0 as usize) < i) as u32)
            .collect();
        Self {
            mw: model.0,
            width: plane.0,
            xs,
            col_start,
            ys: fixed_taps(model.1, plane.1),
            hrows: vec![0; model.1 * plane.0],
            ready: vec![false; model.1],
            peak: vec![0; model.1],
        }
    }

    /// Starts a new mask: forgets the rows upscaled from the previous one.
    pub fn begin(&mut self) {
        self.ready.fill(false);
    }

    fn model_row(&mut self, mask: &[u8], i: usize) -> u8 {
        if !self.ready[i] {
            let src = &mask[i * self.mw..][..self.mw];
            let row = &mut self.hrows[i * self.width..][..self.width];
            let peak = src.iter().copied().max().unwrap_or(0);
            if peak == 0 {
                row.fill(0);
            } else {
                upscale_row(src, &self.xs, &self.col_start, row);
            }
            self.ready[i] = true;
            self.peak[i] = peak;
        }
        self.peak[i]
    }

    /// Writes row `y` of the upscaled mask (0..=255) into `out` (`width` values). Returns
    /// false, leaving `out` alone, when the whole row is 0 (no person on it).
    /// Call [`MaskScaler::begin`] first for each new mask.
    pub fn row(&mut self, mask: &[u8], y: usize, out: &mut [u8]) -> bool {
        let (y0, y1, fy) = self.ys[y];
        let (p0, p1) = (
            self.model_row(mask, y0 as usize),
            self.model_row(mask, y1 as usize),
        );
        let out = &mut out[..self.width];
        if p0.max(p1) == 0 {
            return false;
        }
        let w = self.width;
        let h0 = &self.hrows[y0 as usize * w..][..w];
        let h1 = &self.hrows[y1 as usize * w..][..w];
        blend_rows(h0, h1, fy, out);
        true
    }

    /// Like [`MaskScaler::row`], but always writes the row (zeros when there is no person).
    pub fn row_filled(&mut self, mask: &[u8], y: usize, out: &mut [u8]) {
        if !self.row(mask, y, out) {
            out[..self.width].fill(0);
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

/// One model row upscaled horizontally (values in 1/256). Masks are mostly flat (0 or 255)
/// with thin edges: a run of equal model values becomes one fill, and only the outputs
/// between two different neighbours are interpolated.
fn upscale_row(src: &[u8], xs: &[(u32, u32, u32)], col_start: &[u32], out: &mut [u16]) {
    let mw = src.len();
    let mut i = 0;
    while i < mw {
        let v = src[i];
        let mut j = i;
        while j + 1 < mw && src[j + 1] == v {
            j += 1;
        }
        // Outputs whose left neighbour is in i..j have both neighbours equal to v.
        let (a, b) = (col_start[i] as usize, col_start[j] as usize);
        out[a..b].fill(v as u16 * 256);
        let end = col_start[j + 1] as usize;
        for (o, &(x0, x1, fx)) in out[b..end].iter_mut().zip(&xs[b..end]) {
            *o = (src[x0 as usize] as u32 * (256 - fx) + src[x1 as usize] as u32 * fx) as u16;
        }
        i = j + 1;
    }
}

/// `out = (h0 * (256 - fy) + h1 * fy) / 65536`, rounded: one frame row of the mask.
#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn blend_rows(h0: &[u16], h1: &[u16], fy: u32, out: &mut [u8]) {
    let (a, b) = (256 - fy, fy);
    for ((o, &u), &v) in out.iter_mut().zip(h0).zip(h1) {
        *o = ((u as u32 * a + v as u32 * b + 32768) >> 16) as u8;
    }
}

/// The weight of a compositing mode as a function of the upscaled mask value `m`:
/// the soft mask or the hard one at a threshold, optionally inverted (background
/// weight), optionally scaled by an opacity. Plain integer arithmetic, so that it is
/// applied to whole rows in vectorised loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// Hard mask: `m > cut` is person (255), the rest background (0).
    cut: Option<u8>,
    invert: bool,
    scale: u8,
}

impl Weights {
    /// The mask the user asked for: soft (`None`), or hard where probability > `threshold`.
    pub fn mask(threshold: Option<f32>) -> Self {
        Self {
            // m > t*255 for an integer m is m > floor(t*255); t >= 1 never, t <= 0 above 0.
            cut: threshold.map(|t| (t * 255.0).floor().clamp(0.0, 255.0) as u8),
            invert: false,
            scale: 255,
        }
    }

    /// The background's weight (`255 - m`).
    pub fn inverted(self) -> Self {
        Self {
            invert: !self.invert,
            ..self
        }
    }

    /// Scaled by `opacity / 255`, rounded.
    pub fn scaled(self, opacity: u8) -> Self {
        Self {
            scale: opacity,
            ..self
        }
    }

    /// The hard-mask cut, whether inverted, and the opacity scale.
    pub fn parts(&self) -> (Option<u8>, bool, u8) {
        (self.cut, self.invert, self.scale)
    }

    /// The weight of one mask value (the reference for [`Weights::apply`]).
    pub fn at(&self, m: u8) -> u8 {
        let mut v = [m];
        self.apply(&mut v);
        v[0]
    }

    /// Maps a row of upscaled mask values to weights, in place.
    pub fn apply(&self, row: &mut [u8]) {
        apply_weights(self, row)
    }

    /// Whether a mask value of 0 (no person) gives weight 0.
    fn zero_at_zero(&self) -> bool {
        self.at(0) == 0
    }
}

#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn apply_weights(weights: &Weights, row: &mut [u8]) {
    if let Some(t) = weights.cut {
        for v in row.iter_mut() {
            *v = if *v > t { 255 } else { 0 };
        }
    }
    if weights.invert {
        for v in row.iter_mut() {
            *v = 255 - *v;
        }
    }
    if weights.scale != 255 {
        let k = weights.scale as u16;
        for v in row.iter_mut() {
            let t = *v as u16 * k + 128;
            *v = ((t + (t >> 8)) >> 8) as u8;
        }
    }
}

/// How one plane of a format is laid out and which bytes compositing touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneGeom {
    pub width: usize,
    pub height: usize,
    /// Bytes per pixel in this plane.
    pub pstride: usize,
    /// Byte offsets (within a pixel) of the colour channels; alpha/padding is left alone.
    pub chans: Vec<usize>,
    /// Whether the plane is subsampled 4:2:0 chroma.
    pub chroma: bool,
}

impl PlaneGeom {
    /// A one-byte-per-pixel full-resolution plane (luma, GRAY8).
    pub fn gray(width: usize, height: usize) -> PlaneGeom {
        PlaneGeom {
            width,
            height,
            pstride: 1,
            chans: vec![0],
            chroma: false,
        }
    }
}

/// The planes of a frame of `format` and size `width`x`height`.
pub fn planes_of(format: PixelFormat, width: usize, height: usize) -> Vec<PlaneGeom> {
    let (cw, ch) = chroma_size(width, height);
    let luma = PlaneGeom::gray(width, height);
    match format.packed_rgb() {
        Some((off, bpp)) => vec![PlaneGeom {
            width,
            height,
            pstride: bpp,
            chans: off.to_vec(),
            chroma: false,
        }],
        None if format == PixelFormat::Nv12 => {
            vec![
                luma,
                PlaneGeom {
                    width: cw,
                    height: ch,
                    pstride: 2,
                    chans: vec![0, 1],
                    chroma: true,
                },
            ]
        }
        None => {
            let c = PlaneGeom {
                width: cw,
                height: ch,
                pstride: 1,
                chans: vec![0],
                chroma: true,
            };
            vec![luma, c.clone(), c]
        }
    }
}

/// A colour as each plane of `format` stores it (one value per entry of `PlaneGeom::chans`).
pub fn plane_colors(format: PixelFormat, matrix: YuvMatrix, rgb: [u8; 3]) -> Vec<Vec<u8>> {
    if format.packed_rgb().is_some() {
        return vec![rgb.to_vec()];
    }
    let [y, u, v] = matrix.rgb_to_yuv(rgb);
    if format == PixelFormat::Nv12 {
        vec![vec![y], vec![u, v]]
    } else {
        vec![vec![y], vec![u], vec![v]]
    }
}

/// What the in-place compositing modes draw, from the element's live properties.
pub struct Look<'a> {
    /// The user's mask (threshold), for `blur`'s background.
    pub mask_weights: Weights,
    /// The weights of the mix (opacity for `overlay`, the background's for the others).
    pub weights: Weights,
    /// `overlay`/`replace` colour, one value per channel of each plane.
    pub colors: &'a [Vec<u8>],
    /// `Some(radius)` for `blur`.
    pub blur_radius: Option<usize>,
    /// The replacement picture in the frame's planes, to mix towards (`replace` with
    /// `replace-image`; the GPU path mixes towards its own copy, uploaded once per caps).
    pub picture: Option<&'a [Vec<u8>]>,
}

/// What a plane is mixed towards.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A flat colour (values per channel of the plane).
    Color(&'a [u8]),
    /// Another plane of the same geometry (a replacement picture).
    Plane { data: &'a [u8], stride: usize },
    /// A blurred background computed by [`BlurPlane`].
    Blurred(&'a BlurPlane),
}

/// `(x * (255 - w) + o * w) / 255`, rounded; exact at `w = 0` (x) and `w = 255` (o).
/// All in 16 bits (at most 255 * 255 + 128), so it vectorises on every x86-64.
#[inline(always)]
fn mix(x: u8, o: u8, w: u8) -> u8 {
    let t = x as u16 * (255 - w as u16) + o as u16 * w as u16 + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// `mix` over a whole row of bytes with a weight per byte: vectorised by the compiler.
#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn mix_row(row: &mut [u8], target: &[u8], weights: &[u8]) {
    for ((x, &o), &w) in row.iter_mut().zip(target).zip(weights) {
        *x = mix(*x, o, w);
    }
}

/// Per-pixel weights to per-byte weights: the colour channels of a pixel get the pixel's
/// weight, alpha and padding bytes 0 (so they stay as they are).
#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn expand_weights(weights: &[u8], pstride: usize, chans: &[usize], out: &mut [u8]) {
    match pstride {
        1 => out.copy_from_slice(weights),
        2 => {
            for (o, &w) in out.chunks_exact_mut(2).zip(weights) {
                o.copy_from_slice(&[w, w]);
            }
        }
        n => {
            let mut keep = [0u8; 4];
            for &c in chans {
                keep[c] = 0xff;
            }
            if n == 4 {
                for (o, &w) in out.chunks_exact_mut(4).zip(weights) {
                    o.copy_from_slice(&[w & keep[0], w & keep[1], w & keep[2], w & keep[3]]);
                }
            } else {
                for (o, &w) in out.chunks_exact_mut(n).zip(weights) {
                    for (b, &k) in o.iter_mut().zip(&keep) {
                        *b = w & k;
                    }
                }
            }
        }
    }
}

/// Mixes a plane towards `target`: `x + (target - x) * w / 255`, with `w = weights(mask)`
/// per pixel. Rows where every weight is 0 are not touched at all. Scratch buffers are the
/// caller's, so this allocates nothing once they have grown.
#[allow(clippy::too_many_arguments)]
pub fn mix_plane(
    data: &mut [u8],
    stride: usize,
    geom: &PlaneGeom,
    scaler: &mut MaskScaler,
    mask: &[u8],
    weights: &Weights,
    target: Target<'_>,
    scratch: &mut Scratch,
) {
    let (w, ps) = (geom.width, geom.pstride);
    let bytes = w * ps;
    scratch.ensure(bytes);
    scaler.begin();
    if let Target::Color(col) = target {
        // One row of the colour, laid out as the plane's pixels.
        for px in scratch.color[..bytes].chunks_exact_mut(ps) {
            for (&c, &o) in geom.chans.iter().zip(col) {
                px[c] = o;
            }
        }
    }
    let skip_empty = weights.zero_at_zero();
    for y in 0..geom.height {
        let m = &mut scratch.mask[..w];
        if !scaler.row(mask, y, m) {
            if skip_empty {
                continue;
            }
            m.fill(0);
        }
        weights.apply(m);
        if skip_empty && m.iter().all(|&v| v == 0) {
            continue;
        }
        expand_weights(m, ps, &geom.chans, &mut scratch.wide[..bytes]);
        let row = &mut data[y * stride..][..bytes];
        let other: &[u8] = match target {
            Target::Color(_) => &scratch.color[..bytes],
            Target::Plane { data, stride } => &data[y * stride..][..bytes],
            Target::Blurred(b) => {
                b.row(y, &mut scratch.row[..bytes]);
                &scratch.row[..bytes]
            }
        };
        mix_row(row, other, &scratch.wide[..bytes]);
    }
}

/// Reusable row buffers for the compositing loops.
#[derive(Debug, Default)]
pub struct Scratch {
    mask: Vec<u8>,
    wide: Vec<u8>,
    row: Vec<u8>,
    color: Vec<u8>,
    /// `write_alpha`: the chroma terms of one row.
    chroma: Vec<i32>,
}

impl Scratch {
    fn ensure(&mut self, row_bytes: usize) {
        for v in [&mut self.mask, &mut self.wide, &mut self.row, &mut self.color] {
            if v.len() < row_bytes {
                v.resize(row_bytes, 0);
            }
        }
    }
}

/// Writes the GRAY8 mask of the frame into `out` (`mask` output mode).
pub fn write_mask(
    out: &mut [u8],
    stride: usize,
    height: usize,
    scaler: &mut MaskScaler,
    mask: &[u8],
    weights: &Weights,
) {
    let w = scaler.width();
    scaler.begin();
    for y in 0..height {
        let row = &mut out[y * stride..][..w];
        scaler.row_filled(mask, y, row);
        weights.apply(row);
    }
}

/// Writes the frame as RGBA with the mask as alpha (`alpha` output mode).
#[allow(clippy::too_many_arguments)]
pub fn write_alpha(
    frame: &Frame<'_>,
    matrix: YuvMatrix,
    out: &mut [u8],
    stride: usize,
    scaler: &mut MaskScaler,
    mask: &[u8],
    weights: &Weights,
    scratch: &mut Scratch,
) {
    let w = frame.width;
    scratch.ensure(w * 4);
    scaler.begin();
    let conv = FixedYuv::new(matrix);
    let (cw, _) = chroma_size(w, frame.height);
    for y in 0..frame.height {
        let m = &mut scratch.mask[..w];
        scaler.row_filled(mask, y, m);
        weights.apply(m);
        let row = &mut out[y * stride..][..w * 4];
        match frame.format.packed_rgb() {
            Some((off, 4)) => {
                let src = &frame.planes[0][y * frame.strides[0]..][..w * 4];
                alpha_from_packed4(src, m, off.map(|o| 8 * o as u32), row);
            }
            Some((off, bpp)) => {
                let src = &frame.planes[0][y * frame.strides[0]..][..w * bpp];
                for ((o, s), &a) in row.chunks_exact_mut(4).zip(src.chunks_exact(bpp)).zip(m.iter()) {
                    o.copy_from_slice(&[s[off[0]], s[off[1]], s[off[2]], a]);
                }
            }
            None => {
                let cy = y / 2;
                let ys = &frame.planes[0][y * frame.strides[0]..][..w];
                let us = &frame.planes[1][cy * frame.strides[1]..];
                // The chroma terms once per chroma sample, spread over the two pixels it
                // covers, and kept for the second luma row of the pair.
                scratch.chroma.resize(3 * 2 * cw, 0);
                let (cr, rest) = scratch.chroma.split_at_mut(2 * cw);
                let (cg, cb) = rest.split_at_mut(2 * cw);
                for cx in (0..cw).filter(|_| y % 2 == 0) {
                    let (u, v) = if frame.format == PixelFormat::Nv12 {
                        (us[cx * 2], us[cx * 2 + 1])
                    } else {
                        (us[cx], frame.planes[2][cy * frame.strides[2] + cx])
                    };
                    let [r, g, b] = conv.chroma(u, v);
                    cr[2 * cx..2 * cx + 2].copy_from_slice(&[r, r]);
                    cg[2 * cx..2 * cx + 2].copy_from_slice(&[g, g]);
                    cb[2 * cx..2 * cx + 2].copy_from_slice(&[b, b]);
                }
                alpha_from_yuv(ys, [&cr[..w], &cg[..w], &cb[..w]], m, &conv, row);
            }
        }
    }
}

/// Four-byte pixels to RGBA: the colour bytes at `shifts` (bits), then the alpha.
#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn alpha_from_packed4(src: &[u8], alpha: &[u8], shifts: [u32; 3], out: &mut [u8]) {
    for ((o, s), &a) in out.chunks_exact_mut(4).zip(src.chunks_exact(4)).zip(alpha) {
        let p = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let v = ((p >> shifts[0]) & 0xff)
            | ((p >> shifts[1]) & 0xff) << 8
            | ((p >> shifts[2]) & 0xff) << 16
            | (a as u32) << 24;
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// One row of luma plus per-pixel chroma terms to RGBA with the alpha.
#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn alpha_from_yuv(luma: &[u8], [cr, cg, cb]: [&[i32]; 3], alpha: &[u8], conv: &FixedYuv, out: &mut [u8]) {
    let it = out.chunks_exact_mut(4).zip(luma).zip(alpha);
    for ((((o, &y), &a), &r), (&g, &b)) in it.zip(cr).zip(cg.iter().zip(cb)) {
        let [r, g, b] = conv.rgb(y, [r, g, b]);
        o.copy_from_slice(&[r, g, b, a]);
    }
}

/// YUV -> RGB in fixed point (12 fractional bits), for the per-pixel output modes (and the
/// GPU's `alpha` kernel, which takes the same coefficients).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedYuv {
    pub(crate) y_mul: i32,
    /// Includes + 0.5 for rounding at the final shift.
    pub(crate) y_off: i32,
    pub(crate) r_v: i32,
    pub(crate) g_u: i32,
    pub(crate) g_v: i32,
    pub(crate) b_u: i32,
}

impl FixedYuv {
    pub(crate) fn new(matrix: YuvMatrix) -> Self {
        let c = matrix.to_rgb_coeffs();
        let q = |v: f32| (v * 4096.0).round() as i32;
        Self {
            y_mul: q(c.y_mul),
            // + 0.5 for rounding at the final shift.
            y_off: q(c.y_off + 0.5),
            r_v: q(c.r_v),
            g_u: q(c.g_u),
            g_v: q(c.g_v),
            b_u: q(c.b_u),
        }
    }

    #[inline(always)]
    fn chroma(&self, u: u8, v: u8) -> [i32; 3] {
        let (u, v) = (u as i32 - 128, v as i32 - 128);
        [self.r_v * v, self.g_u * u + self.g_v * v, self.b_u * u]
    }

    #[inline(always)]
    fn rgb(&self, y: u8, c: [i32; 3]) -> [u8; 3] {
        let yy = y as i32 * self.y_mul + self.y_off;
        c.map(|c| ((yy + c) >> 12).clamp(0, 255) as u8)
    }
}

/// The background of one plane, blurred without the person: a normalised convolution
/// (`blur(x * (1 - m)) / blur(1 - m)`) computed on a copy reduced by `factor`, so person
/// colours never bleed into the background (no halo) and the cost stays near one read of
/// the plane. Upsampled bilinearly row by row while mixing.
#[derive(Debug, Default)]
pub struct BlurPlane {
    factor: usize,
    sw: usize,
    sh: usize,
    chans: usize,
    pstride: usize,
    chan_off: Vec<usize>,
    /// Blurred background, `sw * sh * chans`, as f32 0..255.
    small: Vec<f32>,
    acc: Vec<f32>,
    wsum: Vec<f32>,
    tmp: Vec<f32>,
    xs: Vec<(u32, u32, u32)>,
    ys: Vec<(u32, u32, u32)>,
    /// Each row of the reduced grid upscaled horizontally to the plane's width, in the
    /// plane's pixel layout, in 1/256 steps: rows of the background are then vertical
    /// blends of two of these (the same separable scheme as [`MaskScaler`]).
    hrows: Vec<u16>,
    mask_row: Vec<u8>,
}

fn box_blur(data: &mut [f32], tmp: &mut Vec<f32>, w: usize, h: usize, c: usize, r: usize) {
    tmp.resize(data.len(), 0.0);
    let norm = 1.0 / (2 * r + 1) as f32;
    // Horizontal, clamped edges.
    for y in 0..h {
        for k in 0..c {
            let at = |x: isize| data[(y * w + x.clamp(0, w as isize - 1) as usize) * c + k];
            let mut sum: f32 = (-(r as isize)..=r as isize).map(at).sum();
            for x in 0..w {
                tmp[(y * w + x) * c + k] = sum * norm;
                sum += at(x as isize + r as isize + 1) - at(x as isize - r as isize);
            }
        }
    }
    // Vertical.
    for x in 0..w {
        for k in 0..c {
            let at = |y: isize| tmp[(y.clamp(0, h as isize - 1) as usize * w + x) * c + k];
            let mut sum: f32 = (-(r as isize)..=r as isize).map(at).sum();
            for y in 0..h {
                data[(y * w + x) * c + k] = sum * norm;
                sum += at(y as isize + r as isize + 1) - at(y as isize - r as isize);
            }
        }
    }
}

impl BlurPlane {
    /// Recomputes the blurred background of `data` for the current mask.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &mut self,
        data: &[u8],
        stride: usize,
        geom: &PlaneGeom,
        scaler: &mut MaskScaler,
        mask: &[u8],
        weights: &Weights,
        radius: usize,
    ) {
        let BlurGrid { factor, step, sw, sh } = BlurGrid::of(geom.width, geom.height);
        let chans = geom.chans.len();
        if (self.factor, self.sw, self.sh, self.chans, self.pstride) != (factor, sw, sh, chans, geom.pstride)
        {
            *self = BlurPlane {
                factor,
                sw,
                sh,
                chans,
                pstride: geom.pstride,
                chan_off: geom.chans.clone(),
                small: vec![0.0; sw * sh * chans],
                acc: vec![0.0; sw * sh * chans],
                wsum: vec![0.0; sw * sh],
                tmp: Vec::new(),
                xs: grid_taps(sw, geom.width, factor),
                ys: grid_taps(sh, geom.height, factor),
                hrows: vec![0; sh * geom.width * geom.pstride],
                mask_row: vec![0; geom.width],
            };
        }
        self.acc.fill(0.0);
        self.wsum.fill(0.0);
        let background = weights.inverted();
        scaler.begin();
        for y in (0..geom.height).step_by(step) {
            scaler.row_filled(mask, y, &mut self.mask_row);
            background.apply(&mut self.mask_row);
            let row = &data[y * stride..];
            let sy = y / factor;
            for x in (0..geom.width).step_by(step) {
                // Background weight; person pixels keep a token weight so a window that is all
                // person still has a defined (and unused) value.
                let w = self.mask_row[x] as f32 + 0.01;
                let si = sy * sw + x / factor;
                self.wsum[si] += w;
                for (k, &c) in self.chan_off.iter().enumerate() {
                    self.acc[si * chans + k] += w * row[x * geom.pstride + c] as f32;
                }
            }
        }
        let r = blur_cells(radius, factor);
        let mut tmp = std::mem::take(&mut self.tmp);
        box_blur(&mut self.acc, &mut tmp, sw, sh, chans, r);
        box_blur(&mut self.acc, &mut tmp, sw, sh, chans, r);
        box_blur(&mut self.wsum, &mut tmp, sw, sh, 1, r);
        box_blur(&mut self.wsum, &mut tmp, sw, sh, 1, r);
        self.tmp = tmp;
        for i in 0..sw * sh {
            for k in 0..chans {
                self.small[i * chans + k] = self.acc[i * chans + k] / self.wsum[i];
            }
        }
        let rb = geom.width * self.pstride;
        for (i, h) in self.hrows.chunks_exact_mut(rb).enumerate() {
            let small = &self.small[i * sw * chans..][..sw * chans];
            for (px, &(x0, x1, fx)) in h.chunks_exact_mut(self.pstride).zip(&self.xs) {
                let (a, b) = (
                    &small[x0 as usize * chans..][..chans],
                    &small[x1 as usize * chans..][..chans],
                );
                for (k, &off) in self.chan_off.iter().enumerate() {
                    px[off] = ((a[k] + 0.5) as u32 * (256 - fx) + (b[k] + 0.5) as u32 * fx) as u16;
                }
            }
        }
    }

    /// Row `y` of the blurred background at plane resolution, in the plane's pixel layout
    /// (bytes that are not colour channels are 0).
    pub fn row(&self, y: usize, out: &mut [u8]) {
        let (y0, y1, fy) = self.ys[y];
        let rb = self.hrows.len() / self.sh;
        let h0 = &self.hrows[y0 as usize * rb..][..rb];
        let h1 = &self.hrows[y1 as usize * rb..][..rb];
        blend_rows(h0, h1, fy, &mut out[..rb]);
    }
}

/// The reduced grid of [`BlurPlane`] for a plane of `width` x `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlurGrid {
    /// Cell size, pixels.
    pub factor: usize,
    /// Within each cell, every `step`-th pixel in both directions (about two by two
    /// samples per cell) is enough: the cells are blurred over several cells afterwards.
    pub step: usize,
    /// Grid size, cells.
    pub sw: usize,
    pub sh: usize,
}

impl BlurGrid {
    pub fn of(width: usize, height: usize) -> BlurGrid {
        let factor = (width.min(height) / 96).clamp(1, 16);
        BlurGrid {
            factor,
            step: (factor / 2).max(1),
            sw: width.div_ceil(factor),
            sh: height.div_ceil(factor),
        }
    }
}

/// The box radius in cells for a blur `radius` in pixels.
pub fn blur_cells(radius: usize, factor: usize) -> usize {
    (radius / factor).max(1)
}

/// Taps from plane coordinates into the reduced grid whose cell `i` covers pixels
/// `i*factor .. (i+1)*factor` (centre at `(i + 0.5) * factor`), weights in 1/256.
pub(crate) fn grid_taps(small: usize, full: usize, factor: usize) -> Vec<(u32, u32, u32)> {
    (0..full)
        .map(|o| {
            let s = ((o as f32 + 0.5) / factor as f32 - 0.5).clamp(0.0, (small - 1) as f32);
            let i0 = s.floor() as usize;
            let f = ((s - i0 as f32) * 256.0).round() as u32;
            ((i0 as u32), (i0 + 1).min(small - 1) as u32, f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_identity_and_upscale() {
        let mask = [0u8, 255, 255, 0];
        let mut s = MaskScaler::new((2, 2), (2, 2));
        let mut row = [0u8; 4];
        s.begin();
        assert!(s.row(&mask, 0, &mut row));
        assert_eq!(&row[..2], &[0, 255]);
        s.row(&mask, 1, &mut row);
        assert_eq!(&row[..2], &[255, 0]);
        let mut s = MaskScaler::new((2, 1), (4, 1));
        s.begin();
        s.row(&[0, 255], 0, &mut row);
        assert_eq!(row, [0, 64, 191, 255]);
        // A new mask after begin(); an empty row reports itself and row_filled zeroes.
        s.begin();
        assert!(!s.row(&[0, 0], 0, &mut row));
        assert_eq!(row, [0, 64, 191, 255], "left alone");
        s.row_filled(&[0, 0], 0, &mut row);
        assert_eq!(row, [0; 4]);
    }

    #[test]
    fn separable_upscale_matches_direct_bilinear() {
        // 7x5 mask -> 23x17: every pixel equals the 2-D fixed-point bilinear formula.
        let (mw, mh, w, h) = (7, 5, 23, 17);
        let mask: Vec<u8> = (0..mw * mh).map(|i| ((i * 37) % 256) as u8).collect();
        let (xs, ys) = (fixed_taps(mw, w), fixed_taps(mh, h));
        let mut s = MaskScaler::new((mw, mh), (w, h));
        s.begin();
        let mut row = vec![0u8; w];
        for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
            s.row_filled(&mask, y, &mut row);
            for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                let at = |r: u32, c: u32| mask[r as usize * mw + c as usize] as u32;
                let top = at(y0, x0) * (256 - fx) + at(y0, x1) * fx;
                let bot = at(y1, x0) * (256 - fx) + at(y1, x1) * fx;
                let want = ((top * (256 - fy) + bot * fy + 32768) >> 16) as u8;
                assert_eq!(row[x], want, "({x},{y})");
            }
        }
    }

    #[test]
    fn weights_threshold_invert_and_scale() {
        let hard = Weights::mask(Some(0.5));
        assert_eq!((hard.at(127), hard.at(128)), (0, 255));
        assert_eq!(Weights::mask(None).at(77), 77);
        assert_eq!(Weights::mask(Some(0.0)).at(0), 0);
        assert_eq!(Weights::mask(Some(0.0)).at(1), 255);
        assert_eq!(Weights::mask(Some(1.0)).at(255), 0);
        let overlay = hard.scaled(128);
        assert_eq!((overlay.at(0), overlay.at(255)), (0, 128));
        assert_eq!(Weights::mask(None).inverted().at(55), 200);
        // The row form equals the scalar form for every value.
        let w = Weights::mask(None).inverted().scaled(77);
        let mut row: Vec<u8> = (0..=255).collect();
        w.apply(&mut row);
        for (m, &v) in row.iter().enumerate() {
            let want = (((255 - m) as u32 * 77) as f64 / 255.0).round() as u8;
            assert_eq!(v, want, "m={m}");
        }
    }

    #[test]
    fn fixed_point_yuv_matches_float() {
        for m in [YuvMatrix::BT601, YuvMatrix::BT709] {
            let (f, c) = (FixedYuv::new(m), m.to_rgb_coeffs());
            for (y, u, v) in [
                (16u8, 128u8, 128u8),
                (235, 128, 128),
                (81, 90, 240),
                (145, 54, 34),
                (0, 255, 0),
            ] {
                let got = f.rgb(y, f.chroma(u, v));
                let want = c
                    .rgb(y as f32, u as f32, v as f32)
                    .map(|x| (x + 0.5).clamp(0.0, 255.0) as u8);
                for k in 0..3 {
                    assert!(
                        (got[k] as i32 - want[k] as i32).abs() <= 1,
                        "{y},{u},{v}: {got:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn mix_rounds_and_reaches_the_target() {
        assert_eq!(mix(10, 200, 0), 10);
        assert_eq!(mix(10, 200, 255), 200);
        assert_eq!(mix(200, 10, 255), 10);
        assert_eq!(mix(0, 255, 128), 128);
    }

    fn rgbx(w: usize, h: usize, v: u8) -> Vec<u8> {
        vec![v; w * h * 4]
    }

    #[test]
    fn overlay_leaves_background_untouched() {
        let (w, h) = (8, 4);
        let mut data = rgbx(w, h, 50);
        // Person on the left half of a 2x1 mask.
        let mask = [255u8, 0];
        let geom = &planes_of(PixelFormat::Rgbx, w, h)[0];
        let mut sc = MaskScaler::new((2, 1), (w, h));
        let lut = Weights::mask(Some(0.5));
        mix_plane(
            &mut data,
            w * 4,
            geom,
            &mut sc,
            &mask,
            &lut,
            Target::Color(&[255, 255, 0]),
            &mut Scratch::default(),
        );
        for y in 0..h {
            assert_eq!(&data[y * w * 4..y * w * 4 + 4], &[255, 255, 0, 50]);
            assert_eq!(&data[y * w * 4 + 28..y * w * 4 + 32], &[50, 50, 50, 50]);
        }
    }

    #[test]
    fn blur_background_ignores_the_person() {
        // Left half person (value 250), right half background (value 10): the blurred
        // background next to the person must stay at the background's value (no halo).
        let (w, h) = (192, 96);
        let mut data = vec![10u8; w * h];
        for y in 0..h {
            data[y * w..y * w + w / 2].fill(250);
        }
        let mask: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).map(|x| if x < w / 2 { 255 } else { 0 }))
            .collect();
        let geom = PlaneGeom {
            width: w,
            height: h,
            pstride: 1,
            chans: vec![0],
            chroma: false,
        };
        let mut sc = MaskScaler::new((w, h), (w, h));
        let lut = Weights::mask(Some(0.5));
        let mut b = BlurPlane::default();
        b.compute(&data, w, &geom, &mut sc, &mask, &lut, 20);
        let mut row = vec![0u8; w];
        b.row(h / 2, &mut row);
        assert!(
            row[w / 2 + 1..].iter().all(|&v| v <= 12),
            "halo: {:?}",
            &row[w / 2..w / 2 + 8]
        );
        let weights = lut.inverted();
        let before = data.clone();
        mix_plane(
            &mut data,
            w,
            &geom,
            &mut sc,
            &mask,
            &weights,
            Target::Blurred(&b),
            &mut Scratch::default(),
        );
        for y in 0..h {
            assert_eq!(
                &data[y * w..y * w + w / 2],
                &before[y * w..y * w + w / 2],
                "person changed"
            );
        }
    }

    #[test]
    fn plane_layouts_and_colours() {
        let p = planes_of(PixelFormat::Nv12, 5, 3);
        assert_eq!((p.len(), p[1].width, p[1].height, p[1].pstride), (2, 3, 2, 2));
        assert_eq!(planes_of(PixelFormat::Bgra, 2, 2)[0].chans, vec![2, 1, 0]);
        assert_eq!(
            plane_colors(PixelFormat::I420, YuvMatrix::BT601, [0, 0, 0]),
            vec![vec![16], vec![128], vec![128]]
        );
    }

    #[test]
    fn alpha_output_from_i420() {
        let (w, h) = (4, 2);
        let m = YuvMatrix::BT601;
        let [y, u, v] = m.rgb_to_yuv([200, 100, 50]);
        let (yp, up, vp) = (vec![y; 8], vec![u; 2], vec![v; 2]);
        let frame = Frame {
            format: PixelFormat::I420,
            width: w,
            height: h,
            planes: [&yp, &up, &vp],
            strides: [4, 2, 2],
        };
        let mut out = vec![0u8; w * h * 4];
        let mut sc = MaskScaler::new((1, 1), (w, h));
        write_alpha(
            &frame,
            m,
            &mut out,
            w * 4,
            &mut sc,
            &[200],
            &Weights::mask(None),
            &mut Scratch::default(),
        );
        let px = &out[..4];
        assert!(
            (px[0] as i32 - 200).abs() <= 2
                && (px[1] as i32 - 100).abs() <= 2
                && (px[2] as i32 - 50).abs() <= 2
        );
        assert_eq!(px[3], 200);
    }
}
