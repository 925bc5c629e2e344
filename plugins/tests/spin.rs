//! The spin policy reaches ONNX Runtime: what its worker threads do once a run returns.
//!
//! ONNX Runtime takes any session config key without complaint, so a misspelt key would
//! leave the policy silently at its default. What the workers do between runs is the
//! observable: with `always` one keeps a core busy after the run returns, with `in-run` and
//! `never` it sleeps. Counted as this process's CPU time over runs paced like frames, which
//! is why this file holds a single test: no other test shares its process.

use std::time::Duration;

use gstunetmask::unetmask::model::engine::{DeviceRequest, Engine, EngineConfig, Spin};

mod common;

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) }, 0);
    let u = unsafe { u.assume_init() };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

fn config(spin: Spin, threads: u32) -> EngineConfig {
    EngineConfig {
        model: common::shared().join("models").join(common::SELFIE),
        device: DeviceRequest::Cpu,
        threads,
        spin,
        ..Default::default()
    }
}

/// CPU seconds the process uses for `runs` runs with `gap` between them, as a live source
/// paces frames, with `spin`.
fn cpu_of_paced_runs(spin: Spin, runs: usize, gap: Duration) -> f64 {
    let mut engine = Engine::open(&config(spin, 2)).expect("open model");
    let size = engine.input_size_for((256, 256));
    engine.prepare(size).expect("prepare");
    let input = vec![0.5f32; (size.0 * size.1 * 3) as usize];
    let before = cpu_seconds();
    for _ in 0..runs {
        engine.run(&input, size, |_, _| ()).expect("run");
        std::thread::sleep(gap);
    }
    cpu_seconds() - before
}

#[test]
fn workers_spin_between_runs_only_with_always() {
    let (runs, gap) = (15, Duration::from_millis(20));
    let always = cpu_of_paced_runs(Spin::Always, runs, gap);
    let in_run = cpu_of_paced_runs(Spin::InRun, runs, gap);
    let never = cpu_of_paced_runs(Spin::Never, runs, gap);
    eprintln!(
        "CPU s for {runs} runs {gap:?} apart: always {always:.3}, in-run {in_run:.3}, never {never:.3}"
    );
    // A worker that spins between runs keeps a core busy through each gap (ONNX Runtime
    // stops spinning some 30 ms after a run); the runs themselves take a few ms of CPU.
    let gaps = runs as f64 * gap.as_secs_f64();
    assert!(
        always > 0.3 * gaps,
        "always: workers did not spin between runs ({always:.3} s)"
    );
    assert!(
        in_run < 0.5 * always,
        "in-run: workers kept spinning ({in_run:.3} s vs {always:.3} s)"
    );
    assert!(
        never < 0.5 * always,
        "never: workers spun ({never:.3} s vs {always:.3} s)"
    );
}
