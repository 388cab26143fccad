//! Frames a detector skipped (infer `interval`): the tracker carries its tracks over them.
//!
//! An infer stage with `interval = N` runs on every (N+1)-th frame of a source and marks the
//! others with frame user meta [`SKIPPED_KIND`] holding its `component_id`. On such a frame the
//! tracks whose objects come from that component have no detection to match, so instead of
//! being associated they are *carried*: the tracker predicts them (Kalman trackers) or keeps
//! their last box (iou) and adds an object for every confirmed one, with its id, class, label,
//! component and the confidences of its last match. That is what nvtracker does with nvinfer's
//! `interval`, and what lets downstream stages (OSD, analytics, brokers) see every frame.
//!
//! Only the skipping component's tracks are carried: another detector that did run on the
//! frame (a second primary detector without `interval`) has its tracks associated as usual,
//! and a secondary classifier's marker touches no track (it makes no objects).
//!
//! Misses are counted on inferred frames only. `max_age` (and a tentative track's need for
//! consecutive matches) is about detection opportunities: a user who sets `max_age = 15` with
//! `interval = 4` expects a track to survive 15 missed detections, not to die after three
//! detector runs, and with `interval >= max_age` counting skipped frames as misses would kill
//! every track between two inferences. The Kalman prediction still advances on every frame, so
//! velocities stay in pixels per frame and the predicted box after a gap is where the object
//! has moved to.

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta};

use crate::infer::SKIPPED_KIND;
use crate::stage::StageError;

/// The inference components that skipped a frame (from its [`SKIPPED_KIND`] markers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    components: Vec<u32>,
}

impl Skipped {
    /// Reads the frame's markers. A marker that is not a 4-byte component id is an error: it
    /// cannot say whose tracks to carry, and guessing would either duplicate or drop objects.
    pub fn of(frame: &FrameMeta) -> Result<Self, StageError> {
        let mut components = Vec::new();
        for meta in frame.user.iter().filter(|u| u.kind == SKIPPED_KIND) {
            let bytes: [u8; 4] = meta.data.as_ref().try_into().map_err(|_| {
                StageError::Input(format!(
                    "frame {} of source {}: user meta `{SKIPPED_KIND}` holds {} bytes, expected \
                     4 (the skipping infer stage's component_id, little-endian u32)",
                    frame.frame_num,
                    frame.source_id,
                    meta.data.len()
                ))
            })?;
            components.push(u32::from_le_bytes(bytes));
        }
        Ok(Self { components })
    }

    /// Skipped by `components` (tests and callers that build frames themselves).
    pub fn by(components: &[u32]) -> Self {
        Self {
            components: components.to_vec(),
        }
    }

    /// Whether any component skipped the frame.
    pub fn any(&self) -> bool {
        !self.components.is_empty()
    }

    /// Whether tracks of objects made by `component_id` are carried over this frame.
    pub fn covers(&self, component_id: u32) -> bool {
        self.components.contains(&component_id)
    }
}

/// Whether a track whose latest match is `last` is carried over a frame `skipped` marks.
/// Tracks restored from a snapshot taken before interval support have no record of their
/// component: any skipping detector could be theirs, so they are carried (not missed) on any
/// marked frame, and shown once their next match has told what to show.
pub fn carried_by(last: Option<&LastSeen>, skipped: &Skipped) -> bool {
    match last {
        Some(last) => skipped.covers(last.component_id),
        None => skipped.any(),
    }
}

/// Records a match in a track's `last`.
pub fn remember(last: &mut Option<LastSeen>, object: &ObjectMeta, tracker_confidence: f32) {
    match last {
        Some(last) => last.update(object, tracker_confidence),
        None => *last = Some(LastSeen::of(object, tracker_confidence)),
    }
}

/// What a track's object looked like at its latest match: what a carried object repeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastSeen {
    pub component_id: u32,
    pub label: String,
    /// The detector's confidence.
    pub confidence: f32,
    /// The `tracker_confidence` the tracker reported.
    pub tracker_confidence: f32,
}

impl LastSeen {
    pub fn of(object: &ObjectMeta, tracker_confidence: f32) -> Self {
        Self {
            component_id: object.component_id,
            label: object.label.clone(),
            confidence: object.confidence,
            tracker_confidence: tracker_confidence.clamp(0.0, 1.0),
        }
    }

    /// Records a match; the label is copied only when it changed (it seldom does).
    pub fn update(&mut self, object: &ObjectMeta, tracker_confidence: f32) {
        self.component_id = object.component_id;
        if self.label != object.label {
            self.label.clone_from(&object.label);
        }
        self.confidence = object.confidence;
        self.tracker_confidence = tracker_confidence.clamp(0.0, 1.0);
    }

    /// The object a carried track adds to a frame of `frame_size` (width, height): `bbox`
    /// clipped to the frame (when its size is known). `None` when the box is not finite or lies outside the frame: a track predicted
    /// out of the picture has nothing to show.
    ///
    /// `confidence` repeats the last detection's rather than DeepStream's -0.1 for objects the
    /// detector did not report: consumers here filter on confidence (msgconv, snapshot triggers,
    /// analytics), and a negative value would make carried people vanish from them every
    /// skipped frame. Carried objects are told apart by frames without their detector (the
    /// frame's skip marker).
    pub fn object(
        &self,
        track_id: u64,
        class_id: i32,
        bbox: BBox,
        frame_size: (u32, u32),
    ) -> Option<ObjectMeta> {
        let finite = [bbox.left, bbox.top, bbox.width, bbox.height]
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return None;
        }
        let (width, height) = frame_size;
        let bbox = if width > 0 && height > 0 {
            bbox.clipped(width as f32, height as f32)
        } else {
            bbox
        };
        if bbox.width <= 0.0 || bbox.height <= 0.0 {
            return None;
        }
        Some(ObjectMeta {
            component_id: self.component_id,
            class_id,
            label: self.label.clone(),
            confidence: self.confidence,
            bbox,
            track_id: Some(track_id),
            tracker_confidence: Some(self.tracker_confidence),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Algorithm, Settings, Track};
    use super::*;
    use crate::stage::Stage;
    use bytes::Bytes;
    use vidmesh_protocol::UserMeta;

    fn marker(component_id: u32) -> UserMeta {
        UserMeta {
            kind: SKIPPED_KIND.into(),
            data: Bytes::copy_from_slice(&component_id.to_le_bytes()),
        }
    }

    /// A 40 x 80 "person" walking right `speed` px per frame, detected by component 1 on
    /// frames `n % every == 0`; the other frames carry component 1's skip marker.
    fn walking(n: u64, every: u64, speed: f32) -> FrameMeta {
        let mut frame = FrameMeta {
            frame_num: n,
            width: 1000,
            height: 200,
            ..Default::default()
        };
        if n.is_multiple_of(every) {
            let left = 10.0 + speed * n as f32;
            frame.objects.push(ObjectMeta {
                component_id: 1,
                class_id: 2,
                label: "person".into(),
                confidence: 0.8,
                bbox: BBox::from_corners(left, 50.0, left + 40.0, 130.0),
                ..Default::default()
            });
        } else {
            frame.user.push(marker(1));
        }
        frame
    }

    fn settings(algorithm: Algorithm) -> Settings {
        Settings {
            algorithm,
            min_hits: 1,
            ..Settings::default()
        }
    }

    #[test]
    fn every_algorithm_carries_its_tracks_over_skipped_frames() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(settings(algorithm));
            let mut lefts = Vec::new();
            let mut id = None;
            for n in 0..31 {
                let mut f = walking(n, 3, 4.0);
                track.track_frame(&mut f).unwrap();
                assert_eq!(
                    f.objects.len(),
                    1,
                    "{algorithm:?} frame {n}: {:?}",
                    f.objects
                );
                let o = &f.objects[0];
                assert!(o.track_id.is_some(), "{algorithm:?} frame {n}: {o:?}");
                assert_eq!(
                    *id.get_or_insert(o.track_id),
                    o.track_id,
                    "{algorithm:?} {n}"
                );
                assert_eq!(
                    (o.component_id, o.class_id, o.label.as_str(), o.confidence),
                    (1, 2, "person", 0.8),
                    "{algorithm:?} frame {n}"
                );
                let tc = o.tracker_confidence.expect("a tracked object has one");
                assert!((0.0..=1.0).contains(&tc), "{algorithm:?} frame {n}: {tc}");
                lefts.push(o.bbox.left);
            }
            let detected = |n: usize| 10.0 + 4.0 * n as f32;
            if algorithm == Algorithm::Iou {
                // No motion model: a carried box is the last detection's.
                for (n, left) in lefts.iter().enumerate() {
                    assert_eq!(*left, detected(n - n % 3), "iou frame {n}: {lefts:?}");
                }
                continue;
            }
            // Once the filter has learned the velocity (two detections in), a carried box lies
            // strictly between the detections around it, and moves every frame.
            for n in (6..31).filter(|n| n % 3 != 0) {
                let (before, after) = (detected(n - n % 3), detected(n - n % 3 + 3));
                assert!(
                    before < lefts[n] && lefts[n] < after,
                    "{algorithm:?} frame {n}: {} not within {before}..{after}: {lefts:?}",
                    lefts[n]
                );
                assert!(
                    lefts[n] > lefts[n - 1],
                    "{algorithm:?} frame {n}: {lefts:?}"
                );
            }
            // And close to where the object really is by the end.
            let last = lefts.len() - 1;
            let err = (lefts[last - 1] - detected(last - 1)).abs();
            assert!(err < 2.0, "{algorithm:?}: off by {err} px: {lefts:?}");
        }
    }

    #[test]
    fn tracks_survive_an_interval_longer_than_max_age_and_misses_count_on_inferred_frames() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(Settings {
                max_age: 2,
                ..settings(algorithm)
            });
            // Detected every 10th frame: 9 skipped frames between detections, max_age 2.
            let mut ids = Vec::new();
            for n in 0..41 {
                let mut f = walking(n, 10, 1.0);
                track.track_frame(&mut f).unwrap();
                ids.push(f.objects.first().and_then(|o| o.track_id));
            }
            assert!(ids.iter().all(|id| id.is_some()), "{algorithm:?}: {ids:?}");
            assert!(ids.iter().all(|id| *id == ids[0]), "{algorithm:?}: {ids:?}");

            // Now the object is gone: inferred frames 50, 60 and 70 miss it. A lost track is
            // not carried, so nothing is shown after frame 49; after more than max_age = 2
            // missed detections (frame 70) the track is dropped and a return is a new track.
            for n in 41..50 {
                let mut f = walking(n, 10, 1.0);
                track.track_frame(&mut f).unwrap();
                assert_eq!(f.objects.len(), 1, "{algorithm:?} frame {n} is carried");
            }
            for n in 50..80 {
                let mut f = walking(n, 10, 1.0);
                f.objects.clear();
                track.track_frame(&mut f).unwrap();
                assert!(
                    f.objects.is_empty(),
                    "{algorithm:?} frame {n}: {:?}",
                    f.objects
                );
            }
            let mut f = walking(80, 10, 1.0);
            track.track_frame(&mut f).unwrap();
            assert_ne!(f.objects[0].track_id, ids[0], "{algorithm:?}: expired");
        }
    }

    #[test]
    fn a_lost_track_survives_skipped_frames_and_is_reidentified() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(Settings {
                max_age: 1,
                ..settings(algorithm)
            });
            let mut first = None;
            for n in 0..13 {
                let mut f = walking(n, 3, 1.0);
                track.track_frame(&mut f).unwrap();
                first = first.or(f.objects[0].track_id);
            }
            // Missed on frame 15 (one real miss, within max_age = 1), found on frame 18.
            for n in 13..18 {
                let mut f = walking(n, 3, 1.0);
                if n == 15 {
                    f.objects.clear();
                }
                track.track_frame(&mut f).unwrap();
            }
            let mut f = walking(18, 3, 1.0);
            track.track_frame(&mut f).unwrap();
            assert_eq!(f.objects[0].track_id, first, "{algorithm:?}");
        }
    }

    #[test]
    fn only_the_skipping_components_tracks_are_carried() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(settings(algorithm));
            // Component 1 (skips 2 of 3 frames) finds a person; component 7 runs every frame
            // and finds a car elsewhere.
            for n in 0..12 {
                let mut f = walking(n, 3, 2.0);
                f.objects.push(ObjectMeta {
                    component_id: 7,
                    class_id: 0,
                    label: "car".into(),
                    confidence: 0.9,
                    bbox: BBox::from_corners(600.0 + n as f32, 20.0, 700.0 + n as f32, 80.0),
                    ..Default::default()
                });
                track.track_frame(&mut f).unwrap();
                let labels: Vec<&str> = f.objects.iter().map(|o| o.label.as_str()).collect();
                assert_eq!(labels.len(), 2, "{algorithm:?} frame {n}: {:?}", f.objects);
                assert!(labels.contains(&"person") && labels.contains(&"car"));
                let car = f.objects.iter().find(|o| o.label == "car").unwrap();
                assert_eq!(
                    car.bbox.left,
                    600.0 + n as f32,
                    "the car is this frame's detection"
                );
                assert!(car.track_id.is_some(), "{algorithm:?} frame {n}");
            }
            // A marker of a component that made none of the tracks (a secondary classifier's)
            // carries nothing and costs nobody a miss.
            let mut f = walking(12, 3, 2.0);
            f.user.push(marker(9));
            track.track_frame(&mut f).unwrap();
            assert_eq!(f.objects.len(), 1, "{algorithm:?}: {:?}", f.objects);
            assert!(f.objects[0].track_id.is_some());
        }
    }

    #[test]
    fn tentative_tracks_are_not_carried_and_probation_spans_skipped_frames() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(Settings {
                algorithm,
                min_hits: 2,
                ..Settings::default()
            });
            // An empty first inferred frame, so ByteTrack does not confirm at birth.
            let mut empty = walking(0, 3, 2.0);
            empty.objects.clear();
            track.track_frame(&mut empty).unwrap();
            let mut seen = Vec::new();
            for n in 3..10 {
                let mut f = walking(n, 3, 2.0);
                track.track_frame(&mut f).unwrap();
                seen.push((
                    n,
                    f.objects.len(),
                    f.objects.first().and_then(|o| o.track_id),
                ));
            }
            // 3: born tentative (no id); 4, 5: tentative, nothing carried; 6: second
            // consecutive detection confirms it; 7, 8: carried; 9: matched.
            let shape: Vec<(u64, usize, bool)> = seen
                .iter()
                .map(|(n, len, id)| (*n, *len, id.is_some()))
                .collect();
            assert_eq!(
                shape,
                vec![
                    (3, 1, false),
                    (4, 0, false),
                    (5, 0, false),
                    (6, 1, true),
                    (7, 1, true),
                    (8, 1, true),
                    (9, 1, true)
                ],
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn carried_boxes_are_clipped_to_the_frame() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(settings(algorithm));
            // 5 px per frame to the right on a 1000 px wide frame, detected every 3rd frame
            // while wholly inside (last at frame 189, right edge 995).
            let mut shown = Vec::new();
            let mut clipped = 0;
            for n in 0..200 {
                let mut f = walking(n, 3, 5.0);
                f.objects.retain(|o| o.bbox.right() <= 1000.0);
                track.track_frame(&mut f).unwrap();
                for o in &f.objects {
                    assert!(o.bbox.left >= 0.0 && o.bbox.right() <= 1000.0, "{o:?}");
                    assert!(o.bbox.width > 0.0, "{o:?}");
                    clipped += usize::from(o.bbox.right() == 1000.0 && o.bbox.width < 40.0);
                }
                shown.push(f.objects.len());
            }
            if algorithm != Algorithm::Iou {
                assert!(
                    clipped > 0,
                    "{algorithm:?}: the prediction ran past the edge"
                );
            }
            // Missed at frame 192: lost, so no longer shown.
            assert_eq!(shown[191..], [1, 0, 0, 0, 0, 0, 0, 0, 0], "{algorithm:?}");
        }
    }

    #[test]
    fn a_malformed_skip_marker_is_an_error_naming_it() {
        let mut track = Track::new(Settings::default());
        let mut f = walking(1, 3, 1.0);
        f.user[0].data = Bytes::from_static(&[1, 0]);
        let e = track.track_frame(&mut f).unwrap_err().to_string();
        assert!(
            e.contains(SKIPPED_KIND) && e.contains("2 bytes") && e.contains("frame 1"),
            "{e}"
        );
        assert_eq!(Skipped::of(&walking(1, 3, 1.0)).unwrap(), Skipped::by(&[1]));
        assert!(!Skipped::of(&walking(0, 3, 1.0)).unwrap().any());
    }

    #[test]
    fn a_snapshot_taken_mid_interval_carries_on_identically() {
        for algorithm in Algorithm::ALL {
            let mut uninterrupted = Track::new(settings(algorithm));
            let mut first = Track::new(settings(algorithm));
            for n in 0..8 {
                uninterrupted.track_frame(&mut walking(n, 3, 3.0)).unwrap();
                first.track_frame(&mut walking(n, 3, 3.0)).unwrap();
            }
            let mut second =
                Track::restore(settings(algorithm), &first.snapshot().unwrap()).unwrap();
            for n in 8..20 {
                let (mut a, mut b) = (walking(n, 3, 3.0), walking(n, 3, 3.0));
                uninterrupted.track_frame(&mut a).unwrap();
                second.track_frame(&mut b).unwrap();
                assert_eq!(a.objects, b.objects, "{algorithm:?} frame {n}");
            }
        }
    }

    #[test]
    fn snapshots_from_before_interval_support_still_restore() {
        for algorithm in Algorithm::ALL {
            let mut track = Track::new(Settings {
                max_age: 0,
                ..settings(algorithm)
            });
            let mut first_id = None;
            for n in 0..4 {
                let mut f = walking(n, 1, 3.0);
                track.track_frame(&mut f).unwrap();
                first_id = f.objects[0].track_id;
            }
            // Take the `last` records out, as an older version would have written the tracks.
            let mut json: serde_json::Value =
                serde_json::from_slice(&track.snapshot().unwrap()).unwrap();
            fn strip(v: &mut serde_json::Value) -> usize {
                match v {
                    serde_json::Value::Object(map) => {
                        let mut n = usize::from(map.remove("last").is_some());
                        n += map.values_mut().map(strip).sum::<usize>();
                        n
                    }
                    serde_json::Value::Array(items) => items.iter_mut().map(strip).sum(),
                    _ => 0,
                }
            }
            assert_eq!(strip(&mut json), 1, "{algorithm:?}: one track");
            let old = serde_json::to_vec(&json).unwrap();
            // Skipped frames right after the restore: the track does not know its detector
            // yet, so it is carried (not missed, even with max_age 0) but not shown.
            let mut restored = Track::restore(
                Settings {
                    max_age: 0,
                    ..settings(algorithm)
                },
                &old,
            )
            .unwrap();
            for n in 4..6 {
                let mut f = walking(n, 100, 3.0);
                restored.track_frame(&mut f).unwrap();
                assert!(f.objects.is_empty(), "{algorithm:?}: {:?}", f.objects);
            }
            let mut f = walking(6, 1, 3.0);
            restored.track_frame(&mut f).unwrap();
            assert_eq!(f.objects[0].track_id, first_id, "{algorithm:?}");
            // From its next match on, it is shown on skipped frames like any other.
            let mut f = walking(7, 2, 3.0);
            restored.track_frame(&mut f).unwrap();
            assert_eq!(f.objects.len(), 1, "{algorithm:?}");
            assert_eq!(
                f.objects[0].label, "person",
                "{algorithm:?}: learnt at frame 6"
            );
            assert_eq!(f.objects[0].track_id, first_id, "{algorithm:?}");
        }
    }
}
