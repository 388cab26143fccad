//! Running a tracker over a sequence, timing `track_frame` and nothing else.

use std::time::{Duration, Instant};

use vidmesh_actors::track::Settings;
use vidmesh_protocol::FrameMeta;

use crate::tracker::new_track;

/// One pass of a fresh tracker over a sequence.
pub struct Pass {
    /// The frames as the tracker left them (track ids set).
    pub frames: Vec<FrameMeta>,
    /// Time spent in `track_frame`, per frame.
    pub per_frame: Vec<Duration>,
}

impl Pass {
    /// Mean time per frame in microseconds.
    pub fn mean_us(&self) -> f64 {
        mean_us(&self.per_frame)
    }
}

/// Runs a fresh tracker over `frames`. The copy of the input is made before the clock starts,
/// so only the tracker's own work is timed.
pub fn run(settings: &Settings, frames: &[FrameMeta]) -> Pass {
    let mut frames = frames.to_vec();
    let mut track = new_track(settings);
    let mut per_frame = Vec::with_capacity(frames.len());
    for frame in &mut frames {
        let start = Instant::now();
        track.track_frame(frame).expect(
            "benchmark sequences carry no skip markers, the only thing track_frame rejects",
        );
        per_frame.push(start.elapsed());
    }
    Pass { frames, per_frame }
}

/// Mean of `times` in microseconds; 0 for none.
pub fn mean_us(times: &[Duration]) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / times.len() as f64
}

/// Median of `values` (mean of the two middle ones for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{BBox, ObjectMeta};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn a_pass_tracks_a_moving_box_with_one_id() {
        let frames: Vec<FrameMeta> = (0..10)
            .map(|n| FrameMeta {
                frame_num: n,
                width: 640,
                height: 480,
                objects: vec![ObjectMeta {
                    confidence: 0.9,
                    bbox: BBox::from_corners(n as f32, 0.0, n as f32 + 20.0, 40.0),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let settings = crate::tracker::settings_for("iou", &[]).unwrap();
        let pass = run(&settings, &frames);
        assert_eq!(pass.per_frame.len(), 10);
        let ids: Vec<Option<u64>> = pass.frames.iter().map(|f| f.objects[0].track_id).collect();
        let first = ids[settings.min_hits as usize - 1];
        assert!(first.is_some());
        assert!(ids[settings.min_hits as usize - 1..]
            .iter()
            .all(|i| *i == first));
        assert!(pass.mean_us() >= 0.0);
    }
}
