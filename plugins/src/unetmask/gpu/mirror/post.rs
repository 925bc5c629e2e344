// SPDX-License-Identifier: MPL-2.0

//! The GPU post-processing kernel (`kernels/postprocess.cu`, compiled at run time by NVRTC)
//! and its CPU mirror: network output -> smoothed probability -> 8-bit mask and counts, at
//! the model's resolution. [`reference`] runs the kernel's steps on the CPU, one iteration
//! per GPU thread; the tests hold it to the element's CPU path (`postprocess.rs`).

use crate::unetmask::cpu::postprocess::MaskStats;
use crate::unetmask::gpu::params::{PostParams, stats_of};
use crate::unetmask::model::contract::{Activation, OutputLayout, OutputSpec};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// What one GPU thread computes for model pixel `i`: the probability after smoothing
/// (updating `state[i]`).
fn thread(p: &PostParams, out: &[f32], state: &mut [f32], i: usize) -> f32 {
    let (n, c) = (p.pixels as usize, p.channels as usize);
    let at = |k: usize| {
        if p.channels_last != 0 {
            out[i * c + k]
        } else {
            out[k * n + i]
        }
    };
    let person = p.person as usize;
    let mut prob = match (p.activation, c) {
        (1, _) => sigmoid(at(person)),
        (2, 2) => sigmoid(at(person) - at(1 - person)),
        (2, _) => {
            let m = (0..c).map(at).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..c).map(|k| (at(k) - m).exp()).sum();
            (at(person) - m).exp() / sum
        }
        _ => at(person).clamp(0.0, 1.0),
    };
    if p.smoothing > 0.0 {
        if p.has_state != 0 {
            prob = p.smoothing * state[i] + (1.0 - p.smoothing) * prob;
        }
        state[i] = prob;
    }
    prob
}

/// The kernel on the CPU: `mask` and `state` written as the kernel writes them; the counts
/// the kernel accumulates atomically, as [`MaskStats`].
pub fn reference(p: &PostParams, out: &[f32], state: &mut [f32], mask: &mut [u8]) -> MaskStats {
    let n = p.pixels as usize;
    assert_eq!(out.len(), n * p.channels as usize, "output tensor size");
    assert!(
        state.len() >= n && mask.len() >= n,
        "state and mask hold every pixel"
    );
    let (mut person, mut uncertain) = (0u32, 0u32);
    for (i, m) in mask[..n].iter_mut().enumerate() {
        let prob = thread(p, out, state, i);
        *m = (prob * 255.0 + 0.5) as u8;
        person += (prob > p.threshold) as u32;
        uncertain += (prob >= p.band_lo && prob <= p.band_hi) as u32;
    }
    stats_of([person, uncertain], n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unetmask::cpu::postprocess::{Smoother, person_probability, quantize};
    use crate::unetmask::gpu::params::*;

    fn logits(n: usize, seed: u32) -> Vec<f32> {
        let mut next = crate::unetmask::test_bytes::stream(seed);
        (0..n)
            .map(|_| (next() >> 8) as f32 / (1u32 << 24) as f32 * 16.0 - 8.0)
            .collect()
    }

    #[test]
    fn params_match_the_kernel_struct() {
        assert_eq!(std::mem::size_of::<PostParams>(), 10 * 4);
        assert!(POSTPROCESS_CU.contains(&format!("__global__ void {POSTPROCESS_FN}(PostParams p")));
    }

    /// Two frames through the kernel's steps (run on the CPU) and through the element's CPU
    /// path (activation, smoothing, quantisation): masks within one level, the same counts
    /// but for values within a hair of a boundary, for every activation and layout.
    #[test]
    fn kernel_steps_match_the_cpu_path() {
        let pixels = 37 * 23;
        let specs = [
            (OutputLayout::ChannelsFirst, 1, 0, Activation::Sigmoid),
            (OutputLayout::ChannelsLast, 1, 0, Activation::Sigmoid),
            (OutputLayout::ChannelsFirst, 2, 1, Activation::Softmax),
            (OutputLayout::ChannelsLast, 2, 0, Activation::Softmax),
            (OutputLayout::ChannelsFirst, 21, 15, Activation::Softmax),
            (OutputLayout::ChannelsLast, 3, 2, Activation::Softmax),
            (OutputLayout::ChannelsFirst, 1, 0, Activation::None),
        ];
        for (s, (layout, channels, person, activation)) in specs.into_iter().enumerate() {
            let spec = OutputSpec {
                layout,
                channels,
                person,
                activation,
            };
            for (smoothing, threshold) in [(0.0, None), (0.6, Some(0.4))] {
                let mut smoother = Smoother::default();
                let mut state = vec![f32::NAN; pixels];
                for frame in 0..2u32 {
                    let mut out = logits(pixels * channels, 31 * s as u32 + frame + 1);
                    if channels > 3 {
                        // Many classes: lift the person's logit so that it wins about half the time.
                        for i in 0..pixels {
                            let k = if layout == OutputLayout::ChannelsLast {
                                i * channels + person
                            } else {
                                person * pixels + i
                            };
                            out[k] += 3.0;
                        }
                    }
                    if activation == Activation::None {
                        out.iter_mut().for_each(|v| *v = (*v + 8.0) / 14.0); // some outside [0, 1]
                    }
                    let mut prob = vec![0f32; pixels];
                    person_probability(&out, &spec, &mut prob);
                    smoother.apply(&mut prob, smoothing);
                    let mut want = vec![0u8; pixels];
                    let want_stats = quantize(&prob, threshold, &mut want);

                    let p = PostParams::new(&spec, pixels, smoothing, frame > 0, threshold);
                    let mut got = vec![0u8; pixels];
                    let got_stats = reference(&p, &out, &mut state, &mut got);
                    let worst = want.iter().zip(&got).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
                    let what = format!("{spec:?} smoothing {smoothing} frame {frame}");
                    assert!(worst <= 1, "{what}: masks differ by {worst} levels");
                    let tol = 2.0 / pixels as f32;
                    assert!(
                        (want_stats.coverage - got_stats.coverage).abs() <= tol,
                        "{what}: coverage"
                    );
                    assert!(
                        (want_stats.uncertain - got_stats.uncertain).abs() <= tol,
                        "{what}: uncertain"
                    );
                    assert!(
                        want_stats.coverage > 0.05 && want_stats.coverage < 0.95,
                        "{what}: a mixed map"
                    );
                }
            }
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn kernel_compiles_with_nvrtc() {
        crate::unetmask::gpu::mirror::pre::tests::nvrtc_compiles(POSTPROCESS_CU, POSTPROCESS_FN);
    }
}
