//! Sources: `[[source]]` entries of a topology. Each runs a GStreamer `uridecodebin` (demux +
//! decode of whatever GStreamer can play) into an appsink delivering RGB frames, and sends
//! one single-frame batch per decoded frame downstream, then an end-of-stream notice.
//!
//! Supported URIs: `file://PATH` (relative paths start at the working directory) and
//! `rtsp://[user:pass@]host[:port]/path`. Credentials are never printed.

mod uri;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use serde::Deserialize;
use vidmesh_protocol::{Batch, FrameMeta, ImageLayout, PayloadRef, PixelFormat, StreamEnd};

use crate::gst_util;
use crate::stage::{BuildContext, Outputs, StageError};
pub use uri::{redact, SourceUri};

/// RTSP lower transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    Tcp,
    Udp,
}

/// One `[[source]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The source's name: the `sensorId` of its events and `{source}` in output paths.
    pub id: String,
    pub uri: String,
    /// RTSP jitter-buffer latency. Default "200ms".
    #[serde(default = "latency_default", with = "humantime_serde")]
    pub latency: Duration,
    /// RTSP transport; default lets GStreamer try UDP then TCP.
    #[serde(default)]
    pub rtsp_transport: Option<RtspTransport>,
    /// How long to wait for a network source to answer. Default "10s".
    #[serde(default = "timeout_default", with = "humantime_serde")]
    pub timeout: Duration,
}

fn latency_default() -> Duration {
    Duration::from_millis(200)
}
fn timeout_default() -> Duration {
    Duration::from_secs(10)
}

impl Settings {
    /// Parses a `[[source]]` table and checks its URI (a file source's file must exist).
    pub fn load(table: &toml::Table, ctx: &BuildContext) -> Result<(Self, SourceUri), StageError> {
        let s: Settings = crate::settings::parse(table)?;
        if s.id.is_empty() {
            return Err(StageError::Settings("source id must not be empty".into()));
        }
        let uri = SourceUri::parse(&s.uri, ctx)?;
        Ok((s, uri))
    }
}

/// Live counters the runner reads for progress lines.
#[derive(Debug, Default)]
pub struct SourceProgress {
    pub frames: AtomicU64,
    /// Timestamp of the newest frame.
    pub position_ns: AtomicU64,
    /// Stream duration when the container knows it; 0 otherwise (live).
    pub duration_ns: AtomicU64,
}

/// How a source ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReport {
    pub frames: u64,
    /// The error that ended the stream early, if any. Frames before it were delivered.
    pub error: Option<String>,
}

/// A source ready to run on its own thread.
pub struct GstSource {
    settings: Settings,
    uri: SourceUri,
    source_id: u32,
}

impl GstSource {
    pub fn new(settings: Settings, uri: SourceUri, source_id: u32) -> Self {
        Self {
            settings,
            uri,
            source_id,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.id
    }

    /// Decodes until end of stream, error, or `stop`; always ends with an end-of-stream notice
    /// downstream so per-stream consumers can finalise what they have.
    pub fn run(
        &mut self,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
    ) -> SourceReport {
        let mut frames = 0u64;
        let error = self.decode(out, stop, progress, &mut frames).err();
        let notice = out.end_of_stream(StreamEnd {
            source_id: self.source_id,
            source_name: self.settings.id.clone(),
            frames,
        });
        // A closed downstream is a consequence of another failure, not this source's.
        let error = match error {
            Some(StageError::Downstream(_)) | None => notice
                .err()
                .filter(|e| !matches!(e, StageError::Downstream(_))),
            Some(e) => Some(e),
        };
        SourceReport {
            frames,
            error: error.map(|e| e.to_string()),
        }
    }

    fn decode(
        &self,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
        frames: &mut u64,
    ) -> Result<(), StageError> {
        gst_util::init()?;
        let pipeline = gst::Pipeline::new();
        let decode = gst_util::make("uridecodebin")?;
        decode.set_property("uri", self.uri.gst_uri());
        let convert = gst_util::make("videoconvert")?;
        let sink = gst_app::AppSink::builder()
            .caps(
                &gst_video::VideoCapsBuilder::new()
                    .format(gst_video::VideoFormat::Rgb)
                    .build(),
            )
            .sync(false)
            .max_buffers(4)
            .build();
        pipeline
            .add_many([&decode, &convert, sink.upcast_ref()])
            .map_err(|e| StageError::runtime("cannot assemble the decode pipeline", e))?;
        convert
            .link(&sink)
            .map_err(|e| StageError::runtime("cannot link videoconvert to appsink", e))?;

        let (latency, transport, timeout) = (
            self.settings.latency,
            self.settings.rtsp_transport,
            self.settings.timeout,
        );
        decode.connect("source-setup", false, move |args| {
            if let Ok(src) = args[1].get::<gst::Element>() {
                configure_network_source(&src, latency, transport, timeout);
            }
            None
        });
        let convert_weak = convert.downgrade();
        decode.connect_pad_added(move |_, pad| {
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
        let convert_weak = convert.downgrade();
        decode.connect_no_more_pads(move |bin| {
            let linked = convert_weak
                .upgrade()
                .and_then(|c| c.static_pad("sink"))
                .is_some_and(|p| p.is_linked());
            if !linked {
                gst::element_error!(
                    bin,
                    gst::StreamError::WrongType,
                    ("the stream has no video track")
                );
            }
        });

        let bus = pipeline
            .bus()
            .ok_or_else(|| StageError::Runtime("pipeline has no bus".into()))?;
        let result = self.pump(&pipeline, &sink, &bus, out, stop, progress, frames);
        let _ = pipeline.set_state(gst::State::Null);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn pump(
        &self,
        pipeline: &gst::Pipeline,
        sink: &gst_app::AppSink,
        bus: &gst::Bus,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
        frames: &mut u64,
    ) -> Result<(), StageError> {
        let fail = |detail: String| {
            StageError::Runtime(format!("cannot read {}: {detail}", self.uri.display()))
        };
        if pipeline.set_state(gst::State::Playing).is_err() {
            return Err(fail(
                gst_util::pending_error(bus)
                    .unwrap_or_else(|| "the pipeline refused to start".into()),
            ));
        }
        let mut duration_known = false;
        // A network stream that stops sending is detected, not waited on forever.
        let stall_limit = matches!(self.uri, SourceUri::Rtsp(_)).then_some(self.settings.timeout);
        let mut last_frame = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                Some(sample) => {
                    last_frame = std::time::Instant::now();
                    if !duration_known {
                        if let Some(d) = pipeline.query_duration::<gst::ClockTime>() {
                            progress.duration_ns.store(d.nseconds(), Ordering::Relaxed);
                        }
                        duration_known = true;
                    }
                    let frame = self.frame_from_sample(&sample, *frames)?;
                    progress.position_ns.store(frame.pts_ns, Ordering::Relaxed);
                    *frames += 1;
                    progress.frames.store(*frames, Ordering::Relaxed);
                    out.emit(Batch {
                        batch_id: frame.frame_num,
                        frames: vec![frame],
                        tensors: Vec::new(),
                    })?;
                }
                None => {
                    // Frames decoded before an error were delivered above; now report it.
                    if let Some(error) = gst_util::pending_error(bus) {
                        return Err(fail(error));
                    }
                    if sink.is_eos() {
                        return check_complete(progress, *frames).map_err(fail);
                    }
                    if let Some(limit) = stall_limit.filter(|l| last_frame.elapsed() > *l) {
                        return Err(fail(format!(
                            "no frame for {:.1}s (timeout {:?}): the stream stalled after {} frames",
                            last_frame.elapsed().as_secs_f64(),
                            limit,
                            *frames
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn frame_from_sample(
        &self,
        sample: &gst::Sample,
        frame_num: u64,
    ) -> Result<FrameMeta, StageError> {
        let caps = sample
            .caps()
            .ok_or_else(|| StageError::Runtime("decoded sample without caps".into()))?;
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| StageError::runtime("unexpected decoded caps", e))?;
        let buffer = sample
            .buffer_owned()
            .ok_or_else(|| StageError::Runtime("decoded sample without buffer".into()))?;
        let pts_ns = buffer.pts().map(|t| t.nseconds()).unwrap_or(0);
        let duration_ns = buffer.duration().map(|t| t.nseconds()).unwrap_or(0);
        let layout = ImageLayout {
            format: PixelFormat::Rgb24,
            width: info.width(),
            height: info.height(),
            stride: info.stride()[0] as u32,
        };
        let mapped = buffer
            .into_mapped_buffer_readable()
            .map_err(|_| StageError::Runtime("cannot map decoded frame".into()))?;
        let ingest_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(FrameMeta {
            source_id: self.source_id,
            source_name: self.settings.id.clone(),
            frame_num,
            pts_ns,
            duration_ns,
            ntp_ns: None,
            ingest_ns,
            width: layout.width,
            height: layout.height,
            // The decoded buffer itself backs the frame: no copy.
            payload: PayloadRef::Inline {
                layout,
                data: Bytes::from_owner(mapped),
            },
            ..Default::default()
        })
    }
}

/// A damaged or truncated file often just ends early without any demuxer error; the container's
/// declared duration tells. More than two frame intervals missing at the end is reported.
fn check_complete(progress: &SourceProgress, frames: u64) -> Result<(), String> {
    let duration = progress.duration_ns.load(Ordering::Relaxed);
    let position = progress.position_ns.load(Ordering::Relaxed);
    if duration == 0 || frames < 2 {
        return Ok(());
    }
    let interval = (position / (frames - 1)).max(1_000_000);
    if position + 2 * interval < duration {
        return Err(format!(
            "the stream ended at {:.2}s of its {:.2}s: the file is truncated or damaged ({frames} frames were delivered)",
            position as f64 / 1e9,
            duration as f64 / 1e9
        ));
    }
    Ok(())
}

/// Applies latency, transport and timeouts to rtspsrc (and similar network sources).
fn configure_network_source(
    src: &gst::Element,
    latency: Duration,
    transport: Option<RtspTransport>,
    timeout: Duration,
) {
    if src.has_property("latency") {
        src.set_property("latency", latency.as_millis().min(u32::MAX as u128) as u32);
    }
    if let Some(t) = transport.filter(|_| src.has_property("protocols")) {
        src.set_property_from_str(
            "protocols",
            if t == RtspTransport::Tcp {
                "tcp"
            } else {
                "udp"
            },
        );
    }
    let micros = timeout.as_micros().min(u64::MAX as u128) as u64;
    for name in ["tcp-timeout", "timeout"] {
        if src.has_property(name) {
            src.set_property(name, micros);
        }
    }
}
