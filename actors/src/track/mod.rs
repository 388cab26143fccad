//! `track`: gives objects stable ids across frames (nvtracker). One tracker per source, behind
//! the [`Tracker`] trait; `algorithm` picks it:
//!
//! * `iou` (`iou.rs`): greedy association of each frame's detections with the tracks' last
//!   boxes by overlap. A track is tentative until matched `min_hits` times (not necessarily
//!   consecutively) and dropped after more than `max_age` frames without a match.
//! * `sort` (`sort.rs`): SORT. A constant-velocity Kalman filter per track (`kalman.rs`),
//!   optimal (Hungarian, `assignment.rs`) matching of predictions to detections on `1 − IoU`.
//! * `bytetrack` (`bytetrack.rs`): ByteTrack. SORT's machinery, but low-score detections are
//!   used to continue existing tracks (never to start them), so tracks survive occlusions that
//!   lower the detector's confidence.
//! * `appearance` (`appearance.rs`): DeepSORT-like. Kalman gating plus appearance: an upstream
//!   embedding (object user meta `"vidmesh.embedding/f32"`, little-endian f32s) or a colour
//!   histogram of the box (`descriptor.rs`), matched against a gallery of each track's recent
//!   looks.
//!
//! The three Kalman trackers share one life cycle (`lifecycle.rs`): *tentative* until matched
//! in `min_hits` consecutive frames, then *confirmed* (objects carry its `track_id` and a
//! `tracker_confidence`), *lost* when unmatched. Lost tracks are shadow-tracked (predicted every
//! frame) and re-identified under the same id within `max_age` frames, then dropped. Only
//! objects of the same `class_id` associate. A tracker never removes objects and only writes
//! ids on them — except on frames a detector skipped (infer `interval`, `carry.rs`),
//! where it adds an object for each confirmed track of that detector at its predicted
//! position. Every tracker's state goes into the stage's snapshot, so a replacement
//! replica carries on with the same ids.

mod appearance;
mod assignment;
mod bytetrack;
mod carry;
mod descriptor;
mod iou;
mod kalman;
mod lifecycle;
mod sort;

pub use carry::Skipped;
pub use lifecycle::{PastBox, PastFrames, PAST_FRAMES_KIND};

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{Batch, FrameMeta, StreamEnd};

use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{Outputs, Stage, StageError, StageReport};
use appearance::AppearanceTracker;
use bytetrack::ByteTracker;
use iou::IouTracker;
use sort::SortTracker;

pub const KIND: StageKind = StageKind {
    name: "track",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "assign stable track ids per source (nvtracker; IoU, SORT, ByteTrack, appearance)",
    check: |t, _| settings::parse::<Settings>(t).and_then(|s| s.validate()),
    build: |t, ctx| {
        let s = settings::parse::<Settings>(t)?;
        s.validate()?;
        match ctx.resume.as_ref().and_then(|r| r.snapshot.as_deref()) {
            Some(snapshot) => Ok(Box::new(Track::restore(s, snapshot).map_err(|e| {
                StageError::Settings(format!("track: cannot resume from the last snapshot: {e}"))
            })?)),
            None => Ok(Box::new(Track::new(s))),
        }
    },
    makes_streams: None,
};

/// Tracking algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Greedy IoU matching with the last box.
    #[default]
    Iou,
    /// Kalman prediction + Hungarian matching on IoU.
    Sort,
    /// SORT that also uses low-score detections to continue tracks.
    ByteTrack,
    /// Kalman gating + appearance (embedding or colour histogram).
    Appearance,
}

impl Algorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Iou,
        Algorithm::Sort,
        Algorithm::ByteTrack,
        Algorithm::Appearance,
    ];
}

/// What the user configures. One flat table for every algorithm; a key an algorithm does not
/// use is accepted and ignored, so switching `algorithm` needs no other edit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `"iou"`, `"sort"`, `"bytetrack"` or `"appearance"`. Default `"iou"`.
    pub algorithm: Algorithm,
    /// Smallest overlap between a track's (predicted) box and a detection that associates them
    /// (iou, sort, appearance's motion step). Default 0.3.
    pub iou_threshold: f32,
    /// Matches needed before a track is confirmed and its id reported (consecutive ones for
    /// the Kalman trackers). At least 1. Default 2.
    pub min_hits: u32,
    /// Frames a track survives without a match (the lost tracks' shadow-tracking window;
    /// ByteTrack's `track_buffer`). 0 drops a track at its first miss. Frames its detector
    /// skipped (infer `interval`) are not misses. Default 15.
    pub max_age: u32,
    /// bytetrack: detections with `confidence >= high_threshold` are high-score ones.
    /// Default 0.5.
    pub high_threshold: f32,
    /// bytetrack: detections below this are ignored; between it and `high_threshold` they are
    /// low-score ones, which continue tracks but never start one. Default 0.1.
    pub low_threshold: f32,
    /// bytetrack: smallest confidence of an unmatched high-score detection that starts a track.
    /// Default `high_threshold + 0.1` (at most 1). Example: `new_track_threshold = 0.7`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_track_threshold: Option<f32>,
    /// bytetrack: largest `1 − IoU` cost of the high-score association (0.8 = IoU of at least
    /// 0.2). Default 0.8.
    pub match_threshold: f32,
    /// bytetrack: largest `1 − IoU` cost of the low-score association. Default 0.5.
    pub low_match_threshold: f32,
    /// bytetrack: weigh overlaps by detection confidence in the high-score and tentative
    /// associations (the paper's `fuse_score`; off for very crowded scenes). Default true.
    pub fuse_score: bool,
    /// When a track is confirmed, attach the boxes of its probation frames to the confirming
    /// frame as user meta `vidmesh.tracker/past-frames+json` (nvtracker's past-frame output),
    /// so consumers can recover the frames before the id existed. Default false.
    pub past_frame_output: bool,
    /// bytetrack: let low-score detections re-find lost tracks too, not only confirmed ones
    /// (objects leaving an occlusion are often detected weakly at first). Default true; false
    /// is the paper's behaviour.
    pub low_score_recovers_lost: bool,
    /// appearance: weight of appearance against motion in the matching cost, 0..=1.
    /// Default 0.9.
    pub appearance_weight: f32,
    /// appearance: largest cosine distance between a detection's descriptor and a track's
    /// gallery for them to match (histograms: `1 −` Bhattacharyya coefficient). Default 0.3.
    pub max_appearance_distance: f32,
    /// appearance: descriptors kept per track. Default 10.
    pub gallery_size: u32,
    /// appearance: colour histogram bins per RGB channel (bins³ in all), 1..=16. Default 8.
    pub histogram_bins: u32,
    /// appearance: `kind` of the object user meta holding an embedding (little-endian f32s);
    /// objects without one are described by a colour histogram. Default
    /// `"vidmesh.embedding/f32"`.
    pub embedding_kind: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Iou,
            iou_threshold: 0.3,
            min_hits: 2,
            max_age: 15,
            high_threshold: 0.5,
            low_threshold: 0.1,
            new_track_threshold: None,
            match_threshold: 0.8,
            low_match_threshold: 0.5,
            fuse_score: true,
            past_frame_output: false,
            low_score_recovers_lost: true,
            appearance_weight: 0.9,
            max_appearance_distance: 0.3,
            gallery_size: 10,
            histogram_bins: 8,
            embedding_kind: "vidmesh.embedding/f32".into(),
        }
    }
}

impl Settings {
    fn validate(&self) -> Result<(), StageError> {
        let unit = [
            ("iou_threshold", Some(self.iou_threshold)),
            ("high_threshold", Some(self.high_threshold)),
            ("low_threshold", Some(self.low_threshold)),
            ("new_track_threshold", self.new_track_threshold),
            ("match_threshold", Some(self.match_threshold)),
            ("low_match_threshold", Some(self.low_match_threshold)),
            ("appearance_weight", Some(self.appearance_weight)),
            (
                "max_appearance_distance",
                Some(self.max_appearance_distance),
            ),
        ];
        for (key, value) in unit {
            if let Some(v) = value {
                if !(0.0..=1.0).contains(&v) {
                    return Err(StageError::Settings(format!(
                        "{key} must be within 0..=1, got {v}"
                    )));
                }
            }
        }
        if self.low_threshold > self.high_threshold {
            return Err(StageError::Settings(format!(
                "low_threshold ({}) must not exceed high_threshold ({})",
                self.low_threshold, self.high_threshold
            )));
        }
        if let Some(v) = self.new_track_threshold {
            if v < self.high_threshold {
                return Err(StageError::Settings(format!(
                    "new_track_threshold ({v}) must be at least high_threshold ({}): only \
                     high-score detections start tracks",
                    self.high_threshold
                )));
            }
        }
        if self.min_hits == 0 {
            return Err(StageError::Settings("min_hits must be at least 1".into()));
        }
        if self.gallery_size == 0 {
            return Err(StageError::Settings(
                "gallery_size must be at least 1".into(),
            ));
        }
        if !(1..=16).contains(&self.histogram_bins) {
            return Err(StageError::Settings(format!(
                "histogram_bins must be within 1..=16, got {}",
                self.histogram_bins
            )));
        }
        if self.embedding_kind.is_empty() {
            return Err(StageError::Settings(
                "embedding_kind must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// `new_track_threshold`, or its default `high_threshold + 0.1` capped at 1.
    pub fn effective_new_track_threshold(&self) -> f32 {
        self.new_track_threshold
            .unwrap_or((self.high_threshold + 0.1).min(1.0))
    }
}

/// One stream's tracker. Every algorithm implements this; the stage keeps one per source.
pub trait Tracker: Send {
    /// Associates this frame's objects with tracks: sets `track_id` and `tracker_confidence`
    /// on the objects of confirmed tracks. Tracks of the components that `skipped` the frame
    /// are not associated and not counted as missed; each confirmed one adds its object at
    /// its predicted (iou: last) box. Returns how many tracks became confirmed.
    fn update(&mut self, frame: &mut FrameMeta, ids: &mut IdAllocator, skipped: &Skipped) -> u64;
    /// The tracker's whole state, for snapshots.
    fn save(&self) -> serde_json::Value;
}

/// Hands out track ids of one stream: `source << 32 | n`, unique across every stream of a
/// pipeline whichever replica tracks it (DeepStream's unique ids put the stream in the upper half).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdAllocator {
    next: u64,
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl IdAllocator {
    /// Ids `source << 32 | 1, 2, ...` (source 0 counts 1, 2, ...).
    pub fn for_source(source: u32) -> Self {
        Self {
            next: ((source as u64) << 32) | 1,
        }
    }

    pub fn allocate(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }
}

fn new_tracker(settings: &Settings) -> Box<dyn Tracker> {
    match settings.algorithm {
        Algorithm::Iou => Box::new(IouTracker::new(settings.clone())),
        Algorithm::Sort => Box::new(SortTracker::new(settings.clone())),
        Algorithm::ByteTrack => Box::new(ByteTracker::new(settings.clone())),
        Algorithm::Appearance => Box::new(AppearanceTracker::new(settings.clone())),
    }
}

fn restore_tracker(
    settings: &Settings,
    state: serde_json::Value,
) -> Result<Box<dyn Tracker>, StageError> {
    let bad = |e: serde_json::Error| {
        StageError::Input(format!(
            "tracker snapshot does not fit algorithm {:?}: {e}",
            settings.algorithm
        ))
    };
    Ok(match settings.algorithm {
        Algorithm::Iou => Box::new(IouTracker::restore(settings.clone(), state).map_err(bad)?),
        Algorithm::Sort => Box::new(SortTracker::restore(settings.clone(), state).map_err(bad)?),
        Algorithm::ByteTrack => {
            Box::new(ByteTracker::restore(settings.clone(), state).map_err(bad)?)
        }
        Algorithm::Appearance => {
            Box::new(AppearanceTracker::restore(settings.clone(), state).map_err(bad)?)
        }
    })
}

/// Everything a replacement replica needs to carry on with the same ids.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// The algorithm that took it: SORT and ByteTrack states look alike, so the trackers'
    /// own states cannot tell. Absent from snapshots taken before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    algorithm: Option<Algorithm>,
    /// Per source, the id allocator (ids are `source << 32 | n`, as DeepStream's unique ids).
    ids: Vec<(u32, IdAllocator)>,
    confirmed: u64,
    streams: Vec<(u32, serde_json::Value)>,
}

/// The running stage: one tracker per source.
pub struct Track {
    settings: Settings,
    per_source: HashMap<u32, Box<dyn Tracker>>,
    /// One id sequence per source, so a stream's ids do not depend on which other streams
    /// share this instance (or which replica runs it).
    ids: HashMap<u32, IdAllocator>,
    confirmed: u64,
    /// Objects added on frames a detector skipped, for the report.
    carried: u64,
}

impl Track {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            per_source: HashMap::new(),
            ids: HashMap::new(),
            confirmed: 0,
            carried: 0,
        }
    }

    /// Rebuilds a stage from [`Stage::snapshot`] output: same tracks, same next ids.
    pub fn restore(settings: Settings, snapshot: &[u8]) -> Result<Self, StageError> {
        let s: Snapshot = serde_json::from_slice(snapshot)
            .map_err(|e| StageError::Input(format!("unreadable tracker snapshot: {e}")))?;
        if let Some(taken_by) = s.algorithm.filter(|a| *a != settings.algorithm) {
            return Err(StageError::Input(format!(
                "the tracker snapshot was taken by algorithm {taken_by:?}, not {:?}",
                settings.algorithm
            )));
        }
        let mut per_source = HashMap::new();
        for (source, state) in s.streams {
            per_source.insert(source, restore_tracker(&settings, state)?);
        }
        Ok(Self {
            settings,
            per_source,
            ids: s.ids.into_iter().collect(),
            confirmed: s.confirmed,
            carried: 0,
        })
    }

    /// Takes over `sources` from another replica's snapshot (that replica is gone): their
    /// trackers and id sequences continue here exactly as they would have there.
    pub fn adopt(&mut self, snapshot: &[u8], sources: &[u32]) -> Result<(), StageError> {
        let mut other = Track::restore(self.settings.clone(), snapshot)?;
        for source in sources {
            if let Some(tracker) = other.per_source.remove(source) {
                self.per_source.insert(*source, tracker);
            }
            if let Some(ids) = other.ids.remove(source) {
                self.ids.insert(*source, ids);
            }
        }
        Ok(())
    }

    /// Tracks one frame (what `on_batch` does for each frame of a batch). Fails only on a
    /// malformed skip marker (see [`Skipped::of`]).
    pub fn track_frame(&mut self, frame: &mut FrameMeta) -> Result<(), StageError> {
        let skipped = Skipped::of(frame)?;
        let before = frame.objects.len();
        let tracker = self
            .per_source
            .entry(frame.source_id)
            .or_insert_with(|| new_tracker(&self.settings));
        let ids = self
            .ids
            .entry(frame.source_id)
            .or_insert_with(|| IdAllocator::for_source(frame.source_id));
        self.confirmed += tracker.update(frame, ids, &skipped);
        self.carried += frame.objects.len().saturating_sub(before) as u64;
        Ok(())
    }

    /// Tracks confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }
}

impl Stage for Track {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &mut batch.frames {
            self.track_frame(frame)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.per_source.remove(&end.source_id);
        out.end_of_stream(end.clone())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        Ok(StageReport::default()
            .with("tracks", self.confirmed)
            .with("carried_objects", self.carried))
    }

    fn adopt(&mut self, snapshot: &[u8], sources: &[u32]) -> Result<(), StageError> {
        Track::adopt(self, snapshot, sources)
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut streams: Vec<(u32, serde_json::Value)> = self
            .per_source
            .iter()
            .map(|(k, t)| (*k, t.save()))
            .collect();
        streams.sort_by_key(|(k, _)| *k);
        serde_json::to_vec(&Snapshot {
            algorithm: Some(self.settings.algorithm),
            ids: {
                let mut ids: Vec<(u32, IdAllocator)> =
                    self.ids.iter().map(|(k, v)| (*k, v.clone())).collect();
                ids.sort_by_key(|(k, _)| *k);
                ids
            },
            confirmed: self.confirmed,
            streams,
        })
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use vidmesh_protocol::{BBox, ImageLayout, ObjectMeta, PayloadRef, PixelFormat};

    /// An RGB image of `width` x `height`, grey, with `boxes` painted in order (later on top).
    fn image(width: u32, height: u32, boxes: &[(BBox, [u8; 3])]) -> PayloadRef {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, width, height);
        let mut data = vec![128u8; layout.min_len().unwrap()];
        for (b, colour) in boxes {
            let b = b.clipped(width as f32, height as f32);
            for y in b.top as usize..b.bottom() as usize {
                for x in b.left as usize..b.right() as usize {
                    let p = y * layout.stride as usize + x * 3;
                    data[p..p + 3].copy_from_slice(colour);
                }
            }
        }
        PayloadRef::Inline {
            layout,
            data: Bytes::from(data),
        }
    }

    /// Two people walking towards each other and crossing, in two streams. The blue one is
    /// hidden for frames 14..20 (so the snapshot at 17 holds a lost track) and poorly detected
    /// for frames 22..26.
    fn frame(source_id: u32, n: u64) -> FrameMeta {
        let x = n as f32 * 6.0 + source_id as f32;
        let object = |left: f32, confidence: f32| ObjectMeta {
            bbox: BBox::from_corners(left, 10.0, left + 30.0, 90.0),
            confidence,
            ..Default::default()
        };
        let red = object(x, 0.9);
        let blue = object(400.0 - x, if (22..26).contains(&n) { 0.3 } else { 0.8 });
        let payload = image(
            480,
            100,
            &[(blue.bbox, [30, 30, 220]), (red.bbox, [220, 30, 30])],
        );
        let mut objects = vec![red];
        if !(14..20).contains(&n) {
            objects.push(blue);
        }
        FrameMeta {
            source_id,
            frame_num: n,
            width: 480,
            height: 100,
            payload,
            objects,
            ..Default::default()
        }
    }

    fn ids(frame: &FrameMeta) -> Vec<(Option<u64>, Option<f32>)> {
        frame
            .objects
            .iter()
            .map(|o| (o.track_id, o.tracker_confidence))
            .collect()
    }

    #[test]
    fn a_restored_snapshot_continues_with_the_same_ids() {
        for algorithm in Algorithm::ALL {
            let settings = Settings {
                algorithm,
                ..Settings::default()
            };
            let mut uninterrupted = Track::new(settings.clone());
            let mut first = Track::new(settings.clone());
            let mut expected = Vec::new();
            let mut got = Vec::new();
            for n in 0..18 {
                for source in 0..2 {
                    let mut a = frame(source, n);
                    uninterrupted.track_frame(&mut a).unwrap();
                    expected.push(ids(&a));
                    let mut b = frame(source, n);
                    first.track_frame(&mut b).unwrap();
                    got.push(ids(&b));
                }
            }
            let snapshot = first.snapshot().expect("the tracker has state");
            drop(first);
            let mut second = Track::restore(settings, &snapshot).unwrap();
            for n in 18..50 {
                for source in 0..2 {
                    let mut a = frame(source, n);
                    uninterrupted.track_frame(&mut a).unwrap();
                    expected.push(ids(&a));
                    let mut b = frame(source, n);
                    second.track_frame(&mut b).unwrap();
                    got.push(ids(&b));
                }
            }
            assert_eq!(got, expected, "{algorithm:?}");
            assert_eq!(
                second.confirmed(),
                uninterrupted.confirmed(),
                "{algorithm:?}"
            );
            assert!(
                expected.last().unwrap().iter().all(|(id, _)| id.is_some()),
                "{algorithm:?}: {:?}",
                expected.last()
            );
        }
    }

    #[test]
    fn a_snapshot_of_one_algorithm_does_not_restore_as_another() {
        let mut sort = Track::new(Settings {
            algorithm: Algorithm::Appearance,
            ..Settings::default()
        });
        for n in 0..3 {
            sort.track_frame(&mut frame(0, n)).unwrap();
        }
        let snapshot = sort.snapshot().unwrap();
        let as_iou = Settings {
            algorithm: Algorithm::Iou,
            ..Settings::default()
        };
        assert!(Track::restore(as_iou, &snapshot).is_err());
    }

    #[test]
    fn a_thousand_objects_per_frame_are_tracked_by_every_algorithm() {
        // A 40 x 25 grid of 20 px boxes, 30 px apart, drifting 1 px per frame, over pixels.
        let grid = |n: u64| -> Vec<ObjectMeta> {
            (0..1000)
                .map(|i| {
                    let left = (i % 40) as f32 * 30.0 + n as f32;
                    let top = (i / 40) as f32 * 30.0 + 2.0;
                    ObjectMeta {
                        bbox: BBox::from_corners(left, top, left + 20.0, top + 20.0),
                        confidence: 0.9,
                        ..Default::default()
                    }
                })
                .collect()
        };
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(Settings {
                algorithm,
                ..Settings::default()
            });
            let started = std::time::Instant::now();
            let mut last = FrameMeta::default();
            for n in 0..5 {
                let objects = grid(n);
                let colours: Vec<(BBox, [u8; 3])> = objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (o.bbox, [(i * 37 % 256) as u8, (i * 91 % 256) as u8, 60]))
                    .collect();
                let mut f = FrameMeta {
                    frame_num: n,
                    width: 1230,
                    height: 760,
                    payload: image(1230, 760, &colours),
                    objects,
                    ..Default::default()
                };
                track.track_frame(&mut f).unwrap();
                last = f;
            }
            eprintln!(
                "{algorithm:?}: 5 frames of 1000 objects in {:?}",
                started.elapsed()
            );
            let mut seen: Vec<u64> = last.objects.iter().filter_map(|o| o.track_id).collect();
            assert_eq!(seen.len(), 1000, "{algorithm:?}");
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 1000, "{algorithm:?}: ids are unique");
            assert_eq!(track.confirmed(), 1000, "{algorithm:?}");
        }
    }

    #[test]
    fn every_algorithm_is_selected_by_name() {
        for (name, algorithm) in [
            ("iou", Algorithm::Iou),
            ("sort", Algorithm::Sort),
            ("bytetrack", Algorithm::ByteTrack),
            ("appearance", Algorithm::Appearance),
        ] {
            let table: toml::Table = format!("algorithm = \"{name}\"").parse().unwrap();
            let s = settings::parse::<Settings>(&table).unwrap();
            assert_eq!(s.algorithm, algorithm);
            s.validate().unwrap();
        }
    }

    #[test]
    fn wrong_settings_fail_at_load_time_naming_the_key() {
        for (toml, key) in [
            ("iou_threshold = 1.5", "iou_threshold"),
            ("high_threshold = -0.1", "high_threshold"),
            ("low_threshold = 0.6", "low_threshold"),
            ("new_track_threshold = 0.4", "new_track_threshold"),
            ("new_track_threshold = 1.2", "new_track_threshold"),
            ("match_threshold = 2.0", "match_threshold"),
            ("low_match_threshold = -1.0", "low_match_threshold"),
            ("appearance_weight = 1.1", "appearance_weight"),
            ("max_appearance_distance = nan", "max_appearance_distance"),
            ("min_hits = 0", "min_hits"),
            ("gallery_size = 0", "gallery_size"),
            ("histogram_bins = 0", "histogram_bins"),
            ("histogram_bins = 17", "histogram_bins"),
            ("embedding_kind = \"\"", "embedding_kind"),
            ("algorithm = \"deepsort\"", "algorithm"),
            ("max_age = -1", "max_age"),
        ] {
            let table: toml::Table = toml.parse().unwrap();
            let err = settings::parse::<Settings>(&table)
                .and_then(|s| s.validate())
                .expect_err(toml)
                .to_string();
            assert!(
                err.contains(key) || toml.starts_with("algorithm"),
                "{toml}: {err}"
            );
        }
        let fine: toml::Table = "max_age = 0\nmin_hits = 1\nlow_threshold = 0.5"
            .parse()
            .unwrap();
        settings::parse::<Settings>(&fine)
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn past_frame_output_reports_the_probation_boxes_on_confirmation() {
        for algorithm in Algorithm::ALL {
            let settings = Settings {
                algorithm,
                min_hits: 3,
                past_frame_output: true,
                ..Settings::default()
            };
            let mut track = Track::new(settings);
            // An empty first frame, so no tracker confirms a track at birth.
            track
                .track_frame(&mut FrameMeta {
                    frame_num: 0,
                    ..Default::default()
                })
                .unwrap();
            let mut confirming = None;
            for n in 1..=4 {
                let mut f = FrameMeta {
                    frame_num: n,
                    objects: vec![ObjectMeta {
                        bbox: BBox::from_corners(10.0 + n as f32, 10.0, 50.0 + n as f32, 90.0),
                        confidence: 0.9,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                track.track_frame(&mut f).unwrap();
                if let Some(meta) = f.user.iter().find(|u| u.kind == PAST_FRAMES_KIND) {
                    assert!(confirming.is_none(), "{algorithm:?}: reported twice");
                    confirming = Some((n, f.objects[0].track_id, meta.data.clone()));
                }
            }
            let (n, id, data) =
                confirming.unwrap_or_else(|| panic!("{algorithm:?}: no past-frame output"));
            assert_eq!(n, 3, "{algorithm:?} confirms on the third hit");
            let past: Vec<PastFrames> = serde_json::from_slice(&data).unwrap();
            assert_eq!(past.len(), 1, "{algorithm:?}");
            assert_eq!(Some(past[0].track_id), id, "{algorithm:?}");
            let frames: Vec<u64> = past[0].frames.iter().map(|p| p.frame_num).collect();
            assert_eq!(frames, vec![1, 2], "{algorithm:?}");
            assert_eq!(past[0].frames[0].bbox.left, 11.0, "{algorithm:?}");
        }
    }

    #[test]
    fn past_frame_output_is_off_by_default() {
        let mut track = Track::new(Settings {
            min_hits: 2,
            ..Settings::default()
        });
        for n in 0..4 {
            let mut f = frame(0, n);
            track.track_frame(&mut f).unwrap();
            assert!(f.user.is_empty());
        }
    }

    #[test]
    fn a_garbled_snapshot_is_an_error() {
        assert!(Track::restore(Settings::default(), b"{not json").is_err());
    }

    fn resuming(snapshot: Option<Vec<u8>>) -> crate::stage::BuildContext {
        crate::stage::BuildContext {
            peers: Default::default(),
            replica: 0,
            stage_name: "tracker".into(),
            base_dir: ".".into(),
            sources: vec!["cam0".into(), "cam1".into()],
            resume: Some(crate::stage::Resume { snapshot }),
        }
    }

    #[test]
    fn the_build_function_resumes_from_the_committed_snapshot() {
        let table: toml::Table = "algorithm = \"sort\"".parse().unwrap();
        let mut first = Track::new(settings::parse::<Settings>(&table).unwrap());
        for n in 0..18 {
            for source in 0..2 {
                first.track_frame(&mut frame(source, n)).unwrap();
            }
        }
        let snapshot = first.snapshot().unwrap();
        let resumed = (KIND.build)(&table, &resuming(Some(snapshot.clone()))).unwrap();
        assert_eq!(resumed.snapshot(), Some(snapshot));

        // A replacement of an instance that never committed a snapshot starts afresh.
        let fresh = (KIND.build)(&table, &resuming(None)).unwrap();
        let empty = Track::new(Settings {
            algorithm: Algorithm::Sort,
            ..Settings::default()
        });
        assert_eq!(fresh.snapshot(), empty.snapshot());
    }

    #[test]
    fn resuming_from_another_algorithm_or_a_garbled_snapshot_is_a_settings_error() {
        let mut sort = Track::new(Settings {
            algorithm: Algorithm::Sort,
            ..Settings::default()
        });
        sort.track_frame(&mut frame(0, 0)).unwrap();
        let snapshot = sort.snapshot().unwrap();
        let bytetrack: toml::Table = "algorithm = \"bytetrack\"".parse().unwrap();
        let e = (KIND.build)(&bytetrack, &resuming(Some(snapshot)))
            .err()
            .expect("a SORT snapshot does not resume ByteTrack");
        assert!(matches!(e, StageError::Settings(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "track: cannot resume from the last snapshot: the tracker snapshot was taken by \
             algorithm Sort, not ByteTrack"
        );
        let e = (KIND.build)(&bytetrack, &resuming(Some(b"{not json".to_vec())))
            .err()
            .expect("garbled");
        assert!(matches!(e, StageError::Settings(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("track: cannot resume from the last snapshot: unreadable"),
            "{e}"
        );
    }
}
