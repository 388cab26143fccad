//! `sink`: writes the (annotated) frames of each source to a video file — H.264 with x264 in
//! MP4, through GStreamer (DeepStream's `[sink]` type 3, "encode + file").
//!
//! One file per source: `{source}` in the URI is replaced by the source's id (required when
//! more than one source feeds the sink). A file is finalised (MP4 index written) when its
//! source ends, so a stream that ends early, or a pipeline that stops on an error elsewhere,
//! still leaves a playable file with every frame that reached the sink.
//!
//! An MP4 cannot be appended to: a replacement for an instance that stopped mid-stream
//! ([`BuildContext::resume`]) rewrites each file from the restart point, and says so.

mod mp4;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use vidmesh_protocol::{Batch, StreamEnd};

use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport};
use mp4::Mp4Writer;

pub const KIND: StageKind = StageKind {
    name: "sink",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "encode frames to H.264 MP4 files, one per source (x264 via GStreamer)",
    check: |t, ctx| Settings::load(t, ctx).map(|_| ()),
    build: |t, ctx| {
        let settings = Settings::load(t, ctx)?;
        let template = ctx
            .resolve(&settings::file_uri_path(&settings.uri)?)
            .display()
            .to_string();
        if ctx.resume.is_some() {
            tracing::warn!(
                stage = %ctx.stage_name,
                output = %template,
                "the mp4 sink cannot resume after a restart: its files are rewritten from the \
                 restart point and lose the frames before it"
            );
        }
        Ok(Box::new(Sink {
            settings,
            template,
            sources: ctx.sources.clone(),
            writers: HashMap::new(),
            done: Vec::new(),
            clocks: HashMap::new(),
        }))
    },
};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `file://PATH.mp4`; `{source}` is replaced by the source id. Required.
    pub uri: String,
    /// Target bitrate in kbit/s. Default 4000.
    #[serde(default = "bitrate_default")]
    pub bitrate_kbps: u32,
    /// x264 speed preset (ultrafast … veryslow). Default "veryfast".
    #[serde(default = "preset_default")]
    pub speed_preset: String,
    /// Longest distance between keyframes, in frames. Default 60.
    #[serde(default = "key_int_default")]
    pub key_int_max: u32,
    /// Write frames at the stream's own pace, like a GStreamer/DeepStream sink with `sync=1`:
    /// a frame is written no earlier than its presentation time after the source's first
    /// frame. Upstream stages then slow down to real time through backpressure. Default false.
    #[serde(default)]
    pub sync: bool,
}

fn bitrate_default() -> u32 {
    4000
}
fn preset_default() -> String {
    "veryfast".into()
}
fn key_int_default() -> u32 {
    60
}

const PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

impl Settings {
    fn load(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let s: Settings = settings::parse(t)?;
        let path = settings::file_uri_path(&s.uri)?;
        if !path.ends_with(".mp4") {
            return Err(StageError::Settings(format!(
                "`{}`: the sink writes MP4 files; use a .mp4 path",
                s.uri
            )));
        }
        if ctx.sources.len() > 1 && !path.contains("{source}") {
            return Err(StageError::Settings(format!(
                "`{}` receives {} sources; put {{source}} in the path so each gets its own file",
                s.uri,
                ctx.sources.len()
            )));
        }
        if !PRESETS.contains(&s.speed_preset.as_str()) {
            return Err(StageError::Settings(format!(
                "speed_preset `{}` is not one of {}",
                s.speed_preset,
                PRESETS.join(", ")
            )));
        }
        if s.bitrate_kbps == 0 || s.bitrate_kbps > 2_000_000 {
            return Err(StageError::Settings(format!(
                "bitrate_kbps must be 1..=2000000, got {}",
                s.bitrate_kbps
            )));
        }
        Ok(s)
    }
}

struct Sink {
    settings: Settings,
    template: String,
    sources: Vec<String>,
    writers: HashMap<u32, Mp4Writer>,
    /// Finished files: (path, frames).
    done: Vec<(PathBuf, u64)>,
    /// With `sync`: per source, when its first frame was written and that frame's pts.
    clocks: HashMap<u32, (std::time::Instant, u64)>,
}

impl Sink {
    fn finish(&mut self, source_id: u32) -> Result<(), StageError> {
        if let Some(writer) = self.writers.remove(&source_id) {
            self.done.push(writer.finish()?);
        }
        Ok(())
    }
}

impl Stage for Sink {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &batch.frames {
            if self.settings.sync {
                let (start, first_pts) = *self
                    .clocks
                    .entry(frame.source_id)
                    .or_insert((std::time::Instant::now(), frame.pts_ns));
                let due =
                    start + std::time::Duration::from_nanos(frame.pts_ns.saturating_sub(first_pts));
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            let writer = match self.writers.get_mut(&frame.source_id) {
                Some(w) => w,
                None => {
                    let name = self
                        .sources
                        .get(frame.source_id as usize)
                        .map(String::as_str)
                        .unwrap_or(&frame.source_name);
                    let path = PathBuf::from(self.template.replace("{source}", name));
                    let writer = Mp4Writer::start(&path, frame, &self.settings)?;
                    self.writers.entry(frame.source_id).or_insert(writer)
                }
            };
            writer.push(frame)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.finish(end.source_id)?;
        out.end_of_stream(end.clone())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        let ids: Vec<u32> = self.writers.keys().copied().collect();
        let mut first_error = None;
        for id in ids {
            if let Err(e) = self.finish(id) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut report = StageReport::default();
        for (path, frames) in &self.done {
            report = report.with("output", format!("{} ({frames} frames)", path.display()));
        }
        Ok(report)
    }
}
