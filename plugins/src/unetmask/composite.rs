//! Frame-size work: upscaling the model-resolution mask and the compositing modes.
//!
//! Every mode runs row by row in one pass over each plane: the mask row is upscaled
//! (bilinear, fixed point) into a small reusable buffer, mapped through a 256-entry table
//! (threshold and mode weight folded in), and mixed into the pixels. Pixels whose weight is
//! 0 are never written, so the background of `overlay` and the person of `blur`/`replace`
//! stay bit-identical to the input.

use super::frame::{Frame, PixelFormat, YuvMatrix, chroma_size};

/// Bilinear upscaling of the model-resolution mask to one plane's size.
#[derive(Debug, Clone)]
pub struct MaskScaler {
    mw: usize,
    width: usize,
    xs: Vec<(u32, u32, u32)>,
    ys: Vec<(u32, u32, u32)>,
    /// The vertically blended model row for `cached` (i0, i1, f).
    tmp: Vec<u32>,
    cached: Option<(u32, u32, u32)>,
}

fn fixed_taps(src: usize, dst: usize) -> Vec<(u32, u32, u32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src - 1);
            (i0 as u32, i1 as u32, ((s - i0 as f64) * 256.0).round() as u32)
        })
        .collect()
}

impl MaskScaler {
    pub fn new(model: (usize, usize), plane: (usize, usize)) -> Self {
        Self {
            mw: model.0,
            width: plane.0,
            xs: fixed_taps(model.0, plane.0),
            ys: fixed_taps(model.1, plane.1),
            tmp: vec![0; model.0],
            cached: None,
        }
    }

    /// Writes row `y` of the upscaled mask (0..=255) into `out` (`width` values).
    pub fn row(&mut self, mask: &[u8], y: usize, out: &mut [u8]) {
        let (y0, y1, fy) = self.ys[y];
        if self.cached != Some((y0, y1, fy)) {
            let r0 = &mask[y0 as usize * self.mw..][..self.mw];
            let r1 = &mask[y1 as usize * self.mw..][..self.mw];
            for ((t, &a), &b) in self.tmp.iter_mut().zip(r0).zip(r1) {
                *t = a as u32 * (256 - fy) + b as u32 * fy;
            }
            self.cached = Some((y0, y1, fy));
        }
        for (o, &(x0, x1, fx)) in out[..self.width].iter_mut().zip(&self.xs) {
            let v = self.tmp[x0 as usize] * (256 - fx) + self.tmp[x1 as usize] * fx;
            *o = ((v + 32768) >> 16) as u8;
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

/// Maps an upscaled mask value to the mask the user asked for: soft, or hard at a threshold.
pub fn mask_lut(threshold: Option<f32>) -> [u8; 256] {
    std::array::from_fn(|v| match threshold {
        None => v as u8,
        Some(t) => {
            if v as f32 > t * 255.0 {
                255
            } else {
                0
            }
        }
    })
}

/// Composes a weight table on top of a mask table: `weight(mask_lut[v])`.
pub fn weight_lut(mask: &[u8; 256], weight: impl Fn(u8) -> u8) -> [u8; 256] {
    std::array::from_fn(|v| weight(mask[v]))
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

/// The planes of a frame of `format` and size `width`x`height`.
pub fn planes_of(format: PixelFormat, width: usize, height: usize) -> Vec<PlaneGeom> {
    let (cw, ch) = chroma_size(width, height);
    let luma = PlaneGeom {
        width,
        height,
        pstride: 1,
        chans: vec![0],
        chroma: false,
    };
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

/// `x + (o - x) * w / 255`, rounded; exact at `w = 0` (x) and `w = 255` (o).
#[inline(always)]
fn mix(x: u8, o: u8, w: u8) -> u8 {
    let t = (o as i32 - x as i32) * w as i32 + 128;
    (x as i32 + ((t + (t >> 8)) >> 8)) as u8
}

/// Mixes a plane towards `target`: `x + (target - x) * w / 255`, with `w = lut[mask]` per pixel.
/// Scratch buffers are the caller's, so this allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn mix_plane(
    data: &mut [u8],
    stride: usize,
    geom: &PlaneGeom,
    scaler: &mut MaskScaler,
    mask: &[u8],
    lut: &[u8; 256],
    target: Target<'_>,
    scratch: &mut Scratch,
) {
    let w = geom.width;
    scratch.ensure(w * geom.pstride.max(1));
    for y in 0..geom.height {
        scaler.row(mask, y, &mut scratch.mask[..w]);
        for m in &mut scratch.mask[..w] {
            *m = lut[*m as usize];
        }
        if scratch.mask[..w].iter().all(|&m| m == 0) {
            continue;
        }
        let ps = geom.pstride;
        let row = &mut data[y * stride..][..w * ps];
        let weights = &scratch.mask[..w];
        match target {
            Target::Color(col) => {
                for (x, &wt) in weights.iter().enumerate() {
                    if wt != 0 {
                        let px = &mut row[x * ps..x * ps + ps];
                        for (&c, &o) in geom.chans.iter().zip(col) {
                            px[c] = mix(px[c], o, wt);
                        }
                    }
                }
            }
            Target::Plane { .. } | Target::Blurred(_) => {
                let other: &[u8] = match target {
                    Target::Plane { data, stride } => &data[y * stride..][..w * ps],
                    Target::Blurred(b) => {
                        b.row(y, &mut scratch.row[..w * ps]);
                        &scratch.row[..w * ps]
                    }
                    Target::Color(_) => unreachable!(),
                };
                for (x, &wt) in weights.iter().enumerate() {
                    if wt != 0 {
                        let (px, o) = (&mut row[x * ps..x * ps + ps], &other[x * ps..x * ps + ps]);
                        for &c in &geom.chans {
                            px[c] = mix(px[c], o[c], wt);
                        }
                    }
                }
            }
        }
    }
}

/// Reusable row buffers for the compositing loops.
#[derive(Debug, Default)]
pub struct Scratch {
    mask: Vec<u8>,
    row: Vec<u8>,
}

impl Scratch {
    fn ensure(&mut self, row_bytes: usize) {
        if self.row.len() < row_bytes {
            self.row.resize(row_bytes, 0);
            self.mask.resize(row_bytes, 0);
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
    lut: &[u8; 256],
) {
    let w = scaler.width();
    for y in 0..height {
        let row = &mut out[y * stride..][..w];
        scaler.row(mask, y, row);
        for v in row.iter_mut() {
            *v = lut[*v as usize];
        }
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
    lut: &[u8; 256],
    scratch: &mut Scratch,
) {
    let w = frame.width;
    scratch.ensure(w);
    let conv = matrix.to_rgb_coeffs();
    for y in 0..frame.height {
        scaler.row(mask, y, &mut scratch.mask[..w]);
        let row = &mut out[y * stride..][..w * 4];
        match frame.format.packed_rgb() {
            Some((off, bpp)) => {
                let src = &frame.planes[0][y * frame.strides[0]..];
                for x in 0..w {
                    let s = &src[x * bpp..];
                    row[x * 4..x * 4 + 4].copy_from_slice(&[
                        s[off[0]],
                        s[off[1]],
                        s[off[2]],
                        lut[scratch.mask[x] as usize],
                    ]);
                }
            }
            None => {
                let ys = &frame.planes[0][y * frame.strides[0]..];
                let cy = y / 2;
                let us = &frame.planes[1][cy * frame.strides[1]..];
                for x in 0..w {
                    let (u, v) = if frame.format == PixelFormat::Nv12 {
                        (us[(x / 2) * 2], us[(x / 2) * 2 + 1])
                    } else {
                        (us[x / 2], frame.planes[2][cy * frame.strides[2] + x / 2])
                    };
                    let rgb = conv.rgb(ys[x] as f32, u as f32, v as f32);
                    let q = |c: f32| (c + 0.5).clamp(0.0, 255.0) as u8;
                    row[x * 4..x * 4 + 4].copy_from_slice(&[
                        q(rgb[0]),
                        q(rgb[1]),
                        q(rgb[2]),
                        lut[scratch.mask[x] as usize],
                    ]);
                }
            }
        }
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
    xs: Vec<(u32, u32, f32)>,
    ys: Vec<(u32, u32, f32)>,
    mask_row: Vec<u8>,
    /// Scratch for [`BlurPlane::row`].
    vrow: std::cell::RefCell<Vec<f32>>,
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
        mask_lut: &[u8; 256],
        radius: usize,
    ) {
        let factor = (geom.width.min(geom.height) / 96).clamp(1, 16);
        let (sw, sh) = (geom.width.div_ceil(factor), geom.height.div_ceil(factor));
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
                xs: float_taps(sw, geom.width, factor),
                ys: float_taps(sh, geom.height, factor),
                mask_row: vec![0; geom.width],
                vrow: Default::default(),
            };
        }
        self.acc.fill(0.0);
        self.wsum.fill(0.0);
        // Within each factor x factor cell, every `step`-th pixel in both directions is
        // enough: the cells are blurred over several cells afterwards.
        let step = (factor / 4).max(1);
        for y in (0..geom.height).step_by(step) {
            scaler.row(mask, y, &mut self.mask_row);
            let row = &data[y * stride..];
            let sy = y / factor;
            for x in (0..geom.width).step_by(step) {
                // Background weight; person pixels keep a token weight so a window that is all
                // person still has a defined (and unused) value.
                let w = (255 - mask_lut[self.mask_row[x] as usize]) as f32 + 0.01;
                let si = sy * sw + x / factor;
                self.wsum[si] += w;
                for (k, &c) in self.chan_off.iter().enumerate() {
                    self.acc[si * chans + k] += w * row[x * geom.pstride + c] as f32;
                }
            }
        }
        let r = (radius / factor).max(1);
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
    }

    /// Row `y` of the blurred background at plane resolution, in the plane's pixel layout.
    pub fn row(&self, y: usize, out: &mut [u8]) {
        let (y0, y1, fy) = self.ys[y];
        let c = self.chans;
        let n = self.sw * c;
        let (r0, r1) = (
            &self.small[y0 as usize * n..][..n],
            &self.small[y1 as usize * n..][..n],
        );
        // Vertical blend once per row, then two taps per pixel.
        let mut v = self.vrow.borrow_mut();
        v.clear();
        v.extend(r0.iter().zip(r1).map(|(a, b)| a + (b - a) * fy + 0.5));
        for (x, &(x0, x1, fx)) in self.xs.iter().enumerate() {
            let (a, b) = (&v[x0 as usize * c..][..c], &v[x1 as usize * c..][..c]);
            let px = &mut out[x * self.pstride..];
            for (k, &off) in self.chan_off.iter().enumerate() {
                px[off] = (a[k] + (b[k] - a[k]) * fx) as u8;
            }
        }
    }
}

/// Taps from plane coordinates into the reduced grid whose cell `i` covers pixels
/// `i*factor .. (i+1)*factor` (centre at `(i + 0.5) * factor`).
fn float_taps(small: usize, full: usize, factor: usize) -> Vec<(u32, u32, f32)> {
    (0..full)
        .map(|o| {
            let s = ((o as f32 + 0.5) / factor as f32 - 0.5).clamp(0.0, (small - 1) as f32);
            let i0 = s.floor() as usize;
            ((i0 as u32), (i0 + 1).min(small - 1) as u32, s - i0 as f32)
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
        s.row(&mask, 0, &mut row);
        assert_eq!(&row[..2], &[0, 255]);
        s.row(&mask, 1, &mut row);
        assert_eq!(&row[..2], &[255, 0]);
        let mut s = MaskScaler::new((2, 1), (4, 1));
        s.row(&[0, 255], 0, &mut row);
        assert_eq!(row, [0, 64, 191, 255]);
    }

    #[test]
    fn hard_threshold_lut() {
        let l = mask_lut(Some(0.5));
        assert_eq!((l[127], l[128]), (0, 255));
        assert_eq!(mask_lut(None)[77], 77);
        let overlay = weight_lut(&l, |m| (m as u32 * 128 / 255) as u8);
        assert_eq!((overlay[0], overlay[255]), (0, 128));
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
        let lut = weight_lut(&mask_lut(Some(0.5)), |m| m);
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
        let lut = mask_lut(Some(0.5));
        let mut b = BlurPlane::default();
        b.compute(&data, w, &geom, &mut sc, &mask, &lut, 20);
        let mut row = vec![0u8; w];
        b.row(h / 2, &mut row);
        assert!(
            row[w / 2 + 1..].iter().all(|&v| v <= 12),
            "halo: {:?}",
            &row[w / 2..w / 2 + 8]
        );
        let weights = weight_lut(&lut, |m| 255 - m);
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
            &mask_lut(None),
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
