//! `track`: gives objects stable ids across frames (nvtracker). This is the IoU tracker:
//! greedy association of each frame's detections to the existing tracks of the same source and
//! class by box overlap. Kalman/SORT/ByteTrack-style trackers plug in beside it.
//!
//! A track is *tentative* until it has been matched `min_hits` times; only then do its objects
//! carry a `track_id` (like nvtracker's probation age). A track not matched for more than
//! `max_age` frames is dropped.

mod iou;

use std::collections::HashMap;

use serde::Deserialize;
use vidmesh_protocol::Batch;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Iou,
}

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
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

/// The running stage: one tracker per source, one id space for all of them (ids are unique
/// across streams, as DeepStream's are).
pub struct Track {
    settings: Settings,
    per_source: HashMap<u32, IouTracker>,
    next_id: u64,
    confirmed: u64,
}

impl Track {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            per_source: HashMap::new(),
            next_id: 1,
            confirmed: 0,
        }
    }
}

impl Stage for Track {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &mut batch.frames {
            let tracker = self
                .per_source
                .entry(frame.source_id)
                .or_insert_with(|| IouTracker::new(self.settings.clone()));
            self.confirmed += tracker.update(&mut frame.objects, &mut self.next_id);
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
}
