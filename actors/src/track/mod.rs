//! `track`: gives objects stable ids across frames (nvtracker). This is the IoU tracker:
//! greedy association of each frame's detections to the existing tracks of the same source and
//! class by box overlap. Kalman/SORT/ByteTrack-style trackers plug in beside it.
//!
//! A track is *tentative* until it has been matched `min_hits` times; only then do its objects
//! carry a `track_id` (like nvtracker's probation age). A track not matched for more than
//! `max_age` frames is dropped.

mod iou;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{Batch, FrameMeta};

use crate::registry::StageKind;
use crate::settings;
use crate::stage::{Outputs, Stage, StageError, StageReport};
use iou::IouTracker;

pub const KIND: StageKind = StageKind {
    name: "track",
    summary: "assign stable track ids to objects per source (nvtracker; IoU tracker)",
    check: |t, _| settings::parse::<Settings>(t).and_then(|s| s.validate()),
    build: |t, _| {
        let s = settings::parse::<Settings>(t)?;
        s.validate()?;
        Ok(Box::new(Track::new(s)))
    },
};

/// Tracking algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Iou,
}

/// What the user configures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Default "iou".
    pub algorithm: Algorithm,
    /// Smallest overlap that associates a detection with a track. Default 0.3.
    pub iou_threshold: f32,
    /// Matches needed before a track is confirmed and its id reported. Default 2.
    pub min_hits: u32,
    /// Frames a track survives without a match. Default 15.
    pub max_age: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Iou,
            iou_threshold: 0.3,
            min_hits: 2,
            max_age: 15,
        }
    }
}

impl Settings {
    fn validate(&self) -> Result<(), StageError> {
        if !(0.0..=1.0).contains(&self.iou_threshold) {
            return Err(StageError::Settings(format!(
                "iou_threshold must be within 0..=1, got {}",
                self.iou_threshold
            )));
        }
        if self.min_hits == 0 {
            return Err(StageError::Settings("min_hits must be at least 1".into()));
        }
        Ok(())
    }
}

/// One stream's tracker. Every algorithm implements this; the stage keeps one per source.
pub trait Tracker: Send {
    /// Associates this frame's objects with tracks: sets `track_id` and `tracker_confidence`
    /// on the objects of confirmed tracks. Returns how many tracks became confirmed.
    fn update(&mut self, frame: &mut FrameMeta, ids: &mut IdAllocator) -> u64;
    /// The tracker's whole state, for snapshots.
    fn save(&self) -> serde_json::Value;
}

/// Hands out track ids, unique across every stream of a stage (as DeepStream's are).
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
    pub fn allocate(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }
}

fn new_tracker(settings: &Settings) -> Box<dyn Tracker> {
    match settings.algorithm {
        Algorithm::Iou => Box::new(IouTracker::new(settings.clone())),
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
    })
}

/// Everything a replacement replica needs to carry on with the same ids.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    ids: IdAllocator,
    confirmed: u64,
    streams: Vec<(u32, serde_json::Value)>,
}

/// The running stage: one tracker per source.
pub struct Track {
    settings: Settings,
    per_source: HashMap<u32, Box<dyn Tracker>>,
    ids: IdAllocator,
    confirmed: u64,
}

impl Track {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            per_source: HashMap::new(),
            ids: IdAllocator::default(),
            confirmed: 0,
        }
    }

    /// Rebuilds a stage from [`Stage::snapshot`] output: same tracks, same next ids.
    pub fn restore(settings: Settings, snapshot: &[u8]) -> Result<Self, StageError> {
        let s: Snapshot = serde_json::from_slice(snapshot)
            .map_err(|e| StageError::Input(format!("unreadable tracker snapshot: {e}")))?;
        let mut per_source = HashMap::new();
        for (source, state) in s.streams {
            per_source.insert(source, restore_tracker(&settings, state)?);
        }
        Ok(Self {
            settings,
            per_source,
            ids: s.ids,
            confirmed: s.confirmed,
        })
    }

    /// Tracks one frame (what `on_batch` does for each frame of a batch).
    pub fn track_frame(&mut self, frame: &mut FrameMeta) {
        let tracker = self
            .per_source
            .entry(frame.source_id)
            .or_insert_with(|| new_tracker(&self.settings));
        self.confirmed += tracker.update(frame, &mut self.ids);
    }

    /// Tracks confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }
}

impl Stage for Track {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &mut batch.frames {
            self.track_frame(frame);
        }
        out.emit(batch)
    }

    fn on_end_of_stream(
        &mut self,
        source_id: u32,
        source_name: &str,
        out: &mut Outputs,
    ) -> Result<(), StageError> {
        self.per_source.remove(&source_id);
        out.end_of_stream(source_id, source_name)
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        Ok(StageReport::default().with("tracks", self.confirmed))
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut streams: Vec<(u32, serde_json::Value)> = self
            .per_source
            .iter()
            .map(|(k, t)| (*k, t.save()))
            .collect();
        streams.sort_by_key(|(k, _)| *k);
        serde_json::to_vec(&Snapshot {
            ids: self.ids.clone(),
            confirmed: self.confirmed,
            streams,
        })
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{BBox, ObjectMeta};

    /// Two people walking towards each other in two streams.
    fn frame(source_id: u32, n: u64) -> FrameMeta {
        let x = n as f32 * 4.0;
        let object = |left: f32| ObjectMeta {
            bbox: BBox::from_corners(left, 10.0, left + 30.0, 90.0),
            confidence: 0.9,
            ..Default::default()
        };
        FrameMeta {
            source_id,
            frame_num: n,
            objects: vec![object(x), object(400.0 - x)],
            ..Default::default()
        }
    }

    fn ids(frame: &FrameMeta) -> Vec<Option<u64>> {
        frame.objects.iter().map(|o| o.track_id).collect()
    }

    #[test]
    fn a_restored_snapshot_continues_with_the_same_ids() {
        let settings = Settings::default();
        let mut uninterrupted = Track::new(settings.clone());
        let mut first = Track::new(settings.clone());
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for n in 0..20 {
            for source in 0..2 {
                let mut a = frame(source, n);
                uninterrupted.track_frame(&mut a);
                expected.push(ids(&a));
                let mut b = frame(source, n);
                first.track_frame(&mut b);
                got.push(ids(&b));
            }
        }
        let snapshot = first.snapshot().expect("the tracker has state");
        drop(first);
        let mut second = Track::restore(settings, &snapshot).unwrap();
        for n in 20..40 {
            for source in 0..2 {
                let mut a = frame(source, n);
                uninterrupted.track_frame(&mut a);
                expected.push(ids(&a));
                let mut b = frame(source, n);
                second.track_frame(&mut b);
                got.push(ids(&b));
            }
        }
        assert_eq!(got, expected);
        assert_eq!(second.confirmed(), uninterrupted.confirmed());
        assert!(expected.last().unwrap().iter().all(|id| id.is_some()));
    }

    #[test]
    fn a_garbled_snapshot_is_an_error() {
        assert!(Track::restore(Settings::default(), b"{not json").is_err());
    }
}
