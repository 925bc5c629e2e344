//! A real RTSP server (gst-rtsp-server) on loopback, in its own main loop thread, that
//! can be stopped (every client disconnected, the socket closed) and started again.

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

pub struct Server {
    ctx: glib::MainContext,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
    running: Option<(gst_rtsp_server::RTSPServer, glib::SourceId)>,
    launch: String,
    /// Basic-auth login the server demands, when set.
    login: Option<(String, String)>,
    pub port: u16,
}

impl Server {
    /// Serves `launch` (a gst-rtsp-server launch line with `pay0`) at
    /// `rtsp://127.0.0.1:<port>/cam`, shared between clients.
    pub fn new(port: u16, launch: &str) -> Self {
        Self::serve(port, launch, None)
    }

    /// As [`Server::new`], but clients must authenticate as `user`/`password` (Basic).
    pub fn with_login(port: u16, launch: &str, user: &str, password: &str) -> Self {
        Self::serve(port, launch, Some((user.to_string(), password.to_string())))
    }

    fn serve(port: u16, launch: &str, login: Option<(String, String)>) -> Self {
        gst::init().unwrap();
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let (c, l) = (ctx.clone(), main_loop.clone());
        let thread = std::thread::spawn(move || {
            c.with_thread_default(|| l.run()).unwrap();
        });
        let mut s = Self {
            ctx,
            main_loop,
            thread: Some(thread),
            running: None,
            launch: launch.to_string(),
            login,
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
        factory.set_shared(true);
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
