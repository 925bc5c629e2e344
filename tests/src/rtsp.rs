//! A real RTSP server (gst-rtsp-server) on loopback, in its own main loop thread, that
//! can be stopped (every client disconnected, the socket closed) and started again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::glib;
use gst_rtsp_server::prelude::*;

/// A live 320x240 15 fps H.264 stream of the test pattern `ball` (no person).
pub const BALL: &str = "( videotestsrc is-live=true pattern=ball ! \
     video/x-raw,width=320,height=240,framerate=15/1 ! \
     x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 threads=1 ! \
     rtph264pay name=pay0 pt=96 config-interval=1 )";

/// A live 320x240 15 fps H.264 stream of a still photograph (`image`, PNG or JPEG).
pub fn still(image: &std::path::Path) -> String {
    format!(
        "( filesrc location={} ! decodebin ! videoconvert ! videoscale add-borders=true ! \
         video/x-raw,width=320,height=240,pixel-aspect-ratio=1/1 ! imagefreeze is-live=true ! \
         video/x-raw,framerate=15/1 ! videoconvert ! \
         x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 threads=1 ! \
         rtph264pay name=pay0 pt=96 config-interval=1 )",
        image.display()
    )
}

/// A live 640x360 30 fps H.264 stream of a file made by [`moving_h264`], sent as it is
/// (no re-encoding), once per client: each session ends with the file (EOS).
pub fn file(path: &std::path::Path) -> String {
    format!(
        "( filesrc location={} ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )",
        path.display()
    )
}

/// Writes `frames` frames of moving content (the test pattern's ball) at 640x360 30 fps as
/// H.264 in MP4 with B-frames and a 2 s GOP: a camera's stream, where a decoder holds
/// frames back for reordering.
pub fn moving_h264(path: &std::path::Path, frames: u32) {
    gst::init().unwrap();
    let p = gst::parse::launch(&format!(
        "videotestsrc pattern=ball num-buffers={frames} ! \
         video/x-raw,width=640,height=360,framerate=30/1 ! \
         x264enc speed-preset=ultrafast bframes=2 b-adapt=false key-int-max=60 threads=1 ! \
         video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location={}",
        path.display()
    ))
    .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the video is written within 60 s");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    p.set_state(gst::State::Null).unwrap();
}

/// What a mount has sent, and the switch that holds it back: attached to each of its
/// medias (`media-configure`). Shared by the tests' [`Server`] and the bench and soak
/// server (`pipeline/examples/rtsp_serve.rs`).
#[derive(Default)]
pub struct Sending {
    /// Frames sent, all sessions together: a frame counts when the RTP packet that ends it
    /// (marker bit) leaves the payloader.
    sent: AtomicU64,
    /// While set, the payloaders' inputs are blocked: the sessions stay up, silent.
    held: AtomicBool,
    /// The live payloaders' sink pads, with their blocking probes while held.
    pads: Mutex<Vec<(gst::Pad, Option<gst::PadProbeId>)>>,
}

impl Sending {
    /// Counts what `media`'s payloader `pay0` sends, and holds it back while held.
    pub fn attach(self: &Arc<Self>, media: &gst_rtsp_server::RTSPMedia) {
        let bin = media.element().downcast::<gst::Bin>().expect("a media is a bin");
        let pay = bin.by_name("pay0").expect("the launch line names pay0");
        let this = self.clone();
        pay.static_pad("src").unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, info| {
                let marked = |b: &gst::BufferRef| {
                    b.map_readable()
                        .is_ok_and(|m| m.get(1).is_some_and(|x| x & 0x80 != 0))
                };
                let n = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => u64::from(marked(b)),
                    Some(gst::PadProbeData::BufferList(l)) => l.iter().filter(|b| marked(b)).count() as u64,
                    _ => 0,
                };
                this.sent.fetch_add(n, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            },
        );
        let sink = pay.static_pad("sink").unwrap();
        let mut pads = self.pads.lock().unwrap();
        let probe = self.held.load(Ordering::SeqCst).then(|| block(&sink)).flatten();
        pads.push((sink, probe));
    }

    /// Frames sent so far, all sessions together.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Stops sending (the sessions stay up, silent) or sends again.
    pub fn hold(&self, held: bool) {
        let mut pads = self.pads.lock().unwrap();
        self.held.store(held, Ordering::SeqCst);
        // The pads of medias that are gone.
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

pub struct Server {
    sending: Arc<Sending>,
    ctx: glib::MainContext,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
    running: Option<(gst_rtsp_server::RTSPServer, glib::SourceId)>,
    launch: String,
    /// Basic-auth login the server demands, when set.
    login: Option<(String, String)>,
    /// One stream for every client (a live camera), or one per client (a file).
    shared: bool,
    pub port: u16,
}

impl Server {
    /// Serves `launch` (a gst-rtsp-server launch line with `pay0`) at
    /// `rtsp://127.0.0.1:<port>/cam`, shared between clients.
    pub fn new(port: u16, launch: &str) -> Self {
        Self::serve(port, launch, None, true)
    }

    /// Serves `launch` once per client (a [`file`]: each session ends with it).
    pub fn per_client(port: u16, launch: &str) -> Self {
        Self::serve(port, launch, None, false)
    }

    /// As [`Server::new`], but clients must authenticate as `user`/`password` (Basic).
    pub fn with_login(port: u16, launch: &str, user: &str, password: &str) -> Self {
        Self::serve(port, launch, Some((user.to_string(), password.to_string())), true)
    }

    fn serve(port: u16, launch: &str, login: Option<(String, String)>, shared: bool) -> Self {
        gst::init().unwrap();
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let (c, l) = (ctx.clone(), main_loop.clone());
        let thread = std::thread::spawn(move || {
            c.with_thread_default(|| l.run()).unwrap();
        });
        let mut s = Self {
            sending: Arc::default(),
            ctx,
            main_loop,
            thread: Some(thread),
            running: None,
            launch: launch.to_string(),
            login,
            shared,
            port,
        };
        s.start();
        s
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    pub fn start(&mut self) {
        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&self.port.to_string());
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(&self.launch);
        let sending = self.sending.clone();
        factory.connect_media_configure(move |_, media| sending.attach(media));
        factory.set_shared(self.shared);
        if let Some((user, password)) = &self.login {
            use gst_rtsp_server::{RTSP_PERM_MEDIA_FACTORY_ACCESS, RTSP_PERM_MEDIA_FACTORY_CONSTRUCT};
            let auth = gst_rtsp_server::RTSPAuth::new();
            let token = gst_rtsp_server::RTSPToken::builder()
                .field(gst_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
                .build();
            auth.add_basic(
                gst_rtsp_server::RTSPAuth::make_basic(user, password).as_str(),
                &token,
            );
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gst::Structure::builder("camera-user")
                    .field(RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build(),
            );
        }
        server.mount_points().unwrap().add_factory("/cam", factory);
        let id = server.attach(Some(&self.ctx)).unwrap();
        self.running = Some((server, id));
    }

    /// Frames sent so far, all sessions together.
    pub fn sent(&self) -> u64 {
        self.sending.sent()
    }

    /// Stops sending (the sessions stay up, silent) or sends again.
    pub fn hold(&self, held: bool) {
        self.sending.hold(held);
    }

    /// A cut in the middle of a stream: the server stops sending until what it sent has
    /// arrived, then every client is disconnected, with no EOS.
    pub fn cut(&mut self) {
        self.hold(true);
        std::thread::sleep(std::time::Duration::from_millis(700));
        self.stop();
        self.hold(false);
    }

    /// Disconnects every client and closes the listening socket.
    pub fn stop(&mut self) {
        if let Some((server, id)) = self.running.take() {
            server.client_filter(Some(&mut |_, _| gst_rtsp_server::RTSPFilterResult::Remove));
            if let Some(src) = self.ctx.find_source_by_id(&id) {
                src.destroy();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
