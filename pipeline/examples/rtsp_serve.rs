//! Loopback RTSP server for benchmarks and manual tests: serves an H.264 MP4 file, re-sent
//! without re-encoding (in real time, once per client; a stream lasts as long as the file),
//! at rtsp://127.0.0.1:PORT/cam0 … /cam{N-1}.
//!
//!     cargo run --release -p edgemask --example rtsp_serve -- FILE.mp4 PORT N [COUNTS.json]
//!
//! With COUNTS.json, the frames each mount has sent (access units handed to its payloader,
//! all sessions together) are written there every 200 ms and at SIGINT/SIGTERM, as
//! `{"cam0": 1234, …}` (written to a temporary name, then renamed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gst_rtsp_server::prelude::*;

fn write_counts(path: &str, counts: &[Arc<AtomicU64>]) {
    let body = counts
        .iter()
        .enumerate()
        .map(|(i, c)| format!("\"cam{i}\": {}", c.load(Ordering::SeqCst)))
        .collect::<Vec<_>>()
        .join(", ");
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, format!("{{{body}}}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
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
    // With counts, SIGINT/SIGTERM write the final counts before exiting: the signals are
    // blocked here, before any thread exists, and taken by one thread below.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    if counts_path.is_some() {
        set.thread_block().expect("block SIGINT/SIGTERM");
    }
    gst::init().unwrap();
    let main_loop = gst::glib::MainLoop::new(None, false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    let mounts = server.mount_points().unwrap();
    let counts: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
    for (i, count) in counts.iter().enumerate() {
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        // No re-encoding: demux, parse, packetise; the server paces it to the clock.
        factory.set_launch(&format!(
            "( filesrc location={file} ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
        ));
        factory.set_shared(false);
        let count = count.clone();
        factory.connect_media_configure(move |_, media| {
            let bin = media.element().downcast::<gst::Bin>().expect("a media is a bin");
            let pay = bin.by_name("pay0").expect("the launch line names pay0");
            let count = count.clone();
            pay.static_pad("sink")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    count.fetch_add(1, Ordering::SeqCst);
                    gst::PadProbeReturn::Ok
                });
        });
        mounts.add_factory(&format!("/cam{i}"), factory);
    }
    let _id = server.attach(None).unwrap();
    if let Some(path) = counts_path {
        let c = counts.clone();
        let p = path.clone();
        gst::glib::timeout_add(std::time::Duration::from_millis(200), move || {
            write_counts(&p, &c);
            gst::glib::ControlFlow::Continue
        });
        let c = counts.clone();
        std::thread::spawn(move || {
            let _ = set.wait();
            write_counts(&path, &c);
            std::process::exit(0);
        });
    }
    println!("serving {n} stream(s) of {file} at rtsp://127.0.0.1:{port}/cam0..");
    main_loop.run();
}
