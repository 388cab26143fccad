//! Sources: `[[source]]` entries of a topology. Each runs a GStreamer `uridecodebin` (demux +
//! decode of whatever GStreamer can play) into an appsink delivering RGB frames, and sends
//! one single-frame batch per decoded frame downstream, then an end-of-stream notice.
//!
//! Supported URIs: `file://PATH` (relative paths start at the working directory) and
//! `rtsp://[user:pass@]host[:port]/path`. Credentials are never printed.
//!
//! A camera that drops, stalls or ends its stream is reconnected when `reconnect_interval` is
//! set (DeepStream's `rtsp-reconnect-interval-sec`): the decode pipeline is built anew after a
//! backoff, frame numbers go on where they stopped, and the rest of the pipeline never notices
//! beyond the gap.

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
pub use uri::{redact, SourceUri, TestPattern, TEST_PATTERNS};

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
    /// RTSP: reconnect after a failure, a stall (no frame for `timeout`) or the end of the
    /// stream, first after this long, then doubling up to [`MAX_RECONNECT_WAIT`]. Unset: the
    /// first failure ends the source.
    #[serde(default, with = "humantime_serde")]
    pub reconnect_interval: Option<Duration>,
    /// Give up after this many reconnects in a row without a frame. Unset: never.
    #[serde(default)]
    pub reconnect_attempts: Option<u32>,
    /// File sources: start again from the beginning at the end (DeepStream's `file-loop`),
    /// frame numbers and timestamps going on, until the pipeline is stopped.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Deliver at most this many frames per second of stream time, dropping the others
    /// (evenly, by timestamp). Unset: every frame.
    #[serde(default)]
    pub max_fps: Option<f64>,
}

/// The longest wait between two reconnect attempts.
pub const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(30);

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
        if s.reconnect_interval.is_some() && !matches!(uri, SourceUri::Rtsp(_)) {
            return Err(StageError::Settings(format!(
                "source `{}`: reconnect_interval applies to rtsp:// sources only",
                s.id
            )));
        }
        if s.looping && !matches!(uri, SourceUri::File(_)) {
            return Err(StageError::Settings(format!(
                "source `{}`: loop applies to file:// sources only",
                s.id
            )));
        }
        if s.max_fps.is_some_and(|f| !(f.is_finite() && f > 0.0)) {
            return Err(StageError::Settings(format!(
                "source `{}`: max_fps must be a positive number",
                s.id
            )));
        }
        if s.reconnect_interval.is_some_and(|i| i.is_zero()) {
            return Err(StageError::Settings(format!(
                "source `{}`: reconnect_interval must be more than 0",
                s.id
            )));
        }
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
    /// Reconnects so far.
    pub reconnects: AtomicU64,
    /// True from a failure until the first frame after the reconnect.
    pub reconnecting: AtomicBool,
}

/// How a source ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReport {
    pub frames: u64,
    /// Times the source reconnected to its camera.
    pub reconnects: u64,
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
        let error = self
            .decode_reconnecting(out, stop, progress, &mut frames)
            .err();
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
            reconnects: progress.reconnects.load(Ordering::Relaxed),
            error: error.map(|e| e.to_string()),
        }
    }

    /// [`Self::decode`], built anew after each failure while `reconnect_interval` allows.
    fn decode_reconnecting(
        &self,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
        frames: &mut u64,
    ) -> Result<(), StageError> {
        let mut timeline = Timeline::default();
        if self.settings.looping {
            while !stop.load(Ordering::Relaxed) {
                timeline.new_session();
                let before = *frames;
                self.decode(out, stop, progress, frames, &mut timeline)?;
                if *frames == before {
                    // Nothing decodable: looping would spin.
                    return Ok(());
                }
            }
            return Ok(());
        }
        let Some(interval) = self.settings.reconnect_interval else {
            return self.decode(out, stop, progress, frames, &mut timeline);
        };
        let mut failed_in_a_row = 0u32;
        loop {
            let before = *frames;
            timeline.new_session();
            let why = match self.decode(out, stop, progress, frames, &mut timeline) {
                _ if stop.load(Ordering::Relaxed) => return Ok(()),
                // Downstream closed: nothing left to reconnect for.
                Err(e @ StageError::Downstream(_)) => return Err(e),
                Err(e) => e.to_string(),
                // A camera does not end its stream; a server that did is asked again.
                Ok(()) => format!("the stream of {} ended", self.uri.display()),
            };
            if *frames > before {
                failed_in_a_row = 0;
            }
            failed_in_a_row += 1;
            if self
                .settings
                .reconnect_attempts
                .is_some_and(|limit| failed_in_a_row > limit)
            {
                return Err(StageError::Runtime(format!(
                    "{why}; gave up after {} reconnect attempts without a frame",
                    failed_in_a_row - 1
                )));
            }
            let wait = reconnect_wait(interval, failed_in_a_row);
            tracing::warn!(
                source = %self.settings.id,
                attempt = failed_in_a_row,
                "{why}; reconnecting in {wait:?}"
            );
            progress.reconnecting.store(true, Ordering::Relaxed);
            progress.reconnects.fetch_add(1, Ordering::Relaxed);
            let until = std::time::Instant::now() + wait;
            while std::time::Instant::now() < until {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn decode(
        &self,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
        frames: &mut u64,
        timeline: &mut Timeline,
    ) -> Result<(), StageError> {
        gst_util::init()?;
        let pipeline = gst::Pipeline::new();
        if let SourceUri::Test(t) = &self.uri {
            let convert = gst_util::make("videoconvert")?;
            let sink = rgb_appsink();
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
            pipeline
                .add_many([&src, &caps, &convert, sink.upcast_ref()])
                .map_err(|e| StageError::runtime("cannot assemble the test pipeline", e))?;
            gst::Element::link_many([&src, &caps, &convert, sink.upcast_ref()])
                .map_err(|e| StageError::runtime("cannot link the test pipeline", e))?;
            let bus = pipeline
                .bus()
                .ok_or_else(|| StageError::Runtime("pipeline has no bus".into()))?;
            let result = self.pump(
                &pipeline, &sink, &bus, out, stop, progress, frames, timeline,
            );
            let _ = pipeline.set_state(gst::State::Null);
            return result;
        }
        let decode = gst_util::make("uridecodebin")?;
        decode.set_property("uri", self.uri.gst_uri());
        let convert = gst_util::make("videoconvert")?;
        let sink = rgb_appsink();
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
        let result = self.pump(
            &pipeline, &sink, &bus, out, stop, progress, frames, timeline,
        );
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
        timeline: &mut Timeline,
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
                    progress.reconnecting.store(false, Ordering::Relaxed);
                    if !duration_known {
                        if let Some(d) = pipeline.query_duration::<gst::ClockTime>() {
                            progress.duration_ns.store(d.nseconds(), Ordering::Relaxed);
                        }
                        duration_known = true;
                    }
                    let pts = sample
                        .buffer()
                        .and_then(|b| b.pts())
                        .map_or(0, |t| t.nseconds());
                    if !timeline.admit(pts, self.settings.max_fps) {
                        continue;
                    }
                    let mut frame = self.frame_from_sample(&sample, *frames)?;
                    frame.pts_ns = timeline.place(frame.pts_ns, frame.duration_ns);
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

/// Keeps presentation times increasing across reconnects: a new session's timestamps start
/// again near 0, so they are moved to continue one frame after the last frame delivered.
#[derive(Debug, Default)]
struct Timeline {
    /// Added to this session's timestamps (relative to its first).
    offset_ns: u64,
    /// The first timestamp of this session; `None` until its first frame.
    session_first: Option<u64>,
    /// Whether this is a session after a reconnect (the first keeps its own timestamps).
    rebased: bool,
    /// The end of the last frame delivered.
    end_ns: u64,
    /// With `max_fps`: the decoder timestamp (this session) before which frames are dropped.
    next_admit_ns: Option<u64>,
}

impl Timeline {
    fn new_session(&mut self) {
        if self.end_ns > 0 {
            self.rebased = true;
            self.offset_ns = self.end_ns;
        }
        self.session_first = None;
        self.next_admit_ns = None;
    }

    /// Whether a frame the decoder stamped `pts_ns` is delivered under `max_fps`: frames are
    /// kept on a grid of 1/max_fps seconds, so the kept ones are spread evenly.
    fn admit(&mut self, pts_ns: u64, max_fps: Option<f64>) -> bool {
        let Some(fps) = max_fps else {
            return true;
        };
        let step = (1e9 / fps) as u64;
        match self.next_admit_ns {
            // Within a millisecond counts as on time: container timestamps are rounded.
            Some(next) if pts_ns + 1_000_000 < next => false,
            Some(next) => {
                // Stay on the grid unless the stream jumped past it.
                let grid = next + step;
                self.next_admit_ns = Some(if grid > pts_ns { grid } else { pts_ns + step });
                true
            }
            None => {
                self.next_admit_ns = Some(pts_ns.saturating_add(step));
                true
            }
        }
    }

    /// The pipeline timestamp of a frame the decoder stamped `pts_ns`.
    fn place(&mut self, pts_ns: u64, duration_ns: u64) -> u64 {
        let placed = if self.rebased {
            let first = *self.session_first.get_or_insert(pts_ns);
            self.offset_ns + pts_ns.saturating_sub(first)
        } else {
            pts_ns
        };
        // An unknown duration counts as one 30 fps frame, so the next session starts after it.
        self.end_ns = self.end_ns.max(
            placed
                + if duration_ns > 0 {
                    duration_ns
                } else {
                    33_333_333
                },
        );
        placed
    }
}

/// The wait before reconnect attempt `attempt` (1-based): `interval`, doubling, at most
/// [`MAX_RECONNECT_WAIT`].
fn reconnect_wait(interval: Duration, attempt: u32) -> Duration {
    interval
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
        .min(MAX_RECONNECT_WAIT)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_double_up_to_the_limit() {
        let i = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=7).map(|a| reconnect_wait(i, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(reconnect_wait(i, u32::MAX), MAX_RECONNECT_WAIT);
    }

    #[test]
    fn max_fps_keeps_frames_evenly_by_timestamp() {
        let mut t = Timeline::default();
        let frame = 33_333_333u64; // 30 fps
        let kept: Vec<u64> = (0..30).filter(|i| t.admit(i * frame, Some(5.0))).collect();
        assert_eq!(kept, [0, 6, 12, 18, 24]);
        let mut all = Timeline::default();
        assert!((0..30).all(|i| all.admit(i * frame, None)));
        // A jump ahead restarts the grid instead of letting a burst through.
        let mut j = Timeline::default();
        assert!(j.admit(0, Some(10.0)));
        assert!(j.admit(5_000_000_000, Some(10.0)));
        assert!(!j.admit(5_050_000_000, Some(10.0)));
        assert!(j.admit(5_100_000_000, Some(10.0)));
    }

    #[test]
    fn timestamps_continue_across_sessions() {
        let mut t = Timeline::default();
        t.new_session();
        // The first session keeps the decoder's timestamps.
        assert_eq!(t.place(5_000, 1_000), 5_000);
        assert_eq!(t.place(6_000, 1_000), 6_000);
        // After a reconnect the server starts near 0 again: placed after the last frame.
        t.new_session();
        assert_eq!(t.place(100, 1_000), 7_000);
        assert_eq!(t.place(1_100, 1_000), 8_000);
        t.new_session();
        assert_eq!(t.place(0, 0), 9_000);
        assert_eq!(t.place(33_333_333, 0), 9_000 + 33_333_333);
    }
}
