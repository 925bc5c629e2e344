//! Prometheus metrics (`prometheus` crate) and a minimal HTTP endpoint serving them.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub fps: GaugeVec,
    pub inference_ms: HistogramVec,
    pub frames: IntCounterVec,
    /// Frames that reached the runner from the source.
    pub received: IntCounterVec,
    pub carried: IntCounterVec,
    pub dropped: IntCounterVec,
    pub restarts: IntCounterVec,
    pub clips: IntCounterVec,
    pub clips_skipped: IntCounterVec,
    /// Clip files without a manifest found at start and moved aside.
    pub quarantined: IntCounterVec,
    pub bytes: IntCounterVec,
    pub free_disk: IntGaugeVec,
    /// Seconds since the camera's last frame (since its pipeline started, before the first).
    pub last_frame_age: GaugeVec,
    /// 1 for the camera's current state (running, starting, reconnecting, done, failed).
    pub state: IntGaugeVec,
    pub preroll_bytes: IntGaugeVec,
    pub preroll_overflows: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("edgemask".into()), None).expect("valid prefix");
        let cam = &["camera"];
        let fps =
            GaugeVec::new(Opts::new("fps", "Frames per second through the element"), cam).expect("valid");
        let inference_ms = HistogramVec::new(
            HistogramOpts::new(
                "inference_ms",
                "Mean inference time per stats window, milliseconds",
            )
            .buckets(vec![0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 33.0, 66.0, 133.0, 250.0]),
            cam,
        )
        .expect("valid");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid")
        };
        let frames = counter("frames_total", "Frames that left the element", cam);
        let received = counter(
            "frames_received_total",
            "Frames that reached the runner from the source",
            cam,
        );
        let carried = counter("carried_masks_total", "Frames whose mask was carried over", cam);
        let dropped = counter(
            "dropped_frames_total",
            "Frames the element skipped because of lateness (QoS)",
            cam,
        );
        let restarts = counter("restarts_total", "Pipeline rebuilds and source restarts", cam);
        let clips = counter(
            "clips_written_total",
            "Clips written (video + masks + manifest)",
            cam,
        );
        let clips_skipped = counter("clips_skipped_total", "Clips not kept", &["camera", "reason"]);
        let quarantined = counter(
            "files_quarantined_total",
            "Clip files without a manifest moved to .quarantine at start",
            &["camera"],
        );
        let bytes = counter(
            "bytes_written_total",
            "Bytes of clips, masks and manifests written",
            cam,
        );
        let free_disk = IntGaugeVec::new(
            Opts::new("free_disk_bytes", "Free space in the output directory"),
            cam,
        )
        .expect("valid");
        let preroll_bytes = IntGaugeVec::new(
            Opts::new(
                "preroll_bytes",
                "Video held in memory by the pre-roll ring (capture policies)",
            ),
            cam,
        )
        .expect("valid");
        let preroll_overflows = counter(
            "preroll_overflow_total",
            "GOPs freed unwritten because the pre-roll ring reached policy.preroll_max_mb",
            cam,
        );
        registry
            .register(Box::new(preroll_bytes.clone()))
            .expect("unique");
        for c in [
            &preroll_overflows,
            &frames,
            &received,
            &carried,
            &dropped,
            &restarts,
            &clips,
            &clips_skipped,
            &quarantined,
            &bytes,
        ] {
            registry.register(Box::new(c.clone())).expect("unique");
        }
        registry.register(Box::new(fps.clone())).expect("unique");
        registry.register(Box::new(inference_ms.clone())).expect("unique");
        registry.register(Box::new(free_disk.clone())).expect("unique");
        let last_frame_age = GaugeVec::new(
            Opts::new(
                "last_frame_age_seconds",
                "Seconds since the camera's last frame (since its pipeline started, before the first)",
            ),
            cam,
        )
        .expect("valid");
        registry
            .register(Box::new(last_frame_age.clone()))
            .expect("unique");
        let state = IntGaugeVec::new(
            Opts::new(
                "camera_state",
                "1 for the camera's current state: running, starting, reconnecting, done, failed",
            ),
            &["camera", "state"],
        )
        .expect("valid");
        registry.register(Box::new(state.clone())).expect("unique");
        Self {
            registry,
            fps,
            inference_ms,
            frames,
            received,
            carried,
            dropped,
            restarts,
            clips,
            clips_skipped,
            quarantined,
            bytes,
            preroll_bytes,
            preroll_overflows,
            free_disk,
            last_frame_age,
            state,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Serves `GET /metrics` on `addr` from a background thread; returns the bound address.
    pub fn serve(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::invalid("runner.metrics_listen", addr, format!("cannot listen: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("metrics socket", e))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        continue;
                    }
                    // Drain the headers.
                    let mut h = String::new();
                    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                        h.clear();
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("");
                    let mut w = &stream;
                    let _ = if path == "/metrics" {
                        let body = me.render();
                        write!(
                            w,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .and_then(|_| w.write_all(&body))
                    } else {
                        w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    };
                }
            })
            .map_err(|e| Error::io("metrics thread", e))?;
        Ok(local)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
