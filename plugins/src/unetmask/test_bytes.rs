// SPDX-License-Identifier: MPL-2.0

//! Reproducible pseudo-random test data (xorshift32), for the kernel mirror tests.

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
