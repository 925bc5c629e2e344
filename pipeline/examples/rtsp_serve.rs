//! Loopback RTSP server for benchmarks, the soak and manual tests: serves an H.264 MP4 file,
//! re-sent without re-encoding (in real time, once per client; a session ends with the
//! file), at rtsp://127.0.0.1:PORT/cam0 … /cam{N-1}.
//!
//!     cargo run --release -p edgemask --example rtsp_serve -- FILE.mp4 PORT N [COUNTS.json]
//!
//! With COUNTS.json, what each mount has done is written there every 200 ms and at
//! SIGINT/SIGTERM (to a temporary name, then renamed), as
//! `{"cam0": {"sent": 1234, "sessions": 5, "cuts": 2}, …}`: `sent` counts the frames whose
//! last RTP packet (marker bit) left the payloader, all sessions together.
//!
//! `RTSP_SERVE_CUT_MEAN_S=S`: each mount's sessions are also cut at random (every 0.5–1.5 × S
//! seconds): the mount stops sending, and 0.5 s later, when what it sent has arrived, its
//! clients are disconnected with no EOS. SIGUSR1 stops every mount sending for good (before
//! the client under test is stopped, so that `sent` is final).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::glib;
use gst_rtsp_server::prelude::*;

/// SIGUSR1 received: every mount stays silent.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// One mount's counters and its switch.
#[derive(Default)]
struct Mount {
    sent: AtomicU64,
    sessions: AtomicU64,
    cuts: AtomicU64,
    held: AtomicBool,
    /// The payloaders' sink pads of its sessions, with their blocking probes while held.
    pads: Mutex<Vec<(gst::Pad, Option<gst::PadProbeId>)>>,
}

impl Mount {
    fn hold(&self, held: bool) {
        let mut pads = self.pads.lock().unwrap();
        self.held.store(held, Ordering::SeqCst);
        pads.retain(|(p, _)| p.parent().is_some());
        for (pad, probe) in pads.iter_mut() {
            match (held, probe.take()) {
                (true, None) => *probe = block(pad),
                (false, Some(id)) => pad.remove_probe(id),
                (_, p) => *probe = p,
            }
        }
    }
}

fn block(pad: &gst::Pad) -> Option<gst::PadProbeId> {
    pad.add_probe(gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER, |_, _| {
        gst::PadProbeReturn::Ok
    })
}

fn write_counts(path: &str, mounts: &[Arc<Mount>]) {
    let body = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "\"cam{i}\": {{\"sent\": {}, \"sessions\": {}, \"cuts\": {}}}",
                m.sent.load(Ordering::SeqCst),
                m.sessions.load(Ordering::SeqCst),
                m.cuts.load(Ordering::SeqCst)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, format!("{{{body}}}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Disconnects the clients that play `path`.
fn disconnect(server: &gst_rtsp_server::RTSPServer, path: &str) {
    server.client_filter(Some(&mut |_, client| {
        let mut plays = false;
        client.session_filter(Some(&mut |_, session| {
            session.filter(Some(&mut |_, media| {
                plays |= media.matches(path).is_some();
                gst_rtsp_server::RTSPFilterResult::Keep
            }));
            gst_rtsp_server::RTSPFilterResult::Keep
        }));
        if plays {
            gst_rtsp_server::RTSPFilterResult::Remove
        } else {
            gst_rtsp_server::RTSPFilterResult::Keep
        }
    }));
}

/// Cuts `path`'s sessions at random, every 0.5–1.5 × `mean`.
fn schedule_cut(server: gst_rtsp_server::RTSPServer, mount: Arc<Mount>, path: String, mean: f64) {
    let after = Duration::from_secs_f64(mean * (0.5 + fastrand::f64()));
    glib::timeout_add_once(after, move || {
        if !mount.held.load(Ordering::SeqCst) && !STOPPED.load(Ordering::SeqCst) {
            mount.hold(true);
            let (s, m, p) = (server.clone(), mount.clone(), path.clone());
            glib::timeout_add_once(Duration::from_millis(500), move || {
                disconnect(&s, &p);
                m.cuts.fetch_add(1, Ordering::SeqCst);
                if !STOPPED.load(Ordering::SeqCst) {
                    m.hold(false);
                }
            });
        }
        schedule_cut(server, mount, path, mean);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, port, n, counts_path) = match args.as_slice() {
        [f, p, n] => (f, p, n, None),
        [f, p, n, c] => (f, p, n, Some(c.clone())),
        _ => {
            eprintln!("usage: rtsp_serve FILE.mp4 PORT N [COUNTS.json]");
            std::process::exit(2);
        }
    };
    let n: u32 = n.parse().expect("N is a number");
    let cut_mean: f64 = std::env::var("RTSP_SERVE_CUT_MEAN_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // SIGINT/SIGTERM (final counts, exit) and SIGUSR1 (stop sending) are blocked here,
    // before any thread exists, and taken by one thread below.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGUSR1);
    set.thread_block().expect("block the signals");
    gst::init().unwrap();
    let main_loop = glib::MainLoop::new(None, false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    let mounts_table = server.mount_points().unwrap();
    let mounts: Vec<Arc<Mount>> = (0..n).map(|_| Arc::default()).collect();
    for (i, mount) in mounts.iter().enumerate() {
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        // No re-encoding: demux, parse, packetise; the server paces it to the clock.
        factory.set_launch(&format!(
            "( filesrc location={file} ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
        ));
        factory.set_shared(false);
        let mount = mount.clone();
        factory.connect_media_configure(move |_, media| {
            let bin = media.element().downcast::<gst::Bin>().expect("a media is a bin");
            let pay = bin.by_name("pay0").expect("the launch line names pay0");
            mount.sessions.fetch_add(1, Ordering::SeqCst);
            let m = mount.clone();
            pay.static_pad("src").unwrap().add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |_, info| {
                    let marked = |b: &gst::BufferRef| {
                        b.map_readable()
                            .is_ok_and(|d| d.get(1).is_some_and(|x| x & 0x80 != 0))
                    };
                    let frames = match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => u64::from(marked(b)),
                        Some(gst::PadProbeData::BufferList(l)) => {
                            l.iter().filter(|b| marked(b)).count() as u64
                        }
                        _ => 0,
                    };
                    m.sent.fetch_add(frames, Ordering::SeqCst);
                    gst::PadProbeReturn::Ok
                },
            );
            let sink = pay.static_pad("sink").unwrap();
            let mut pads = mount.pads.lock().unwrap();
            let probe = if mount.held.load(Ordering::SeqCst) {
                block(&sink)
            } else {
                None
            };
            pads.push((sink, probe));
        });
        mounts_table.add_factory(&format!("/cam{i}"), factory);
    }
    let _id = server.attach(None).unwrap();
    if cut_mean > 0.0 {
        for (i, m) in mounts.iter().enumerate() {
            schedule_cut(server.clone(), m.clone(), format!("/cam{i}"), cut_mean);
        }
    }
    if let Some(path) = &counts_path {
        let (m, p) = (mounts.clone(), path.clone());
        glib::timeout_add(Duration::from_millis(200), move || {
            write_counts(&p, &m);
            glib::ControlFlow::Continue
        });
    }
    let m = mounts.clone();
    std::thread::spawn(move || {
        loop {
            match set.wait() {
                Ok(nix::sys::signal::Signal::SIGUSR1) => {
                    // For good: no cut in progress releases it.
                    STOPPED.store(true, Ordering::SeqCst);
                    for mount in &m {
                        mount.hold(true);
                    }
                }
                _ => {
                    if let Some(p) = &counts_path {
                        write_counts(p, &m);
                    }
                    std::process::exit(0);
                }
            }
        }
    });
    println!("serving {n} stream(s) of {file} at rtsp://127.0.0.1:{port}/cam0..");
    main_loop.run();
}
