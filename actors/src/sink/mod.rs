//! `sink`: encodes the (annotated) frames of each source and sends them out — DeepStream's
//! `[sink]` group: files (type 3), an RTSP server (type 4), RTP over UDP, or the display
//! (type 2), all through GStreamer.
//!
//! * Files: H.264 (x264) or H.265 (x265), or NVENC where the nvcodec plugin has it; the
//!   container follows the extension (.mp4, .mkv, .ts). One file per source (`{source}` in the
//!   path), finalised when its source ends, so a stream that ends early still leaves a playable
//!   file. With `max_duration`/`max_size_mb` a source's output is cut into keyframe-aligned
//!   pieces (`{index}` in the path), each one finalised and playable on its own, like a DVR.
//! * `rtsp://HOST:PORT/PATH`: a gst-rtsp-server serves each source (see [`rtsp`]).
//! * `udp://HOST:PORT`: RTP (RFC 6184/7798 payload) to that address, source i to `PORT + i`.
//! * `display://`: a window per source.
//!
//! One output failing (a full disk, a vanished directory) does not stop the others: that
//! source's output is closed, its later frames are counted as dropped, the other sources keep
//! writing, and the stage ends with an error that names the failed output.
//!
//! An MP4 cannot be appended to: a replacement for an instance that stopped mid-stream
//! ([`BuildContext::resume`]) rewrites each file from the restart point, and says so.

mod encoder;
mod output;
mod rtsp;
mod settings;

use std::collections::HashMap;
use std::path::PathBuf;

use vidmesh_protocol::{Batch, FrameMeta, StreamEnd};

use crate::registry::{Delivery, StageKind};
use crate::stage::{
    source_name_of, BuildContext, Outputs, Stage, StageError, StageReport, StageValue, ValueKind,
};
use output::{Finished, StreamOutput, Tail};
use rtsp::RtspOutput;
pub use settings::{Codec, Container, EncoderChoice, Settings, Target, PRESETS};

pub const KIND: StageKind = StageKind {
    name: "sink",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "encode frames (H.264/H.265, x264/x265/NVENC) to MP4/MKV/TS files with DVR-style \
              rotation, an RTSP server, RTP over UDP, or the display",
    check: |t, ctx| Settings::load(t, ctx).map(|_| ()),
    build: |t, ctx| Ok(Box::new(Sink::build(t, ctx)?)),
    makes_streams: None,
};

/// One source's output.
enum Slot {
    Open(StreamOutput),
    /// Stopped after an error; later frames of the source are dropped.
    Failed,
    /// Its source ended and the output is finalised.
    Done,
}

/// An output that stopped on an error.
struct Failure {
    source: String,
    error: String,
    /// Frames of the source that arrived after the failure.
    dropped: u64,
}

/// What the stage counts, for [`Stage::values`] and the report.
#[derive(Debug, Default)]
struct Stats {
    written: u64,
    /// Frames of sources whose output failed.
    dropped_failed: u64,
}

struct Sink {
    stage: String,
    settings: Settings,
    target: Target,
    /// Pace frames to their timestamps (`sync`).
    sync: bool,
    /// File targets: the resolved path, `{source}` and `{index}` still in it.
    template: String,
    sources: Vec<String>,
    /// Each source's name as its first frame gave it.
    names: HashMap<u32, String>,
    slots: HashMap<u32, Slot>,
    rtsp: Option<RtspOutput>,
    finished: Vec<Finished>,
    failures: Vec<Failure>,
    stats: Stats,
    /// With `sync`: per source, when its first frame was written and that frame's pts.
    clocks: HashMap<u32, (std::time::Instant, u64)>,
}

impl Sink {
    fn build(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let (settings, target) = Settings::load(t, ctx)?;
        let mut template = String::new();
        let mut rtsp = None;
        match &target {
            Target::File { path, .. } => {
                template = ctx.resolve(path).display().to_string();
                if ctx.resume.is_some() {
                    tracing::warn!(
                        stage = %ctx.stage_name,
                        output = %template,
                        "the file sink cannot resume after a restart: its files are rewritten \
                         from the restart point and lose the frames before it"
                    );
                }
            }
            Target::Rtsp { host, port, path } => {
                rtsp = Some(RtspOutput::start(
                    host,
                    *port,
                    path,
                    &ctx.sources,
                    &settings,
                )?);
            }
            Target::Display => {
                let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
                if !set("DISPLAY") && !set("WAYLAND_DISPLAY") {
                    return Err(StageError::Settings(format!(
                        "`{}` shows frames in a window, but neither DISPLAY nor WAYLAND_DISPLAY \
                         is set (no graphical session); on a headless machine use a file://, \
                         rtsp:// or udp:// sink",
                        settings.uri
                    )));
                }
            }
            Target::Udp { .. } => {}
        }
        // Fails now, not at the first frame, when the encoder is missing.
        if !matches!(target, Target::Display) {
            for spec in encoder::chain(&settings, false)? {
                spec.make()?;
            }
        }
        Ok(Sink {
            stage: ctx.stage_name.clone(),
            sync: settings.sync_for(&target),
            settings,
            target,
            template,
            sources: ctx.sources.clone(),
            names: HashMap::new(),
            slots: HashMap::new(),
            rtsp,
            finished: Vec::new(),
            failures: Vec::new(),
            stats: Stats::default(),
            clocks: HashMap::new(),
        })
    }

    /// Where a source's output goes.
    fn tail(&self, source_id: u32, source: &str) -> Result<(String, Tail), StageError> {
        let s = &self.settings;
        Ok(match &self.target {
            Target::File { container, .. } => {
                // Checked against the topology's sources at load time; a source added while
                // the pipeline runs can still be a second one.
                if !self.template.contains("{source}")
                    && self.slots.keys().any(|&id| id != source_id)
                {
                    return Err(StageError::Settings(format!(
                        "`{}` has no {{source}} in its path, and `{source}` is a second source: \
                         it would overwrite the first one's file",
                        s.uri
                    )));
                }
                let path = self.template.replace("{source}", source);
                if s.max_duration.is_some() || s.max_size_mb.is_some() {
                    // splitmuxsink formats the name with printf: a literal % must be doubled.
                    let pattern = path.replace('%', "%%").replace("{index}", "%05d");
                    (
                        path,
                        Tail::Pieces {
                            pattern,
                            container: *container,
                            max_duration: s.max_duration,
                            max_bytes: s.max_size_mb.map(|mb| mb.saturating_mul(1 << 20)),
                            max_files: s.max_files,
                        },
                    )
                } else {
                    (
                        path.clone(),
                        Tail::File {
                            path: PathBuf::from(path),
                            container: *container,
                        },
                    )
                }
            }
            Target::Udp { host, port } => {
                let port = u16::try_from(*port as u32 + source_id).map_err(|_| {
                    StageError::Settings(format!(
                        "`{}`: source `{source}` would need UDP port {} (PORT + source index)",
                        s.uri,
                        *port as u32 + source_id
                    ))
                })?;
                (
                    format!("udp://{host}:{port}"),
                    Tail::Udp {
                        host: host.clone(),
                        port,
                    },
                )
            }
            Target::Display => (format!("display:// ({source})"), Tail::Display),
            Target::Rtsp { .. } => {
                return Err(StageError::Runtime(
                    "RTSP outputs are served, not opened per source".into(),
                ))
            }
        })
    }

    /// Writes one frame to its source's output; a failing output is closed and remembered.
    fn write(&mut self, frame: &FrameMeta) -> Result<(), StageError> {
        if let Some(server) = &mut self.rtsp {
            let name = source_name_of(&self.sources, frame);
            server.feed(frame.source_id, &name).push(frame)?;
            self.stats.written += 1;
            return Ok(());
        }
        let result = match self.slots.get_mut(&frame.source_id) {
            Some(Slot::Open(out)) => out.push(frame),
            Some(Slot::Failed) | Some(Slot::Done) => {
                self.drop_frame(frame.source_id);
                return Ok(());
            }
            None => {
                let source = source_name_of(&self.sources, frame);
                self.names.insert(frame.source_id, source.clone());
                let started = self
                    .tail(frame.source_id, &source)
                    .and_then(|(label, tail)| {
                        StreamOutput::start(label, frame, &self.settings, &tail)
                    });
                match started {
                    Ok(mut out) => {
                        let pushed = out.push(frame);
                        self.slots.insert(frame.source_id, Slot::Open(out));
                        pushed
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => {
                self.stats.written += 1;
                Ok(())
            }
            // Frames this sink cannot take at all (no pixels, resolution change) are a
            // pipeline problem, not an output one: stop.
            Err(e @ StageError::Input(_)) => Err(e),
            Err(e) => {
                self.fail(frame.source_id, e);
                self.drop_frame(frame.source_id);
                Ok(())
            }
        }
    }

    fn source_of(&self, source_id: u32) -> String {
        self.names
            .get(&source_id)
            .or(self.sources.get(source_id as usize))
            .cloned()
            .unwrap_or_else(|| format!("source{source_id}"))
    }

    /// Closes a source's output after `error`; the other sources carry on.
    fn fail(&mut self, source_id: u32, error: StageError) {
        let source = self.source_of(source_id);
        tracing::error!(
            stage = %self.stage,
            source = %source,
            error = %error,
            "output failed; this source's frames are dropped from now on, the other sources \
             keep writing"
        );
        if let Some(Slot::Open(out)) = self.slots.insert(source_id, Slot::Failed) {
            out.abandon();
        }
        self.failures.push(Failure {
            source,
            error: error.to_string(),
            dropped: 0,
        });
    }

    fn drop_frame(&mut self, source_id: u32) {
        self.stats.dropped_failed += 1;
        let source = self.source_of(source_id);
        if let Some(f) = self.failures.iter_mut().rev().find(|f| f.source == source) {
            f.dropped += 1;
        }
    }

    fn finish(&mut self, source_id: u32) {
        if !matches!(self.slots.get(&source_id), Some(Slot::Open(_))) {
            return;
        }
        if let Some(Slot::Open(out)) = self.slots.insert(source_id, Slot::Done) {
            match out.finish() {
                Ok(done) => self.finished.push(done),
                Err(e) => self.fail(source_id, e),
            }
        }
    }

    /// With `sync`, waits until `frame` is due on its source's clock.
    fn pace(&mut self, frame: &FrameMeta) {
        let (start, first_pts) = *self
            .clocks
            .entry(frame.source_id)
            .or_insert((std::time::Instant::now(), frame.pts_ns));
        let due = start + std::time::Duration::from_nanos(frame.pts_ns.saturating_sub(first_pts));
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    }
}

impl Stage for Sink {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &batch.frames {
            if self.sync {
                self.pace(frame);
            }
            self.write(frame)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.finish(end.source_id);
        if let Some(feed) = self.rtsp.as_ref().and_then(|r| r.feeds.get(&end.source_id)) {
            feed.end();
        }
        out.end_of_stream(end.clone())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        let mut ids: Vec<u32> = self.slots.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.finish(id);
        }
        let mut report = StageReport::default();
        for done in &self.finished {
            report = if done.pieces.is_empty() {
                report.with("output", format!("{} ({} frames)", done.label, done.frames))
            } else {
                report.with(
                    "output",
                    format!(
                        "{} ({} pieces, {} frames): {}",
                        done.label,
                        done.pieces.len(),
                        done.frames,
                        done.pieces
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            };
        }
        if let Some(server) = &self.rtsp {
            for feed in server.feeds.values() {
                let s = feed.stats();
                report = report.with(
                    "rtsp",
                    format!(
                        "{}{} ({} frames served, {} dropped with no viewer ready)",
                        server.base, feed.mount, s.served, s.dropped
                    ),
                );
            }
        }
        if self.failures.is_empty() {
            return Ok(report);
        }
        // The healthy outputs are complete; the run must still say that one was not.
        let lines: Vec<String> = self
            .failures
            .iter()
            .map(|f| {
                format!(
                    "source `{}`: {} ({} later frames dropped)",
                    f.source, f.error, f.dropped
                )
            })
            .collect();
        Err(StageError::Runtime(format!(
            "{} output(s) failed, the others were written completely: {}",
            self.failures.len(),
            lines.join("; ")
        )))
    }

    fn values(&self) -> Vec<StageValue> {
        let rtsp = self
            .rtsp
            .as_ref()
            .map(|r| r.feeds.values().map(|f| f.stats()).collect::<Vec<_>>())
            .unwrap_or_default();
        let rtsp_dropped: u64 = rtsp.iter().map(|s| s.dropped).sum();
        let mut values = vec![
            StageValue::new(
                "sink_frames_total",
                "Frames the sink stage received for its outputs.",
                ValueKind::Counter,
                self.stats.written as f64 + self.stats.dropped_failed as f64,
            ),
            StageValue::new(
                "sink_dropped_frames_total",
                "Frames not written: their output had failed, or (RTSP) no viewer was ready.",
                ValueKind::Counter,
                (self.stats.dropped_failed + rtsp_dropped) as f64,
            ),
            StageValue::new(
                "sink_failed_outputs",
                "Outputs stopped by an error (e.g. disk full).",
                ValueKind::Gauge,
                self.failures.len() as f64,
            ),
        ];
        if let Some(server) = &self.rtsp {
            values.push(StageValue::new(
                "sink_rtsp_media",
                "RTSP mounts being watched right now.",
                ValueKind::Gauge,
                server
                    .feeds
                    .values()
                    .filter(|f| f.viewers_media() > 0)
                    .count() as f64,
            ));
        }
        values
    }
}
