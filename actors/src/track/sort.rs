//! SORT (Bewley et al., 2016) for one stream: every track's Kalman filter predicts its box, the
//! predictions are matched to the frame's detections by an optimal assignment on `1 − IoU`
//! (pairs below `iou_threshold` are not allowed), matched filters are corrected, unmatched
//! detections start tentative tracks, and unmatched confirmed tracks go on predicted as lost
//! tracks for up to `max_age` frames. Detection scores are not looked at.
//!
//! `tracker_confidence` is the IoU between the track's prediction and its detection (the
//! detector's confidence on the frame a track is born confirmed, when `min_hits` is 1).

use serde::{Deserialize, Serialize};
use vidmesh_protocol::FrameMeta;

use super::lifecycle::{
    associate_by_iou, carried_mask, carried_objects, FrameMatches, KalmanTrack,
};
use super::{IdAllocator, Settings, Skipped, Tracker};

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    tracks: Vec<KalmanTrack>,
}

/// SORT tracks of one source.
pub struct SortTracker {
    settings: Settings,
    state: State,
}

impl SortTracker {
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

impl Tracker for SortTracker {
    fn update(&mut self, frame: &mut FrameMeta, ids: &mut IdAllocator, skipped: &Skipped) -> u64 {
        let frame_num = frame.frame_num;
        let Settings {
            iou_threshold,
            min_hits,
            max_age,
            ..
        } = self.settings;
        let tracks = &mut self.state.tracks;
        for track in tracks.iter_mut() {
            track.predict();
        }
        let predicted: Vec<_> = tracks.iter().map(KalmanTrack::prediction).collect();
        // Tracks whose detector skipped this frame have nothing to match (carry.rs).
        let carried = carried_mask(tracks.iter(), skipped);
        let active_tracks: Vec<usize> = (0..tracks.len()).filter(|&t| !carried[t]).collect();
        let all_objects: Vec<usize> = (0..frame.objects.len()).collect();
        let matches = associate_by_iou(
            &predicted,
            &active_tracks,
            &frame.objects,
            &all_objects,
            iou_threshold,
            false,
            |_, _| true,
        );

        let mut frame_matches = FrameMatches::new(tracks.len(), frame.objects.len(), frame_num);
        for (t, o, iou) in matches {
            let object = &mut frame.objects[o];
            frame_matches.record(t, &mut tracks[t], o, object, iou, min_hits, ids);
        }
        for ((track, matched), carried) in tracks
            .iter_mut()
            .zip(&frame_matches.track_matched)
            .zip(&carried)
        {
            if !matched && !carried {
                track.miss();
            }
        }
        let shown = carried_objects(tracks.iter(), &carried, (frame.width, frame.height));
        for o in frame_matches.unmatched_objects(0..frame.objects.len()) {
            let track = frame_matches.start(&mut frame.objects[o], min_hits, ids);
            tracks.push(track);
        }
        tracks.retain(|t| !t.expired(max_age));
        if self.settings.past_frame_output {
            frame_matches.attach_past_frames(frame);
        }
        frame.objects.extend(shown);
        frame_matches.newly_confirmed
    }

    fn save(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{BBox, ObjectMeta};

    fn frame(lefts: &[f32]) -> FrameMeta {
        FrameMeta {
            objects: lefts
                .iter()
                .map(|&l| ObjectMeta {
                    bbox: BBox::from_corners(l, 0.0, l + 20.0, 40.0),
                    confidence: 0.9,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_fast_object_is_followed_by_its_predicted_position() {
        // 10 px per frame on a 20 px wide box (IoU 0.33 between frames), then 16 px per frame
        // (IoU 0.11, below the threshold): only the learned velocity keeps the track.
        let settings = Settings {
            min_hits: 1,
            ..Settings::default()
        };
        let mut sort = SortTracker::new(settings);
        let mut ids = IdAllocator::default();
        let mut got = Vec::new();
        for n in 0..30 {
            let left = if n < 10 {
                10.0 * n as f32
            } else {
                100.0 + 16.0 * (n - 10) as f32
            };
            let mut f = frame(&[left]);
            sort.update(&mut f, &mut ids, &Skipped::default());
            got.push(f.objects[0].track_id);
        }
        assert!(got.iter().all(|id| *id == Some(1)), "{got:?}");
    }

    #[test]
    fn a_shadow_track_is_reidentified_after_an_occlusion() {
        let settings = Settings {
            min_hits: 1,
            max_age: 5,
            ..Settings::default()
        };
        let mut sort = SortTracker::new(settings);
        let mut ids = IdAllocator::default();
        for n in 0..10 {
            let mut f = frame(&[4.0 * n as f32]);
            sort.update(&mut f, &mut ids, &Skipped::default());
            assert_eq!(f.objects[0].track_id, Some(1));
        }
        for _ in 10..14 {
            sort.update(&mut frame(&[]), &mut ids, &Skipped::default());
        }
        let mut f = frame(&[56.0]);
        assert_eq!(sort.update(&mut f, &mut ids, &Skipped::default()), 0);
        assert_eq!(f.objects[0].track_id, Some(1), "predicted through the gap");
    }

    #[test]
    fn only_objects_of_the_same_class_associate() {
        let settings = Settings {
            min_hits: 1,
            ..Settings::default()
        };
        let mut sort = SortTracker::new(settings);
        let mut ids = IdAllocator::default();
        let mut f = frame(&[0.0]);
        sort.update(&mut f, &mut ids, &Skipped::default());
        let mut f = frame(&[1.0]);
        f.objects[0].class_id = 1;
        sort.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, Some(2));
    }
}
