//! The supervisor: one pipeline per camera on one GLib main loop; restarts, shutdown on
//! SIGTERM/SIGINT, systemd notifications, metrics and the progress bar.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use sha2::Digest;

use crate::camera::{self, Built, Flow};
use crate::clip::ModelInfo;
use crate::config::{Camera, Settings, Source};
use crate::error::{Error, Result, exit};
use crate::metrics::Metrics;
use crate::recorder::{Counters, Recorder, free_bytes};

/// Registers GStreamer and the statically linked `unetmask` plugin.
pub fn init_gst() -> Result<()> {
    gst::init()?;
    gstunetmask::plugin_register_static()?;
    Ok(())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Opens the model the way the element will (library, session, contract), with the
/// element's own reading of its settings; errors are [`Error::Model`].
pub fn open_model(
    element: &gst::Element,
    path: &std::path::Path,
) -> Result<gstunetmask::unetmask::probe::Model> {
    use gstunetmask::unetmask::{UnetMask, probe::Model};
    let err = |reason: String| Error::Model {
        path: path.to_path_buf(),
        reason,
    };
    let element = element
        .downcast_ref::<UnetMask>()
        .ok_or_else(|| err("not a unetmask element".into()))?;
    Model::open(element).map_err(err)
}

/// For `check`: whether each model whose session runs on a CUDA device gets the element's
/// GPU path (kernels loaded, input and output bound on the device for a 1080p stream), one
/// line per model. Models on the CPU give no line.
#[cfg(feature = "cuda")]
pub fn gpu_paths(settings: &Settings) -> Result<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::new();
    for cam in &settings.cameras {
        if !seen.insert(cam.model.path.clone()) {
            continue;
        }
        let element = camera::check_elements(cam)?;
        let mut model = open_model(&element, &cam.model.path)?;
        let device = model.provider().to_string();
        let file = cam.model.path.display();
        match model.gpu_path((1920, 1080)) {
            Some(Ok(())) => lines.push(format!(
                "GPU path on {device} for {file}: kernels loaded, input and output bound on the device; \
                 frames are pre- and post-processed on the GPU"
            )),
            Some(Err(e)) => lines.push(format!(
                "GPU path on {device} for {file} NOT available ({e}): inference runs on the GPU, pre- and \
                 post-processing on the CPU"
            )),
            None => {}
        }
    }
    Ok(lines)
}

/// Everything `run` and `check` verify before any pipeline starts.
pub fn preflight(settings: &Settings, probe_network: bool) -> Result<HashMap<std::path::PathBuf, ModelInfo>> {
    let mut models = HashMap::new();
    // Configuration errors (exit 3) first: every camera's elements with every property set.
    let mut elements = Vec::new();
    for cam in &settings.cameras {
        elements.push(camera::check_elements(cam)?);
    }
    for (cam, element) in settings.cameras.iter().zip(&elements) {
        if !models.contains_key(&cam.model.path) {
            if !cam.model.path.is_file() {
                return Err(Error::Model {
                    path: cam.model.path.clone(),
                    reason: "file does not exist: set model.path to an .onnx file".into(),
                });
            }
            let engine = open_model(element, &cam.model.path)?;
            let info = ModelInfo {
                file: cam
                    .model
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                sha256: sha256_file(&cam.model.path)?,
                device: engine.provider().to_string(),
            };
            models.insert(cam.model.path.clone(), info);
        }
        camera::check_source(cam, probe_network, Duration::from_secs(3))?;
    }
    camera::prepare_output(&settings.runner.output_dir)?;
    for cam in &settings.cameras {
        camera::prepare_output(&settings.runner.output_dir.join(&cam.name))?;
    }
    Ok(models)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// EOS injected after the source to finalise what reached the runner, before a restart.
    Draining,
    Backoff,
    Done,
    Failed,
}

struct Cam {
    cam: Camera,
    recorder: Arc<Mutex<Recorder>>,
    flow: Arc<Flow>,
    built: Option<Built>,
    watch: Option<gst::bus::BusWatchGuard>,
    phase: Phase,
    attempts: u32,
    started: Instant,
    last_frames: u64,
    /// The camera's frame count when its current pipeline started.
    frames_at_start: u64,
    last_received: u64,
    fps: f64,
    seen: Counters,
    last_qos: u64,
    /// Why the camera is draining (the restart's reason).
    drain_reason: String,
    /// Counts the camera's pipelines, so that a timer knows whether its pipeline is gone.
    generation: u64,
    /// Since when the camera has been neither flowing nor reconnecting.
    silent_since: Option<Instant>,
    /// Recording paused because the disk is full or under the floor; masks go on.
    disk_paused: bool,
    /// Pipelines of this camera that did not reach NULL in time and were left behind.
    leaked: u32,
    progress: Option<indicatif::ProgressBar>,
}

struct State {
    settings: Settings,
    cams: Vec<Cam>,
    stopping: bool,
    /// Stopping because too many pipelines could not stop (exit code: runtime failure).
    stuck: bool,
    main_loop: glib::MainLoop,
    metrics: Metrics,
    epoch: Instant,
    ready_sent: bool,
}

type Shared = Rc<RefCell<State>>;

fn notify(states: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(false, states);
}

fn start_camera(shared: &Shared, idx: usize) {
    let mut st = shared.borrow_mut();
    let epoch = st.epoch;
    let stopping = st.stopping;
    let c = &mut st.cams[idx];
    if stopping {
        c.phase = Phase::Done;
        drop(st);
        check_all_done(shared);
        return;
    }
    // A full disk pauses recording: the pipeline is built without its recording branch.
    let mut cam = c.cam.clone();
    cam.recording.enabled &= !c.disk_paused;
    c.recorder
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_paused(c.disk_paused);
    let built = match camera::build(&cam, c.recorder.clone(), c.flow.clone(), epoch) {
        Ok(b) => b,
        Err(e @ Error::Display { .. }) => {
            // Not transient: this camera fails, the others go on.
            tracing::error!(camera = %c.cam.name, error = %e, "camera failed");
            c.phase = Phase::Failed;
            drop(st);
            check_all_done(shared);
            return;
        }
        Err(e) => {
            tracing::error!(camera = %c.cam.name, error = %e, "cannot build the pipeline");
            drop(st);
            fail(shared, idx, &e.to_string());
            return;
        }
    };
    let bus = built.pipeline.bus().expect("pipelines have a bus");
    let rec = c.recorder.clone();
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Element(m) = msg.view()
            && let Some(s) = m.structure()
        {
            let loc = s.get::<String>("location").ok();
            let rt = s.get::<u64>("running-time").unwrap_or(0);
            match (s.name().as_str(), loc) {
                ("splitmuxsink-fragment-opened", Some(l)) => rec
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fragment_opened(Path::new(&l), rt),
                ("splitmuxsink-fragment-closed", Some(l)) => rec
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fragment_closed(Path::new(&l)),
                _ => {}
            }
        }
        gst::BusSyncReply::Pass
    });
    let weak = Rc::downgrade(shared);
    let watch = bus.add_watch_local(move |_, msg| {
        if let Some(shared) = weak.upgrade() {
            on_message(&shared, idx, msg);
        }
        glib::ControlFlow::Continue
    });
    let pipeline = built.pipeline.clone();
    c.watch = watch.ok();
    c.built = Some(built);
    c.generation += 1;
    c.frames_at_start = c.flow.frames.load(Ordering::Relaxed);
    c.phase = Phase::Running;
    c.started = Instant::now();
    let name = c.cam.name.clone();
    drop(st);
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        tracing::error!(camera = %name, error = ?e, "pipeline does not start");
        // The bus carries the reason; on_message handles it. If nothing is posted, fail here.
        if let Some(msg) = pipeline
            .bus()
            .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
        {
            on_message(shared, idx, &msg);
        } else {
            fail(shared, idx, "pipeline does not start");
        }
    }
}

/// How long a pipeline gets to reach NULL before it is left behind.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pipelines left behind (their stuck threads, sockets and memory with them) before the
/// process stops itself so that its supervisor (systemd: `Restart=on-failure`) starts a
/// clean one, instead of leaking them for months.
const MAX_LEAKED: u32 = 3;

/// Nothing paces a file or a non-live test pattern, and a busy host slows both: one counts
/// as hung only after this many `stall_timeout_s`, and never before UNPACED_STALL_MIN.
const UNPACED_STALL_AFTER: u64 = 3;
const UNPACED_STALL_MIN: Duration = Duration::from_secs(20);

/// An RTSP camera's first frame waits for the session, a key frame and the model: a new
/// pipeline gets at least this long before it counts as stalled.
const RTSP_FIRST_FRAME_MIN: Duration = Duration::from_secs(20);

/// How long a pipeline gets to carry what reached the runner into finalised clips before
/// a restart; after that its open clip is dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Stops a camera's pipeline. The state change runs on its own thread with a deadline:
/// an element that deadlocks on the way down (rtspsrc 1.22 does, now and then, when a
/// server vanishes at the wrong moment) must not freeze the main loop, the other cameras'
/// supervision or the shutdown. A pipeline that does not stop in time is logged and left.
fn teardown(c: &mut Cam) {
    if let Some(b) = c.built.take() {
        let pipeline = b.pipeline;
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("stop-{}", c.cam.name))
            .spawn(move || {
                let _ = pipeline.set_state(gst::State::Null);
                if let Some(bus) = pipeline.bus() {
                    bus.unset_sync_handler();
                }
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => {
                if rx.recv_timeout(TEARDOWN_TIMEOUT).is_err() {
                    c.leaked += 1;
                    tracing::error!(
                        camera = %c.cam.name,
                        timeout_s = TEARDOWN_TIMEOUT.as_secs(),
                        "pipeline did not stop in time (an element is stuck); left behind"
                    );
                }
            }
            Err(e) => {
                tracing::error!(camera = %c.cam.name, error = %e, "cannot start the thread that stops the pipeline")
            }
        }
    }
    c.watch = None;
}

/// The camera's pipeline must be replaced (a stall, an error): a live camera first drains
/// what reached the runner into finalised clips (EOS after the source, bounded by
/// DRAIN_TIMEOUT), then restarts after a backoff; anything else is [`fail`]ed at once.
fn restart(shared: &Shared, idx: usize, reason: &str) {
    let mut st = shared.borrow_mut();
    let stopping = st.stopping;
    let c = &mut st.cams[idx];
    let entry = c
        .built
        .as_ref()
        .and_then(|b| b.entry.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let (Some(pad), Phase::Running, true, false) = (entry, c.phase, c.cam.source.is_live(), stopping) else {
        drop(st);
        fail(shared, idx, reason);
        return;
    };
    tracing::info!(camera = %c.cam.name, reason, "finalising what was received before restarting");
    c.phase = Phase::Draining;
    c.drain_reason = reason.to_string();
    let generation = c.generation;
    // The entry pad's stream lock may be held by a streaming thread that is stuck: never
    // on the main loop.
    std::thread::spawn(move || pad.send_event(gst::event::Eos::new()));
    let weak = Rc::downgrade(shared);
    glib::timeout_add_local_once(DRAIN_TIMEOUT, move || {
        let Some(shared) = weak.upgrade() else { return };
        let (draining, reason) = {
            let st = shared.borrow();
            let c = &st.cams[idx];
            (
                c.phase == Phase::Draining && c.generation == generation,
                c.drain_reason.clone(),
            )
        };
        if draining {
            tracing::error!(
                camera = %shared.borrow().cams[idx].cam.name,
                timeout_s = DRAIN_TIMEOUT.as_secs(),
                "the pipeline did not finish its clips in time: open clip dropped"
            );
            fail(&shared, idx, &reason);
        }
    });
}

/// The camera's pipeline failed: live cameras restart after a backoff, files are failed.
fn fail(shared: &Shared, idx: usize, reason: &str) {
    let mut st = shared.borrow_mut();
    let runner = st.settings.runner.clone();
    let stopping = st.stopping;
    let metrics = st.metrics.clone();
    let c = &mut st.cams[idx];
    teardown(c);
    c.recorder.lock().unwrap_or_else(|e| e.into_inner()).abort();
    if c.cam.source.is_live() && !stopping {
        let delay = crate::backoff::delay(
            c.attempts,
            runner.backoff_initial,
            runner.backoff_max,
            fastrand::f64(),
        );
        c.attempts += 1;
        c.phase = Phase::Backoff;
        metrics.restarts.with_label_values(&[&c.cam.name]).inc();
        tracing::warn!(camera = %c.cam.name, reason, delay_s = delay.as_secs_f64(), attempt = c.attempts, "restarting the camera pipeline");
        let weak = Rc::downgrade(shared);
        glib::timeout_add_local_once(delay, move || {
            if let Some(shared) = weak.upgrade() {
                start_camera(&shared, idx);
            }
        });
    } else {
        c.phase = if stopping { Phase::Done } else { Phase::Failed };
        if !stopping {
            tracing::error!(camera = %c.cam.name, reason, "camera failed");
        }
        drop(st);
        check_all_done(shared);
    }
}

fn on_message(shared: &Shared, idx: usize, msg: &gst::Message) {
    use gst::MessageView;
    match msg.view() {
        MessageView::Eos(_) => {
            let mut st = shared.borrow_mut();
            let stopping = st.stopping;
            let c = &mut st.cams[idx];
            if !matches!(c.phase, Phase::Running | Phase::Draining) {
                return;
            }
            // EOS before the video branch exists: nothing was recorded, and saying "done"
            // would be a silent wrong result (a pipeline with no sink yet is "at EOS" for
            // GstBin, so a source that never gives a video stream ends up here).
            let attached = c
                .built
                .as_ref()
                .is_some_and(|b| b.entry.lock().unwrap_or_else(|e| e.into_inner()).is_some());
            if !attached && !stopping {
                drop(st);
                fail(
                    shared,
                    idx,
                    "the source ended before any video stream appeared: check that it holds video \
                     (gst-discoverer-1.0 FILE) and that the plugins for its container and codec are installed",
                );
                return;
            }
            update_device(c);
            c.recorder.lock().unwrap_or_else(|e| e.into_inner()).finish();
            teardown(c);
            tracing::info!(camera = %c.cam.name, "end of stream: all clips finalised");
            let live_restart = c.cam.source.is_live()
                && !stopping
                && !matches!(
                    c.cam.source,
                    Source::TestPattern {
                        num_frames: Some(_),
                        ..
                    }
                );
            if live_restart {
                let reason = if c.phase == Phase::Draining {
                    std::mem::take(&mut c.drain_reason)
                } else {
                    "live source ended".to_string()
                };
                drop(st);
                fail(shared, idx, &reason);
                return;
            }
            c.phase = Phase::Done;
            if let Some(p) = c.progress.take() {
                p.finish();
            }
            drop(st);
            check_all_done(shared);
        }
        MessageView::Error(e) => {
            let src = e.src().map(|s| s.path_string().to_string()).unwrap_or_default();
            // GStreamer's texts quote locations verbatim (rtspsrc: the URL with its
            // password): every one goes through the redaction before it is logged.
            let reason = crate::redact::redact(&format!("{} ({src})", e.error()));
            let details = e.debug().map(|d| crate::redact::redact(&d));
            tracing::debug!(details = ?details, "error details");
            if shared.borrow().cams[idx].phase != Phase::Running {
                return;
            }
            // A full disk is not the camera's fault: it goes on without recording (masks
            // and metrics continue) until space returns, instead of failing again and again.
            if e.error().matches(gst::ResourceError::NoSpaceLeft) {
                let mut st = shared.borrow_mut();
                let c = &mut st.cams[idx];
                c.disk_paused = true;
                tracing::error!(camera = %c.cam.name, "the disk is full: recording paused, masks go on");
                drop(st);
                restart(shared, idx, "disk full: recording paused");
                return;
            }
            restart(shared, idx, &reason);
        }
        MessageView::Warning(w) => {
            let name = shared.borrow().cams[idx].cam.name.clone();
            let warning = crate::redact::redact(&w.error().to_string());
            tracing::warn!(camera = %name, warning = %warning, "pipeline warning");
        }
        MessageView::Element(m) => {
            let Some(s) = m.structure() else { return };
            if s.name() == "unetmask-stats" {
                let st = shared.borrow();
                let name = st.cams[idx].cam.name.clone();
                if let Ok(ms) = s.get::<f64>("inference-ms")
                    && ms > 0.0
                {
                    st.metrics.inference_ms.with_label_values(&[&name]).observe(ms);
                }
                if let Ok(provider) = s.get::<String>("provider") {
                    st.cams[idx]
                        .recorder
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .set_device(&provider);
                }
                let qos = s.get::<u64>("qos-skipped").unwrap_or(0);
                let f = |k: &str| s.get::<f64>(k).unwrap_or(0.0);
                tracing::debug!(
                    camera = %name,
                    fps = f("fps"),
                    preprocess_ms = f("preprocess-ms"),
                    inference_ms = f("inference-ms"),
                    postprocess_ms = f("postprocess-ms"),
                    qos_skipped = qos,
                    "unetmask stats"
                );
                drop(st);
                let mut st = shared.borrow_mut();
                let last = std::mem::replace(&mut st.cams[idx].last_qos, qos);
                st.metrics
                    .dropped
                    .with_label_values(&[&name])
                    .inc_by(qos.saturating_sub(last));
            }
        }
        _ => {}
    }
}

fn update_device(c: &Cam) {
    let Some(b) = &c.built else { return };
    let Some(um) = b
        .pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == "unetmask"))
    else {
        return;
    };
    if let Ok(s) = um.property_value("stats").get::<gst::Structure>()
        && let Ok(p) = s.get::<String>("provider")
        && !p.is_empty()
    {
        c.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_device(&p);
    }
}

fn check_all_done(shared: &Shared) {
    let st = shared.borrow();
    if st
        .cams
        .iter()
        .all(|c| matches!(c.phase, Phase::Done | Phase::Failed))
    {
        st.main_loop.quit();
    }
}

/// SIGTERM/SIGINT received so far.
static SIGNALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_signal(_: nix::libc::c_int) {
    // Async-signal-safe: an atomic increment, and _exit on the second signal.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        unsafe { nix::libc::_exit(exit::FORCED as i32) };
    }
}

fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| Error::Gst(format!("cannot install {sig} handler: {e}")))?;
    }
    Ok(())
}

/// SIGTERM/SIGINT: EOS into every pipeline so clips are finalised.
fn shutdown(shared: &Shared) {
    let mut st = shared.borrow_mut();
    if st.stopping {
        return;
    }
    st.stopping = true;
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: finalising open clips");
    for c in st.cams.iter_mut() {
        match c.phase {
            Phase::Running => {
                let Some(b) = &c.built else { continue };
                let entry = b.entry.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match (&c.cam.source, entry) {
                    // Before its first video pad an RTSP pipeline has nothing to finalise.
                    (Source::Rtsp { .. }, None) => {
                        teardown(c);
                        c.phase = Phase::Done;
                    }
                    // EOS at the source: what it holds (RTSP: the jitter buffer) drains too.
                    _ => {
                        b.pipeline.send_event(gst::event::Eos::new());
                    }
                }
            }
            // Already finishing its clips; the deadline below still applies.
            Phase::Draining => c.phase = Phase::Running,
            Phase::Backoff => c.phase = Phase::Done,
            _ => {}
        }
    }
    drop(st);
    check_all_done(shared);
    // Bounded wait: pipelines that do not finish in time are torn down.
    let weak = Rc::downgrade(shared);
    glib::timeout_add_local_once(Duration::from_secs(20), move || {
        let Some(shared) = weak.upgrade() else { return };
        let mut st = shared.borrow_mut();
        for c in st.cams.iter_mut().filter(|c| c.phase == Phase::Running) {
            tracing::error!(camera = %c.cam.name, "did not finish within 20 s: open clip dropped");
            teardown(c);
            c.recorder.lock().unwrap_or_else(|e| e.into_inner()).abort();
            c.phase = Phase::Done;
        }
        drop(st);
        check_all_done(&shared);
    });
}

/// Free space above the floor at which a paused camera records again (so that a disk at
/// the edge does not pause and resume every second).
const RESUME_MARGIN: u64 = 16 << 20;

/// A live camera's recording under a full disk: `Some(true)` to pause it (free space under
/// the floor), `Some(false)` to resume it (free space back above floor + RESUME_MARGIN),
/// `None` to leave it. A full disk that the floor did not see (ENOSPC) pauses it too.
fn disk_pause(paused: bool, records: bool, free: u64, floor: u64) -> Option<bool> {
    if !paused && records && free < floor {
        Some(true)
    } else if paused && free >= floor.saturating_add(RESUME_MARGIN) {
        Some(false)
    } else {
        None
    }
}

/// Longer than a restart takes (drain, teardown, a tick or two of slack).
const SILENT_LIMIT: Duration = Duration::from_secs(DRAIN_TIMEOUT.as_secs() + TEARDOWN_TIMEOUT.as_secs() + 5);

/// Whether a camera has been silent (neither flowing nor reconnecting) for longer than
/// SILENT_LIMIT, keeping in `since` when its silence began.
fn silent_too_long(silent: bool, since: &mut Option<Instant>, now: Instant) -> bool {
    if !silent {
        *since = None;
        return false;
    }
    let start = *since.get_or_insert(now);
    now.duration_since(start) > SILENT_LIMIT
}

fn tick(shared: &Shared, dt: f64) {
    let mut st = shared.borrow_mut();
    let now_ms = st.epoch.elapsed().as_millis() as u64;
    let stall_ms = st.settings.runner.stall_timeout.as_millis() as u64;
    let metrics = st.metrics.clone();
    let out_dir = st.settings.runner.output_dir.clone();
    let free_now = free_bytes(&out_dir);
    let free = free_now.unwrap_or(0);
    let floor = st.settings.runner.disk_floor_bytes;
    let mut disk_changes = Vec::new();
    let mut status = Vec::new();
    let mut stalled = Vec::new();
    let mut unattended = Vec::new();
    let mut leaked = 0;
    for (i, c) in st.cams.iter_mut().enumerate() {
        let name = c.cam.name.clone();
        let frames = c.flow.frames.load(Ordering::Relaxed);
        c.fps = (frames - c.last_frames) as f64 / dt;
        metrics
            .frames
            .with_label_values(&[&name])
            .inc_by(frames - c.last_frames);
        c.last_frames = frames;
        let received = c.flow.received.load(Ordering::Relaxed);
        metrics
            .received
            .with_label_values(&[&name])
            .inc_by(received - c.last_received);
        c.last_received = received;
        metrics.fps.with_label_values(&[&name]).set(c.fps);
        metrics.free_disk.with_label_values(&[&name]).set(free as i64);
        let counters = c.recorder.lock().unwrap_or_else(|e| e.into_inner()).counters;
        metrics
            .clips
            .with_label_values(&[&name])
            .inc_by(counters.clips_written - c.seen.clips_written);
        metrics
            .bytes
            .with_label_values(&[&name])
            .inc_by(counters.bytes_written - c.seen.bytes_written);
        metrics
            .carried
            .with_label_values(&[&name])
            .inc_by(counters.carried - c.seen.carried);
        metrics
            .clips_skipped
            .with_label_values(&[&name, "policy"])
            .inc_by(counters.clips_skipped_policy - c.seen.clips_skipped_policy);
        metrics
            .clips_skipped
            .with_label_values(&[&name, "disk"])
            .inc_by(counters.clips_skipped_disk - c.seen.clips_skipped_disk);
        metrics
            .preroll_bytes
            .with_label_values(&[&name])
            .set(counters.preroll_bytes as i64);
        metrics
            .preroll_overflows
            .with_label_values(&[&name])
            .inc_by(counters.preroll_overflows - c.seen.preroll_overflows);
        c.seen = counters;
        let last = c.flow.last_frame_ms.load(Ordering::Relaxed);
        let since_start = c.started.elapsed().as_millis() as u64;
        // Since the camera's last frame, or since the runner started before its first
        // (not since its current pipeline: a camera that never connects ages on).
        let age_ms = if last == 0 {
            now_ms
        } else {
            now_ms.saturating_sub(last - 1)
        };
        let flowing = last > 0 && age_ms < stall_ms && frames > c.frames_at_start;
        if c.phase == Phase::Running && flowing {
            c.attempts = 0;
        }
        // Stall supervision of every source, whatever its element thinks: live sources
        // after stall_timeout_s (an RTSP camera's first frame gets RTSP_FIRST_FRAME_MIN),
        // files and non-live test patterns after UNPACED_STALL_AFTER of them.
        let (limit_ms, first_ms) = match c.cam.source {
            Source::File { .. } | Source::TestPattern { live: false, .. } => {
                let l = (UNPACED_STALL_AFTER * stall_ms).max(UNPACED_STALL_MIN.as_millis() as u64);
                (l, l)
            }
            Source::Rtsp { .. } => (
                stall_ms,
                (2 * stall_ms).max(RTSP_FIRST_FRAME_MIN.as_millis() as u64),
            ),
            _ => (stall_ms, 2 * stall_ms),
        };
        let stale = if frames == c.frames_at_start {
            since_start > first_ms
        } else {
            age_ms >= limit_ms && since_start > limit_ms
        };
        if c.phase == Phase::Running && stale {
            stalled.push(i);
        }
        // A camera that is neither flowing nor visibly reconnecting: stale or draining for
        // longer than a restart takes means the supervisor's own remedy did not act.
        let silent = matches!(c.phase, Phase::Draining) || (c.phase == Phase::Running && stale);
        if silent_too_long(silent, &mut c.silent_since, Instant::now()) {
            unattended.push(name.clone());
        }
        leaked += c.leaked;
        if let Some(free) = free_now
            && c.cam.source.is_live()
            && let Some(paused) = disk_pause(c.disk_paused, c.cam.recording.enabled, free, floor)
        {
            c.disk_paused = paused;
            if c.phase == Phase::Running {
                disk_changes.push((i, paused));
            }
        }
        metrics
            .last_frame_age
            .with_label_values(&[&name])
            .set(age_ms as f64 / 1e3);
        let state = match c.phase {
            Phase::Running if flowing || frames > c.frames_at_start => "running",
            Phase::Running => "starting",
            Phase::Draining | Phase::Backoff => "reconnecting",
            Phase::Done => "done",
            Phase::Failed => "failed",
        };
        for s in ["running", "starting", "reconnecting", "done", "failed"] {
            metrics
                .state
                .with_label_values(&[&name, s])
                .set(i64::from(s == state));
        }
        let s = match state {
            "running" => format!("{name}: {:.1} fps", c.fps),
            other => format!("{name}: {other}"),
        };
        status.push(s);
        if let (Some(p), Some(b)) = (&c.progress, &c.built) {
            if let Some(d) = b.pipeline.query_duration::<gst::ClockTime>() {
                p.set_length(d.mseconds());
            }
            if let Some(pos) = b.pipeline.query_position::<gst::ClockTime>() {
                p.set_position(pos.mseconds());
            }
            p.set_message(format!("{:.1} fps", c.fps));
        }
    }
    let stopping = st.stopping;
    let give_up = leaked >= MAX_LEAKED && !st.stuck;
    st.stuck |= give_up;
    drop(st);
    let status = status.join(", ");
    // The watchdog is fed from this supervisor loop while every camera is flowing or visibly
    // reconnecting: a night with every camera offline is cameras reconnecting, not a hung
    // process. It starves when the loop stops, when pipelines that cannot stop pile up, or
    // when a camera stays silent although it was restarted (then a clean process is the cure).
    if !unattended.is_empty() {
        tracing::error!(cameras = ?unattended, "cameras silent although restarted: the watchdog is no longer fed");
    }
    if leaked < MAX_LEAKED && unattended.is_empty() {
        notify(&[
            sd_notify::NotifyState::Watchdog,
            sd_notify::NotifyState::Status(&status),
        ]);
    } else {
        notify(&[sd_notify::NotifyState::Status(&status)]);
    }
    if give_up {
        tracing::error!(
            leaked,
            "pipelines that could not stop were left behind; stopping so that a fresh process takes over"
        );
        shutdown(shared);
        return;
    }
    if !stopping {
        for (i, paused) in disk_changes {
            let reason = if paused {
                "free space under runner.disk_floor_mb: recording paused, masks go on"
            } else {
                "free space is back: recording resumes"
            };
            restart(shared, i, reason);
        }
        for i in stalled {
            let reason = match shared.borrow().cams[i].cam.source {
                Source::File { .. } => "no frame from the file source (a read that does not return?)",
                _ => "no frame within runner.stall_timeout_s",
            };
            restart(shared, i, reason);
        }
    }
}

/// Decoded frames (hundreds of KiB to MiB) are allocated by every new pipeline's
/// decoders and pools. glibc raises its mmap threshold to the largest block freed, after
/// which such frames come from the heaps of whichever streaming threads ran, fragment them
/// and are never given back: the soak showed RSS growing by 3-8 MB per camera restart.
/// A fixed threshold keeps them in their own mappings, returned to the system when freed.
/// Every pipeline also brings new streaming threads, and each may get a heap (arena) of
/// its own, which fragments the same way; two arenas keep RSS flat across restarts
/// (measured: 117→136 MB over 22 restarts with the threshold alone, 113→116 with both).
fn keep_frames_out_of_the_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

/// Runs every camera until all file sources are done or a signal stops the process.
/// Returns the exit code.
pub fn run(settings: Settings) -> Result<u8> {
    keep_frames_out_of_the_heap();
    init_gst()?;
    let models = preflight(&settings, false)?;
    let host = settings
        .runner
        .host
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().to_string());
    let metrics = Metrics::new();
    if let Some(addr) = settings.runner.metrics_listen {
        let bound = metrics.serve(addr)?;
        tracing::info!(%bound, "Prometheus metrics on /metrics");
    }
    let restreamed: Vec<String> = settings
        .cameras
        .iter()
        .filter(|c| c.restream)
        .map(|c| c.name.clone())
        .collect();
    let _restream = match settings.runner.rtsp_listen {
        Some(addr) => {
            let r = crate::restream::serve(addr, &restreamed)?;
            for c in &restreamed {
                tracing::info!(camera = %c, url = %format!("rtsp://{}:{}/{c}", addr.ip(), r.port), "re-streaming the processed video");
            }
            Some(r)
        }
        None => None,
    };
    let show_progress = settings.runner.progress && std::io::stderr().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let mut cams = Vec::new();
    for cam in &settings.cameras {
        let dir = settings.runner.output_dir.join(&cam.name);
        let stale = Recorder::clean_stale(&dir);
        if stale > 0 {
            tracing::warn!(camera = %cam.name, files = stale, "removed temporary files of an earlier run");
        }
        // Clip files under final names without their manifest: the process died between a
        // clip's renames. Moved aside, never left where an uploader would take them.
        match Recorder::quarantine_orphans(&dir, &cam.name) {
            Ok(0) => {}
            Ok(n) => {
                metrics
                    .quarantined
                    .with_label_values(&[&cam.name])
                    .inc_by(n as u64);
                tracing::warn!(
                    camera = %cam.name,
                    files = n,
                    to = %dir.join(crate::recorder::QUARANTINE_DIR).display(),
                    "moved clip files without a manifest (an earlier run died mid-clip) aside"
                );
            }
            Err(e) => {
                return Err(Error::Output {
                    path: dir.clone(),
                    reason: format!("cannot move clip files without a manifest aside: {e}"),
                });
            }
        }
        let recorder = Recorder::new(
            &cam.name,
            &host,
            dir,
            &cam.recording,
            models[&cam.model.path].clone(),
            cam.policy,
            settings.runner.disk_floor_bytes,
        );
        let progress = (show_progress && matches!(cam.source, Source::File { .. })).then(|| {
            let p = multi.add(indicatif::ProgressBar::new(1));
            p.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:40}] {percent:>3}% {msg}")
                    .expect("valid template"),
            );
            p.set_prefix(cam.name.clone());
            p
        });
        cams.push(Cam {
            cam: cam.clone(),
            recorder: Arc::new(Mutex::new(recorder)),
            flow: Arc::new(Flow::default()),
            built: None,
            watch: None,
            phase: Phase::Running,
            attempts: 0,
            started: Instant::now(),
            last_frames: 0,
            frames_at_start: 0,
            last_received: 0,
            fps: 0.0,
            seen: Counters::default(),
            last_qos: 0,
            drain_reason: String::new(),
            generation: 0,
            silent_since: None,
            disk_paused: false,
            leaked: 0,
            progress,
        });
    }
    let main_loop = glib::MainLoop::new(None, false);
    let n = cams.len();
    let shared: Shared = Rc::new(RefCell::new(State {
        settings,
        cams,
        stopping: false,
        main_loop: main_loop.clone(),
        metrics,
        epoch: Instant::now(),
        ready_sent: false,
        stuck: false,
    }));
    install_signal_handlers()?;
    let weak = Rc::downgrade(&shared);
    glib::timeout_add_local(Duration::from_millis(100), move || {
        let Some(shared) = weak.upgrade() else {
            return glib::ControlFlow::Break;
        };
        if SIGNALS.load(Ordering::SeqCst) > 0 && !shared.borrow().stopping {
            shutdown(&shared);
        }
        glib::ControlFlow::Continue
    });
    for i in 0..n {
        start_camera(&shared, i);
    }
    {
        let mut st = shared.borrow_mut();
        if st.cams.iter().any(|c| c.phase == Phase::Running) {
            notify(&[sd_notify::NotifyState::Ready]);
            st.ready_sent = true;
            tracing::info!(cameras = n, "pipelines running");
        }
    }
    let weak = Rc::downgrade(&shared);
    let mut last = Instant::now();
    glib::timeout_add_local(Duration::from_secs(1), move || {
        let Some(shared) = weak.upgrade() else {
            return glib::ControlFlow::Break;
        };
        let dt = last.elapsed().as_secs_f64().max(1e-3);
        last = Instant::now();
        tick(&shared, dt);
        glib::ControlFlow::Continue
    });
    check_all_done(&shared);
    main_loop.run();
    let st = shared.borrow();
    for c in &st.cams {
        if let Some(p) = &c.progress {
            p.finish_and_clear();
        }
        let k = c.recorder.lock().unwrap_or_else(|e| e.into_inner()).counters;
        tracing::info!(
            camera = %c.cam.name,
            received = c.flow.received.load(Ordering::Relaxed),
            frames = k.frames,
            clips = k.clips_written,
            skipped_policy = k.clips_skipped_policy,
            skipped_disk = k.clips_skipped_disk,
            dropped_video_s = k.dropped_video_ns as f64 / 1e9,
            preroll_peak_bytes = k.preroll_peak_bytes,
            preroll_overflows = k.preroll_overflows,
            "camera summary"
        );
    }
    let failed = st.cams.iter().any(|c| c.phase == Phase::Failed);
    // A pipeline left behind is a stuck element, not a clean stop.
    let leaked: u32 = st.cams.iter().map(|c| c.leaked).sum();
    if leaked > 0 {
        tracing::error!(
            leaked,
            "pipelines did not stop (an element is stuck): exiting as failed"
        );
    }
    Ok(if failed || leaked > 0 || st.stuck {
        exit::RUNTIME
    } else {
        exit::OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_camera_silent_for_longer_than_a_restart_takes_is_unattended() {
        let t0 = Instant::now();
        let mut since = None;
        assert!(!silent_too_long(true, &mut since, t0));
        assert!(!silent_too_long(true, &mut since, t0 + SILENT_LIMIT));
        assert!(silent_too_long(
            true,
            &mut since,
            t0 + SILENT_LIMIT + Duration::from_secs(1)
        ));
        // Flowing or reconnecting again: the count starts over.
        assert!(!silent_too_long(false, &mut since, t0 + SILENT_LIMIT * 2));
        assert_eq!(since, None);
        assert!(!silent_too_long(true, &mut since, t0 + SILENT_LIMIT * 2));
    }

    #[test]
    fn recording_pauses_under_the_floor_and_resumes_above_it_with_a_margin() {
        let floor = 100 << 20;
        assert_eq!(disk_pause(false, true, floor - 1, floor), Some(true));
        assert_eq!(disk_pause(false, true, floor, floor), None);
        // A camera that does not record has nothing to pause.
        assert_eq!(disk_pause(false, false, 0, floor), None);
        // No floor: only ENOSPC pauses, and any margin of free space resumes.
        assert_eq!(disk_pause(false, true, 0, 0), None);
        assert_eq!(disk_pause(true, true, RESUME_MARGIN - 1, 0), None);
        assert_eq!(disk_pause(true, true, RESUME_MARGIN, 0), Some(false));
        // Just above the floor is not enough to resume.
        assert_eq!(disk_pause(true, true, floor + 1, floor), None);
        assert_eq!(disk_pause(true, true, floor + RESUME_MARGIN, floor), Some(false));
    }
}
