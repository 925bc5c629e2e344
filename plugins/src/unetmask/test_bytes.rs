// SPDX-License-Identifier: MPL-2.0

//! Reproducible pseudo-random test data (xorshift32) and frames made of it, for the kernel
//! mirror tests.

use super::frame::{Frame, PixelFormat, chroma_size};

/// A xorshift32 stream from `seed`.
pub fn stream(seed: u32) -> impl FnMut() -> u32 {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    }
}

/// `n` bytes from `seed`.
pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut next = stream(seed);
    (0..n).map(|_| (next() >> 24) as u8).collect()
}

/// The planes of a `w` x `h` frame of `format` filled from `seed`, each row padded by `pad`
/// bytes, and their strides.
pub fn frame_planes(
    format: PixelFormat,
    w: usize,
    h: usize,
    pad: usize,
    seed: u32,
) -> (Vec<Vec<u8>>, [usize; 3]) {
    let mut k = 0;
    let mut bytes = |n: usize| {
        k += 1;
        self::bytes(n, seed * 8 + k)
    };
    let (cw, ch) = chroma_size(w, h);
    match format.packed_rgb() {
        Some((_, bpp)) => {
            let s = w * bpp + pad;
            (vec![bytes(s * h)], [s, 0, 0])
        }
        None if format == PixelFormat::Nv12 => {
            let (s0, s1) = (w + pad, cw * 2 + pad);
            (vec![bytes(s0 * h), bytes(s1 * ch)], [s0, s1, 0])
        }
        None => {
            let (s0, s1) = (w + pad, cw + pad);
            (vec![bytes(s0 * h), bytes(s1 * ch), bytes(s1 * ch)], [s0, s1, s1])
        }
    }
}

/// A frame over `planes` (from [`frame_planes`]).
pub fn frame<'a>(
    format: PixelFormat,
    w: usize,
    h: usize,
    planes: &'a [Vec<u8>],
    strides: [usize; 3],
) -> Frame<'a> {
    let mut p: [&[u8]; 3] = [&[]; 3];
    for (k, d) in planes.iter().enumerate() {
        p[k] = d;
    }
    Frame {
        format,
        width: w,
        height: h,
        planes: p,
        strides,
    }
}
