//! Would running the model on its own thread, while the streaming thread prepares the next
//! frame, hide the pre-processing? Measured side by side on the same engine and thread
//! count: inference alone, pre-processing then inference in turn (what the element does),
//! and the two on two threads at once (a one-frame pipeline).
//!
//! `cargo bench -p gst-plugin-unetmask --bench overlap`. Knobs: BENCH_FRAMES (default 200),
//! BENCH_THREADS (ONNX Runtime intra-op threads, default 2), BENCH_SIZE (default 1920x1080).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gstunetmask::unetmask::cpu::preprocess::{ResizeFilter, TensorBuilder};
use gstunetmask::unetmask::frame::FrameSpec;
use gstunetmask::unetmask::frame::{Frame, PixelFormat, YuvMatrix};
use gstunetmask::unetmask::model::contract::Layout;
use gstunetmask::unetmask::model::contract::{ChannelOrder, Normalization, TensorSpec};
use gstunetmask::unetmask::model::engine::{DeviceRequest, Engine, EngineConfig, Spin};

fn shared() -> PathBuf {
    std::env::var_os("EDGEMASK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn main() {
    let frames: usize = std::env::var("BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let threads: u32 = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = std::env::var("BENCH_SIZE").unwrap_or_else(|_| "1920x1080".into());
    let (w, h) = size
        .split_once('x')
        .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
        .unwrap();
    let cfg = EngineConfig {
        model: shared().join("models/selfie_segmentation_256x256.onnx"),
        device: DeviceRequest::Cpu,
        threads,
        spin: Spin::default(),
        ..Default::default()
    };
    let mut engine = Engine::open(&cfg).expect("open model");
    let msize = engine.input_size_for((w as u32, h as u32));
    engine.prepare(msize).unwrap();
    let model = (msize.0 as usize, msize.1 as usize);
    let pixels: Vec<u8> = (0..w * h * 4).map(|i| ((i * 7 + 1) % 251) as u8).collect();
    let frame = Frame {
        format: PixelFormat::Rgba,
        width: w,
        height: h,
        planes: [&pixels, &[], &[]],
        strides: [w * 4, 0, 0],
    };
    let builder = |filter| {
        TensorBuilder::new(
            filter,
            &FrameSpec {
                format: PixelFormat::Rgba,
                width: w,
                height: h,
                matrix: YuvMatrix::BT709,
            },
            &TensorSpec {
                size: model,
                layout: Layout::Nchw,
                order: ChannelOrder::Rgb,
                norm: Normalization::default(),
            },
        )
    };
    let mut input = vec![0f32; model.0 * model.1 * 3];
    let infer = |engine: &mut Engine, input: &[f32]| {
        engine.run(input, msize, |_, d| d[0]).unwrap();
    };
    println!(
        "{w}x{h} RGBA, model {}x{}, threads={threads}, {frames} frames per measure, rounds interleaved",
        model.0, model.1
    );
    println!(
        "| filter | infer alone ms | pre alone ms | in turn ms | ratio in turn | two threads ms | ratio two threads |"
    );
    println!("|---|---|---|---|---|---|---|");
    for filter in [ResizeFilter::Bilinear, ResizeFilter::Antialias] {
        let mut tb = builder(filter);
        let mut rows: Vec<[f64; 4]> = Vec::new();
        for _ in 0..3 {
            let per = |d: Duration| d.as_secs_f64() * 1e3 / frames as f64;
            let t = Instant::now();
            for _ in 0..frames {
                infer(&mut engine, &input);
            }
            let alone = per(t.elapsed());
            let t = Instant::now();
            for _ in 0..frames {
                tb.run(&frame, &mut input);
            }
            let pre = per(t.elapsed());
            let t = Instant::now();
            for _ in 0..frames {
                tb.run(&frame, &mut input);
                infer(&mut engine, &input);
            }
            let turn = per(t.elapsed());
            // Two threads: frame n+1 is prepared while frame n is inferred (double buffer).
            let mut next = vec![0f32; input.len()];
            let t = Instant::now();
            for _ in 0..frames {
                std::thread::scope(|s| {
                    let (e, cur) = (&mut engine, &input);
                    let h = s.spawn(move || infer(e, cur));
                    tb.run(&frame, &mut next);
                    h.join().unwrap();
                });
                std::mem::swap(&mut input, &mut next);
            }
            let two = per(t.elapsed());
            rows.push([alone, pre, turn, two]);
        }
        let med = |i: usize| {
            let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (alone, pre, turn, two) = (med(0), med(1), med(2), med(3));
        println!(
            "| {filter:?} | {alone:.3} | {pre:.3} | {turn:.3} | {:.3} | {two:.3} | {:.3} |",
            alone / turn,
            alone / two
        );
    }
}
