//! The appearance tracker (DeepSORT-like) for one stream: Kalman motion plus what objects
//! look like, so that ids survive crossings and occlusions that motion alone gets wrong.
//!
//! Each object gets a descriptor (an upstream embedding, or a colour histogram of its box; see
//! [`descriptor`](super::descriptor)), and each track keeps a gallery of its last
//! `gallery_size` descriptors. Each frame, after Kalman prediction of every track:
//!
//! 1. **Appearance step**: confirmed and lost tracks ↔ detections with a descriptor. A pair is
//!    allowed when the detection is a plausible continuation of the track's motion (squared
//!    Mahalanobis distance within the chi-square 95 % gate, [`GATE_CHI2_95`]) and looks like
//!    it (nearest gallery distance `d ≤ max_appearance_distance`). Its cost is
//!    `λ·d + (1 − λ)·m/gate` with `λ = appearance_weight`: appearance decides, motion breaks
//!    ties between look-alikes. One global optimal assignment replaces DeepSORT's matching
//!    cascade (tracks by age): the Mahalanobis term already favours recently seen tracks, and
//!    StrongSORT found the cascade hurts once appearance is reliable.
//! 2. **Motion step**: every track still unmatched (tentative ones included) ↔ detections
//!    still unmatched by IoU with the prediction (`iou_threshold`), i.e. SORT. This catches
//!    objects whose look changed abruptly and tentative tracks. A *lost* track is only revived
//!    here if appearance does not contradict it (unknown, or within the distance), so an
//!    unrelated newcomer at a lost track's predicted spot does not inherit its id.
//! 3. Unmatched tracks miss a frame (confirmed → lost, tentative → dropped); unmatched
//!    detections start tentative tracks.
//!
//! A descriptor joins its track's gallery only when no other detection covers more than
//! [`OCCLUSION_COVERAGE`] of the box: a partly hidden object's histogram shows its occluder,
//! and storing it would let the occluder's later detections match the hidden object's track.
//!
//! Without pixels or embeddings, step 1 has nothing to work with and the tracker is SORT.
//! `tracker_confidence` is `1 − d` for an appearance match, the IoU for a motion match.

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta};

use super::assignment::{assign, Candidate};
use super::descriptor::{describe_objects, Descriptor, Gallery};
use super::kalman::GATE_CHI2_95;
use super::lifecycle::{associate_by_iou, FrameMatches, KalmanTrack, TrackState};
use super::{IdAllocator, Settings, Skipped, Tracker};

/// Fraction of a box's area that other detections may cover before its descriptor is
/// considered contaminated.
pub const OCCLUSION_COVERAGE: f32 = 0.3;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppearanceTrack {
    motion: KalmanTrack,
    gallery: Gallery,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    tracks: Vec<AppearanceTrack>,
}

/// Appearance tracks of one source.
pub struct AppearanceTracker {
    settings: Settings,
    state: State,
}

impl AppearanceTracker {
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

    /// Step 1: matches by appearance within the motion gate (tracks not `carried` only).
    fn appearance_step(
        &mut self,
        objects: &mut [ObjectMeta],
        descriptors: &[Option<Descriptor>],
        carried: &[bool],
        matches: &mut FrameMatches,
        ids: &mut IdAllocator,
    ) -> Vec<(usize, usize)> {
        let s = &self.settings;
        let tracks = &self.state.tracks;
        let track_set: Vec<usize> = (0..tracks.len())
            .filter(|&t| {
                let track = &tracks[t];
                !carried[t]
                    && track.motion.state != TrackState::Tentative
                    && !track.gallery.is_empty()
            })
            .collect();
        let object_set: Vec<usize> = (0..objects.len())
            .filter(|&o| descriptors[o].is_some())
            .collect();
        let weight = f64::from(s.appearance_weight);
        let mut candidates = Vec::new();
        for (ti, &t) in track_set.iter().enumerate() {
            let track = &tracks[t];
            let Some(gate) = track.motion.filter.gate() else {
                continue;
            };
            for (oi, &o) in object_set.iter().enumerate() {
                let object = &objects[o];
                if object.class_id != track.motion.class_id {
                    continue;
                }
                let motion = gate.distance_sq(&object.bbox);
                if motion > GATE_CHI2_95 || motion.is_nan() {
                    continue;
                }
                let Some(d) = descriptors[o]
                    .as_ref()
                    .and_then(|desc| track.gallery.distance(desc))
                else {
                    continue;
                };
                if d > s.max_appearance_distance {
                    continue;
                }
                candidates.push(Candidate {
                    track: ti,
                    detection: oi,
                    cost: weight * f64::from(d) + (1.0 - weight) * f64::from(motion / GATE_CHI2_95),
                });
            }
        }
        let limit = weight * f64::from(s.max_appearance_distance) + (1.0 - weight);
        let pairs: Vec<(usize, usize)> =
            assign(track_set.len(), object_set.len(), &candidates, limit)
                .into_iter()
                .map(|(ti, oi)| (track_set[ti], object_set[oi]))
                .collect();
        for &(t, o) in &pairs {
            let track = &mut self.state.tracks[t];
            let d = descriptors[o]
                .as_ref()
                .and_then(|desc| track.gallery.distance(desc))
                .unwrap_or(1.0);
            matches.record(
                t,
                &mut track.motion,
                o,
                &mut objects[o],
                1.0 - d,
                s.min_hits,
                ids,
            );
        }
        pairs
    }
}

/// For each object, whether other detections cover more than [`OCCLUSION_COVERAGE`] of it.
fn occluded(objects: &[ObjectMeta]) -> Vec<bool> {
    let intersection = |a: &BBox, b: &BBox| {
        let w = a.right().min(b.right()) - a.left.max(b.left);
        let h = a.bottom().min(b.bottom()) - a.top.max(b.top);
        if w > 0.0 && h > 0.0 {
            w * h
        } else {
            0.0
        }
    };
    objects
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let area = a.bbox.area();
            // The largest single overlap: summing overlaps would double-count crowds.
            let covered = objects
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| intersection(&a.bbox, &b.bbox))
                .fold(0.0f32, f32::max);
            area > 0.0 && covered > OCCLUSION_COVERAGE * area
        })
        .collect()
}

impl Tracker for AppearanceTracker {
    fn update(&mut self, frame: &mut FrameMeta, ids: &mut IdAllocator, skipped: &Skipped) -> u64 {
        let frame_num = frame.frame_num;
        let descriptors = describe_objects(
            frame,
            &self.settings.embedding_kind,
            self.settings.histogram_bins,
        );
        let occluded = occluded(&frame.objects);
        for track in &mut self.state.tracks {
            track.motion.predict();
        }
        // Tracks whose detector skipped this frame have nothing to match (carry.rs).
        let carried: Vec<bool> = (self.state.tracks.iter())
            .map(|t| t.motion.carried_by(skipped))
            .collect();
        let mut matches =
            FrameMatches::new(self.state.tracks.len(), frame.objects.len(), frame_num);

        // 1. Appearance within the motion gate.
        let mut matched = self.appearance_step(
            &mut frame.objects,
            &descriptors,
            &carried,
            &mut matches,
            ids,
        );

        // 2. IoU with the prediction for whatever is left.
        let s = &self.settings;
        let tracks = &mut self.state.tracks;
        let predicted: Vec<_> = tracks.iter().map(|t| t.motion.prediction()).collect();
        let track_set = matches.unmatched_tracks((0..tracks.len()).filter(|&t| !carried[t]));
        let object_set = matches.unmatched_objects(0..frame.objects.len());
        let contradicts = |t: usize, o: usize| {
            let track: &AppearanceTrack = &tracks[t];
            track.motion.state == TrackState::Lost
                && descriptors[o]
                    .as_ref()
                    .and_then(|desc| track.gallery.distance(desc))
                    .is_some_and(|d| d > s.max_appearance_distance)
        };
        let by_iou = associate_by_iou(
            &predicted,
            &track_set,
            &frame.objects,
            &object_set,
            s.iou_threshold,
            false,
            |t, o| !contradicts(t, o),
        );
        for (t, o, iou) in by_iou {
            let track = &mut tracks[t];
            matches.record(
                t,
                &mut track.motion,
                o,
                &mut frame.objects[o],
                iou,
                s.min_hits,
                ids,
            );
            matched.push((t, o));
        }
        for (t, o) in matched {
            if let (Some(desc), false) = (&descriptors[o], occluded[o]) {
                tracks[t]
                    .gallery
                    .push(desc.clone(), s.gallery_size as usize);
            }
        }

        // 3. Misses (carried tracks had no chance to match), new tracks, expiry.
        for ((track, matched), carried) in
            tracks.iter_mut().zip(&matches.track_matched).zip(&carried)
        {
            if !matched && !carried {
                track.motion.miss();
            }
        }
        let shown: Vec<ObjectMeta> = (tracks.iter().zip(&carried))
            .filter(|(_, c)| **c)
            .filter_map(|(t, _)| t.motion.carried_object((frame.width, frame.height)))
            .collect();
        for o in matches.unmatched_objects(0..frame.objects.len()) {
            let motion = matches.start(&mut frame.objects[o], s.min_hits, ids);
            let mut gallery = Gallery::default();
            if let (Some(desc), false) = (&descriptors[o], occluded[o]) {
                gallery.push(desc.clone(), s.gallery_size as usize);
            }
            tracks.push(AppearanceTrack { motion, gallery });
        }
        let max_age = s.max_age;
        tracks.retain(|t| !t.motion.expired(max_age));
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
    use bytes::Bytes;
    use vidmesh_protocol::{ImageLayout, PayloadRef, PixelFormat, UserMeta};

    const RED: [u8; 3] = [210, 40, 40];
    const BLUE: [u8; 3] = [40, 60, 200];

    fn person(left: f32) -> BBox {
        BBox::from_corners(left, 20.0, left + 20.0, 60.0)
    }

    /// A 200 x 80 frame, grey, with `people` painted back to front; `visible` says which of
    /// them the detector reports.
    fn frame(people: &[(BBox, [u8; 3])], visible: &[bool]) -> FrameMeta {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 200, 80);
        let mut data = vec![128u8; layout.min_len().unwrap()];
        for (b, colour) in people {
            let b = b.clipped(200.0, 80.0);
            for y in b.top as usize..b.bottom() as usize {
                for x in b.left as usize..b.right() as usize {
                    let p = y * layout.stride as usize + x * 3;
                    data[p..p + 3].copy_from_slice(colour);
                }
            }
        }
        FrameMeta {
            width: 200,
            height: 80,
            payload: PayloadRef::Inline {
                layout,
                data: Bytes::from(data),
            },
            objects: people
                .iter()
                .zip(visible)
                .filter(|(_, v)| **v)
                .map(|((bbox, _), _)| ObjectMeta {
                    bbox: *bbox,
                    confidence: 0.9,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn settings() -> Settings {
        Settings {
            algorithm: super::super::Algorithm::Appearance,
            max_age: 10,
            ..Settings::default()
        }
    }

    /// Runs `tracker` over frames of a red and a blue person at `paths(n)` (blue painted
    /// first, so red is in front) and returns, per frame, the ids of red and blue (`None` when
    /// not detected or not confirmed). Blue is not detected while red covers most of it.
    fn run(
        tracker: &mut dyn Tracker,
        frames: u64,
        paths: impl Fn(u64) -> (f32, f32),
    ) -> Vec<(Option<u64>, Option<u64>)> {
        let mut ids = IdAllocator::default();
        (0..frames)
            .map(|n| {
                let (r, b) = paths(n);
                let (red, blue) = (person(r), person(b));
                // Hidden while red covers more than a third of it.
                let overlap = BBox::from_corners(
                    red.left.max(blue.left),
                    red.top,
                    red.right().min(blue.right()),
                    red.bottom(),
                );
                let blue_visible = overlap.area() < blue.area() / 3.0;
                let mut f = frame(&[(blue, BLUE), (red, RED)], &[blue_visible, true]);
                tracker.update(&mut f, &mut ids, &Skipped::default());
                // Objects are listed back to front: blue (if visible), then red.
                let red_id = f.objects.last().unwrap().track_id;
                let blue_id = if blue_visible {
                    f.objects[0].track_id
                } else {
                    None
                };
                (red_id, blue_id)
            })
            .collect()
    }

    /// Two people walk towards each other, slow down where they pass (blue behind red, hidden
    /// for a dozen frames) and walk on.
    fn cross(n: u64) -> (f32, f32) {
        let p = match n {
            0..=17 => 4.0 * n as f32,
            18..=41 => 68.0 + (n - 17) as f32,
            _ => 92.0 + 4.0 * (n - 41) as f32,
        };
        (10.0 + p, 170.0 - p)
    }

    #[test]
    fn crossing_people_of_different_colours_keep_their_ids() {
        let settings = Settings {
            max_age: 20,
            ..settings()
        };
        let mut tracker = AppearanceTracker::new(settings.clone());
        let seen = run(&mut tracker, 55, cross);
        let (red, blue) = seen[5];
        assert!(red.is_some() && blue.is_some() && red != blue);
        let hidden = seen.iter().filter(|(_, b)| b.is_none()).count();
        assert!(hidden > 10, "blue is hidden for a while: {seen:?}");
        for (n, (r, b)) in seen.iter().enumerate().skip(5) {
            assert_eq!(*r, red, "red at frame {n}: {seen:?}");
            assert!(b.is_none() || *b == blue, "blue at frame {n}: {seen:?}");
        }
        assert_eq!(seen.last().unwrap().1, blue);

        // The scenario is one motion alone gets wrong: blue comes back under a new id.
        let mut sort = SortTracker::new(settings);
        let seen = run(&mut sort, 55, cross);
        assert_ne!(seen.last().unwrap().1, seen[5].1, "{seen:?}");
    }

    /// Two people walk up to each other, stop face to face, and each goes back the way they
    /// came. Motion alone expects them to carry on and swaps their ids.
    fn turn_back(n: u64) -> (f32, f32) {
        let d = if n <= 20 { n } else { 40 - n.min(40) } as f32;
        (10.0 + 4.0 * d, 170.0 - 4.0 * d)
    }

    #[test]
    fn people_who_meet_and_turn_back_keep_their_ids_where_motion_alone_swaps_them() {
        let mut tracker = AppearanceTracker::new(settings());
        let seen = run(&mut tracker, 40, turn_back);
        let (red, blue) = seen[5];
        assert!(red.is_some() && blue.is_some() && red != blue);
        assert_eq!(seen[39], (red, blue), "{seen:?}");

        let mut sort = SortTracker::new(settings());
        let seen = run(&mut sort, 40, turn_back);
        let (red, blue) = seen[5];
        assert_ne!(
            seen[39],
            (red, blue),
            "motion alone should have been fooled: {seen:?}"
        );
    }

    #[test]
    fn embeddings_from_upstream_identify_look_alikes_without_pixels() {
        // The same turn-back, but no pixels: only the embeddings tell the two apart.
        let embedding = |v: [f32; 3]| UserMeta {
            kind: "vidmesh.embedding/f32".into(),
            data: Bytes::from(v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>()),
        };
        let mut tracker = AppearanceTracker::new(settings());
        let mut ids = IdAllocator::default();
        let mut seen = Vec::new();
        for n in 0..40 {
            let (r, b) = turn_back(n);
            let object = |bbox, v| ObjectMeta {
                bbox,
                confidence: 0.9,
                user: vec![embedding(v)],
                ..Default::default()
            };
            let mut f = FrameMeta {
                objects: vec![
                    object(person(r), [1.0, 0.1, 0.0]),
                    object(person(b), [0.1, 1.0, 0.05]),
                ],
                ..Default::default()
            };
            tracker.update(&mut f, &mut ids, &Skipped::default());
            seen.push((f.objects[0].track_id, f.objects[1].track_id));
        }
        assert!(seen[5].0.is_some() && seen[5].1.is_some());
        assert_eq!(seen[39], seen[5], "{seen:?}");
    }

    #[test]
    fn a_newcomer_at_a_lost_tracks_spot_does_not_inherit_its_id() {
        let mut tracker = AppearanceTracker::new(settings());
        let mut sort = SortTracker::new(settings());
        let (mut ids, mut sort_ids) = (IdAllocator::default(), IdAllocator::default());
        for n in 0..10 {
            let red = person(10.0 + 3.0 * n as f32);
            tracker.update(
                &mut frame(&[(red, RED)], &[true]),
                &mut ids,
                &Skipped::default(),
            );
            sort.update(
                &mut frame(&[(red, RED)], &[true]),
                &mut sort_ids,
                &Skipped::default(),
            );
        }
        // Red leaves the picture; two frames later a blue person stands where red would be.
        for _ in 10..12 {
            tracker.update(&mut frame(&[], &[]), &mut ids, &Skipped::default());
            sort.update(&mut frame(&[], &[]), &mut sort_ids, &Skipped::default());
        }
        let blue = person(10.0 + 3.0 * 12.0);
        let mut f = frame(&[(blue, BLUE)], &[true]);
        tracker.update(&mut f, &mut ids, &Skipped::default());
        assert_eq!(f.objects[0].track_id, None, "a new, tentative track");
        let mut f = frame(&[(blue, BLUE)], &[true]);
        sort.update(&mut f, &mut sort_ids, &Skipped::default());
        assert_eq!(
            f.objects[0].track_id,
            Some(1),
            "motion alone revives red's track"
        );
    }
}
