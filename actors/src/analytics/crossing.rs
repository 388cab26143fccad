//! Line crossing for one track and one line: which side the track is on, whether its path
//! went through the segment, and which crossings were already counted.

use serde::{Deserialize, Serialize};

use super::geometry::{orientation, segments_intersect, Point};
use super::settings::Line;

/// Which way a track crossed a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crossing {
    /// Towards the side the line's direction vector points to.
    Entry,
    /// The other way.
    Exit,
}

/// One track's history with one line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineTrackState {
    /// The side (+1/-1, see [`orientation`]) the track was last seen clearly on: at least the
    /// hysteresis away from the line. `None` until it has been.
    side: Option<f64>,
    /// The track's path went through the segment since it was last clearly on `side`.
    through_segment: bool,
    /// Each direction counts at most once per track (debounce).
    entered: bool,
    exited: bool,
}

impl LineTrackState {
    /// Moves the track from `previous` (its last reference point, if any) to `now`, and returns
    /// the crossing to count, if any.
    ///
    /// A crossing happens when the track's path between consecutive observations goes through
    /// the segment and the track then gets `hysteresis` pixels or more past the line on the
    /// other side (with 0: anywhere strictly past it). Jitter within the hysteresis band is
    /// not a crossing; going around the end of the segment is not one either.
    pub fn advance(
        &mut self,
        line: &Line,
        previous: Option<Point>,
        now: Point,
        hysteresis: f64,
    ) -> Option<Crossing> {
        if let Some(previous) = previous {
            if segments_intersect(previous, now, line.a, line.b) {
                self.through_segment = true;
            }
        }
        let distance = orientation(line.a, line.b, now) / line.b.sub(line.a).length();
        if distance == 0.0 || distance.abs() < hysteresis {
            return None;
        }
        let side = distance.signum();
        let crossed = self.side.is_some_and(|s| s != side) && self.through_segment;
        self.side = Some(side);
        self.through_segment = false;
        if !crossed {
            return None;
        }
        let crossing = if side == line.entry_side {
            Crossing::Entry
        } else {
            Crossing::Exit
        };
        let already = match crossing {
            Crossing::Entry => std::mem::replace(&mut self.entered, true),
            Crossing::Exit => std::mem::replace(&mut self.exited, true),
        };
        (!already).then_some(crossing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vertical line at x = 200 from y = 500 to 700; entry is towards +x.
    fn gate() -> Line {
        Line {
            name: "gate".into(),
            a: Point::new(200.0, 500.0),
            b: Point::new(200.0, 700.0),
            direction: Point::new(1.0, 0.0),
            entry_side: -1.0,
        }
    }

    /// Walks a track through x positions at y = 600 and returns the crossings counted.
    fn walk(xs: &[f64], hysteresis: f64) -> Vec<(usize, Crossing)> {
        walk_path(
            &xs.iter().map(|&x| (x, 600.0)).collect::<Vec<_>>(),
            hysteresis,
        )
    }

    fn walk_path(points: &[(f64, f64)], hysteresis: f64) -> Vec<(usize, Crossing)> {
        let line = gate();
        let mut state = LineTrackState::default();
        let mut previous = None;
        let mut counted = Vec::new();
        for (i, &(x, y)) in points.iter().enumerate() {
            let now = Point::new(x, y);
            if let Some(c) = state.advance(&line, previous, now, hysteresis) {
                counted.push((i, c));
            }
            previous = Some(now);
        }
        counted
    }

    #[test]
    fn crossing_along_the_direction_is_an_entry_and_against_it_an_exit() {
        assert_eq!(
            walk(&[190.0, 198.0, 203.0, 210.0], 0.0),
            [(2, Crossing::Entry)]
        );
        assert_eq!(
            walk(&[210.0, 203.0, 198.0, 190.0], 0.0),
            [(2, Crossing::Exit)]
        );
    }

    #[test]
    fn each_direction_counts_once_per_track() {
        let back_and_forth = [190.0, 210.0, 190.0, 210.0, 190.0, 210.0];
        assert_eq!(
            walk(&back_and_forth, 0.0),
            [(1, Crossing::Entry), (2, Crossing::Exit)]
        );
    }

    #[test]
    fn hysteresis_ignores_jitter_around_the_line() {
        // A slow walker whose reference point jitters by a few pixels around x = 200.
        let jitter = [
            180.0, 190.0, 197.0, 201.0, 198.0, 202.0, 199.0, 203.0, 200.0, 206.0, 204.0, 212.0,
        ];
        assert_eq!(
            walk(&jitter, 0.0),
            [(3, Crossing::Entry), (4, Crossing::Exit)],
            "without hysteresis the jitter counts both ways"
        );
        assert_eq!(walk(&jitter, 5.0), [(9, Crossing::Entry)]);
        // Wandering into the band and back out on the same side is no crossing.
        assert_eq!(walk(&[190.0, 198.0, 203.0, 199.0, 190.0], 5.0), []);
    }

    #[test]
    fn landing_exactly_on_the_line_counts_once_past_it() {
        assert_eq!(walk(&[190.0, 200.0, 210.0], 0.0), [(2, Crossing::Entry)]);
        assert_eq!(walk(&[190.0, 200.0, 190.0], 0.0), []);
    }

    #[test]
    fn passing_beyond_the_end_of_the_segment_is_no_crossing() {
        // Crosses x = 200 at y = 750, below the segment's end at 700.
        assert_eq!(walk_path(&[(190.0, 750.0), (210.0, 750.0)], 0.0), []);
        // And then comes back through the segment: that is an exit.
        assert_eq!(
            walk_path(&[(190.0, 750.0), (210.0, 750.0), (190.0, 600.0)], 0.0),
            [(2, Crossing::Exit)]
        );
    }

    #[test]
    fn a_track_first_seen_on_the_line_has_not_crossed_it() {
        assert_eq!(walk(&[200.0, 202.0, 210.0], 5.0), []);
    }

    #[test]
    fn a_gap_in_observations_still_counts_the_crossing() {
        // A missed detection: the path between the observations still goes through the line.
        assert_eq!(walk(&[150.0, 250.0], 5.0), [(1, Crossing::Entry)]);
    }
}
