//! Loopback RTSP server for benchmarks and manual tests: serves an H.264 MP4 file, re-sent
//! without re-encoding (in real time, once per client; a stream lasts as long as the file), at rtsp://127.0.0.1:PORT/cam0 … /cam{N-1}.
//!
//!     cargo run --release -p edgemask --example rtsp_serve -- FILE.mp4 PORT N

use gst_rtsp_server::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, port, n] = args.as_slice() else {
        eprintln!("usage: rtsp_serve FILE.mp4 PORT N");
        std::process::exit(2);
    };
    let n: u32 = n.parse().expect("N is a number");
    gst::init().unwrap();
    let main_loop = gst::glib::MainLoop::new(None, false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    let mounts = server.mount_points().unwrap();
    for i in 0..n {
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        // No re-encoding: demux, parse, packetise; the server paces it to the clock.
        factory.set_launch(&format!(
            "( filesrc location={file} ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
        ));
        factory.set_shared(false);
        mounts.add_factory(&format!("/cam{i}"), factory);
    }
    let _id = server.attach(None).unwrap();
    println!("serving {n} stream(s) of {file} at rtsp://127.0.0.1:{port}/cam0..");
    main_loop.run();
}
