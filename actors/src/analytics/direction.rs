//! Direction of travel: a track's recent motion classified to the nearest named direction.

use super::geometry::{angle_between_deg, Point};
use super::settings::Direction;

/// The name of the direction nearest to `motion`, if the motion is at least `min_distance`
/// long and within `tolerance` degrees of it. Ties go to the direction configured first.
pub fn classify(
    motion: Point,
    directions: &[Direction],
    min_distance: f64,
    tolerance: f64,
) -> Option<&str> {
    let length = motion.length();
    if length == 0.0 || length < min_distance {
        return None;
    }
    let mut best: Option<(f64, &Direction)> = None;
    for d in directions {
        let angle = angle_between_deg(motion, d.vector);
        if angle <= tolerance && best.is_none_or(|(a, _)| angle < a) {
            best = Some((angle, d));
        }
    }
    best.map(|(_, d)| d.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compass() -> Vec<Direction> {
        [
            ("east", 1.0, 0.0),
            ("south", 0.0, 1.0),
            ("west", -1.0, 0.0),
            ("north", 0.0, -1.0),
        ]
        .into_iter()
        .map(|(name, x, y)| Direction {
            name: name.into(),
            vector: Point::new(x, y),
        })
        .collect()
    }

    #[test]
    fn motion_goes_to_the_nearest_direction() {
        let c = compass();
        assert_eq!(
            classify(Point::new(-40.0, 3.0), &c, 10.0, 45.0),
            Some("west")
        );
        // y grows downwards: moving down the screen is "south" here.
        assert_eq!(
            classify(Point::new(5.0, 30.0), &c, 10.0, 45.0),
            Some("south")
        );
        assert_eq!(
            classify(Point::new(20.0, -19.0), &c, 10.0, 45.0),
            Some("east")
        );
    }

    #[test]
    fn short_motion_has_no_direction() {
        let c = compass();
        assert_eq!(classify(Point::new(-9.0, 0.0), &c, 10.0, 45.0), None);
        assert_eq!(classify(Point::new(0.0, 0.0), &c, 0.0, 45.0), None);
    }

    #[test]
    fn motion_outside_the_tolerance_has_no_direction() {
        let two = &compass()[..2];
        // 132 degrees from east, 42 from south: nothing within 30.
        assert_eq!(classify(Point::new(-18.0, 20.0), two, 10.0, 30.0), None);
        assert_eq!(
            classify(Point::new(-18.0, 20.0), two, 10.0, 45.0),
            Some("south")
        );
        // Exactly between east and south: the first configured wins.
        assert_eq!(
            classify(Point::new(20.0, 20.0), two, 10.0, 50.0),
            Some("east")
        );
    }
}
