//! `record`: smart record. Each source is encoded continuously into a pre-roll ring; a trigger
//! writes `{dir}/{source}-{first frame}.mp4` from the keyframe at or before `trigger - pre` to
//! `trigger + post`, with a JSON sidecar next to it saying what triggered it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{Batch, FrameMeta, StreamEnd};

use super::media::{ClipWriter, EncoderSettings, H264Encoder};
use super::ring::{EncodedSample, SampleRing};
use super::trigger::{Hit, RuleSettings, TriggerSet};
use super::{duration_ns, ObjectRef};
use crate::settings;
use crate::stage::{
    source_name_of, BuildContext, Outputs, Stage, StageError, StageReport, StageValue, ValueKind,
};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory (or `file://DIR`) the clips go to. Required.
    pub dir: String,
    /// Trigger rules (see the trigger module). Required.
    pub on: Vec<RuleSettings>,
    /// Video kept before the trigger; the clip starts at the keyframe at or before it.
    /// Default 5s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub pre: Duration,
    /// Video recorded after the (latest) trigger. Default 5s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub post: Duration,
    /// Longest clip; triggers during a recording extend it up to this. Default 60s.
    #[serde(default = "sixty_seconds", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Keyframe interval in frames (fixed GOP); the pre-roll is aligned to it. Default 30.
    #[serde(default = "key_int_default")]
    pub key_int_max: u32,
    /// x264 target bitrate in kbit/s. Default 4000.
    #[serde(default = "bitrate_default")]
    pub bitrate_kbps: u32,
    /// x264 speed preset. Default "veryfast".
    #[serde(default = "preset_default")]
    pub speed_preset: String,
    /// Most encoded bytes held per source for the pre-roll. Default 64 MiB.
    #[serde(default = "max_buffer_default")]
    pub max_buffer_bytes: u64,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}
fn key_int_default() -> u32 {
    30
}
fn bitrate_default() -> u32 {
    4000
}
fn preset_default() -> String {
    "veryfast".into()
}
fn max_buffer_default() -> u64 {
    64 << 20
}

impl Settings {
    pub fn load(t: &toml::Table) -> Result<(Self, TriggerSet), StageError> {
        let s: Settings = settings::parse(t)?;
        settings::file_uri_path(&s.dir)?;
        let triggers = TriggerSet::compile(&s.on)?;
        if s.post.is_zero() {
            return Err(StageError::Settings(
                "post must be above 0 (e.g. \"5s\")".into(),
            ));
        }
        if s.max_duration < s.pre + s.post {
            return Err(StageError::Settings(format!(
                "max_duration ({}) is shorter than pre + post ({})",
                humantime_serde::re::humantime::format_duration(s.max_duration),
                humantime_serde::re::humantime::format_duration(s.pre + s.post)
            )));
        }
        if !(1..=1000).contains(&s.key_int_max) {
            return Err(StageError::Settings(format!(
                "key_int_max must be 1..=1000 frames, got {}",
                s.key_int_max
            )));
        }
        if s.bitrate_kbps == 0 || s.bitrate_kbps > 2_000_000 {
            return Err(StageError::Settings(format!(
                "bitrate_kbps must be 1..=2000000, got {}",
                s.bitrate_kbps
            )));
        }
        if !crate::sink::PRESETS.contains(&s.speed_preset.as_str()) {
            return Err(StageError::Settings(format!(
                "speed_preset `{}` is not one of {}",
                s.speed_preset,
                crate::sink::PRESETS.join(", ")
            )));
        }
        if s.max_buffer_bytes < 1 << 20 {
            return Err(StageError::Settings(format!(
                "max_buffer_bytes must be at least 1048576 (1 MiB), got {}",
                s.max_buffer_bytes
            )));
        }
        Ok((s, triggers))
    }
}

/// One trigger as the sidecar reports it.
#[derive(Debug, Clone, Serialize)]
struct TriggerRecord {
    frame_num: u64,
    pts_ns: u64,
    hits: Vec<HitRecord>,
}

#[derive(Debug, Clone, Serialize)]
struct HitRecord {
    #[serde(flatten)]
    hit: Hit,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<ObjectRef>,
}

/// What `{source}-{frame}.json` says about its clip.
#[derive(Debug, Clone, Serialize)]
struct ClipInfo {
    source: String,
    path: String,
    first_frame: u64,
    last_frame: u64,
    frames: u64,
    /// Stream time of the first frame and the end of the last one, in ns.
    start_pts_ns: u64,
    end_pts_ns: u64,
    /// The clip was cut at `max_duration` though a trigger asked for more.
    capped: bool,
    triggers: Vec<TriggerRecord>,
}

/// A clip being recorded.
struct ActiveClip {
    writer: Option<ClipWriter>,
    /// Samples up to (not including) this pts go in.
    end_pts: u64,
    /// `max_duration` after the first sample; known once it is written.
    cap_pts: Option<u64>,
    info: ClipInfo,
}

/// One source's encoder, ring and clip in progress.
struct SourceRecorder {
    name: String,
    encoder: Option<H264Encoder>,
    ring: SampleRing,
    active: Option<ActiveClip>,
}

pub struct Record {
    stage: String,
    settings: Settings,
    dir: PathBuf,
    triggers: TriggerSet,
    sources: Vec<String>,
    streams: HashMap<u32, SourceRecorder>,
    /// Finished clips, in the order they were finalised.
    clips: Vec<ClipInfo>,
    triggers_seen: u64,
}

impl Record {
    pub fn build(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let (settings, triggers) = Settings::load(t)?;
        let dir = ctx.resolve(&settings::file_uri_path(&settings.dir)?);
        Ok(Self {
            stage: ctx.stage_name.clone(),
            settings,
            dir,
            triggers,
            sources: ctx.sources.clone(),
            streams: HashMap::new(),
            clips: Vec::new(),
            triggers_seen: 0,
        })
    }

    fn on_frame(&mut self, frame: &FrameMeta) -> Result<(), StageError> {
        let hits = self.triggers.evaluate(&self.stage, frame)?;
        let name = source_name_of(&self.sources, frame);
        let max_bytes = usize::try_from(self.settings.max_buffer_bytes).unwrap_or(usize::MAX);
        let stream = self
            .streams
            .entry(frame.source_id)
            .or_insert_with(|| SourceRecorder {
                name,
                encoder: None,
                ring: SampleRing::new(self.settings.pre, max_bytes),
                active: None,
            });
        if stream.encoder.is_none() {
            let settings = EncoderSettings {
                bitrate_kbps: self.settings.bitrate_kbps,
                speed_preset: self.settings.speed_preset.clone(),
                key_int_max: self.settings.key_int_max,
            };
            stream.encoder = Some(H264Encoder::start(&self.stage, frame, &settings)?);
        }
        if !hits.is_empty() {
            self.triggers_seen += 1;
            let record = TriggerRecord {
                frame_num: frame.frame_num,
                pts_ns: frame.pts_ns,
                hits: hits
                    .into_iter()
                    .map(|hit| HitRecord {
                        object: hit
                            .object
                            .and_then(|i| frame.objects.get(i))
                            .map(ObjectRef::of),
                        hit,
                    })
                    .collect(),
            };
            self.trigger(frame.source_id, record)?;
        }
        let stream = self
            .streams
            .get_mut(&frame.source_id)
            .ok_or_else(|| StageError::Runtime("record: stream state vanished".into()))?;
        let encoder = stream
            .encoder
            .as_mut()
            .ok_or_else(|| StageError::Runtime("record: encoder vanished".into()))?;
        encoder.push(frame)?;
        let samples = encoder.ready()?;
        self.take_samples(frame.source_id, samples)
    }

    /// Starts a clip, or extends the one being recorded.
    fn trigger(&mut self, source_id: u32, record: TriggerRecord) -> Result<(), StageError> {
        let (pre, post) = (
            duration_ns(self.settings.pre),
            duration_ns(self.settings.post),
        );
        let Some(stream) = self.streams.get_mut(&source_id) else {
            return Ok(());
        };
        let wanted_end = record.pts_ns.saturating_add(post);
        if let Some(active) = stream.active.as_mut() {
            let end = match active.cap_pts {
                Some(cap) if wanted_end > cap => {
                    if !active.info.capped {
                        tracing::warn!(
                            stage = %self.stage,
                            source = %stream.name,
                            frame = record.frame_num,
                            "trigger during a recording would pass max_duration; the clip is cut there"
                        );
                    }
                    active.info.capped = true;
                    cap
                }
                _ => wanted_end,
            };
            active.end_pts = active.end_pts.max(end);
            active.info.triggers.push(record);
            return Ok(());
        }
        let from = record.pts_ns.saturating_sub(pre);
        let preroll: Vec<EncodedSample> = stream.ring.preroll(from).cloned().collect();
        stream.active = Some(ActiveClip {
            writer: None,
            end_pts: wanted_end,
            cap_pts: None,
            info: ClipInfo {
                source: stream.name.clone(),
                path: String::new(),
                first_frame: 0,
                last_frame: 0,
                frames: 0,
                start_pts_ns: 0,
                end_pts_ns: 0,
                capped: false,
                triggers: vec![record],
            },
        });
        self.take_samples_into_clip(source_id, &preroll)
    }

    /// New samples from a source's encoder: into the clip being recorded (or closing it), and
    /// into the ring.
    fn take_samples(
        &mut self,
        source_id: u32,
        samples: Vec<EncodedSample>,
    ) -> Result<(), StageError> {
        for sample in samples {
            self.take_samples_into_clip(source_id, std::slice::from_ref(&sample))?;
            if let Some(stream) = self.streams.get_mut(&source_id) {
                stream.ring.push(sample);
            }
        }
        Ok(())
    }

    fn take_samples_into_clip(
        &mut self,
        source_id: u32,
        samples: &[EncodedSample],
    ) -> Result<(), StageError> {
        for sample in samples {
            let Some(stream) = self.streams.get_mut(&source_id) else {
                return Ok(());
            };
            let Some(active) = stream.active.as_mut() else {
                return Ok(());
            };
            let end = active
                .cap_pts
                .map_or(active.end_pts, |c| c.min(active.end_pts));
            if sample.pts_ns >= end && active.writer.is_some() {
                self.close(source_id)?;
                continue;
            }
            if active.writer.is_none() {
                // A clip starts on a keyframe; delta frames before one cannot be decoded.
                if !sample.keyframe {
                    continue;
                }
                let caps = stream
                    .encoder
                    .as_ref()
                    .and_then(|e| e.caps())
                    .ok_or_else(|| {
                        StageError::Runtime(format!(
                            "{}: source `{}`: the encoder's output format is unknown",
                            self.stage, stream.name
                        ))
                    })?;
                let path = self
                    .dir
                    .join(format!("{}-{}.mp4", stream.name, sample.frame_num));
                active.writer = Some(ClipWriter::start(&path, caps, sample.pts_ns)?);
                active.cap_pts = Some(
                    sample
                        .pts_ns
                        .saturating_add(duration_ns(self.settings.max_duration)),
                );
                if active.end_pts > active.cap_pts.unwrap_or(u64::MAX) {
                    active.info.capped = true;
                }
                active.info.path = path.display().to_string();
                active.info.first_frame = sample.frame_num;
                active.info.start_pts_ns = sample.pts_ns;
            }
            if let Some(writer) = active.writer.as_mut() {
                writer.push(sample)?;
                active.info.frames += 1;
                active.info.last_frame = sample.frame_num;
                active.info.end_pts_ns = sample.pts_ns + sample.duration_ns;
            }
        }
        Ok(())
    }

    /// Finalises the source's clip in progress, if any, and writes its sidecar.
    fn close(&mut self, source_id: u32) -> Result<(), StageError> {
        let Some(active) = self
            .streams
            .get_mut(&source_id)
            .and_then(|s| s.active.take())
        else {
            return Ok(());
        };
        let Some(writer) = active.writer else {
            // Triggered before the first keyframe came out, and the stream ended: no video.
            tracing::warn!(stage = %self.stage, source = %active.info.source,
                "a trigger came too close to the stream's end for any video to be recorded");
            return Ok(());
        };
        let path = writer.finish()?;
        let info = active.info;
        let sidecar = path.with_extension("json");
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| StageError::runtime(format!("cannot describe {}", path.display()), e))?;
        std::fs::write(&sidecar, json)
            .map_err(|e| StageError::runtime(format!("cannot write {}", sidecar.display()), e))?;
        tracing::info!(
            stage = %self.stage,
            source = %info.source,
            start_frame = info.first_frame,
            end_frame = info.last_frame,
            start_s = info.start_pts_ns as f64 / 1e9,
            end_s = info.end_pts_ns as f64 / 1e9,
            triggers = info.triggers.len(),
            capped = info.capped,
            path = %path.display(),
            "clip written"
        );
        self.clips.push(info);
        Ok(())
    }

    /// A source ended: drain its encoder, finalise its clip, free its ring.
    fn end_source(&mut self, source_id: u32) -> Result<(), StageError> {
        let Some(encoder) = self
            .streams
            .get_mut(&source_id)
            .and_then(|s| s.encoder.take())
        else {
            return Ok(());
        };
        let samples = encoder.finish()?;
        self.take_samples(source_id, samples)?;
        self.close(source_id)?;
        self.streams.remove(&source_id);
        self.triggers.end_stream(source_id);
        Ok(())
    }
}

impl Stage for Record {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &batch.frames {
            self.on_frame(frame)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.end_source(end.source_id)?;
        out.end_of_stream(end.clone())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        let mut first_error = None;
        for id in ids {
            if let Err(e) = self.end_source(id) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut report = StageReport::default().with("clips", self.clips.len());
        for c in &self.clips {
            report = report.with(
                "clip",
                format!(
                    "{} ({} frames, {}..={}, {} triggers{})",
                    c.path,
                    c.frames,
                    c.first_frame,
                    c.last_frame,
                    c.triggers.len(),
                    if c.capped { ", capped" } else { "" }
                ),
            );
        }
        Ok(report)
    }

    fn values(&self) -> Vec<StageValue> {
        vec![
            StageValue {
                name: "record_clips_total",
                help: "Clips written by smart record",
                kind: ValueKind::Counter,
                value: self.clips.len() as f64,
            },
            StageValue {
                name: "record_triggers_total",
                help: "Frames on which a record trigger fired",
                kind: ValueKind::Counter,
                value: self.triggers_seen as f64,
            },
            StageValue {
                name: "record_buffer_bytes",
                help: "Encoded pre-roll bytes held, all sources",
                kind: ValueKind::Gauge,
                value: self.streams.values().map(|s| s.ring.bytes()).sum::<usize>() as f64,
            },
            StageValue {
                name: "record_recording",
                help: "Sources with a clip being recorded",
                kind: ValueKind::Gauge,
                value: self.streams.values().filter(|s| s.active.is_some()).count() as f64,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, String> {
        let t: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        Settings::load(&t)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_mistakes() {
        let s = load("kind = 'record'\ndir = 'out/clips'\non = [{ class = 'person' }]").unwrap();
        assert_eq!((s.pre, s.post), (five_seconds(), five_seconds()));
        assert_eq!((s.key_int_max, s.max_duration), (30, sixty_seconds()));
        let base = "dir = 'c'\non = [{ class = 'person' }]\n";
        let e = load(&format!("{base}max_duration = '8s'")).unwrap_err();
        assert_eq!(e, "max_duration (8s) is shorter than pre + post (10s)");
        let e = load(&format!("{base}pre = 'five'")).unwrap_err();
        assert!(e.contains("pre"), "{e}");
        let e = load(&format!("{base}speed_preset = 'quick'")).unwrap_err();
        assert!(e.contains("speed_preset `quick` is not one of"), "{e}");
        let e = load("dir = 'c'\non = [{ analytics = 'loitering' }]").unwrap_err();
        assert!(
            e.starts_with("on[0]: unknown analytics event `loitering`"),
            "{e}"
        );
        let e = load("dir = 'rtsp://x'\non = [{ class = 'person' }]").unwrap_err();
        assert!(e.contains("unsupported URI scheme"), "{e}");
        let e = load(&format!("{base}max_buffer_bytes = 10")).unwrap_err();
        assert!(e.contains("max_buffer_bytes"), "{e}");
        let e = load("dir = 'c'").unwrap_err();
        assert!(e.contains("on"), "{e}");
    }

    #[test]
    fn sidecar_hits_name_the_event_and_object() {
        let hit = HitRecord {
            hit: Hit {
                rule: 0,
                event: "line_crossing",
                name: Some("door".into()),
                crossing: Some("exit".into()),
                object: Some(0),
            },
            object: Some(ObjectRef::of(&vidmesh_protocol::ObjectMeta {
                label: "person".into(),
                track_id: Some(4),
                ..Default::default()
            })),
        };
        let v = serde_json::to_value(&hit).unwrap();
        assert_eq!(v["event"], "line_crossing");
        assert_eq!(v["name"], "door");
        assert_eq!(v["object"]["track_id"], 4);
        assert_eq!(v["object"]["label"], "person");
    }
}
