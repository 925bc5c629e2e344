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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgemask_tests::rtsp::Sending;
use gst::glib;
use gst_rtsp_server::prelude::*;

/// SIGUSR1 received: every mount stays silent.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// One mount: what it sent and its switch (shared with the tests' server), its sessions
/// and cuts.
#[derive(Default)]
struct Mount {
    sending: Arc<Sending>,
    sessions: AtomicU64,
    cuts: AtomicU64,
}

fn write_counts(path: &str, mounts: &[Arc<Mount>]) {
    let body = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "\"cam{i}\": {{\"sent\": {}, \"sessions\": {}, \"cuts\": {}}}",
                m.sending.sent(),
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
        if !mount.sending.held() && !STOPPED.load(Ordering::SeqCst) {
            mount.sending.hold(true);
            let (s, m, p) = (server.clone(), mount.clone(), path.clone());
            glib::timeout_add_once(Duration::from_millis(500), move || {
                disconnect(&s, &p);
                m.cuts.fetch_add(1, Ordering::SeqCst);
                if !STOPPED.load(Ordering::SeqCst) {
                    m.sending.hold(false);
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
            mount.sessions.fetch_add(1, Ordering::SeqCst);
            mount.sending.attach(media);
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
                        mount.sending.hold(true);
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
