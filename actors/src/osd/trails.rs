//! Where each track has been: the last positions (bottom-centre of the box) per track per
//! stream, bounded in length and forgotten when a track has not been seen for a while.
//!
//! The history is the only state the OSD carries from frame to frame, so it is what
//! [`Trails::snapshot`] writes (JSON with a `version`):
//! ```json
//! {"version": 1, "streams": [{"source_id": 0, "tracks": [
//!     {"id": 7, "last_seen": 41, "points": [[310.5, 300.0], [312.0, 301.5]]}]}]}
//! ```

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use vidmesh_protocol::FrameMeta;

use crate::stage::StageError;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
struct TrackTrail {
    last_seen: u64,
    points: VecDeque<(f32, f32)>,
}

/// Track histories of every running stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Trails {
    length: usize,
    forget_after: u64,
    streams: HashMap<u32, HashMap<u64, TrackTrail>>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    streams: Vec<StreamSnapshot>,
}

#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct StreamSnapshot {
    source_id: u32,
    tracks: Vec<TrackSnapshot>,
}

#[derive(Serialize, Deserialize)]
struct TrackSnapshot {
    id: u64,
    last_seen: u64,
    points: Vec<(f32, f32)>,
}

impl Trails {
    pub fn new(length: usize, forget_after: u64) -> Self {
        Self {
            length,
            forget_after,
            streams: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.length > 0
    }

    /// Adds the frame's tracked objects to their trails, forgets tracks unseen for longer
    /// than `forget_after` frames, and returns the trails of the tracks in this frame (oldest
    /// point first, at least two points each), keyed by track id.
    pub fn update(&mut self, frame: &FrameMeta) -> Vec<(u64, Vec<(f32, f32)>)> {
        if !self.enabled() {
            return Vec::new();
        }
        let tracks = self.streams.entry(frame.source_id).or_default();
        let now = frame.frame_num;
        let mut present = Vec::new();
        let mut seen = HashSet::new();
        for o in &frame.objects {
            let Some(id) = o.track_id else { continue };
            let point = (o.bbox.left + o.bbox.width / 2.0, o.bbox.bottom());
            if !(point.0.is_finite() && point.1.is_finite()) {
                continue;
            }
            // Two objects with one id in a frame (a tracker bug upstream) add one point.
            if !seen.insert(id) {
                continue;
            }
            let trail = tracks.entry(id).or_insert_with(|| TrackTrail {
                last_seen: now,
                points: VecDeque::with_capacity(self.length),
            });
            trail.last_seen = now;
            trail.points.push_back(point);
            while trail.points.len() > self.length {
                trail.points.pop_front();
            }
            present.push(id);
        }
        let forget_after = self.forget_after;
        // A frame number that went back (a restarted stream) must not keep tracks forever.
        tracks.retain(|_, t| {
            t.last_seen <= now && now - t.last_seen <= forget_after
                || t.last_seen > now && t.last_seen - now <= forget_after
        });
        present
            .into_iter()
            .filter_map(|id| {
                let t = tracks.get(&id)?;
                (t.points.len() >= 2).then(|| (id, t.points.iter().copied().collect()))
            })
            .collect()
    }

    /// The stream ended: its tracks will not come back.
    pub fn end(&mut self, source_id: u32) {
        self.streams.remove(&source_id);
    }

    /// Tracks currently remembered, over all streams.
    pub fn tracks(&self) -> usize {
        self.streams.values().map(HashMap::len).sum()
    }

    pub fn snapshot(&self) -> Vec<u8> {
        let mut streams: Vec<StreamSnapshot> = self
            .streams
            .iter()
            .map(|(&source_id, tracks)| {
                let mut tracks: Vec<TrackSnapshot> = tracks
                    .iter()
                    .map(|(&id, t)| TrackSnapshot {
                        id,
                        last_seen: t.last_seen,
                        points: t.points.iter().copied().collect(),
                    })
                    .collect();
                tracks.sort_by_key(|t| t.id);
                StreamSnapshot { source_id, tracks }
            })
            .collect();
        streams.sort_by_key(|s| s.source_id);
        // Integers and finite floats only: always serialisable.
        serde_json::to_vec(&Snapshot {
            version: VERSION,
            streams,
        })
        .unwrap_or_default()
    }

    /// Trails as [`Trails::snapshot`] wrote them, kept to this stage's `length`.
    pub fn restore(length: usize, forget_after: u64, bytes: &[u8]) -> Result<Self, StageError> {
        let v: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| StageError::Input(format!("unreadable osd snapshot: {e}")))?;
        if v.version != VERSION {
            return Err(StageError::Input(format!(
                "osd snapshot version {} is not the version {VERSION} this build reads",
                v.version
            )));
        }
        let s: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| StageError::Input(format!("unreadable osd snapshot: {e}")))?;
        let mut trails = Trails::new(length, forget_after);
        for stream in s.streams {
            let tracks = trails.streams.entry(stream.source_id).or_default();
            for t in stream.tracks {
                let skip = t.points.len().saturating_sub(length);
                tracks.insert(
                    t.id,
                    TrackTrail {
                        last_seen: t.last_seen,
                        points: t.points.into_iter().skip(skip).collect(),
                    },
                );
            }
        }
        Ok(trails)
    }

    /// Takes over `sources` from another replica's trails.
    pub fn adopt(&mut self, other: Trails, sources: &[u32]) {
        let mut other = other;
        for source in sources {
            if let Some(tracks) = other.streams.remove(source) {
                self.streams.insert(*source, tracks);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{BBox, ObjectMeta};

    fn frame(source_id: u32, frame_num: u64, boxes: &[(u64, f32)]) -> FrameMeta {
        FrameMeta {
            source_id,
            frame_num,
            objects: boxes
                .iter()
                .map(|&(id, x)| ObjectMeta {
                    track_id: Some(id),
                    bbox: BBox::from_corners(x, 10.0, x + 10.0, 30.0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_last_positions_of_present_tracks() {
        let mut t = Trails::new(3, 10);
        assert!(t.update(&frame(0, 0, &[(1, 0.0)])).is_empty(), "one point");
        for n in 1..5 {
            t.update(&frame(0, n, &[(1, n as f32 * 10.0)]));
        }
        let out = t.update(&frame(0, 5, &[(1, 50.0)]));
        assert_eq!(
            out,
            vec![(1, vec![(35.0, 30.0), (45.0, 30.0), (55.0, 30.0)])]
        );
    }

    #[test]
    fn unseen_tracks_are_forgotten_and_streams_are_separate() {
        let mut t = Trails::new(5, 3);
        t.update(&frame(0, 0, &[(1, 0.0), (2, 50.0)]));
        t.update(&frame(1, 0, &[(9, 0.0)]));
        assert_eq!(t.tracks(), 3);
        for n in 1..=4 {
            t.update(&frame(0, n, &[(1, 0.0)]));
        }
        assert_eq!(t.tracks(), 2, "track 2 forgotten after 3 unseen frames");
        t.end(1);
        assert_eq!(t.tracks(), 1);
    }

    #[test]
    fn snapshot_round_trips_and_adopt_takes_only_the_named_sources() {
        let mut a = Trails::new(4, 10);
        for n in 0..3 {
            a.update(&frame(0, n, &[(1, n as f32)]));
            a.update(&frame(1, n, &[(5, n as f32)]));
        }
        let restored = Trails::restore(4, 10, &a.snapshot()).unwrap();
        assert_eq!(restored, a);
        let mut b = Trails::new(4, 10);
        b.adopt(restored, &[1]);
        assert_eq!(b.tracks(), 1);
        let out = b.update(&frame(1, 3, &[(5, 3.0)]));
        assert_eq!(out[0].1.len(), 4, "history continues after adoption");
        let err = Trails::restore(4, 10, br#"{"version": 9, "streams": []}"#).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(Trails::restore(4, 10, b"\x00garbage").is_err());
    }
}
