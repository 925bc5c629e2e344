// SPDX-License-Identifier: MPL-2.0

//! One tensor row of 4-byte pixels (RGBA, BGRA, RGBx, BGRx) by bilinear sampling, in AVX2.
//!
//! The portable fast path in `preprocess` gathers the 2x2 neighbours of every tap into
//! words and then does the arithmetic over the row; at 1080p that costs about as much
//! again as reading the frame's cache lines. Here each tap costs two loads that widen the
//! neighbour pair straight into floats (`vpmovzxbd`), one vertical and one horizontal
//! blend, and every 8 taps one in-register transpose into the three channel rows: about
//! half the instructions, nothing stored in between.
//!
//! Arithmetic per tap: `l = top + (bottom - top) * fy` for both pixels of the pair, then
//! `v = l0 + (l1 - l0) * fx`, then `v * mul + add` per model channel: the same bilinear
//! value as the reference path, up to float rounding.
//!
//! 4:2:0 frames (NV12, I420) go 8 taps at a time: the neighbour words of luma and chroma
//! are fetched with AVX2 gathers straight into registers, and the arithmetic of the
//! portable path (bilinear Y, U and V, YUV -> RGB, clamp, normalisation) runs on them.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One tensor row's taps for [`row`]: byte offsets of each pair's first pixel and its
/// horizontal weight. Built once per caps.
#[derive(Debug, Clone)]
pub struct RowTaps {
    /// `x * 4` per tap, ascending.
    offsets: Vec<usize>,
    /// Per group of 8 taps, lanes 0-3: the weights of taps 0..4, lanes 4-7: taps 4..8,
    /// each repeated 4 times (one per channel): see [`row`] for the lane order.
    fx: Vec<[f32; 8]>,
}

impl RowTaps {
    /// `xs`: first pixel of each pair (ascending), `fx`: weight of the second pixel.
    /// `row_bytes`: bytes of a source row.
    pub fn new(xs: &[usize], fx: &[f32], row_bytes: usize) -> Self {
        debug_assert!(xs.windows(2).all(|w| w[0] <= w[1]), "taps ascend");
        // Whole groups of 8 whose 8-byte reads stay inside the row; the rest is the
        // caller's (the scalar path).
        let inside = xs.partition_point(|&x| x * 4 + 8 <= row_bytes);
        let groups = inside / 8;
        let offsets = xs[..groups * 8].iter().map(|&x| x * 4).collect();
        let fx = (0..groups)
            .flat_map(|g| {
                (0..4).map(move |m| {
                    let (a, b) = (fx[g * 8 + m], fx[g * 8 + m + 4]);
                    [a, a, a, a, b, b, b, b]
                })
            })
            .collect();
        Self { offsets, fx }
    }

    /// Number of taps (from the start of the row) that [`row`] computes.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }
}

/// One tensor row's taps for [`yuv_row`]: luma and chroma sample of each pair's first
/// neighbour, as gather indices. Built once per caps.
#[derive(Debug, Clone)]
pub struct YuvTaps {
    /// Byte index in a luma row, per tap.
    luma: Vec<i32>,
    /// Byte index in a chroma row (NV12: of the U byte of the UV pair), per tap.
    chroma: Vec<i32>,
    nv12: bool,
}

impl YuvTaps {
    /// `xs`/`xs_c`: first luma/chroma sample of each pair (ascending); rows of `width` luma
    /// samples and `chroma_width` chroma samples.
    pub fn new(xs: &[usize], xs_c: &[usize], width: usize, chroma_width: usize, nv12: bool) -> Self {
        // Every gather reads 4 bytes: the taps whose 4 bytes stay inside both rows, in
        // whole groups of 8.
        let chroma_bytes = if nv12 { 2 * chroma_width } else { chroma_width };
        let step = if nv12 { 2 } else { 1 };
        let inside = xs
            .iter()
            .zip(xs_c)
            .take_while(|&(&x, &c)| x + 4 <= width && c * step + 4 <= chroma_bytes)
            .count();
        let n = inside / 8 * 8;
        Self {
            luma: xs[..n].iter().map(|&x| x as i32).collect(),
            chroma: xs_c[..n].iter().map(|&c| (c * step) as i32).collect(),
            nv12,
        }
    }

    /// Number of taps (from the start of the row) that [`yuv_row`] computes.
    pub fn len(&self) -> usize {
        self.luma.len()
    }
}

/// The source rows of one tensor row of a 4:2:0 frame: luma rows `y`, `y + 1` and chroma
/// rows `cy`, `cy + 1` (NV12: `u*` are the UV rows and `v*` unused).
pub struct YuvRows<'a> {
    pub y0: &'a [u8],
    pub y1: &'a [u8],
    pub u0: &'a [u8],
    pub u1: &'a [u8],
    pub v0: &'a [u8],
    pub v1: &'a [u8],
}

/// Per-row weights and per-caps constants of [`yuv_row`].
pub struct YuvWeights<'a> {
    /// Horizontal weights of the second luma / chroma neighbour, per tap.
    pub fx: &'a [f32],
    pub fx_c: &'a [f32],
    /// Vertical weights of the second luma / chroma row.
    pub fy: f32,
    pub fy_c: f32,
    /// `rgb = y * y_mul + y_off + cu[k] * (u - 128) + cv[k] * (v - 128)` per model channel.
    pub y_mul: f32,
    pub y_off: f32,
    pub cu: [f32; 3],
    pub cv: [f32; 3],
    pub mul: [f32; 3],
    pub add: [f32; 3],
}

/// Writes the first `taps.len()` values of each model channel's row of a 4:2:0 frame.
///
/// Panics unless [`available`], the rows hold every tap's 4 bytes and the weights and
/// outputs cover every tap.
#[cfg(target_arch = "x86_64")]
pub fn yuv_row(taps: &YuvTaps, rows: &YuvRows<'_>, w: &YuvWeights<'_>, out: [&mut [f32]; 3]) {
    assert!(available(), "AVX2 and FMA are needed");
    let n = taps.len();
    if n == 0 {
        return;
    }
    // Indices ascend: the last tap bounds every read.
    let (ly, lc) = (taps.luma[n - 1] as usize + 4, taps.chroma[n - 1] as usize + 4);
    assert!(
        ly <= rows.y0.len() && ly <= rows.y1.len(),
        "luma taps past the row"
    );
    assert!(
        lc <= rows.u0.len() && lc <= rows.u1.len(),
        "chroma taps past the row"
    );
    assert!(
        taps.nv12 || (lc <= rows.v0.len() && lc <= rows.v1.len()),
        "chroma taps past the row"
    );
    assert!(w.fx.len() >= n && w.fx_c.len() >= n && out.iter().all(|o| o.len() >= n));
    // SAFETY: AVX2 and FMA are present; every gather reads `index..index + 4` of a row
    // that holds the last (largest) index + 4; weights and outputs hold `n` values.
    unsafe { yuv_row_avx2(taps, rows, w, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn yuv_row_avx2(taps: &YuvTaps, rows: &YuvRows<'_>, w: &YuvWeights<'_>, out: [&mut [f32]; 3]) {
    // SAFETY (whole body): the caller checked the bounds of every read and write.
    unsafe {
        let gather = |row: &[u8], idx: __m256i| _mm256_i32gather_epi32::<1>(row.as_ptr().cast(), idx);
        let ff = _mm256_set1_epi32(0xff);
        let byte = |v: __m256i, k: i32| {
            let s = _mm_cvtsi32_si128(8 * k);
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, s), ff))
        };
        let bilerp = |a: __m256, b: __m256, c: __m256, d: __m256, fx: __m256, fy: __m256| {
            let top = _mm256_fmadd_ps(_mm256_sub_ps(b, a), fx, a);
            let bot = _mm256_fmadd_ps(_mm256_sub_ps(d, c), fx, c);
            _mm256_fmadd_ps(_mm256_sub_ps(bot, top), fy, top)
        };
        let (fy, fy_c) = (_mm256_set1_ps(w.fy), _mm256_set1_ps(w.fy_c));
        let (y_mul, y_off) = (_mm256_set1_ps(w.y_mul), _mm256_set1_ps(w.y_off));
        let c128 = _mm256_set1_ps(128.0);
        let (zero, top_value) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
        let cu = w.cu.map(|v| _mm256_set1_ps(v));
        let cv = w.cv.map(|v| _mm256_set1_ps(v));
        let (mul, add) = (w.mul.map(|v| _mm256_set1_ps(v)), w.add.map(|v| _mm256_set1_ps(v)));
        let [o0, o1, o2] = out;
        let outs = [o0.as_mut_ptr(), o1.as_mut_ptr(), o2.as_mut_ptr()];
        for at in (0..taps.len()).step_by(8) {
            let li = _mm256_loadu_si256(taps.luma.as_ptr().add(at).cast());
            let ci = _mm256_loadu_si256(taps.chroma.as_ptr().add(at).cast());
            let (lt, lb) = (gather(rows.y0, li), gather(rows.y1, li));
            let fx = _mm256_loadu_ps(w.fx.as_ptr().add(at));
            let fx_c = _mm256_loadu_ps(w.fx_c.as_ptr().add(at));
            let y = bilerp(byte(lt, 0), byte(lt, 1), byte(lb, 0), byte(lb, 1), fx, fy);
            let (u, v) = if taps.nv12 {
                // [U V U V] words: U at bytes 0 and 2, V at 1 and 3.
                let (t, b) = (gather(rows.u0, ci), gather(rows.u1, ci));
                (
                    bilerp(byte(t, 0), byte(t, 2), byte(b, 0), byte(b, 2), fx_c, fy_c),
                    bilerp(byte(t, 1), byte(t, 3), byte(b, 1), byte(b, 3), fx_c, fy_c),
                )
            } else {
                let (ut, ub) = (gather(rows.u0, ci), gather(rows.u1, ci));
                let (vt, vb) = (gather(rows.v0, ci), gather(rows.v1, ci));
                (
                    bilerp(byte(ut, 0), byte(ut, 1), byte(ub, 0), byte(ub, 1), fx_c, fy_c),
                    bilerp(byte(vt, 0), byte(vt, 1), byte(vb, 0), byte(vb, 1), fx_c, fy_c),
                )
            };
            let (u, v) = (_mm256_sub_ps(u, c128), _mm256_sub_ps(v, c128));
            let yy = _mm256_fmadd_ps(y, y_mul, y_off);
            for k in 0..3 {
                let c = _mm256_fmadd_ps(cv[k], v, _mm256_fmadd_ps(cu[k], u, yy));
                let c = _mm256_min_ps(_mm256_max_ps(c, zero), top_value);
                _mm256_storeu_ps(outs[k].add(at), _mm256_fmadd_ps(c, mul[k], add[k]));
            }
        }
    }
}

/// Whether this CPU runs [`row`] and [`yuv_row`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Writes the first `taps.len()` values of each model channel's row: `r0`/`r1` are the
/// two source rows, `channels` the byte of each model channel inside a pixel.
///
/// Panics unless [`available`] and the rows hold every tap's 8 bytes.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn row(
    taps: &RowTaps,
    r0: &[u8],
    r1: &[u8],
    fy: f32,
    channels: [usize; 3],
    mul: [f32; 3],
    add: [f32; 3],
    out: [&mut [f32]; 3],
) {
    assert!(available(), "AVX2 and FMA are needed");
    let n = taps.len();
    if n == 0 {
        return;
    }
    // Offsets ascend: the last one bounds every read.
    let last = taps.offsets[n - 1] + 8;
    assert!(last <= r0.len() && last <= r1.len(), "taps past the row");
    assert!(out.iter().all(|o| o.len() >= n) && channels.iter().all(|&c| c < 4));
    // SAFETY: the CPU has AVX2 and FMA (checked above); every read is `offset..offset + 8`
    // with `offset + 8 <= last <= len` for both rows, every write is below `n` in rows
    // of at least `n` values.
    unsafe { row_avx2(taps, r0.as_ptr(), r1.as_ptr(), fy, channels, mul, add, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_avx2(
    taps: &RowTaps,
    r0: *const u8,
    r1: *const u8,
    fy: f32,
    channels: [usize; 3],
    mul: [f32; 3],
    add: [f32; 3],
    out: [&mut [f32]; 3],
) {
    // SAFETY (whole body): the caller checked the bounds of every read and write.
    unsafe {
        let fy = _mm256_set1_ps(fy);
        // Both pixels of a pair, vertically blended: [p0 RGBA | p1 RGBA].
        let pair = |o: usize| {
            let t = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(r0.add(o).cast())));
            let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(r1.add(o).cast())));
            _mm256_fmadd_ps(_mm256_sub_ps(b, t), fy, t)
        };
        let (m, a) = (mul.map(|v| _mm256_set1_ps(v)), add.map(|v| _mm256_set1_ps(v)));
        let [o0, o1, o2] = out;
        let (o0, o1, o2) = (o0.as_mut_ptr(), o1.as_mut_ptr(), o2.as_mut_ptr());
        for (g, (offs, fx)) in taps
            .offsets
            .chunks_exact(8)
            .zip(taps.fx.chunks_exact(4))
            .enumerate()
        {
            // v[m] = [tap m RGBA | tap m+4 RGBA], horizontally blended.
            let v: [__m256; 4] = std::array::from_fn(|m| {
                let (p, q) = (pair(offs[m]), pair(offs[m + 4]));
                let first = _mm256_permute2f128_ps::<0x20>(p, q); // [p0 of m | p0 of m+4]
                let second = _mm256_permute2f128_ps::<0x31>(p, q); // [p1 of m | p1 of m+4]
                let w = _mm256_loadu_ps(fx[m].as_ptr());
                _mm256_fmadd_ps(_mm256_sub_ps(second, first), w, first)
            });
            // 4x4 transpose inside each 128-bit lane: c[k] = byte k of taps 0..8, in order.
            let t0 = _mm256_unpacklo_ps(v[0], v[1]);
            let t1 = _mm256_unpackhi_ps(v[0], v[1]);
            let t2 = _mm256_unpacklo_ps(v[2], v[3]);
            let t3 = _mm256_unpackhi_ps(v[2], v[3]);
            let c = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            let at = g * 8;
            _mm256_storeu_ps(o0.add(at), _mm256_fmadd_ps(c[channels[0]], m[0], a[0]));
            _mm256_storeu_ps(o1.add(at), _mm256_fmadd_ps(c[channels[1]], m[1], a[1]));
            _mm256_storeu_ps(o2.add(at), _mm256_fmadd_ps(c[channels[2]], m[2], a[2]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_eight_inside_the_row() {
        // 40 pixels (160 bytes); taps every 2 pixels from 0: the tap at pixel 38 reads
        // bytes 152..160 (inside), so 20 taps are inside and 16 are whole groups.
        let xs: Vec<usize> = (0..20).map(|i| i * 2).collect();
        let fx: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
        let t = RowTaps::new(&xs, &fx, 160);
        assert_eq!(t.len(), 16);
        assert_eq!(t.fx[0], [0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.2]);
        assert_eq!(t.fx[7], [0.55, 0.55, 0.55, 0.55, 0.75, 0.75, 0.75, 0.75]);
        // One byte less and the last tap reads past the row: still 16 (19 inside).
        assert_eq!(RowTaps::new(&xs, &fx, 159).len(), 16);
        assert_eq!(RowTaps::new(&xs[..7], &fx[..7], 160).len(), 0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn row_matches_scalar_bilinear() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2/FMA");
            return;
        }
        let w = 101;
        let r0: Vec<u8> = (0..w * 4).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        let r1: Vec<u8> = (0..w * 4).map(|i| ((i * 91 + 5) % 256) as u8).collect();
        let xs: Vec<usize> = (0..40).map(|i| (i * 5) / 2).collect();
        let fx: Vec<f32> = (0..40).map(|i| ((i * 7) % 10) as f32 / 10.0).collect();
        let taps = RowTaps::new(&xs, &fx, w * 4);
        assert_eq!(taps.len(), 40);
        let (fy, channels) = (0.3, [2, 0, 3]);
        let (mul, add) = ([0.5, 2.0, -1.0], [1.0, -3.0, 0.25]);
        let mut out = [vec![0.0; 40], vec![0.0; 40], vec![0.0; 40]];
        let [a, b, c] = &mut out;
        row(&taps, &r0, &r1, fy, channels, mul, add, [a, b, c]);
        for (i, (&x, &f)) in xs.iter().zip(&fx).enumerate() {
            for k in 0..3 {
                let p = |r: &[u8], dx: usize| r[(x + dx) * 4 + channels[k]] as f32;
                let top = p(&r0, 0) + (p(&r0, 1) - p(&r0, 0)) * f;
                let bot = p(&r1, 0) + (p(&r1, 1) - p(&r1, 0)) * f;
                let want = (top + (bot - top) * fy) * mul[k] + add[k];
                assert!(
                    (out[k][i] - want).abs() < 1e-3,
                    "tap {i} channel {k}: {} vs {want}",
                    out[k][i]
                );
            }
        }
    }
}
