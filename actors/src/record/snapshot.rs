//! `snapshot`: JPEG images of frames, or of the triggering objects, when a trigger fires, with
//! one JSON line per image in `{dir}/snapshots.jsonl` saying what triggered it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{Batch, FrameMeta, StreamEnd};

use super::media::{encode_jpeg, frame_image, region};
use super::trigger::{label_of, Hit, RuleSettings, TriggerSet};
use super::{duration_ns, ObjectRef};
use crate::settings;
use crate::stage::{
    source_name_of, BuildContext, Outputs, Stage, StageError, StageReport, StageValue, ValueKind,
};

/// The sidecar's file name inside `dir`.
pub const SIDECAR: &str = "snapshots.jsonl";

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory (or `file://DIR`) the images go to. Required.
    pub dir: String,
    /// Trigger rules (see the trigger module). Required.
    pub on: Vec<RuleSettings>,
    /// Save each triggering object's box instead of the whole frame. Frame events
    /// (overcrowding) still save the whole frame. Default false.
    #[serde(default)]
    pub crop: bool,
    /// Pixels added around a crop on every side (clipped at the frame's edges). Default 0.
    #[serde(default)]
    pub margin: u32,
    /// Shortest stream time between two images of the same source (whole frames) or of the
    /// same track (crops; untracked objects: the same label). Default 1s.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub min_interval: Duration,
    /// JPEG quality 1..=100. Default 85.
    #[serde(default = "quality_default")]
    pub quality: u32,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn quality_default() -> u32 {
    85
}

impl Settings {
    pub fn load(t: &toml::Table) -> Result<(Self, TriggerSet), StageError> {
        let s: Settings = settings::parse(t)?;
        settings::file_uri_path(&s.dir)?;
        let triggers = TriggerSet::compile(&s.on)?;
        if !(1..=100).contains(&s.quality) {
            return Err(StageError::Settings(format!(
                "quality must be 1..=100, got {}",
                s.quality
            )));
        }
        if s.margin > 10_000 {
            return Err(StageError::Settings(format!(
                "margin must be at most 10000 pixels, got {}",
                s.margin
            )));
        }
        Ok((s, triggers))
    }
}

/// What a rate limit counts per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Frame,
    Track(u64),
    Label(String),
}

/// One line of `snapshots.jsonl`.
#[derive(Debug, Serialize)]
struct SnapshotRecord<'a> {
    /// The image's file name, inside `dir`.
    file: String,
    source: &'a str,
    frame_num: u64,
    pts_ns: u64,
    ntp_ns: Option<u64>,
    /// The saved region of the frame: `[left, top, width, height]` in pixels.
    region: [u32; 4],
    /// The object cropped (crops only).
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<ObjectRef>,
    triggers: Vec<HitRecord>,
}

#[derive(Debug, Serialize)]
struct HitRecord {
    #[serde(flatten)]
    hit: Hit,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<ObjectRef>,
}

pub struct Snapshot {
    stage: String,
    settings: Settings,
    dir: PathBuf,
    triggers: TriggerSet,
    sources: Vec<String>,
    /// (source, subject) → pts of its last image.
    last: HashMap<(u32, Subject), u64>,
    sidecar: Option<BufWriter<File>>,
    written: u64,
    /// Images not taken because of `min_interval`.
    suppressed: u64,
}

impl Snapshot {
    pub fn build(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let (settings, triggers) = Settings::load(t)?;
        let dir = ctx.resolve(&settings::file_uri_path(&settings.dir)?);
        Ok(Self {
            stage: ctx.stage_name.clone(),
            settings,
            dir,
            triggers,
            sources: ctx.sources.clone(),
            last: HashMap::new(),
            sidecar: None,
            written: 0,
            suppressed: 0,
        })
    }

    /// True when `subject` of `source` may have an image at `pts` (and books it).
    fn allowed(&mut self, source: u32, subject: Subject, pts: u64) -> bool {
        let min = duration_ns(self.settings.min_interval);
        match self.last.get(&(source, subject.clone())) {
            Some(&last) if pts.saturating_sub(last) < min && pts >= last => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last.insert((source, subject), pts);
                true
            }
        }
    }

    fn on_frame(&mut self, frame: &FrameMeta) -> Result<(), StageError> {
        let hits = self.triggers.evaluate(&self.stage, frame)?;
        if hits.is_empty() {
            return Ok(());
        }
        let record = |h: &Hit| HitRecord {
            hit: h.clone(),
            object: h
                .object
                .and_then(|i| frame.objects.get(i))
                .map(ObjectRef::of),
        };
        if !self.settings.crop || hits.iter().any(|h| h.object.is_none()) {
            // One whole-frame image for everything that fired on this frame.
            if self.allowed(frame.source_id, Subject::Frame, frame.pts_ns) {
                let records = hits.iter().map(record).collect();
                self.save(frame, None, records)?;
            }
            if !self.settings.crop {
                return Ok(());
            }
        }
        // Crops: one per triggering object, with all of its hits.
        let mut objects: Vec<usize> = hits.iter().filter_map(|h| h.object).collect();
        objects.sort_unstable();
        objects.dedup();
        for index in objects {
            let Some(o) = frame.objects.get(index) else {
                continue;
            };
            let subject = match o.track_id {
                Some(id) => Subject::Track(id),
                None => Subject::Label(label_of(o)),
            };
            if !self.allowed(frame.source_id, subject, frame.pts_ns) {
                continue;
            }
            let records = hits
                .iter()
                .filter(|h| h.object == Some(index))
                .map(record)
                .collect();
            self.save(frame, Some(index), records)?;
        }
        Ok(())
    }

    /// Writes one image (the whole frame, or object `object`'s crop) and its sidecar line.
    fn save(
        &mut self,
        frame: &FrameMeta,
        object: Option<usize>,
        triggers: Vec<HitRecord>,
    ) -> Result<(), StageError> {
        let (layout, data) = frame_image(&self.stage, frame)?;
        let source = source_name_of(&self.sources, frame);
        let (rect, file, object_ref) = match object
            .and_then(|i| frame.objects.get(i).map(|o| (i, o)))
        {
            None => (
                [0, 0, layout.width, layout.height],
                format!("{source}-{}.jpg", frame.frame_num),
                None,
            ),
            Some((i, o)) => {
                let Some(rect) =
                    crop_rect(o.bbox, self.settings.margin, layout.width, layout.height)
                else {
                    tracing::warn!(stage = %self.stage, source = %source, frame = frame.frame_num,
                        "object {i}'s box {:?} is outside the {}x{} frame; no crop", o.bbox, layout.width, layout.height);
                    return Ok(());
                };
                let who = match o.track_id {
                    Some(id) => format!("track{id}"),
                    None => format!("obj{i}"),
                };
                (
                    rect,
                    format!("{source}-{}-{who}.jpg", frame.frame_num),
                    Some(ObjectRef::of(o)),
                )
            }
        };
        let [x, y, w, h] = rect;
        let pixels = region(layout, data, x, y, w, h);
        let jpeg = encode_jpeg(layout.format, w, h, pixels, self.settings.quality)?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| StageError::runtime(format!("cannot create {}", self.dir.display()), e))?;
        let path = self.dir.join(&file);
        std::fs::write(&path, &jpeg)
            .map_err(|e| StageError::runtime(format!("cannot write {}", path.display()), e))?;
        let line = SnapshotRecord {
            file,
            source: &source,
            frame_num: frame.frame_num,
            pts_ns: frame.pts_ns,
            ntp_ns: frame.ntp_ns,
            region: rect,
            object: object_ref,
            triggers,
        };
        let sidecar_path = self.dir.join(SIDECAR);
        let what = || format!("cannot write {}", sidecar_path.display());
        if self.sidecar.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&sidecar_path)
                .map_err(|e| StageError::runtime(what(), e))?;
            self.sidecar = Some(BufWriter::new(file));
        }
        if let Some(sidecar) = self.sidecar.as_mut() {
            serde_json::to_writer(&mut *sidecar, &line)
                .map_err(|e| StageError::runtime(what(), e))?;
            sidecar
                .write_all(b"\n")
                .and_then(|_| sidecar.flush())
                .map_err(|e| StageError::runtime(what(), e))?;
        }
        self.written += 1;
        tracing::debug!(stage = %self.stage, path = %path.display(), "snapshot written");
        Ok(())
    }
}

/// The box grown by `margin` on every side, in whole pixels (outwards), clipped to the frame:
/// `[left, top, width, height]`; `None` when nothing of it is inside.
fn crop_rect(b: vidmesh_protocol::BBox, margin: u32, width: u32, height: u32) -> Option<[u32; 4]> {
    let m = margin as f32;
    if ![b.left, b.top, b.width, b.height]
        .iter()
        .all(|v| v.is_finite())
    {
        return None;
    }
    let clamp = |v: f32, max: u32| v.clamp(0.0, max as f32) as u32;
    let left = clamp((b.left - m).floor(), width);
    let top = clamp((b.top - m).floor(), height);
    let right = clamp((b.right() + m).ceil(), width);
    let bottom = clamp((b.bottom() + m).ceil(), height);
    (right > left && bottom > top).then_some([left, top, right - left, bottom - top])
}

impl Stage for Snapshot {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &batch.frames {
            self.on_frame(frame)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.triggers.end_stream(end.source_id);
        self.last.retain(|(s, _), _| *s != end.source_id);
        out.end_of_stream(end.clone())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        if let Some(sidecar) = self.sidecar.as_mut() {
            sidecar
                .get_ref()
                .sync_data()
                .map_err(|e| StageError::runtime("cannot sync the snapshot sidecar", e))?;
        }
        Ok(())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        self.flush()?;
        Ok(StageReport::default()
            .with("snapshots", self.written)
            .with("suppressed by min_interval", self.suppressed)
            .with("dir", self.dir.display()))
    }

    fn values(&self) -> Vec<StageValue> {
        vec![
            StageValue {
                name: "snapshots_total",
                help: "JPEG snapshots written",
                kind: ValueKind::Counter,
                value: self.written as f64,
            },
            StageValue {
                name: "snapshots_suppressed_total",
                help: "Snapshots not taken because of min_interval",
                kind: ValueKind::Counter,
                value: self.suppressed as f64,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::BBox;

    #[test]
    fn crops_grow_by_the_margin_and_stay_inside() {
        let b = BBox::from_corners(10.4, 20.6, 50.2, 80.0);
        assert_eq!(crop_rect(b, 0, 100, 100), Some([10, 20, 41, 60]));
        assert_eq!(crop_rect(b, 5, 100, 100), Some([5, 15, 51, 70]));
        assert_eq!(crop_rect(b, 30, 100, 100), Some([0, 0, 81, 100]));
        assert_eq!(
            crop_rect(BBox::from_corners(120.0, 0.0, 130.0, 10.0), 0, 100, 100),
            None
        );
        let nan = BBox {
            left: f32::NAN,
            ..b
        };
        assert_eq!(crop_rect(nan, 0, 100, 100), None);
    }

    #[test]
    fn settings_mistakes_are_named() {
        let load = |text: &str| {
            let t: toml::Table = toml::from_str(text).unwrap();
            Settings::load(&t).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(load("dir = 's'\non = [{ class = 'person' }]").is_ok());
        let e = load("dir = 's'\non = [{ class = 'person' }]\nquality = 0").unwrap_err();
        assert_eq!(e, "quality must be 1..=100, got 0");
        let e =
            load("dir = 's'\non = [{ analytics = 'roi_entry', crossing = 'entry' }]").unwrap_err();
        assert_eq!(
            e,
            "on[0]: `crossing` applies to line_crossing only, not to roi_entry"
        );
        let e = load("dir = 's'\non = [{ class = 'person' }]\nmin_interval = 3").unwrap_err();
        assert!(e.contains("min_interval"), "{e}");
    }

    #[test]
    fn the_rate_limit_counts_stream_time_per_subject() {
        let t: toml::Table = toml::from_str("dir = 's'\non = [{ class = 'person' }]").unwrap();
        let ctx = BuildContext {
            peers: Default::default(),
            stage_name: "snap".into(),
            replica: 0,
            base_dir: ".".into(),
            sources: vec!["cam".into()],
            resume: None,
        };
        let mut s = Snapshot::build(&t, &ctx).unwrap();
        let sec = 1_000_000_000;
        assert!(s.allowed(0, Subject::Track(1), 0));
        assert!(!s.allowed(0, Subject::Track(1), sec / 2));
        assert!(s.allowed(0, Subject::Track(2), sec / 2));
        assert!(s.allowed(1, Subject::Track(1), sec / 2));
        assert!(s.allowed(0, Subject::Track(1), sec));
        assert_eq!(s.suppressed, 1);
    }
}
