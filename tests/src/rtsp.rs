//! A real RTSP server (GStreamer's rtsp-server library) serving an MP4 file, for source tests.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use gst::glib;
use gstreamer as gst;
use gstreamer_rtsp_server as rtsp;
use rtsp::prelude::*;

/// Serves one H.264 MP4 at `rtsp://127.0.0.1:PORT/clip` until dropped.
pub struct RtspServer {
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
    pub url: String,
}

impl RtspServer {
    pub fn serve(clip: &Path, user_password: Option<(&str, &str)>) -> Self {
        Self::serve_at(clip, user_password, 0)
    }

    /// Like [`RtspServer::serve`] on a given port (0: any free one), e.g. to bring a camera
    /// back at the address it had.
    pub fn serve_at(clip: &Path, user_password: Option<(&str, &str)>, port: u16) -> Self {
        gst::init().expect("GStreamer initialises");
        let launch = format!(
            "( filesrc location=\"{}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )",
            clip.display()
        );
        let credentials = user_password.map(|(u, p)| (u.to_string(), p.to_string()));
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let context = glib::MainContext::new();
            let main_loop = glib::MainLoop::new(Some(&context), false);
            context
                .with_thread_default(|| {
                    let server = rtsp::RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let factory = rtsp::RTSPMediaFactory::new();
                    factory.set_launch(&launch);
                    if let Some((user, password)) = &credentials {
                        let auth = rtsp::RTSPAuth::new();
                        let token = rtsp::RTSPToken::builder()
                            .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE.as_str(), "user")
                            .build();
                        auth.add_basic(&rtsp::RTSPAuth::make_basic(user, password), &token);
                        server.set_auth(Some(&auth));
                        factory.add_role_from_structure(
                            &gst::Structure::builder("user")
                                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS.as_str(), true)
                                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT.as_str(), true)
                                .build(),
                        );
                    }
                    server
                        .mount_points()
                        .expect("mount points")
                        .add_factory("/clip", factory);
                    let _source = server
                        .attach(Some(&context))
                        .expect("the RTSP server binds");
                    tx.send((main_loop.clone(), server.bound_port()))
                        .expect("test thread waits");
                    main_loop.run();
                    // Gone means gone for its viewers too: close every client connection
                    // (and with it each session's media), as a camera that loses power would.
                    server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
                })
                .expect("own main context");
        });
        let (main_loop, port) = rx.recv().expect("the RTSP server starts");
        Self {
            main_loop,
            thread: Some(thread),
            url: format!("rtsp://127.0.0.1:{port}/clip"),
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
