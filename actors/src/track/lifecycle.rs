//! What the Kalman-based trackers (SORT, ByteTrack, appearance) share: a track's life cycle
//! and IoU association against the tracks' predicted boxes.
//!
//! ```text
//!         min_hits consecutive matches         miss             > max_age misses
//! start ─▶ Tentative ─────────────────▶ Confirmed ─────▶ Lost ─────────────────▶ dropped
//!             │ miss                        ▲     match    │
//!             ▼                             └──────────────┘
//!          dropped
//! ```
//!
//! A lost track is a *shadow track*: it keeps being predicted every frame, and a later match
//! re-identifies it under the same id, which is how ids survive occlusions. Ids are allocated
//! on confirmation, so tentative tracks that die in probation leave no gaps in reported ids.

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta, UserMeta};

use super::assignment::{assign, Candidate};
use super::carry::{self, LastSeen, Skipped};
use super::kalman::KalmanBox;
use super::IdAllocator;

/// Where a track is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackState {
    /// Matched fewer than `min_hits` consecutive frames; its objects carry no id yet.
    Tentative,
    /// Matched in the latest frame; its objects carry the track's id.
    Confirmed,
    /// Confirmed once, unmatched for `misses` frames; predicted until re-identified or expired.
    Lost,
}

/// One track's identity, life cycle and motion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KalmanTrack {
    /// Allocated when the track is confirmed.
    pub id: Option<u64>,
    pub class_id: i32,
    pub state: TrackState,
    pub filter: KalmanBox,
    /// Matches so far (consecutive while tentative).
    pub hits: u32,
    /// Frames since the last match.
    pub misses: u32,
    /// Frames since the track started.
    #[serde(default)]
    pub age: u32,
    /// `age` at the latest match: how long the track has been seen, lost time excluded.
    #[serde(default)]
    pub seen_span: u32,
    /// Boxes of the frames spent tentative, reported as past-frame output on confirmation.
    #[serde(default)]
    pub probation: Vec<PastBox>,
    /// The latest matched object, repeated on frames its detector skipped. `None` only in
    /// tracks restored from snapshots taken before interval support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastSeen>,
}

/// Where a track's object was in an earlier frame (DeepStream's past-frame object).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PastBox {
    pub frame_num: u64,
    pub bbox: BBox,
    pub confidence: f32,
}

/// A just-confirmed track's probation boxes, attached to the frame that confirmed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastFrames {
    pub track_id: u64,
    pub class_id: i32,
    pub frames: Vec<PastBox>,
}

/// The user meta kind of past-frame output: a JSON array of [`PastFrames`].
pub const PAST_FRAMES_KIND: &str = "vidmesh.tracker/past-frames+json";

impl KalmanTrack {
    /// A track started from an unmatched detection; confirmed at once when `min_hits` is 1.
    /// Returns whether it was confirmed.
    pub fn start(object: &ObjectMeta, min_hits: u32, ids: &mut IdAllocator) -> (Self, bool) {
        let mut track = Self {
            id: None,
            class_id: object.class_id,
            state: TrackState::Tentative,
            filter: KalmanBox::new(&object.bbox),
            hits: 1,
            misses: 0,
            age: 0,
            seen_span: 0,
            probation: Vec::new(),
            last: Some(LastSeen::of(object, object.confidence)),
        };
        let confirmed = track.confirm_if_due(min_hits, ids);
        (track, confirmed)
    }

    /// Advances the motion estimate one frame (every track, every frame, matched or not).
    pub fn predict(&mut self) {
        self.age += 1;
        self.filter.predict(self.state == TrackState::Lost);
    }

    /// The current estimate (after [`predict`](Self::predict): the prediction for this frame).
    pub fn bbox(&self) -> BBox {
        self.filter.bbox()
    }

    /// What IoU association needs to know of the track this frame.
    pub fn prediction(&self) -> Prediction {
        Prediction {
            class_id: self.class_id,
            bbox: self.bbox(),
        }
    }

    /// Records a match with `bbox`. Returns whether the track became confirmed just now (a
    /// re-identified lost track was confirmed before and does not count).
    pub fn hit(&mut self, bbox: &BBox, min_hits: u32, ids: &mut IdAllocator) -> bool {
        self.filter.update(bbox);
        self.hits = self.hits.saturating_add(1);
        self.misses = 0;
        self.seen_span = self.age;
        match self.state {
            TrackState::Tentative => self.confirm_if_due(min_hits, ids),
            TrackState::Confirmed | TrackState::Lost => {
                self.state = TrackState::Confirmed;
                false
            }
        }
    }

    /// Records a frame without a match.
    pub fn miss(&mut self) {
        self.misses = self.misses.saturating_add(1);
        if self.state == TrackState::Confirmed {
            self.state = TrackState::Lost;
        }
    }

    /// Whether the track should be dropped: a tentative track on its first miss, any other
    /// after more than `max_age` missed frames.
    pub fn expired(&self, max_age: u32) -> bool {
        match self.state {
            TrackState::Tentative => self.misses > 0,
            TrackState::Confirmed | TrackState::Lost => self.misses > max_age,
        }
    }

    /// Writes the track's id and `confidence` on `object` if the track is confirmed.
    pub fn report(&self, object: &mut ObjectMeta, confidence: f32) {
        if self.state == TrackState::Confirmed {
            if let Some(id) = self.id {
                object.track_id = Some(id);
                object.tracker_confidence = Some(confidence.clamp(0.0, 1.0));
            }
        }
    }

    /// Whether the frame's skipping detector made this track's objects: then it is carried
    /// (predicted, shown if confirmed) instead of associated, and not missed.
    pub fn carried_by(&self, skipped: &Skipped) -> bool {
        carry::carried_by(self.last.as_ref(), skipped)
    }

    /// The object a carried track shows on a skipped frame: confirmed tracks only (a lost
    /// track's object was not found at the last chance, a tentative one is not reported yet).
    pub fn carried_object(&self, frame_size: (u32, u32)) -> Option<ObjectMeta> {
        match (self.state, self.id, &self.last) {
            (TrackState::Confirmed, Some(id), Some(last)) => {
                last.object(id, self.class_id, self.bbox(), frame_size)
            }
            _ => None,
        }
    }

    fn confirm_if_due(&mut self, min_hits: u32, ids: &mut IdAllocator) -> bool {
        if self.hits >= min_hits {
            self.state = TrackState::Confirmed;
            self.id = Some(ids.allocate());
            true
        } else {
            false
        }
    }
}

/// Attaches just-confirmed tracks' probation boxes to the frame that confirmed them, as
/// nvtracker's past-frame output does (user meta [`PAST_FRAMES_KIND`], a JSON array).
pub fn attach_past_frames(frame: &mut FrameMeta, past: Vec<PastFrames>) {
    let past: Vec<PastFrames> = past.into_iter().filter(|p| !p.frames.is_empty()).collect();
    if past.is_empty() {
        return;
    }
    if let Ok(json) = serde_json::to_vec(&past) {
        frame.user.push(UserMeta {
            kind: PAST_FRAMES_KIND.to_string(),
            data: json.into(),
        });
    }
}

/// One frame's association bookkeeping across the steps of a tracker.
pub struct FrameMatches {
    pub track_matched: Vec<bool>,
    pub object_matched: Vec<bool>,
    pub newly_confirmed: u64,
    frame_num: u64,
    /// Tracks confirmed in this frame, with the boxes of their probation.
    confirmed_past: Vec<PastFrames>,
}

impl FrameMatches {
    pub fn new(tracks: usize, objects: usize, frame_num: u64) -> Self {
        Self {
            track_matched: vec![false; tracks],
            object_matched: vec![false; objects],
            newly_confirmed: 0,
            frame_num,
            confirmed_past: Vec::new(),
        }
    }

    /// Keeps a tentative track's box for past-frame output, or hands its probation over when
    /// it has just been confirmed.
    fn note_probation(
        &mut self,
        track: &mut KalmanTrack,
        confirmed_now: bool,
        object: &ObjectMeta,
    ) {
        match (confirmed_now, track.state, track.id) {
            (true, _, Some(track_id)) => self.confirmed_past.push(PastFrames {
                track_id,
                class_id: track.class_id,
                frames: std::mem::take(&mut track.probation),
            }),
            (false, TrackState::Tentative, _) => track.probation.push(PastBox {
                frame_num: self.frame_num,
                bbox: object.bbox,
                confidence: object.confidence,
            }),
            _ => {}
        }
    }

    /// Attaches the probation boxes of the tracks confirmed in this frame to it.
    pub fn attach_past_frames(&mut self, frame: &mut FrameMeta) {
        attach_past_frames(frame, std::mem::take(&mut self.confirmed_past));
    }

    /// Records that track `t` matched object `o`: corrects the track with the object's box and
    /// writes the id on the object if the track is (now) confirmed.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        t: usize,
        track: &mut KalmanTrack,
        o: usize,
        object: &mut ObjectMeta,
        confidence: f32,
        min_hits: u32,
        ids: &mut IdAllocator,
    ) {
        self.track_matched[t] = true;
        self.object_matched[o] = true;
        let confirmed_now = track.hit(&object.bbox, min_hits, ids);
        self.newly_confirmed += u64::from(confirmed_now);
        self.note_probation(track, confirmed_now, object);
        track.report(object, confidence);
        carry::remember(&mut track.last, object, confidence);
    }

    /// Starts a track from unmatched object `o` and reports it if it is confirmed at once.
    pub fn start(
        &mut self,
        object: &mut ObjectMeta,
        min_hits: u32,
        ids: &mut IdAllocator,
    ) -> KalmanTrack {
        let (mut track, confirmed) = KalmanTrack::start(object, min_hits, ids);
        self.newly_confirmed += u64::from(confirmed);
        self.note_probation(&mut track, confirmed, object);
        track.report(object, object.confidence);
        track
    }

    /// The tracks of `set` not matched yet.
    pub fn unmatched_tracks(&self, set: impl IntoIterator<Item = usize>) -> Vec<usize> {
        set.into_iter()
            .filter(|&t| !self.track_matched[t])
            .collect()
    }

    /// The objects of `set` not matched yet.
    pub fn unmatched_objects(&self, set: impl IntoIterator<Item = usize>) -> Vec<usize> {
        set.into_iter()
            .filter(|&o| !self.object_matched[o])
            .collect()
    }
}

/// Which of `tracks` the frame's skipping detectors made (see [`KalmanTrack::carried_by`]).
pub fn carried_mask<'a>(
    tracks: impl IntoIterator<Item = &'a KalmanTrack>,
    skipped: &Skipped,
) -> Vec<bool> {
    tracks.into_iter().map(|t| t.carried_by(skipped)).collect()
}

/// The objects the carried confirmed `tracks` show on a frame of `frame_size` (width, height).
pub fn carried_objects<'a>(
    tracks: impl IntoIterator<Item = &'a KalmanTrack>,
    carried: &[bool],
    frame_size: (u32, u32),
) -> Vec<ObjectMeta> {
    tracks
        .into_iter()
        .zip(carried)
        .filter(|(_, c)| **c)
        .filter_map(|(t, _)| t.carried_object(frame_size))
        .collect()
}

/// A track's class and predicted box for this frame.
#[derive(Debug, Clone, Copy)]
pub struct Prediction {
    pub class_id: i32,
    pub bbox: BBox,
}

/// Matches the tracks `track_set` (indices into `predictions`) with the objects `object_set`
/// (indices into `objects`) by IoU: same class only, similarity at least `min_iou` (and some
/// overlap at all), cost `1 − similarity`, optimal assignment. The similarity is the IoU, or
/// with `fuse_score` the IoU times the detection's confidence (ByteTrack's `fuse_score`).
/// `allow(track, object)` can veto a pair. Returns `(track, object, iou)` in global indices.
pub fn associate_by_iou(
    predictions: &[Prediction],
    track_set: &[usize],
    objects: &[ObjectMeta],
    object_set: &[usize],
    min_iou: f32,
    fuse_score: bool,
    allow: impl Fn(usize, usize) -> bool,
) -> Vec<(usize, usize, f32)> {
    let mut candidates = Vec::new();
    for (ti, &t) in track_set.iter().enumerate() {
        for (oi, &o) in object_set.iter().enumerate() {
            if objects[o].class_id != predictions[t].class_id {
                continue;
            }
            let iou = predictions[t].bbox.iou(&objects[o].bbox);
            // ByteTrack's score fusion: a confident detection's overlap counts for more.
            let similarity = if fuse_score {
                iou * objects[o].confidence.clamp(0.0, 1.0)
            } else {
                iou
            };
            if iou > 0.0 && similarity >= min_iou && allow(t, o) {
                candidates.push(Candidate {
                    track: ti,
                    detection: oi,
                    cost: f64::from(1.0 - similarity),
                });
            }
        }
    }
    let limit = f64::from(1.0 - min_iou);
    assign(track_set.len(), object_set.len(), &candidates, limit)
        .into_iter()
        .map(|(ti, oi)| {
            let (t, o) = (track_set[ti], object_set[oi]);
            (t, o, predictions[t].bbox.iou(&objects[o].bbox))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(left: f32) -> ObjectMeta {
        ObjectMeta {
            bbox: BBox::from_corners(left, 0.0, left + 10.0, 20.0),
            ..Default::default()
        }
    }

    #[test]
    fn probation_confirmation_loss_and_expiry() {
        let mut ids = IdAllocator::default();
        let (mut t, confirmed) = KalmanTrack::start(&object(0.0), 2, &mut ids);
        assert!(!confirmed);
        assert_eq!((t.state, t.id), (TrackState::Tentative, None));
        assert!(t.hit(&object(1.0).bbox, 2, &mut ids));
        assert_eq!((t.state, t.id), (TrackState::Confirmed, Some(1)));
        t.miss();
        assert_eq!(t.state, TrackState::Lost);
        assert!(!t.expired(1));
        let mut o = object(2.0);
        t.report(&mut o, 0.5);
        assert_eq!(o.track_id, None, "a lost track reports nothing");
        assert!(
            !t.hit(&o.bbox, 2, &mut ids),
            "re-identification is not a new confirmation"
        );
        t.report(&mut o, 0.5);
        assert_eq!((o.track_id, o.tracker_confidence), (Some(1), Some(0.5)));
        t.miss();
        t.miss();
        assert!(t.expired(1));

        let (mut tentative, _) = KalmanTrack::start(&object(0.0), 3, &mut ids);
        tentative.miss();
        assert!(tentative.expired(100), "probation must be consecutive");
    }
}
