//! The IoU tracker for one stream.

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta};

use super::carry::{self, LastSeen};
use super::lifecycle::{attach_past_frames, PastBox, PastFrames};
use super::{IdAllocator, Settings, Skipped, Tracker};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrackState {
    id: u64,
    class_id: i32,
    bbox: BBox,
    hits: u32,
    misses: u32,
    /// Boxes of the frames before confirmation, for past-frame output.
    #[serde(default)]
    probation: Vec<PastBox>,
    /// The latest matched object, repeated on frames its detector skipped. `None` only in
    /// tracks restored from snapshots taken before interval support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<LastSeen>,
}

/// Tracks of one source.
#[derive(Debug)]
pub struct IouTracker {
    settings: Settings,
    tracks: Vec<TrackState>,
}

impl IouTracker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            tracks: Vec::new(),
        }
    }

    pub fn restore(
        settings: Settings,
        state: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            settings,
            tracks: serde_json::from_value(state)?,
        })
    }

    /// Associates `objects` with tracks, sets their `track_id`s, and returns how many tracks
    /// became confirmed, with the probation boxes of each. Tracks in `carried` (their detector
    /// skipped the frame) are neither associated nor missed.
    fn associate(
        &mut self,
        objects: &mut [ObjectMeta],
        frame_num: u64,
        ids: &mut IdAllocator,
        carried: &[bool],
    ) -> (u64, Vec<PastFrames>) {
        // All candidate pairs above the threshold, best overlap first: greedy matching by IoU
        // is what DeepStream's IOU tracker does and is stable under equal scores.
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            if carried.get(t).copied().unwrap_or(false) {
                continue;
            }
            for (o, object) in objects.iter().enumerate() {
                if object.class_id != track.class_id {
                    continue;
                }
                let iou = track.bbox.iou(&object.bbox);
                if iou >= self.settings.iou_threshold {
                    pairs.push((iou, t, o));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut track_taken = vec![false; self.tracks.len()];
        let mut object_track: Vec<Option<usize>> = vec![None; objects.len()];
        for (_, t, o) in pairs {
            if !track_taken[t] && object_track[o].is_none() {
                track_taken[t] = true;
                object_track[o] = Some(t);
            }
        }
        let mut newly_confirmed = 0;
        let mut past = Vec::new();
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !track_taken[t] && !carried.get(t).copied().unwrap_or(false) {
                track.misses += 1;
            }
        }
        for (o, object) in objects.iter_mut().enumerate() {
            let t = match object_track[o] {
                Some(t) => {
                    let track = &mut self.tracks[t];
                    track.bbox = object.bbox;
                    track.hits += 1;
                    track.misses = 0;
                    // The IoU tracker's tracker_confidence is always 1.
                    carry::remember(&mut track.last, object, 1.0);
                    if track.hits == self.settings.min_hits {
                        newly_confirmed += 1;
                        past.push(PastFrames {
                            track_id: track.id,
                            class_id: track.class_id,
                            frames: std::mem::take(&mut track.probation),
                        });
                    }
                    t
                }
                None => {
                    self.tracks.push(TrackState {
                        id: ids.allocate(),
                        class_id: object.class_id,
                        bbox: object.bbox,
                        hits: 1,
                        misses: 0,
                        probation: Vec::new(),
                        last: Some(LastSeen::of(object, 1.0)),
                    });
                    if self.settings.min_hits == 1 {
                        newly_confirmed += 1;
                    }
                    self.tracks.len() - 1
                }
            };
            let track = &mut self.tracks[t];
            if track.hits >= self.settings.min_hits {
                object.track_id = Some(track.id);
                object.tracker_confidence = Some(1.0);
            } else {
                track.probation.push(PastBox {
                    frame_num,
                    bbox: object.bbox,
                    confidence: object.confidence,
                });
            }
        }
        let max_age = self.settings.max_age;
        self.tracks.retain(|t| t.misses <= max_age);
        (newly_confirmed, past)
    }
}

impl Tracker for IouTracker {
    fn update(&mut self, frame: &mut FrameMeta, ids: &mut IdAllocator, skipped: &Skipped) -> u64 {
        let carried: Vec<bool> = self
            .tracks
            .iter()
            .map(|t| carry::carried_by(t.last.as_ref(), skipped))
            .collect();
        // Without a motion model a carried track stays at its last box (carry.rs). Only
        // tracks confirmed and matched at their detector's last run are shown.
        let min_hits = self.settings.min_hits;
        let shown: Vec<ObjectMeta> = self
            .tracks
            .iter()
            .zip(&carried)
            .filter(|(t, c)| **c && t.hits >= min_hits && t.misses == 0)
            .filter_map(|(t, _)| {
                let last = t.last.as_ref()?;
                last.object(t.id, t.class_id, t.bbox, (frame.width, frame.height))
            })
            .collect();
        let (confirmed, past) = self.associate(&mut frame.objects, frame.frame_num, ids, &carried);
        if self.settings.past_frame_output {
            attach_past_frames(frame, past);
        }
        frame.objects.extend(shown);
        confirmed
    }

    fn save(&self) -> serde_json::Value {
        serde_json::to_value(&self.tracks).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(l: f32) -> ObjectMeta {
        ObjectMeta {
            class_id: 0,
            bbox: BBox::from_corners(l, 0.0, l + 10.0, 20.0),
            ..Default::default()
        }
    }

    fn settings(min_hits: u32, max_age: u32) -> Settings {
        Settings {
            min_hits,
            max_age,
            ..Settings::default()
        }
    }

    #[test]
    fn moving_object_keeps_its_id_once_confirmed() {
        let mut t = IouTracker::new(settings(2, 5));
        let mut next = IdAllocator::default();
        let mut f0 = vec![obj(0.0)];
        assert_eq!(t.associate(&mut f0, 0, &mut next, &[]).0, 0);
        assert_eq!(f0[0].track_id, None, "tentative on the first hit");
        let mut ids = Vec::new();
        for step in 1..10 {
            let mut f = vec![obj(step as f32 * 2.0)];
            t.associate(&mut f, 0, &mut next, &[]);
            ids.push(f[0].track_id);
        }
        assert!(ids.iter().all(|id| *id == Some(1)), "{ids:?}");
    }

    #[test]
    fn two_objects_get_two_ids_and_a_lost_track_expires() {
        let mut t = IouTracker::new(settings(1, 1));
        let mut next = IdAllocator::default();
        let mut f = vec![obj(0.0), obj(100.0)];
        t.associate(&mut f, 0, &mut next, &[]);
        assert_eq!((f[0].track_id, f[1].track_id), (Some(1), Some(2)));
        // The second object disappears for two frames: beyond max_age, so it comes back new.
        for _ in 0..2 {
            let mut f = vec![obj(0.0)];
            t.associate(&mut f, 0, &mut next, &[]);
            assert_eq!(f[0].track_id, Some(1));
        }
        let mut f = vec![obj(0.0), obj(100.0)];
        t.associate(&mut f, 0, &mut next, &[]);
        assert_eq!(f[1].track_id, Some(3));
    }
}
