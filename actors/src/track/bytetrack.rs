//! ByteTrack (Zhang et al., 2022) for one stream: associate every detection box, not only the
//! confident ones. Detections are split by score: *high* (`confidence >= high_threshold`) and
//! *low* (`low_threshold <= confidence < high_threshold`); those below `low_threshold` are
//! ignored. Each frame, after Kalman prediction of every track:
//!
//! 1. high detections ↔ confirmed and lost tracks, cost `1 − IoU`, allowed up to
//!    `match_threshold` (IoU at least `1 − match_threshold`);
//! 2. low detections ↔ confirmed tracks still unmatched, allowed up to `low_match_threshold`.
//!    Lost tracks are left out on purpose (as in the paper): a low score is evidence for a
//!    track that is being followed through an occlusion, not enough to revive one;
//! 3. high detections still unmatched ↔ tentative tracks, allowed up to
//!    [`TENTATIVE_MATCH_THRESHOLD`];
//! 4. confirmed tracks still unmatched become lost; tentative ones are dropped;
//! 5. high detections still unmatched with `confidence >= new_track_threshold` start tentative
//!    tracks. Low detections never start a track: they stay in the frame's objects without an
//!    id.
//!
//! A partly occluded object whose detector score drops for a few frames is therefore kept by
//! step 2, while low-score clutter never becomes a track. `tracker_confidence` is the matched
//! detection's score (ByteTrack's track score).

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{FrameMeta, ObjectMeta};

use super::lifecycle::{
    associate_by_iou, carried_mask, carried_objects, FrameMatches, KalmanTrack, TrackState,
};
use super::{IdAllocator, Settings, Skipped, Tracker};

/// Largest `1 − IoU` cost at which a tentative track takes a high detection (the paper's 0.7).
pub const TENTATIVE_MATCH_THRESHOLD: f32 = 0.7;
/// Largest `1 − IoU` between a tracked and a lost track that makes them duplicates (the
/// paper's 0.15).
const DUPLICATE_DISTANCE: f32 = 0.05;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    tracks: Vec<KalmanTrack>,
    /// Frames seen on this stream that no detector skipped. Tracks born on the first one are
    /// confirmed at once, as in the ByteTrack paper: there is no earlier detection that could
    /// have confirmed them.
    #[serde(default)]
    frames: u64,
}

/// ByteTrack tracks of one source.
pub struct ByteTracker {
    settings: Settings,
    state: State,
}

impl ByteTracker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: State::default(),
        }
    }

    pub fn restore(
        settings: Settings,
        state: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            settings,
            state: serde_json::from_value(state)?,
        })
    }
}

impl Tracker for ByteTracker {
    fn update(&mut self, frame: &mut FrameMeta, ids: &mut IdAllocator, skipped: &Skipped) -> u64 {
        let frame_num = frame.frame_num;
        let frame_size = (frame.width, frame.height);
        let s = &self.settings;
        if !skipped.any() {
            self.state.frames += 1;
        }
        let (min_hits, max_age) = (s.min_hits, s.max_age);
        let birth_hits = if self.state.frames == 1 { 1 } else { min_hits };
        let new_track_threshold = s.effective_new_track_threshold();
        let tracks = &mut self.state.tracks;
        let objects = &mut frame.objects;
        for track in tracks.iter_mut() {
            track.predict();
        }
        let predicted: Vec<_> = tracks.iter().map(KalmanTrack::prediction).collect();
        // Tracks whose detector skipped this frame have nothing to match (carry.rs).
        let carried = carried_mask(tracks.iter(), skipped);
        let high: Vec<usize> = (0..objects.len())
            .filter(|&o| objects[o].confidence >= s.high_threshold)
            .collect();
        let low: Vec<usize> = (0..objects.len())
            .filter(|&o| {
                let c = objects[o].confidence;
                c >= s.low_threshold && c < s.high_threshold
            })
            .collect();
        let in_state = |state: &[TrackState]| -> Vec<usize> {
            (0..tracks.len())
                .filter(|&t| !carried[t] && state.contains(&tracks[t].state))
                .collect()
        };
        let pool = in_state(&[TrackState::Confirmed, TrackState::Lost]);
        let tentative = in_state(&[TrackState::Tentative]);

        let mut matches = FrameMatches::new(tracks.len(), objects.len(), frame_num);
        // Which object each track took this frame, to undo a duplicate's id (step 6).
        let mut taken: Vec<Option<usize>> = vec![None; tracks.len()];
        let mut record = |matches: &mut FrameMatches,
                          step: Vec<(usize, usize, f32)>,
                          tracks: &mut [KalmanTrack],
                          objects: &mut [ObjectMeta]| {
            for (t, o, _iou) in step {
                taken[t] = Some(o);
                let object = &mut objects[o];
                let confidence = object.confidence;
                matches.record(t, &mut tracks[t], o, object, confidence, min_hits, ids);
            }
        };

        // 1. High-score detections against every track that has been confirmed.
        let first = associate_by_iou(
            &predicted,
            &pool,
            objects,
            &high,
            1.0 - s.match_threshold,
            s.fuse_score,
            |_, _| true,
        );
        record(&mut matches, first, tracks, objects);
        // 2. Low-score detections against the tracks left over: the confirmed ones, and with
        //    `low_score_recovers_lost` the lost ones too. The paper stops at confirmed tracks;
        //    but an object coming out of an occlusion is usually detected with a low score
        //    first, and letting it re-find its lost track (gated by the Kalman prediction and
        //    `low_match_threshold`) is what keeps its id (bench/mot: +6 IDF1, +4 MOTA overall).
        let recover_lost = s.low_score_recovers_lost;
        let confirmed_left: Vec<usize> = matches
            .unmatched_tracks(pool.iter().copied())
            .into_iter()
            .filter(|&t| {
                tracks[t].state == TrackState::Confirmed
                    || (recover_lost && tracks[t].state == TrackState::Lost)
            })
            .collect();
        let second = associate_by_iou(
            &predicted,
            &confirmed_left,
            objects,
            &low,
            1.0 - s.low_match_threshold,
            false,
            |_, _| true,
        );
        record(&mut matches, second, tracks, objects);
        // 3. Tentative tracks against the high-score detections left over.
        let high_left = matches.unmatched_objects(high.iter().copied());
        let third = associate_by_iou(
            &predicted,
            &tentative,
            objects,
            &high_left,
            1.0 - TENTATIVE_MATCH_THRESHOLD,
            s.fuse_score,
            |_, _| true,
        );
        record(&mut matches, third, tracks, objects);

        // 4. Unmatched tracks miss a frame (carried ones had no chance to match).
        for ((track, matched), carried) in
            tracks.iter_mut().zip(&matches.track_matched).zip(&carried)
        {
            if !matched && !carried {
                track.miss();
            }
        }
        let shown = carried_objects(tracks.iter(), &carried, frame_size);
        // 5. Confident unmatched detections start tracks.
        for o in matches.unmatched_objects(high.iter().copied()) {
            if objects[o].confidence >= new_track_threshold {
                let track = matches.start(&mut objects[o], birth_hits, ids);
                tracks.push(track);
                taken.push(Some(o));
            }
        }
        // 6. A lost track lying on a tracked one is one object twice: keep the older of the two
        //    (the paper's remove_duplicate_stracks), and take the id off a dropped one's object.
        let mut duplicate = vec![false; tracks.len()];
        for p in (0..tracks.len()).filter(|&p| taken[p].is_some()) {
            for q in (0..tracks.len()).filter(|&q| tracks[q].state == TrackState::Lost) {
                if duplicate[q]
                    || tracks[p].bbox().iou(&tracks[q].bbox()) <= 1.0 - DUPLICATE_DISTANCE
                {
                    continue;
                }
                if tracks[p].seen_span > tracks[q].seen_span {
                    duplicate[q] = true;
                } else {
                    duplicate[p] = true;
                    if let Some(o) = taken[p] {
                        objects[o].track_id = None;
                        objects[o].tracker_confidence = None;
                    }
                    break;
                }
            }
        }
        let mut index = 0;
        tracks.retain(|t| {
            let keep = !duplicate[index] && !t.expired(max_age);
            index += 1;
            keep
        });
        if self.settings.past_frame_output {
            matches.attach_past_frames(frame);
        }
        frame.objects.extend(shown);
        matches.newly_confirmed
    }

    fn save(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::sort::SortTracker;
    use super::*;
    use vidmesh_protocol::BBox;

    fn object(left: f32, confidence: f32) -> ObjectMeta {
        ObjectMeta {
            bbox: BBox::from_corners(left, 0.0, left + 20.0, 40.0),
            confidence,
            ..Default::default()
        }
    }

    fn frame(objects: Vec<ObjectMeta>) -> FrameMeta {
        FrameMeta {
            objects,
            ..Default::default()
        }
    }

    /// A person walking behind a pillar: the detector's score drops to 0.3 for frames 6..10.
    fn walk(n: u64) -> ObjectMeta {
        let score = if (6..10).contains(&n) { 0.3 } else { 0.9 };
        object(3.0 * n as f32, score)
    }

    #[test]
    fn low_score_detections_carry_a_track_through_an_occlusion() {
        let settings = Settings {
            max_age: 2,
            ..Settings::default()
        };
        let mut byte = ByteTracker::new(settings.clone());
        let mut sort = SortTracker::new(settings.clone());
        let (mut byte_ids, mut sort_ids) = (IdAllocator::default(), IdAllocator::default());
        let (mut byte_seen, mut sort_seen) = (Vec::new(), Vec::new());
        for n in 0..16 {
            let mut f = frame(vec![walk(n)]);
            byte.update(&mut f, &mut byte_ids, &Skipped::default());
            byte_seen.push(f.objects[0].track_id);
            // Without ByteTrack a pipeline must cut low scores at the detector (the same 0.5),
            // or clutter would become tracks; SORT then sees nothing during the occlusion.
            let mut f = frame(vec![walk(n)]);
            f.objects
                .retain(|o| o.confidence >= settings.high_threshold);
            sort.update(&mut f, &mut sort_ids, &Skipped::default());
            sort_seen.push(f.objects.first().and_then(|o| o.track_id));
        }
        // Born on the stream's first frame, the track is confirmed at once.
        assert!(byte_seen.iter().all(|id| *id == Some(1)), "{byte_seen:?}");
        assert_eq!(sort_seen[5], Some(1));
        assert!(
            sort_seen[10..].iter().all(|id| *id != Some(1)),
            "SORT lost the track after max_age: {sort_seen:?}"
        );
    }

    #[test]
    fn a_weak_detection_after_an_occlusion_re_finds_the_lost_track() {
        let run = |recover: bool| {
            let settings = Settings {
                low_score_recovers_lost: recover,
                ..Settings::default()
            };
            let mut byte = ByteTracker::new(settings);
            let mut ids = IdAllocator::default();
            for n in 0..6 {
                byte.update(
                    &mut frame(vec![object(2.0 * n as f32, 0.9)]),
                    &mut ids,
                    &Skipped::default(),
                );
            }
            // Hidden for three frames, then back with a weak score, then a strong one.
            for _ in 0..3 {
                byte.update(&mut frame(vec![]), &mut ids, &Skipped::default());
            }
            let mut weak = frame(vec![object(18.0, 0.3)]);
            byte.update(&mut weak, &mut ids, &Skipped::default());
            let mut strong = frame(vec![object(20.0, 0.9)]);
            byte.update(&mut strong, &mut ids, &Skipped::default());
            (weak.objects[0].track_id, strong.objects[0].track_id)
        };
        assert_eq!(run(true), (Some(1), Some(1)));
        let (weak, _) = run(false);
        assert_eq!(
            weak, None,
            "the paper's ByteTrack ignores weak detections for lost tracks"
        );
    }

    #[test]
    fn only_first_frame_tracks_skip_probation() {
        let mut byte = ByteTracker::new(Settings::default());
        let mut ids = IdAllocator::default();
        let mut f = frame(vec![object(0.0, 0.9)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, Some(1));
        let mut f = frame(vec![object(1.0, 0.9), object(200.0, 0.9)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, Some(1));
        assert_eq!(
            f.objects[1].track_id, None,
            "a later newcomer waits for min_hits"
        );
    }

    #[test]
    fn score_fusion_prefers_the_confident_detection() {
        // Two detections overlap a track's prediction equally; fusion picks the confident one.
        let mut byte = ByteTracker::new(Settings::default());
        let mut ids = IdAllocator::default();
        byte.update(
            &mut frame(vec![object(0.0, 0.9)]),
            &mut ids,
            &Skipped::default(),
        );
        let mut f = frame(vec![object(2.0, 0.62), object(-2.0, 0.95)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[1].track_id, Some(1), "{:?}", f.objects);
    }

    #[test]
    fn low_score_clutter_never_becomes_a_track_and_is_left_in_place() {
        let settings = Settings {
            min_hits: 1,
            ..Settings::default()
        };
        let mut byte = ByteTracker::new(settings);
        let mut ids = IdAllocator::default();
        for _ in 0..5 {
            let mut f = frame(vec![
                object(0.0, 0.9),
                object(200.0, 0.4),
                object(400.0, 0.05),
            ]);
            byte.update(&mut f, &mut ids, &Skipped::default());
            assert_eq!(f.objects.len(), 3, "a tracker never removes detections");
            assert_eq!(f.objects[0].track_id, Some(1));
            assert_eq!(f.objects[0].tracker_confidence, Some(0.9));
            assert_eq!((f.objects[1].track_id, f.objects[2].track_id), (None, None));
        }
    }

    #[test]
    fn detections_between_high_and_new_track_threshold_do_not_start_tracks() {
        let settings = Settings {
            min_hits: 1,
            ..Settings::default()
        };
        assert!((settings.effective_new_track_threshold() - 0.6).abs() < 1e-6);
        let mut byte = ByteTracker::new(settings);
        let mut ids = IdAllocator::default();
        let mut f = frame(vec![object(0.0, 0.55)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, None);
        // Once a track exists, a 0.55 detection is a high one and continues it.
        let mut f = frame(vec![object(100.0, 0.7)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        let mut f = frame(vec![object(102.0, 0.55)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, Some(1));
    }

    #[test]
    fn a_lost_track_is_reidentified_by_a_high_detection_within_max_age() {
        let settings = Settings {
            min_hits: 1,
            max_age: 10,
            ..Settings::default()
        };
        let mut byte = ByteTracker::new(settings);
        let mut ids = IdAllocator::default();
        for n in 0..8 {
            byte.update(
                &mut frame(vec![object(2.0 * n as f32, 0.9)]),
                &mut ids,
                &Skipped::default(),
            );
        }
        for _ in 8..12 {
            byte.update(&mut frame(vec![]), &mut ids, &Skipped::default());
        }
        let mut f = frame(vec![object(24.0, 0.9)]);
        byte.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, Some(1));
    }
}
