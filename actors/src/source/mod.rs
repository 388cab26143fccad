//! Sources: `[[source]]` entries of a topology. Each kind builds its own GStreamer decode
//! pipeline (`pipeline.rs`) ending in an appsink delivering RGB frames; one frame loop, shared by
//! every kind, sends one single-frame batch per decoded frame downstream, then an end-of-stream
//! notice.
//!
//! Supported URIs (`uri.rs`): `file://PATH`, `rtsp://[user:pass@]host[:port]/path`,
//! `http(s)://…` (files and HLS playlists), `udp://@[GROUP]:PORT?encoding=H264|H265` (RTP, also
//! `rtp://`), `v4l2:///dev/videoN`, `images://DIR/frame_%05d.jpg?fps=10`, `testsrc://PATTERN`.
//! Credentials are never printed.
//!
//! A camera or network stream that drops, stalls (no data for `timeout`) or ends is reconnected
//! when `reconnect_interval` is set (DeepStream's `rtsp-reconnect-interval-sec`): the decode
//! pipeline is built anew after a backoff, frame numbers and timestamps go on where they
//! stopped (`timeline.rs`), and the rest of the pipeline never notices beyond the gap.

mod params;
mod pipeline;
mod timeline;
mod uri;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_video as gst_video;
use serde::Deserialize;
use vidmesh_protocol::{Batch, FrameMeta, ImageLayout, PayloadRef, PixelFormat, StreamEnd};

use crate::stage::{BuildContext, Outputs, StageError};
use pipeline::SourcePipeline;
use timeline::Timeline;
pub use uri::{
    redact, ImageFormat, ImageSequence, RtpEncoding, SourceUri, TestPattern, UdpStream, V4l2Device,
    SCHEMES, TEST_PATTERNS,
};

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
    /// How long to wait for a network source to answer, and how long a camera or network
    /// stream may send nothing before it counts as stalled. Default "10s".
    #[serde(default = "timeout_default", with = "humantime_serde")]
    pub timeout: Duration,
    /// RTP/UDP sources: the codec in the packets ("H264" or "H265"), when the URI has no
    /// `?encoding=`.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Camera and network sources (rtsp, udp/rtp, http, v4l2): reconnect after a failure, a
    /// stall (no data for `timeout`) or the end of the stream, first after this long, then
    /// doubling up to [`MAX_RECONNECT_WAIT`]. Unset: the first failure ends the source.
    #[serde(default, with = "humantime_serde")]
    pub reconnect_interval: Option<Duration>,
    /// Give up after this many reconnects in a row without a frame. Unset: never.
    #[serde(default)]
    pub reconnect_attempts: Option<u32>,
    /// File, HTTP and image-sequence sources: start again from the beginning at the end (DeepStream's `file-loop`),
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
    /// Parses a `[[source]]` table and checks its URI (a file source's file, an image
    /// sequence's first image and, unless it may reconnect, a camera's device must exist).
    pub fn load(table: &toml::Table, ctx: &BuildContext) -> Result<(Self, SourceUri), StageError> {
        let s: Settings = crate::settings::parse(table)?;
        if s.id.is_empty() {
            return Err(StageError::Settings("source id must not be empty".into()));
        }
        let bad = |why: String| StageError::Settings(format!("source `{}`: {why}", s.id));
        let mut uri = SourceUri::parse(&s.uri, ctx)?;
        match (&mut uri, &s.encoding) {
            (SourceUri::Udp(udp), Some(name)) => {
                let encoding = RtpEncoding::parse(name).ok_or_else(|| {
                    bad(format!(
                        "unsupported encoding `{name}` (one of: {})",
                        RtpEncoding::NAMES
                    ))
                })?;
                if udp.encoding.is_some_and(|e| e != encoding) {
                    return Err(bad(format!(
                        "`encoding = \"{name}\"` contradicts the URI's `?encoding=`"
                    )));
                }
                udp.encoding = Some(encoding);
            }
            (SourceUri::Udp(udp), None) if udp.encoding.is_none() => {
                return Err(bad(format!(
                    "an RTP/UDP source needs the codec of its packets: add `?encoding=H264` to the URI or `encoding = \"H264\"` (one of: {})",
                    RtpEncoding::NAMES
                )));
            }
            (SourceUri::Udp(_), None) => {}
            (_, Some(_)) => {
                return Err(bad(
                    "`encoding` applies to udp:// and rtp:// sources only".into()
                ))
            }
            (_, None) => {}
        }
        if let SourceUri::Images(images) = &uri {
            let first = images.file(images.start_index);
            if !first.is_file() {
                return Err(bad(format!(
                    "the image sequence's first image {} does not exist",
                    first.display()
                )));
            }
        }
        if let SourceUri::V4l2(camera) = &uri {
            // A camera that may be plugged in later is waited for; otherwise say so now.
            if s.reconnect_interval.is_none() {
                camera.check().map_err(bad)?;
            }
        }
        if s.reconnect_interval.is_some() && !uri.is_network() {
            return Err(bad(
                "reconnect_interval applies to camera and network sources only (rtsp, udp, rtp, http, https, v4l2)".into(),
            ));
        }
        if s.looping && !uri.is_replayable() {
            return Err(bad(
                "loop applies to sources with an end only (file, http, https, images)".into(),
            ));
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

    /// One session: builds this kind's pipeline and delivers its frames until it ends.
    fn decode(
        &self,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
        frames: &mut u64,
        timeline: &mut Timeline,
    ) -> Result<(), StageError> {
        let source = pipeline::build(&self.uri, &self.settings).map_err(|e| match e {
            StageError::Runtime(why) => self.failure(&why),
            other => other,
        })?;
        self.pump(&source, out, stop, progress, frames, timeline)
    }

    /// The error that ends this source's session, naming its URI without credentials.
    fn failure(&self, detail: &str) -> StageError {
        StageError::Runtime(
            self.uri
                .scrub(&format!("cannot read {}: {detail}", self.uri.display())),
        )
    }

    fn pump(
        &self,
        source: &SourcePipeline,
        out: &mut Outputs,
        stop: &AtomicBool,
        progress: &SourceProgress,
        frames: &mut u64,
        timeline: &mut Timeline,
    ) -> Result<(), StageError> {
        let SourcePipeline {
            pipeline,
            sink,
            bus,
            watch,
        } = source;
        let fail = |detail: String| self.failure(&detail);
        let bus_failure = || pipeline::pending_error(bus).map(|e| fail(watch.explain(e)));
        if pipeline.set_state(gst::State::Playing).is_err() {
            return Err(
                bus_failure().unwrap_or_else(|| fail("the pipeline refused to start".into()))
            );
        }
        let mut duration_known = false;
        // A camera or network stream that stops sending is detected, not waited on forever.
        let stall_limit = self.uri.is_network().then_some(self.settings.timeout);
        let mut last_frame = std::time::Instant::now();
        let mut last_data = last_frame;
        let mut data_seen = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                Some(sample) => {
                    last_frame = std::time::Instant::now();
                    last_data = last_frame;
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
                    if let Some(error) = bus_failure() {
                        return Err(error);
                    }
                    if sink.is_eos() {
                        if let SourceUri::Images(images) = &self.uri {
                            watch.check_images(images).map_err(fail)?;
                        }
                        return check_complete(progress, *frames).map_err(fail);
                    }
                    let seen = watch.data_buffers.load(Ordering::Relaxed);
                    if seen != data_seen {
                        data_seen = seen;
                        last_data = std::time::Instant::now();
                    }
                    let Some(limit) = stall_limit else { continue };
                    // Packets still in flight when a sender stops arrive after its last frame:
                    // only data that keeps coming without frames is a decoding problem.
                    if last_data.elapsed() > limit {
                        return Err(fail(format!(
                            "no data for {limit:?} (the source's `timeout`): the stream stopped after {} frames",
                            *frames
                        )));
                    }
                    if last_frame.elapsed() > 2 * limit {
                        return Err(fail(format!(
                            "data arrives but no frame was decoded for {:?} (twice the source's `timeout`) after {} frames: is the stream the codec the source expects?",
                            2 * limit,
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
}
