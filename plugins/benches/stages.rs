//! The element's CPU stages one by one, without ONNX Runtime: where the time of a frame goes.
//!
//! `cargo bench -p gst-plugin-unetmask --bench stages` prints, per frame size and format,
//! the median time of each stage next to one `memcpy` of the frame (the memory-bandwidth
//! yardstick). Synthetic frames and a synthetic 256x256 mask (a person-shaped ellipse);
//! every stage works on the same buffers each run, as the element does per caps.
//! "lines" reads one word per cache line of the source rows that bilinear sampling needs:
//! the floor of the "bilinear" column, set by memory, not arithmetic.
//! Knobs: BENCH_SIZES (default "1280x720,1920x1080,3840x2160"), BENCH_RUNS (default 30).

use std::time::{Duration, Instant};

use gstunetmask::unetmask::cpu::composite::{self, BlurPlane, MaskScaler, Scratch, Target};
use gstunetmask::unetmask::cpu::postprocess;
use gstunetmask::unetmask::cpu::preprocess::{ResizeFilter, TensorBuilder};
use gstunetmask::unetmask::frame::FrameSpec;
use gstunetmask::unetmask::frame::{Frame, PixelFormat, YuvMatrix, chroma_size};
use gstunetmask::unetmask::model::contract::OutputSpec;
use gstunetmask::unetmask::model::contract::{Activation, Layout, OutputLayout};
use gstunetmask::unetmask::model::contract::{ChannelOrder, Normalization, TensorSpec};

const MODEL: (usize, usize) = (256, 256);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// A frame with some texture: every byte differs from its neighbours.
fn planes(format: PixelFormat, w: usize, h: usize) -> (Vec<Vec<u8>>, [usize; 3]) {
    let fill = |n: usize, seed: usize| -> Vec<u8> { (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect() };
    let (cw, ch) = chroma_size(w, h);
    match format.packed_rgb() {
        Some((_, bpp)) => (vec![fill(w * h * bpp, 1)], [w * bpp, 0, 0]),
        None if format == PixelFormat::Nv12 => (vec![fill(w * h, 1), fill(cw * ch * 2, 2)], [w, cw * 2, 0]),
        None => (
            vec![fill(w * h, 1), fill(cw * ch, 2), fill(cw * ch, 3)],
            [w, cw, cw],
        ),
    }
}

fn frame<'a>(format: PixelFormat, w: usize, h: usize, p: &'a [Vec<u8>], strides: [usize; 3]) -> Frame<'a> {
    let mut planes: [&[u8]; 3] = [&[]; 3];
    for (i, d) in p.iter().enumerate() {
        planes[i] = d;
    }
    Frame {
        format,
        width: w,
        height: h,
        planes,
        strides,
    }
}

/// A soft person-shaped mask: an ellipse in the middle with a soft edge.
fn person_mask() -> Vec<u8> {
    let (mw, mh) = MODEL;
    (0..mh)
        .flat_map(|y| {
            (0..mw).map(move |x| {
                let dx = (x as f32 - mw as f32 / 2.0) / (mw as f32 * 0.25);
                let dy = (y as f32 - mh as f32 * 0.6) / (mh as f32 * 0.45);
                let d = (dx * dx + dy * dy).sqrt();
                ((1.2 - d) * 5.0).clamp(0.0, 1.0).mul_add(255.0, 0.0) as u8
            })
        })
        .collect()
}

/// The memory floor of bilinear sampling: one read per cache line of the two source rows
/// of every tensor row, in every plane (the lines bilinear taps touch when a line holds
/// fewer pixels than the horizontal step, as at 1080p and above).
fn touch_lines(planes: &[Vec<u8>], strides: [usize; 3], h: usize) -> u64 {
    let mut acc = 0u64;
    for (p, (data, &stride)) in planes.iter().zip(&strides).enumerate() {
        let rows = if p == 0 { h } else { h.div_ceil(2) };
        for oy in 0..MODEL.1 {
            let y = (oy * rows / MODEL.1).min(rows - 2);
            for line in data[y * stride..(y + 2) * stride].chunks(64) {
                acc = acc.wrapping_add(line[0] as u64);
            }
        }
    }
    acc
}

fn main() {
    let runs: usize = env_or("BENCH_RUNS", "30").parse().unwrap();
    let sizes: Vec<(usize, usize)> = env_or("BENCH_SIZES", "1280x720,1920x1080,3840x2160")
        .split(',')
        .map(|s| {
            let (w, h) = s.split_once('x').unwrap();
            (w.parse().unwrap(), h.parse().unwrap())
        })
        .collect();
    let mask = person_mask();
    let logits: Vec<f32> = mask.iter().map(|&m| (m as f32 - 127.5) / 20.0).collect();
    println!(
        "medians of {runs} runs, ms per frame; model input and mask {}x{}",
        MODEL.0, MODEL.1
    );
    println!(
        "| {:>9} | {:<5} | {:>6} | {:>6} | {:>9} | {:>9} | {:>6} | {:>6} | {:>6} | {:>7} | {:>6} | {:>7} | {:>6} |",
        "frame",
        "fmt",
        "memcpy",
        "lines",
        "bilinear",
        "antialias",
        "post",
        "mask",
        "alpha",
        "overlay",
        "blur",
        "replace",
        "meta*"
    );
    println!(
        "|{:-<11}|{:-<7}|{:-<8}|{:-<8}|{:-<11}|{:-<11}|{:-<8}|{:-<8}|{:-<8}|{:-<9}|{:-<8}|{:-<9}|{:-<8}|",
        "", "", "", "", "", "", "", "", "", "", "", "", ""
    );
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    for &(w, h) in &sizes {
        for format in [PixelFormat::Rgba, PixelFormat::Nv12] {
            let (src, strides) = planes(format, w, h);
            let total: usize = src.iter().map(Vec::len).sum();
            let mut copy = vec![0u8; total];
            let flat: Vec<u8> = src.concat();
            let memcpy = median(runs, || copy.copy_from_slice(std::hint::black_box(&flat)));
            let lines = median(runs, || {
                std::hint::black_box(touch_lines(&src, strides, h));
            });
            let f = frame(format, w, h, &src, strides);
            let mut tensor = vec![0f32; MODEL.0 * MODEL.1 * 3];
            let mut tb = |filter| {
                let mut b = TensorBuilder::new(
                    filter,
                    &FrameSpec {
                        format,
                        width: w,
                        height: h,
                        matrix: YuvMatrix::BT709,
                    },
                    &TensorSpec {
                        size: MODEL,
                        layout: Layout::Nchw,
                        order: ChannelOrder::Rgb,
                        norm: Normalization::default(),
                    },
                );
                median(runs, || b.run(&f, &mut tensor))
            };
            let bilinear = tb(ResizeFilter::Bilinear);
            let antialias = tb(ResizeFilter::Antialias);
            let spec = OutputSpec {
                layout: OutputLayout::ChannelsFirst,
                channels: 1,
                person: 0,
                activation: Activation::Sigmoid,
            };
            let mut prob = vec![0f32; MODEL.0 * MODEL.1];
            let mut mask_u8 = vec![0u8; prob.len()];
            let post = median(runs, || {
                postprocess::person_probability(&logits, &spec, &mut prob);
                postprocess::quantize(&prob, None, &mut mask_u8);
            });

            let geoms = composite::planes_of(format, w, h);
            let mut scalers: Vec<MaskScaler> = vec![MaskScaler::new(MODEL, (w, h))];
            if let Some(c) = geoms.iter().find(|g| g.chroma) {
                scalers.push(MaskScaler::new(MODEL, (c.width, c.height)));
            }
            let lut = composite::Weights::mask(None);
            let mut scratch = Scratch::default();
            let mut out = vec![0u8; w * h * 4];
            let mask_mode = median(runs, || {
                composite::write_mask(&mut out, w, h, &mut scalers[0], &mask, &lut)
            });
            let alpha = median(runs, || {
                composite::write_alpha(
                    &f,
                    YuvMatrix::BT709,
                    &mut out,
                    w * 4,
                    &mut scalers[0],
                    &mask,
                    &lut,
                    &mut scratch,
                )
            });
            let mut work = src.clone();
            let colors = composite::plane_colors(format, YuvMatrix::BT709, [255, 255, 0]);
            let overlay_w = lut.scaled(128);
            let overlay = median(runs, || {
                for (p, g) in geoms.iter().enumerate() {
                    let s = &mut scalers[g.chroma as usize];
                    let t = Target::Color(&colors[p]);
                    composite::mix_plane(&mut work[p], strides[p], g, s, &mask, &overlay_w, t, &mut scratch);
                }
            });
            let bg_w = lut.inverted();
            let replace_img = src.clone();
            let replace = median(runs, || {
                for (p, g) in geoms.iter().enumerate() {
                    let s = &mut scalers[g.chroma as usize];
                    let t = Target::Plane {
                        data: &replace_img[p],
                        stride: strides[p],
                    };
                    composite::mix_plane(&mut work[p], strides[p], g, s, &mask, &bg_w, t, &mut scratch);
                }
            });
            let mut blurs: Vec<BlurPlane> = geoms.iter().map(|_| BlurPlane::default()).collect();
            let blur = median(runs, || {
                for (p, g) in geoms.iter().enumerate() {
                    let s = &mut scalers[g.chroma as usize];
                    blurs[p].compute(&work[p], strides[p], g, s, &mask, &lut, 21);
                    let t = Target::Blurred(&blurs[p]);
                    composite::mix_plane(&mut work[p], strides[p], g, s, &mask, &bg_w, t, &mut scratch);
                }
            });
            println!(
                "| {:>9} | {:<5} | {:>6} | {:>6} | {:>9} | {:>9} | {:>6} | {:>6} | {:>6} | {:>7} | {:>6} | {:>7} | {:>6} |",
                format!("{w}x{h}"),
                format!("{format:?}"),
                ms(memcpy),
                ms(lines),
                ms(bilinear),
                ms(antialias),
                ms(post),
                ms(mask_mode),
                ms(alpha),
                ms(overlay),
                ms(blur),
                ms(replace),
                ms(antialias + post),
            );
        }
    }
    println!(
        "lines = one read per cache line of the two source rows per tensor row: the memory floor of bilinear"
    );
    println!("meta* = antialias + post: the element's own work per frame in meta mode (default resize)");
}
