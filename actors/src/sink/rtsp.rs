//! RTSP server output (DeepStream's `[sink]` type 4): gst-rtsp-server serves each source at a
//! mount, from a shared media whose pipeline starts with an appsrc that this stage feeds.
//!
//! The media is shared: every viewer of a mount watches one encoder. It exists while at least
//! one viewer is connected; with none, a frame has nowhere to go and is dropped (counted).
//! A viewer that reads too slowly fills its media's queue and the frames beyond it are dropped
//! too, so a stalled player never holds up the pipeline or the other outputs.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gst::glib;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use rtsp::prelude::*;
use vidmesh_protocol::{FrameMeta, ImageLayout};

use super::encoder;
use super::output::{frame_buffer, rgb_caps, rgb_layout};
use super::settings::Settings;
use crate::gst_util;
use crate::stage::StageError;

/// Counters of one mount.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeedStats {
    /// Frames handed to at least one connected media.
    pub served: u64,
    /// Frames no media took: no viewer connected, or every viewer's queue full.
    pub dropped: u64,
}

/// One source's mount: the media currently playing it, and the frame format.
pub struct Feed {
    pub mount: String,
    state: Mutex<FeedState>,
    queue_frames: u64,
}

#[derive(Default)]
struct FeedState {
    /// Set from the first frame; a media configured before that gets it on the first push.
    caps: Option<gst::Caps>,
    layout: Option<ImageLayout>,
    /// The appsrcs of the media being played (normally one: the media is shared).
    appsrcs: Vec<gst_app::AppSrc>,
    stats: FeedStats,
}

impl Feed {
    fn new(mount: String, queue_frames: u64) -> Arc<Self> {
        Arc::new(Feed {
            mount,
            state: Mutex::new(FeedState::default()),
            queue_frames,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attach(&self, appsrc: gst_app::AppSrc) {
        let mut state = self.lock();
        if let Some(caps) = &state.caps {
            appsrc.set_caps(Some(caps));
        }
        tracing::info!(mount = %self.mount, "RTSP viewer connected: media started");
        state.appsrcs.push(appsrc);
    }

    fn detach(&self, appsrc: &gst_app::AppSrc) {
        self.lock().appsrcs.retain(|a| a != appsrc);
        tracing::info!(mount = %self.mount, "RTSP media stopped (no viewers left)");
    }

    /// Offers a frame to every playing media; never waits.
    pub fn push(&self, frame: &FrameMeta) -> Result<(), StageError> {
        let mut state = self.lock();
        let layout = match state.layout {
            Some(l) => l,
            None => {
                let layout = rgb_layout(frame)?;
                let caps = rgb_caps(&layout, frame.duration_ns)?;
                for appsrc in &state.appsrcs {
                    appsrc.set_caps(Some(&caps));
                }
                state.caps = Some(caps);
                state.layout = Some(layout);
                layout
            }
        };
        let buffer = frame_buffer(frame, &layout)?;
        let mut taken = false;
        let queue_frames = self.queue_frames;
        state.appsrcs.retain(|appsrc| {
            if appsrc.current_level_buffers() >= queue_frames {
                return true;
            }
            match appsrc.push_buffer(buffer.clone()) {
                Ok(_) => {
                    taken = true;
                    true
                }
                // The media is shutting down (its last viewer left).
                Err(_) => false,
            }
        });
        if taken {
            state.stats.served += 1;
        } else {
            state.stats.dropped += 1;
        }
        Ok(())
    }

    pub fn stats(&self) -> FeedStats {
        self.lock().stats
    }

    pub fn viewers_media(&self) -> usize {
        self.lock().appsrcs.len()
    }

    /// Ends the stream for whoever is watching.
    pub fn end(&self) {
        for appsrc in self.lock().appsrcs.drain(..) {
            let _ = appsrc.end_of_stream();
        }
    }
}

/// The server and its mounts; stops serving when dropped.
pub struct RtspOutput {
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
    points: rtsp::RTSPMountPoints,
    /// The media pipeline every mount runs.
    launch: String,
    path: String,
    queue_frames: u64,
    /// By source id.
    pub feeds: BTreeMap<u32, Arc<Feed>>,
    /// `rtsp://host:port`, for messages.
    pub base: String,
}

impl RtspOutput {
    /// Binds `host:port` and mounts every source: at `path` when there is one source, else at
    /// `path/<source name>`.
    pub fn start(
        host: &str,
        port: u16,
        path: &str,
        sources: &[String],
        settings: &Settings,
    ) -> Result<Self, StageError> {
        gst_util::init()?;
        let mut chain: Vec<String> = encoder::chain(settings, true)?
            .iter()
            .map(|s| s.launch())
            .collect();
        chain.push(format!(
            "{} name=pay0",
            encoder::payloader(settings.codec).launch()
        ));
        // Live, timestamped on arrival: the media runs on the server's clock, whatever the
        // stream's own timestamps, so a viewer that joins late starts at "now".
        let launch = format!(
            "( appsrc name=src is-live=true format=time do-timestamp=true block=false ! {} )",
            chain.join(" ! ")
        );
        // Fail here, not when the first viewer connects, if an element is missing.
        gst::parse::launch(launch.trim_start_matches("( ").trim_end_matches(" )")).map_err(
            |e| StageError::Runtime(format!("cannot build the RTSP media pipeline: {e}")),
        )?;
        let queue_frames = settings.rtsp_queue_frames as u64;
        let feeds: BTreeMap<u32, Arc<Feed>> = sources
            .iter()
            .enumerate()
            .map(|(id, name)| {
                let mount = if sources.len() == 1 {
                    path.to_string()
                } else {
                    format!("{path}/{name}")
                };
                (id as u32, Feed::new(mount, queue_frames))
            })
            .collect();
        let base = if host.contains(':') {
            format!("rtsp://[{host}]:{port}")
        } else {
            format!("rtsp://{host}:{port}")
        };
        type Started = Result<(glib::MainLoop, rtsp::RTSPMountPoints), String>;
        let (tx, rx) = mpsc::channel::<Started>();
        let (host_owned, mounts, media) = (host.to_string(), feeds.clone(), launch.clone());
        let thread = std::thread::Builder::new()
            .name(format!("rtsp-{port}"))
            .spawn(move || {
                let context = glib::MainContext::new();
                let main_loop = glib::MainLoop::new(Some(&context), false);
                let served = context.with_thread_default(|| {
                    let server = rtsp::RTSPServer::new();
                    server.set_address(&host_owned);
                    server.set_service(&port.to_string());
                    let Some(points) = server.mount_points() else {
                        let _ = tx.send(Err("the server has no mount points".into()));
                        return;
                    };
                    for feed in mounts.values() {
                        points.add_factory(&feed.mount, media_factory(&media, feed.clone()));
                    }
                    // Binding happens here: a port in use fails now, with the OS's reason.
                    let source = match server.create_source(None::<&rtsp::gio::Cancellable>) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    source.attach(Some(&context));
                    let _ = tx.send(Ok((main_loop.clone(), points)));
                    main_loop.run();
                    // Stopping: disconnect every viewer so their media shut down.
                    server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
                });
                if served.is_err() {
                    tracing::error!("the RTSP server could not own its main context");
                }
            })
            .map_err(|e| StageError::runtime("cannot start the RTSP server thread", e))?;
        let (main_loop, points) = match rx.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(StageError::Runtime(format!(
                    "cannot serve RTSP on {host}:{port}: {e} (is another program using port {port}?)"
                )));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StageError::Runtime(format!(
                    "cannot serve RTSP on {host}:{port}: the server thread ended"
                )));
            }
        };
        for feed in feeds.values() {
            tracing::info!(url = %format!("{base}{}", feed.mount), "serving RTSP");
        }
        Ok(Self {
            main_loop,
            thread: Some(thread),
            points,
            launch,
            path: path.to_string(),
            queue_frames,
            feeds,
            base,
        })
    }

    /// The feed of a source, mounting one at `path/<name>` for a source the topology did not
    /// declare (one added while the pipeline runs).
    pub fn feed(&mut self, source_id: u32, name: &str) -> Arc<Feed> {
        if let Some(feed) = self.feeds.get(&source_id) {
            return feed.clone();
        }
        let feed = Feed::new(format!("{}/{name}", self.path), self.queue_frames);
        // Mount points are locked internally: adding from this thread while the server's
        // thread serves is what gst-rtsp-server supports.
        self.points
            .add_factory(&feed.mount, media_factory(&self.launch, feed.clone()));
        tracing::info!(url = %format!("{}{}", self.base, feed.mount), "serving RTSP");
        self.feeds.insert(source_id, feed.clone());
        feed
    }
}

impl Drop for RtspOutput {
    fn drop(&mut self) {
        for feed in self.feeds.values() {
            feed.end();
        }
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A shared media factory whose media pipelines report their appsrc to `feed`.
fn media_factory(launch: &str, feed: Arc<Feed>) -> rtsp::RTSPMediaFactory {
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(launch);
    factory.set_shared(true);
    factory.connect_media_configure(move |_, media| {
        let Some(appsrc) = media
            .element()
            .downcast::<gst::Bin>()
            .ok()
            .and_then(|bin| bin.by_name("src"))
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        else {
            tracing::error!(mount = %feed.mount, "RTSP media has no appsrc named `src`");
            return;
        };
        feed.attach(appsrc.clone());
        let feed = feed.clone();
        media.connect_unprepared(move |_| feed.detach(&appsrc));
    });
    factory
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let t: toml::Table = toml::from_str("uri = 'rtsp://127.0.0.1:8554/live'").unwrap();
        crate::settings::parse(&t).unwrap()
    }

    #[test]
    fn one_mount_per_source() {
        let one = RtspOutput::start("127.0.0.1", 0, "/live", &["cam".into()], &settings()).unwrap();
        assert_eq!(one.feeds[&0].mount, "/live");
        let names = ["front".to_string(), "back".to_string()];
        let mut two = RtspOutput::start("127.0.0.1", 0, "/live", &names, &settings()).unwrap();
        // A source added at run time gets its own mount.
        assert_eq!(two.feed(5, "side").mount, "/live/side");
        assert_eq!(two.feed(0, "front").mount, "/live/front");
        let mounts: Vec<_> = two.feeds.values().map(|f| f.mount.as_str()).collect();
        assert_eq!(mounts, ["/live/front", "/live/back", "/live/side"]);
        // Nobody watches yet: frames have nowhere to go.
        assert_eq!(two.feeds[&0].viewers_media(), 0);
    }

    #[test]
    fn a_port_in_use_names_the_port() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = RtspOutput::start("127.0.0.1", port, "/live", &["cam".into()], &settings())
            .err()
            .expect("the port is taken")
            .to_string();
        assert!(
            err.contains(&port.to_string()) && err.contains("in use"),
            "{err}"
        );
    }
}
