//! Network output -> person probability map at the model's resolution: activation,
//! person channel, temporal smoothing, 8-bit quantisation and per-frame statistics.

use multiversion::multiversion;

use crate::unetmask::model::contract::{Activation, OutputLayout, OutputSpec};

/// `e^x`, branch-free so that loops over slices vectorise (libm's `expf` is a call per
/// value). Range reduction `x = n ln2 + r` and Cephes' degree-6 polynomial for `e^r`:
/// relative error below 3e-7 over the clamped range, far finer than the 8-bit mask.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer that sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((ni + 127) << 23) as u32)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

/// Writes the person probability of every output pixel into `prob`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+sse4.1"
))]
pub fn person_probability(out: &[f32], spec: &OutputSpec, prob: &mut [f32]) {
    let pixels = prob.len();
    let c = spec.channels;
    assert_eq!(
        out.len(),
        pixels * c,
        "output tensor does not hold {c} channels of {pixels} pixels"
    );
    let at = |i: usize, k: usize| match spec.layout {
        OutputLayout::ChannelsLast => out[i * c + k],
        OutputLayout::ChannelsFirst => out[k * pixels + i],
    };
    match (spec.activation, c) {
        (Activation::Sigmoid, 1) => {
            // The common case (one logit channel): a straight vectorised map.
            for (p, &x) in prob.iter_mut().zip(out) {
                *p = sigmoid(x);
            }
        }
        (Activation::Sigmoid, _) => {
            for (i, p) in prob.iter_mut().enumerate() {
                *p = sigmoid(at(i, spec.person));
            }
        }
        (Activation::None, _) => {
            for (i, p) in prob.iter_mut().enumerate() {
                *p = at(i, spec.person).clamp(0.0, 1.0);
            }
        }
        (Activation::Softmax, 2) => {
            // softmax over two classes is the sigmoid of their difference.
            let other = 1 - spec.person;
            for (i, p) in prob.iter_mut().enumerate() {
                *p = sigmoid(at(i, spec.person) - at(i, other));
            }
        }
        (Activation::Softmax, _) => {
            for (i, p) in prob.iter_mut().enumerate() {
                let max = (0..c).map(|k| at(i, k)).fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..c).map(|k| (at(i, k) - max).exp()).sum();
                *p = (at(i, spec.person) - max).exp() / sum;
            }
        }
    }
}

/// Temporal exponential average of the probability map against flicker.
#[derive(Debug, Default)]
pub struct Smoother {
    state: Vec<f32>,
}

impl Smoother {
    /// `prob = weight * previous + (1 - weight) * prob`; the first frame after a reset passes as it is.
    pub fn apply(&mut self, prob: &mut [f32], weight: f32) {
        if weight <= 0.0 {
            return;
        }
        if self.state.len() != prob.len() {
            self.state.clear();
            self.state.extend_from_slice(prob);
            return;
        }
        for (s, p) in self.state.iter_mut().zip(prob.iter_mut()) {
            *s = weight * *s + (1.0 - weight) * *p;
            *p = *s;
        }
    }

    /// Forgets the history (discontinuity, flush, new caps).
    pub fn reset(&mut self) {
        self.state.clear();
    }
}

/// Share of the frame that is person and share that is uncertain.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MaskStats {
    /// Fraction of pixels with probability above the threshold (0.5 for a soft mask).
    pub coverage: f32,
    /// Fraction of pixels with probability inside the uncertainty band.
    pub uncertain: f32,
}

/// Probability band counted as "uncertain" in [`MaskStats`].
pub const UNCERTAIN_BAND: (f32, f32) = (0.25, 0.75);

/// Quantises probabilities to 0..=255 and measures coverage and uncertainty.
pub fn quantize(prob: &[f32], threshold: Option<f32>, out: &mut [u8]) -> MaskStats {
    assert_eq!(prob.len(), out.len());
    let (person, uncertain) = quantize_count(prob, threshold.unwrap_or(0.5), out);
    let n = prob.len().max(1) as f32;
    MaskStats {
        coverage: person as f32 / n,
        uncertain: uncertain as f32 / n,
    }
}

/// `p` in [0, 1] to 0..=255, rounding half up (clamped; NaN gives 0).
#[inline(always)]
#[allow(clippy::manual_clamp)] // `clamp` passes NaN through; `max`/`min` turn it into 0.
pub fn unit_to_byte(p: f32) -> u8 {
    let v = (p * 255.0 + 0.5).max(0.0).min(255.0);
    // SAFETY: `v` is finite and within [0, 255]: `max`/`min` return the non-NaN operand.
    // The unchecked conversion is what lets the loops around it vectorise (a saturating
    // `as` is scalarised for its NaN handling).
    unsafe { v.to_int_unchecked::<i32>() as u8 }
}

/// The loop of [`quantize`]: 32-bit lanes throughout (the float-to-byte conversion goes
/// through `i32`, the counts are `u32` per block), so it vectorises 8 wide.
#[multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
fn quantize_count(prob: &[f32], thr: f32, out: &mut [u8]) -> (u64, u64) {
    let (mut person, mut uncertain) = (0u64, 0u64);
    for (o, p) in out.chunks_mut(1 << 16).zip(prob.chunks(1 << 16)) {
        let (mut pc, mut uc) = (0u32, 0u32);
        for (o, &p) in o.iter_mut().zip(p) {
            *o = unit_to_byte(p);
            pc += (p > thr) as u32;
            uc += ((p >= UNCERTAIN_BAND.0) & (p <= UNCERTAIN_BAND.1)) as u32;
        }
        person += pc as u64;
        uncertain += uc as u64;
    }
    (person, uncertain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_is_accurate_over_the_range() {
        let mut worst = 0f32;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0;
            let (a, b) = (exp_approx(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp_approx(-1000.0), (-87f32).exp().max(exp_approx(-87.0)));
        assert!(sigmoid(-200.0) < 1e-30 && sigmoid(200.0) == 1.0);
    }

    #[test]
    fn sigmoid_logits_channels_first() {
        let spec = OutputSpec {
            layout: OutputLayout::ChannelsFirst,
            channels: 1,
            person: 0,
            activation: Activation::Sigmoid,
        };
        let mut p = [0.0; 3];
        person_probability(&[0.0, 10.0, -10.0], &spec, &mut p);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[1] > 0.999 && p[2] < 0.001);
    }

    #[test]
    fn two_class_softmax_channels_last_matches_full_softmax() {
        let logits = [1.0, 3.0, 2.0, -1.0]; // pixel 0: (1,3), pixel 1: (2,-1)
        let mut two = [0.0; 2];
        let spec = OutputSpec {
            layout: OutputLayout::ChannelsLast,
            channels: 2,
            person: 1,
            activation: Activation::Softmax,
        };
        person_probability(&logits, &spec, &mut two);
        let e = |a: f32, b: f32| b.exp() / (a.exp() + b.exp());
        assert!((two[0] - e(1.0, 3.0)).abs() < 1e-6 && (two[1] - e(2.0, -1.0)).abs() < 1e-6);
        // Three classes, channels first, person = 2.
        let logits = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        let spec = OutputSpec {
            layout: OutputLayout::ChannelsFirst,
            channels: 3,
            person: 2,
            activation: Activation::Softmax,
        };
        person_probability(&logits, &spec, &mut two);
        assert!((two[0] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn probabilities_are_clamped() {
        let spec = OutputSpec {
            layout: OutputLayout::ChannelsLast,
            channels: 1,
            person: 0,
            activation: Activation::None,
        };
        let mut p = [0.0; 2];
        person_probability(&[1.2, -0.1], &spec, &mut p);
        assert_eq!(p, [1.0, 0.0]);
    }

    #[test]
    fn smoothing_is_an_exponential_average_and_resets() {
        let mut s = Smoother::default();
        let mut a = [1.0, 0.0];
        s.apply(&mut a, 0.75);
        assert_eq!(a, [1.0, 0.0]);
        let mut b = [0.0, 1.0];
        s.apply(&mut b, 0.75);
        assert_eq!(b, [0.75, 0.25]);
        s.reset();
        let mut c = [0.0, 1.0];
        s.apply(&mut c, 0.75);
        assert_eq!(c, [0.0, 1.0]);
    }

    #[test]
    fn quantize_counts() {
        let mut out = [0u8; 4];
        let st = quantize(&[0.0, 0.3, 0.6, 1.0], None, &mut out);
        assert_eq!(out, [0, 77, 153, 255]);
        assert_eq!(
            st,
            MaskStats {
                coverage: 0.5,
                uncertain: 0.5
            }
        );
        let st = quantize(&[0.0, 0.3, 0.6, 1.0], Some(0.9), &mut out);
        assert_eq!(st.coverage, 0.25);
    }

    #[test]
    fn bytes_round_half_up_and_clamp_what_is_out_of_range() {
        assert_eq!(unit_to_byte(0.5), 128);
        assert_eq!(unit_to_byte(0.3), 77);
        assert_eq!(unit_to_byte(-3.0), 0);
        assert_eq!(unit_to_byte(7.0), 255);
        assert_eq!(unit_to_byte(f32::NAN), 0);
        assert_eq!(unit_to_byte(f32::INFINITY), 255);
        assert_eq!(unit_to_byte(f32::NEG_INFINITY), 0);
        // Long runs take the vectorised loop, with the same answers.
        let prob: Vec<f32> = (0..1000).map(|i| i as f32 / 999.0).collect();
        let mut out = vec![0u8; prob.len()];
        quantize(&prob, None, &mut out);
        for (&p, &o) in prob.iter().zip(&out) {
            assert_eq!(o, (p * 255.0 + 0.5).floor() as u8, "{p}");
        }
    }
}
