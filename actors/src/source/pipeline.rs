//! The GStreamer pipeline of each source kind. Every kind ends in the same RGB appsink, so the
//! frame loop, stall watch, reconnects and timeline in `mod.rs` serve all of them alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::uri::{ImageSequence, RtpEncoding, SourceUri, TestPattern, UdpStream, V4l2Device};
use super::{RtspTransport, Settings};
use crate::gst_util;
use crate::stage::StageError;

/// A built source pipeline; dropping it stops it.
pub(super) struct SourcePipeline {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
    pub bus: gst::Bus,
    pub watch: Arc<PipelineWatch>,
}

impl Drop for SourcePipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// What the pipeline's own elements observed, for the frame loop's diagnoses.
#[derive(Debug, Default)]
pub(super) struct PipelineWatch {
    /// Buffers that left the source element: data arriving, whether it decodes or not.
    pub data_buffers: AtomicU64,
    /// Caps of a video stream no installed decoder takes.
    undecodable: Mutex<Option<String>>,
    /// Image sequences: files read, and frames the decoder made of them.
    images_read: AtomicU64,
    images_decoded: AtomicU64,
}

impl PipelineWatch {
    /// The failure to report for the error GStreamer posted: a missing decoder is named with
    /// the stream's caps rather than GStreamer's generic "missing a plug-in".
    pub fn explain(&self, bus_error: String) -> String {
        match self.undecodable.lock().ok().and_then(|c| c.clone()) {
            Some(caps) => format!(
                "no installed GStreamer plugin decodes its video stream (caps: {caps}); install the plugin for this codec or transcode the stream"
            ),
            None => bus_error,
        }
    }

    /// At the end of an image sequence: every file read must have become a frame (decoders
    /// drop undecodable images without an error).
    pub fn check_images(&self, images: &ImageSequence) -> Result<(), String> {
        let read = self.images_read.load(Ordering::Relaxed);
        let decoded = self.images_decoded.load(Ordering::Relaxed);
        if decoded < read {
            return Err(format!(
                "{} of the {read} images from {} to {} did not decode into a frame",
                read - decoded,
                images.file(images.start_index).display(),
                images
                    .file(images.start_index + read.saturating_sub(1) as u32)
                    .display()
            ));
        }
        Ok(())
    }
}

/// Builds the decode pipeline for `uri`.
pub(super) fn build(uri: &SourceUri, settings: &Settings) -> Result<SourcePipeline, StageError> {
    gst_util::init()?;
    let pipeline = gst::Pipeline::new();
    let watch = Arc::new(PipelineWatch::default());
    let convert = gst_util::make("videoconvert")?;
    let sink = rgb_appsink();
    pipeline
        .add_many([&convert, sink.upcast_ref()])
        .map_err(|e| StageError::runtime("cannot assemble the source pipeline", e))?;
    convert
        .link(&sink)
        .map_err(|e| StageError::runtime("cannot link videoconvert to appsink", e))?;
    match uri {
        SourceUri::Test(t) => test_pattern(&pipeline, &convert, t)?,
        SourceUri::Udp(u) => udp(&pipeline, &convert, u, settings, &watch)?,
        SourceUri::V4l2(d) => v4l2(&pipeline, &convert, d, &watch)?,
        SourceUri::Images(i) => images(&pipeline, &convert, i, &watch)?,
        SourceUri::File(_) | SourceUri::Rtsp(_) | SourceUri::Http(_) => {
            uri_decode(&pipeline, &convert, uri, settings, &watch)?
        }
    }
    let bus = pipeline
        .bus()
        .ok_or_else(|| StageError::Runtime("pipeline has no bus".into()))?;
    Ok(SourcePipeline {
        pipeline,
        sink,
        bus,
        watch,
    })
}

/// The first error waiting on the bus, as one line. An HTTP failure's status is in the debug
/// text only; it is taken from there (without the URL GStreamer prints next to it, which may
/// hold credentials).
pub(super) fn pending_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = msg.view() {
            let element = err
                .src()
                .map(|s| s.name().to_string())
                .unwrap_or_else(|| "pipeline".into());
            let http_status = err.debug().and_then(|d| {
                let last = d.lines().last()?.to_string();
                let (status, _) = last.split_once(", URL:")?;
                status.contains('(').then(|| status.to_string())
            });
            let message = http_status.unwrap_or_else(|| err.error().to_string());
            return Some(format!("{message} (from {element})"));
        }
    }
    None
}

/// The appsink every source pipeline ends in: packed RGB, a few frames of slack.
fn rgb_appsink() -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .caps(
            &gst_video::VideoCapsBuilder::new()
                .format(gst_video::VideoFormat::Rgb)
                .build(),
        )
        .sync(false)
        .max_buffers(4)
        .build()
}

fn add_and_link(pipeline: &gst::Pipeline, chain: &[&gst::Element]) -> Result<(), StageError> {
    pipeline
        .add_many(chain.iter().copied())
        .map_err(|e| StageError::runtime("cannot assemble the source pipeline", e))?;
    gst::Element::link_many(chain.iter().copied())
        .map_err(|e| StageError::runtime("cannot link the source pipeline", e))
}

/// Counts the buffers leaving `pad`: evidence that data arrives.
fn count_buffers(pad: &gst::Pad, watch: &Arc<PipelineWatch>) {
    let watch = watch.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        watch.data_buffers.fetch_add(1, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
}

fn test_pattern(
    pipeline: &gst::Pipeline,
    convert: &gst::Element,
    t: &TestPattern,
) -> Result<(), StageError> {
    let src = gst_util::make("videotestsrc")?;
    src.set_property_from_str("pattern", &t.pattern);
    src.set_property("is-live", t.live);
    if let Some(n) = t.frames {
        src.set_property("num-buffers", n as i32);
    }
    let caps = gst_util::make("capsfilter")?;
    caps.set_property(
        "caps",
        gst_video::VideoCapsBuilder::new()
            .width(t.width as i32)
            .height(t.height as i32)
            .framerate(gst::Fraction::new(t.fps as i32, 1))
            .build(),
    );
    add_and_link(pipeline, &[&src, &caps])?;
    caps.link(convert)
        .map_err(|e| StageError::runtime("cannot link the test pattern", e))
}

/// `uridecodebin` for everything GStreamer opens by URI: files, RTSP, HTTP (files and HLS).
fn uri_decode(
    pipeline: &gst::Pipeline,
    convert: &gst::Element,
    uri: &SourceUri,
    settings: &Settings,
    watch: &Arc<PipelineWatch>,
) -> Result<(), StageError> {
    let decode = gst_util::make("uridecodebin")?;
    decode.set_property("uri", uri.gst_uri());
    pipeline
        .add(&decode)
        .map_err(|e| StageError::runtime("cannot assemble the decode pipeline", e))?;
    let (latency, transport, timeout) =
        (settings.latency, settings.rtsp_transport, settings.timeout);
    let source_watch = watch.clone();
    decode.connect("source-setup", false, move |args| {
        if let Ok(src) = args[1].get::<gst::Element>() {
            configure_network_source(&src, latency, transport, timeout);
            if let Some(pad) = src.static_pad("src") {
                count_buffers(&pad, &source_watch);
            }
        }
        None
    });
    link_decoded_video(&decode, convert, watch);
    Ok(())
}

/// Links the first decoded video pad `bin` (a decodebin or uridecodebin) exposes to
/// `convert`; notes a video stream no decoder takes, and fails a stream without video.
fn link_decoded_video(bin: &gst::Element, convert: &gst::Element, watch: &Arc<PipelineWatch>) {
    let convert_weak = convert.downgrade();
    bin.connect_pad_added(move |_, pad| {
        let is_video = pad
            .current_caps()
            .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
            .unwrap_or(false);
        let Some(convert) = convert_weak.upgrade() else {
            return;
        };
        if let Some(sink_pad) = convert
            .static_pad("sink")
            .filter(|p| is_video && !p.is_linked())
        {
            if let Err(e) = pad.link(&sink_pad) {
                tracing::warn!(error = ?e, "could not link decoded video pad");
            }
        }
    });
    let unknown_watch = watch.clone();
    bin.connect("unknown-type", false, move |args| {
        if let Ok(caps) = args[2].get::<gst::Caps>() {
            let is_video = caps
                .structure(0)
                .is_some_and(|s| s.name().starts_with("video/") || s.name().starts_with("image/"));
            if is_video {
                // Codec data can be kilobytes of hex: the codec and its shape are what matter.
                let mut text = caps.to_string();
                if text.len() > 240 {
                    let cut = (0..=240).rev().find(|i| text.is_char_boundary(*i));
                    text.truncate(cut.unwrap_or(0));
                    text.push('…');
                }
                if let Ok(mut slot) = unknown_watch.undecodable.lock() {
                    slot.get_or_insert(text);
                }
            }
        }
        None
    });
    let convert_weak = convert.downgrade();
    bin.connect("no-more-pads", false, move |args| {
        let linked = convert_weak
            .upgrade()
            .and_then(|c| c.static_pad("sink"))
            .is_some_and(|p| p.is_linked());
        if let (false, Ok(bin)) = (linked, args[0].get::<gst::Element>()) {
            gst::element_error!(
                bin,
                gst::StreamError::WrongType,
                ("the stream has no video track")
            );
        }
        None
    });
}

/// RTP over UDP: udpsrc → jitter buffer → depayloader → parser → decodebin.
fn udp(
    pipeline: &gst::Pipeline,
    convert: &gst::Element,
    u: &UdpStream,
    settings: &Settings,
    watch: &Arc<PipelineWatch>,
) -> Result<(), StageError> {
    let encoding = u
        .encoding
        .ok_or_else(|| StageError::Settings(format!("{u}: no RTP encoding (set `encoding`)")))?;
    let src = gst_util::make("udpsrc")?;
    src.set_property("address", u.address.to_string());
    src.set_property("port", i32::from(u.port));
    let mut caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("clock-rate", 90_000i32)
        .field("encoding-name", encoding.name());
    if let Some(pt) = u.payload {
        caps = caps.field("payload", i32::from(pt));
    }
    src.set_property("caps", caps.build());
    if let Some(iface) = &u.multicast_iface {
        src.set_property("multicast-iface", iface);
    }
    let jitter = gst_util::make("rtpjitterbuffer")?;
    jitter.set_property(
        "latency",
        settings.latency.as_millis().min(u32::MAX as u128) as u32,
    );
    let (depay, parse) = match encoding {
        RtpEncoding::H264 => ("rtph264depay", "h264parse"),
        RtpEncoding::H265 => ("rtph265depay", "h265parse"),
    };
    let depay = gst_util::make(depay)?;
    let parse = gst_util::make(parse)?;
    let decode = gst_util::make("decodebin")?;
    add_and_link(pipeline, &[&src, &jitter, &depay, &parse, &decode])?;
    if let Some(pad) = src.static_pad("src") {
        count_buffers(&pad, watch);
    }
    link_decoded_video(&decode, convert, watch);
    Ok(())
}

/// A V4L2 camera: v4l2src → (requested mode) → decodebin, which passes raw video through and
/// decodes the MJPEG/H.264 modes many USB cameras offer.
fn v4l2(
    pipeline: &gst::Pipeline,
    convert: &gst::Element,
    d: &V4l2Device,
    watch: &Arc<PipelineWatch>,
) -> Result<(), StageError> {
    d.check().map_err(StageError::Runtime)?;
    let src = gst_util::make("v4l2src")?;
    src.set_property("device", d.device.to_string_lossy().as_ref());
    let filter = gst_util::make("capsfilter")?;
    let mut caps = gst::Caps::new_empty();
    for media in ["video/x-raw", "image/jpeg", "video/x-h264"] {
        let mut s = gst::Structure::new_empty(media);
        if let Some(w) = d.width {
            s.set("width", w as i32);
        }
        if let Some(h) = d.height {
            s.set("height", h as i32);
        }
        if let Some(f) = d.fps {
            s.set("framerate", gst::Fraction::new(f as i32, 1));
        }
        caps.get_mut()
            .expect("a new caps is writable")
            .append_structure(s);
    }
    filter.set_property("caps", caps);
    let decode = gst_util::make("decodebin")?;
    add_and_link(pipeline, &[&src, &filter, &decode])?;
    if let Some(pad) = src.static_pad("src") {
        count_buffers(&pad, watch);
    }
    link_decoded_video(&decode, convert, watch);
    Ok(())
}

/// Numbered image files: multifilesrc → jpegdec/pngdec. Each file is checked to be a whole
/// image as it is read, since the decoders skip damaged ones without a word.
fn images(
    pipeline: &gst::Pipeline,
    convert: &gst::Element,
    seq: &ImageSequence,
    watch: &Arc<PipelineWatch>,
) -> Result<(), StageError> {
    let src = gst_util::make("multifilesrc")?;
    src.set_property("location", seq.pattern.to_string_lossy().as_ref());
    src.set_property("start-index", seq.start_index as i32);
    src.set_property("index", seq.start_index as i32);
    src.set_property(
        "caps",
        gst::Caps::builder(seq.format.media_type())
            .field(
                "framerate",
                gst::Fraction::new(seq.fps.0 as i32, seq.fps.1 as i32),
            )
            .build(),
    );
    let decoder = gst_util::make(seq.format.decoder())?;
    add_and_link(pipeline, &[&src, &decoder])?;
    decoder
        .link(convert)
        .map_err(|e| StageError::runtime("cannot link the image decoder", e))?;

    let src_pad = src
        .static_pad("src")
        .ok_or_else(|| StageError::Runtime("multifilesrc has no src pad".into()))?;
    let (read_watch, seq_read) = (watch.clone(), seq.clone());
    src_pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        // multifilesrc reads one whole file per buffer, in order from start_index.
        let n = read_watch.images_read.fetch_add(1, Ordering::Relaxed);
        read_watch.data_buffers.fetch_add(1, Ordering::Relaxed);
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let verdict = buffer
            .map_readable()
            .map_err(|_| "it cannot be read")
            .and_then(|m| seq_read.format.check_complete(m.as_slice()));
        match verdict {
            Ok(()) => gst::PadProbeReturn::Ok,
            Err(why) => {
                let file = seq_read.file(seq_read.start_index + n as u32);
                if let Some(element) = pad.parent_element() {
                    gst::element_error!(
                        element,
                        gst::StreamError::Decode,
                        ("image {} is damaged: {why}", file.display())
                    );
                }
                // Stop the sequence here: no frame after the damaged image is delivered.
                info.flow_res = Err(gst::FlowError::Error);
                gst::PadProbeReturn::Handled
            }
        }
    });
    let decoded_watch = watch.clone();
    decoder
        .static_pad("src")
        .ok_or_else(|| StageError::Runtime("the image decoder has no src pad".into()))?
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            decoded_watch.images_decoded.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    Ok(())
}

/// Applies latency, transport and timeouts to the network source uridecodebin made, with
/// each element's own property types and units.
fn configure_network_source(
    src: &gst::Element,
    latency: std::time::Duration,
    transport: Option<RtspTransport>,
    timeout: std::time::Duration,
) {
    let factory = src.factory().map(|f| f.name().to_string());
    match factory.as_deref() {
        Some("rtspsrc") => {
            src.set_property("latency", latency.as_millis().min(u32::MAX as u128) as u32);
            if let Some(t) = transport {
                src.set_property_from_str(
                    "protocols",
                    if t == RtspTransport::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    },
                );
            }
            // Microseconds, as guint64.
            let micros = timeout.as_micros().min(u64::MAX as u128) as u64;
            src.set_property("tcp-timeout", micros);
            src.set_property("timeout", micros);
        }
        Some("souphttpsrc") => {
            // Whole seconds, as guint (0 would mean "no timeout").
            src.set_property(
                "timeout",
                (timeout.as_secs().max(1)).min(u32::MAX as u64) as u32,
            );
        }
        _ => {}
    }
}
