//! Element vs bare ONNX Runtime, side by side in one run.
//!
//! `cargo bench -p gst-plugin-unetmask --bench element` (after `scripts/setup.sh`).
//! For each model, frame size and format, it times bare inference on a ready tensor
//! (the plugin's own ONNX Runtime session wrapper, nothing else) and the element on real
//! frames in every mode, interleaving short chunks of each and taking medians, because the
//! machine is shared and noisy. It prints fps and the ratio element/bare, plus the time of
//! one `memcpy` of the frame as the memory-bandwidth yardstick for the compositing modes.
//!
//! Knobs (environment): BENCH_THREADS (ONNX Runtime intra-op threads, default 2),
//! BENCH_SPIN=never|in-run|always (when ONNX Runtime's threads busy-wait, both sides; default
//! in-run as in the element),
//! BENCH_FRAMES (frames per measurement, default 48), BENCH_SIZES (e.g. "1280x720,1920x1080"),
//! BENCH_UNET=0 to skip the original-contract UNet rows (slow: ~1 s per inference on 2 cores),
//! BENCH_MODES (e.g. "meta,mask") and BENCH_FORMATS (e.g. "NV12") to run a subset,
//! BENCH_LANDSCAPE=1 to add the second shared model (always there on a GPU).
//!
//! GPU: BENCH_DEVICE=cuda:0 (or tensorrt:0; build with `--features cuda`/`tensorrt`) runs the
//! element with that device and times the bare side as ONNX Runtime with IoBinding: the
//! input tensor already on the GPU, the output left there (what the model alone costs).
//! The pipelined rows are skipped there (the GPU path runs frames in turn).
//!
//! Streams: BENCH_STREAMS (e.g. "1,2,4,8"; default off) runs that many element instances in
//! one process, each on its own thread with its own 1080p NV12 frames in `meta` mode, for
//! BENCH_STREAM_SECS seconds (default 5), and prints the slowest stream's fps and how many
//! 30 fps cameras that count sustains.
//!
//! Rounds and results: BENCH_ROUNDS (default 1) repeats everything; with BENCH_JSON=path the
//! per-round figures, their medians and spreads go to a JSON result, the one source the
//! documents' figures are filled from (`scripts/figures.py`; publish by copying it to
//! `docs/results/element.json`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstunetmask::unetmask::model::engine::{DeviceRequest, Engine, EngineConfig, Spin};

const MODES: [&str; 9] = [
    "meta",
    "meta resize=bilinear",
    "meta pipelined=true",
    "meta resize=bilinear pipelined=true",
    "mask",
    "alpha",
    "overlay",
    "blur",
    "replace",
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shared() -> PathBuf {
    std::env::var_os("EDGEMASK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
}

/// The person photo scaled to `w`x`h` in `format`.
fn frame(format: &str, w: u32, h: u32) -> gst::Sample {
    let photo = shared().join("testdata/person_400x600.png");
    let desc = format!(
        "filesrc location={} ! decodebin ! videoconvert ! videoscale add-borders=false ! \
         video/x-raw,width={w},height={h} ! videoconvert ! video/x-raw,format={format} ! appsink name=sink",
        photo.display()
    );
    let p = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = p.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let s = sink.pull_sample().unwrap();
    p.set_state(gst::State::Null).unwrap();
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Bare {
    engine: Engine,
    input: Vec<f32>,
    size: (u32, u32),
    /// GPU sessions: the input and output bound to device memory.
    #[cfg(feature = "cuda")]
    device: Option<gstunetmask::unetmask::model::engine::DeviceIo>,
}

impl Bare {
    fn new(model: &Path, device: DeviceRequest, threads: u32, spin: Spin, frame: (u32, u32)) -> Bare {
        let cfg = EngineConfig {
            model: model.into(),
            device,
            threads,
            spin,
            ..Default::default()
        };
        let mut engine = Engine::open(&cfg).expect("open model");
        let size = engine.input_size_for(frame);
        engine.prepare(size).unwrap();
        let input = (0..size.0 * size.1 * 3)
            .map(|i| (i % 255) as f32 / 255.0)
            .collect();
        #[cfg(feature = "cuda")]
        let device = engine.cuda_device.map(|_| {
            engine
                .bind_device(size)
                .expect("bind the model's input and output on the GPU")
        });
        Bare {
            engine,
            input,
            size,
            #[cfg(feature = "cuda")]
            device,
        }
    }

    fn run(&mut self, n: usize) -> Duration {
        let t = Instant::now();
        for _ in 0..n {
            #[cfg(feature = "cuda")]
            if let Some(io) = self.device.as_mut() {
                self.engine.run_bound(io).unwrap();
                continue;
            }
            self.engine.run(&self.input, self.size, |_, d| d[0]).unwrap();
        }
        t.elapsed()
    }
}

struct Element {
    h: gst_check::Harness,
    buf: Option<gst::Buffer>,
    in_place: bool,
}

impl Element {
    fn new(props: &str, mode: &str, input: &gst::Sample) -> Element {
        let mut h = gst_check::Harness::new_parse(&format!("unetmask name=m {props} stats-interval=0"));
        h.set_src_caps(input.caps().unwrap().to_owned());
        let in_place = !(mode.starts_with("mask") || mode.starts_with("alpha"));
        // A continuous stream: the sample's first-buffer DISCONT flag would make every
        // frame a discontinuity (smoothing reset, and a pipelined element drained each time).
        let continuous = || {
            let mut b = input.buffer().unwrap().copy_deep().unwrap();
            b.get_mut().unwrap().unset_flags(gst::BufferFlags::DISCONT);
            b
        };
        let mut e = Element {
            h,
            buf: Some(continuous()),
            in_place,
        };
        if mode.contains("pipelined=true") {
            // A pipelined element holds one frame: after this one, each push returns the
            // frame before it.
            e.h.push(continuous()).unwrap();
        }
        e.run(2); // warm-up and negotiation
        e
    }

    fn run(&mut self, n: usize) -> Duration {
        let t = Instant::now();
        for _ in 0..n {
            if self.in_place {
                // In-place modes hand back the same buffer, writable again: feed it back, so
                // no frame copy is timed that a live source (fresh buffers) would not cause.
                let out = self.h.push_and_pull(self.buf.take().unwrap()).unwrap();
                self.buf = Some(out);
            } else {
                // mask/alpha only read the input: a shared reference is enough.
                let out = self.h.push_and_pull(self.buf.clone().unwrap()).unwrap();
                drop(out);
            }
        }
        t.elapsed()
    }
}

impl Element {
    /// The element's own per-stage means (pre-processing, inference, post-processing), ms.
    fn stages(&self) -> [f64; 3] {
        let bin = self.h.element().unwrap().downcast::<gst::Bin>().unwrap();
        let stats = bin.by_name("m").unwrap().property::<gst::Structure>("stats");
        ["preprocess-ms", "inference-ms", "postprocess-ms"].map(|f| stats.get::<f64>(f).unwrap_or(f64::NAN))
    }
}

fn memcpy_time(bytes: usize) -> Duration {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        times.push(t.elapsed());
        std::hint::black_box(&dst);
    }
    median(times)
}

/// `count` element instances in one process, each on its own thread pushing its own frames
/// for `secs`: the fps of each, slowest first.
fn streams(props: &str, input: &gst::Sample, count: usize, secs: f64) -> Vec<f64> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (props, input, start) = (props.to_string(), input.clone(), start.clone());
            std::thread::spawn(move || {
                let mut el = Element::new(&props, "meta", &input);
                start.wait();
                let t = Instant::now();
                let mut n = 0;
                while t.elapsed().as_secs_f64() < secs {
                    el.run(4);
                    n += 4;
                }
                n as f64 / t.elapsed().as_secs_f64()
            })
        })
        .collect();
    let mut fps: Vec<f64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    fps.sort_by(f64::total_cmp);
    fps
}

fn unet_model() -> Option<PathBuf> {
    let dir = root().join("target/bench-fixtures");
    let model = dir.join("unet_240x160.onnx");
    if !model.exists() {
        let python = root().join(".deps/venv/bin/python");
        let script = root().join("plugins/tests/fixtures/make_models.py");
        let ok = Command::new(python)
            .arg(script)
            .arg("unet")
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("could not build the UNet fixture; skipping its rows");
            return None;
        }
    }
    Some(model)
}

fn main() {
    gst::init().unwrap();
    gstunetmask::plugin_register_static().unwrap();
    let threads: u32 = env_or("BENCH_THREADS", "2").parse().unwrap();
    let device_env = env_or("BENCH_DEVICE", "cpu");
    let device: DeviceRequest = device_env
        .parse()
        .expect("BENCH_DEVICE: cpu, cuda:N or tensorrt:N");
    let spin: Spin = env_or("BENCH_SPIN", "in-run").parse().expect("BENCH_SPIN");
    let frames: usize = env_or("BENCH_FRAMES", "48").parse().unwrap();
    let sizes: Vec<(u32, u32)> = env_or("BENCH_SIZES", "1280x720,1920x1080,3840x2160")
        .split(',')
        .map(|s| {
            let (w, h) = s.split_once('x').unwrap();
            (w.parse().unwrap(), h.parse().unwrap())
        })
        .collect();
    let wanted = |list: &str, item: &str| list.split(',').any(|w| w == item || w == "all");
    let modes_env = env_or("BENCH_MODES", "all");
    let formats_env = env_or("BENCH_FORMATS", "all");
    let modes: Vec<&str> = MODES
        .iter()
        .copied()
        .filter(|m| wanted(&modes_env, m))
        .filter(|m| device == DeviceRequest::Cpu || !m.contains("pipelined"))
        .collect();
    let mut models = vec![(
        shared().join("models/selfie_segmentation_256x256.onnx"),
        frames,
        modes.clone(),
    )];
    // The other shared model: always on a GPU, on request on the CPU (it doubles the run).
    if device != DeviceRequest::Cpu || env_or("BENCH_LANDSCAPE", "0") == "1" {
        models.push((
            shared().join("models/selfie_landscape_144x256.onnx"),
            frames,
            modes,
        ));
    }
    if env_or("BENCH_UNET", "1") != "0"
        && let Some(m) = unet_model()
    {
        let n: usize = env_or("BENCH_UNET_FRAMES", "8").parse().unwrap();
        models.push((m, n, vec!["meta", "overlay"]));
    }
    let rounds: usize = env_or("BENCH_ROUNDS", "1").parse().unwrap();
    let mut results = Results::default();
    let chunk = 8usize;
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        println!(
            "device={device} threads={threads} spin={spin}; medians of interleaved chunks; ratio = element fps / bare fps"
        );
        println!(
            "| {:<28} | {:>9} | {:<5} | {:<20} | {:>9} | {:>9} | {:>6} | {:>11} | {:>10} | {:>6} | {:>8} | {:>7} |",
            "model",
            "frame",
            "fmt",
            "mode",
            "elem fps",
            "bare fps",
            "ratio",
            "over bare ms",
            "memcpy ms",
            "pre ms",
            "infer ms",
            "post ms"
        );
        println!(
            "|{:-<30}|{:-<11}|{:-<7}|{:-<22}|{:-<11}|{:-<11}|{:-<8}|{:-<13}|{:-<12}|{:-<8}|{:-<10}|{:-<9}|",
            "", "", "", "", "", "", "", "", "", "", "", ""
        );
        for (model, n, modes) in &models {
            let name = model.file_name().unwrap().to_string_lossy().to_string();
            for &(w, h) in &sizes {
                let mut bare = Bare::new(model, device, threads, spin, (w, h));
                for fmt in ["RGBA", "NV12"].into_iter().filter(|f| wanted(&formats_env, f)) {
                    let input = frame(fmt, w, h);
                    let bytes = input.buffer().unwrap().size();
                    let copy = memcpy_time(bytes);
                    for mode in modes {
                        let props = format!(
                            "model={} threads={threads} spin={spin} device={device} mode={mode}",
                            model.display()
                        );
                        let mut el = Element::new(&props, mode, &input);
                        // Slow models: chunks of 2, so that even a few frames give several
                        // interleaved pairs to take the median of.
                        let c = if *n >= 4 * chunk { chunk } else { 2.min(*n) };
                        let (mut te, mut tb) = (Vec::new(), Vec::new());
                        for _ in 0..(n / c).max(1) {
                            tb.push(bare.run(c) / c as u32);
                            te.push(el.run(c) / c as u32);
                        }
                        let (e, b) = (median(te), median(tb));
                        let fps = |d: Duration| 1.0 / d.as_secs_f64();
                        let [pre, infer, post] = el.stages();
                        results.row(&name, (w, h), fmt, mode, fps(e), fps(b));
                        println!(
                            "| {:<28} | {:>9} | {:<5} | {:<20} | {:>9.1} | {:>9.1} | {:>6.3} | {:>11.2} | {:>10.2} | {:>6.3} | {:>8.3} | {:>7.3} |",
                            name,
                            format!("{w}x{h}"),
                            fmt,
                            mode,
                            fps(e),
                            fps(b),
                            fps(e) / fps(b),
                            (e.as_secs_f64() - b.as_secs_f64()) * 1e3,
                            copy.as_secs_f64() * 1e3,
                            pre,
                            infer,
                            post
                        );
                    }
                }
            }
        }
        let counts = env_or("BENCH_STREAMS", "");
        if !counts.is_empty() {
            let secs: f64 = env_or("BENCH_STREAM_SECS", "5").parse().unwrap();
            let input = frame("NV12", 1920, 1080);
            let model = &models[0].0;
            let props = format!(
                "model={} threads={threads} spin={spin} device={device} mode=meta",
                model.display()
            );
            println!();
            println!("1080p NV12 meta streams in one process, device={device}, {secs} s each:");
            println!("| streams | slowest fps | total fps | every stream at 30 fps |");
            println!("|---------|-------------|-----------|------------------------|");
            for count in counts.split(',').map(|c| c.trim().parse::<usize>().unwrap()) {
                let fps = streams(&props, &input, count, secs);
                results.streams(count, fps[0], fps.iter().sum::<f64>());
                println!(
                    "| {count:>7} | {:>11.1} | {:>9.1} | {:<22} |",
                    fps[0],
                    fps.iter().sum::<f64>(),
                    if fps[0] >= 30.0 { "yes" } else { "no" }
                );
            }
        }
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let doc = results.json(
            rounds,
            &format!("device={device} threads={threads} spin={spin} frames={frames}"),
        );
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("result: {path}");
    }
}

/// Each round's (element or slowest, bare or total) fps of one row.
type Rounds = Vec<(f64, f64)>;

/// Every round's figures, by row (key, what it measures, rounds), in first-seen order.
#[derive(Default)]
struct Results {
    rows: Vec<(String, serde_json::Value, Rounds)>,
    streams: Vec<(usize, Rounds)>,
}

fn stats(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    serde_json::json!({"median": median, "min": s[0], "max": s[s.len() - 1], "rounds": v})
}

impl Results {
    fn row(&mut self, model: &str, (w, h): (u32, u32), fmt: &str, mode: &str, elem: f64, bare: f64) {
        let key = format!("{model}/{w}x{h}/{fmt}/{}", mode.replace(' ', "+"));
        match self.rows.iter_mut().find(|(k, ..)| *k == key) {
            Some((.., v)) => v.push((elem, bare)),
            None => self.rows.push((
                key,
                serde_json::json!({"model": model, "frame": format!("{w}x{h}"), "format": fmt, "mode": mode}),
                vec![(elem, bare)],
            )),
        }
    }

    fn streams(&mut self, count: usize, slowest: f64, total: f64) {
        match self.streams.iter_mut().find(|(c, _)| *c == count) {
            Some((_, v)) => v.push((slowest, total)),
            None => self.streams.push((count, vec![(slowest, total)])),
        }
    }

    fn json(&self, rounds: usize, settings: &str) -> serde_json::Value {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|(key, what, v)| {
                let ratio: Vec<f64> = v.iter().map(|(e, b)| e / b).collect();
                let mut r = what.clone();
                r["key"] = key.as_str().into();
                r["ratio"] = stats(&ratio);
                r["elem_fps"] = stats(&v.iter().map(|x| x.0).collect::<Vec<_>>());
                r["bare_fps"] = stats(&v.iter().map(|x| x.1).collect::<Vec<_>>());
                r
            })
            .collect();
        let streams: Vec<_> = self
            .streams
            .iter()
            .map(|(count, v)| {
                serde_json::json!({
                    "key": count.to_string(),
                    "streams": count,
                    "slowest_fps": stats(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
                    "total_fps": stats(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
                })
            })
            .collect();
        serde_json::json!({
            "bench": "cargo bench -p gst-plugin-unetmask --bench element",
            "date": Command::new("date").args(["-u", "+%F"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
            "machine": format!("{cores} cores ({cpu})"),
            "settings": settings,
            "rounds": rounds,
            "rows": rows,
            "streams": streams,
        })
    }
}
