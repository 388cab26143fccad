//! Plane geometry in frame pixels (x right, y down): points, segment intersection,
//! point-in-polygon, angles.

use serde::Serialize;

/// A point or a vector in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub const fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }

    pub fn sub(self, other: Point) -> Point {
        Point::new(self.x - other.x, self.y - other.y)
    }

    pub fn dot(self, other: Point) -> f64 {
        self.x * other.x + self.y * other.y
    }

    /// The z component of the 3-D cross product: positive when `other` turns clockwise from
    /// `self` on screen (y grows downwards).
    pub fn cross(self, other: Point) -> f64 {
        self.x * other.y - self.y * other.x
    }

    pub fn length(self) -> f64 {
        self.x.hypot(self.y)
    }
}

impl From<[f64; 2]> for Point {
    fn from([x, y]: [f64; 2]) -> Self {
        Point::new(x, y)
    }
}

/// Which side of the directed line `a → b` the point `p` is on: the sign of the result, 0 on
/// the line. Its magnitude is twice the area of the triangle `a b p`.
pub fn orientation(a: Point, b: Point, p: Point) -> f64 {
    b.sub(a).cross(p.sub(a))
}

/// Whether `p`, known to be collinear with `a` and `b`, lies between them.
fn within_box(a: Point, b: Point, p: Point) -> bool {
    p.x >= a.x.min(b.x) && p.x <= a.x.max(b.x) && p.y >= a.y.min(b.y) && p.y <= a.y.max(b.y)
}

/// Whether the closed segments `p1 p2` and `q1 q2` share at least one point (touching and
/// overlapping count).
pub fn segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool {
    let d1 = orientation(q1, q2, p1);
    let d2 = orientation(q1, q2, p2);
    let d3 = orientation(p1, p2, q1);
    let d4 = orientation(p1, p2, q2);
    let opposite = |a: f64, b: f64| (a > 0.0 && b < 0.0) || (a < 0.0 && b > 0.0);
    if opposite(d1, d2) && opposite(d3, d4) {
        return true;
    }
    (d1 == 0.0 && within_box(q1, q2, p1))
        || (d2 == 0.0 && within_box(q1, q2, p2))
        || (d3 == 0.0 && within_box(p1, p2, q1))
        || (d4 == 0.0 && within_box(p1, p2, q2))
}

/// A simple polygon (its last point connects back to the first).
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    pub points: Vec<Point>,
}

impl Polygon {
    pub fn new(points: Vec<Point>) -> Self {
        Self { points }
    }

    /// The edges, closing edge last.
    pub fn edges(&self) -> impl Iterator<Item = (Point, Point)> + '_ {
        let n = self.points.len();
        (0..n).map(move |i| (self.points[i], self.points[(i + 1) % n]))
    }

    /// Signed area (shoelace formula); its sign depends on the winding order.
    pub fn signed_area(&self) -> f64 {
        self.edges().map(|(a, b)| a.cross(b)).sum::<f64>() / 2.0
    }

    /// Whether `p` is inside. Points on an edge or a vertex count as inside, so a point's
    /// membership does not depend on the winding order or on where the polygon starts.
    pub fn contains(&self, p: Point) -> bool {
        let mut inside = false;
        for (a, b) in self.edges() {
            if orientation(a, b, p) == 0.0 && within_box(a, b, p) {
                return true;
            }
            // Even-odd rule: count edges crossed by a ray from `p` towards +x. Each edge is
            // half-open in y so a ray through a vertex counts it once.
            if (a.y > p.y) != (b.y > p.y) {
                let x_at = a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y);
                if p.x < x_at {
                    inside = !inside;
                }
            }
        }
        inside
    }
}

/// The angle between two non-zero vectors, in degrees (0..=180).
pub fn angle_between_deg(u: Point, v: Point) -> f64 {
    let cos = u.dot(v) / (u.length() * v.length());
    cos.clamp(-1.0, 1.0).acos().to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(x: f64, y: f64) -> Point {
        Point::new(x, y)
    }

    #[test]
    fn crossing_segments_intersect() {
        assert!(segments_intersect(
            p(0.0, 0.0),
            p(10.0, 10.0),
            p(0.0, 10.0),
            p(10.0, 0.0)
        ));
        // A vertical line crossed by a horizontal step.
        assert!(segments_intersect(
            p(195.0, 600.0),
            p(205.0, 601.0),
            p(200.0, 520.0),
            p(200.0, 680.0)
        ));
    }

    #[test]
    fn segments_that_miss_do_not_intersect() {
        // Parallel.
        assert!(!segments_intersect(
            p(0.0, 0.0),
            p(10.0, 0.0),
            p(0.0, 1.0),
            p(10.0, 1.0)
        ));
        // Would cross if the segment were longer (passes beyond its end).
        assert!(!segments_intersect(
            p(195.0, 700.0),
            p(205.0, 700.0),
            p(200.0, 520.0),
            p(200.0, 680.0)
        ));
        // Both ends on one side.
        assert!(!segments_intersect(
            p(190.0, 600.0),
            p(199.0, 600.0),
            p(200.0, 520.0),
            p(200.0, 680.0)
        ));
        // Collinear but disjoint.
        assert!(!segments_intersect(
            p(0.0, 0.0),
            p(1.0, 0.0),
            p(2.0, 0.0),
            p(3.0, 0.0)
        ));
    }

    #[test]
    fn touching_and_overlapping_segments_intersect() {
        // An end point on the other segment.
        assert!(segments_intersect(
            p(190.0, 600.0),
            p(200.0, 600.0),
            p(200.0, 520.0),
            p(200.0, 680.0)
        ));
        // Collinear overlap.
        assert!(segments_intersect(
            p(0.0, 0.0),
            p(2.0, 0.0),
            p(1.0, 0.0),
            p(3.0, 0.0)
        ));
        // Shared end point.
        assert!(segments_intersect(
            p(0.0, 0.0),
            p(1.0, 1.0),
            p(1.0, 1.0),
            p(2.0, 0.0)
        ));
    }

    #[test]
    fn point_in_convex_and_concave_polygons() {
        let trapezoid = Polygon::new(vec![
            p(120.0, 560.0),
            p(680.0, 560.0),
            p(700.0, 650.0),
            p(100.0, 650.0),
        ]);
        assert!(trapezoid.contains(p(400.0, 600.0)));
        assert!(trapezoid.contains(p(105.0, 649.0)));
        assert!(
            !trapezoid.contains(p(105.0, 561.0)),
            "left of the slanted edge"
        );
        assert!(!trapezoid.contains(p(400.0, 700.0)));
        assert!(!trapezoid.contains(p(800.0, 600.0)));

        // An L shape: the notch at the top right is outside.
        let l = Polygon::new(vec![
            p(0.0, 0.0),
            p(10.0, 0.0),
            p(10.0, 20.0),
            p(30.0, 20.0),
            p(30.0, 30.0),
            p(0.0, 30.0),
        ]);
        assert!(l.contains(p(5.0, 5.0)));
        assert!(l.contains(p(25.0, 25.0)));
        assert!(!l.contains(p(25.0, 10.0)));
        // A ray through a vertex (y = 20 passes the vertex at (10, 20)).
        assert!(l.contains(p(5.0, 20.0)));
        assert!(!l.contains(p(-5.0, 20.0)));
    }

    #[test]
    fn points_on_the_boundary_are_inside_whatever_the_winding() {
        let square = [p(0.0, 0.0), p(10.0, 0.0), p(10.0, 10.0), p(0.0, 10.0)];
        let cw = Polygon::new(square.to_vec());
        let ccw = Polygon::new(square.iter().rev().copied().collect());
        for q in [
            p(0.0, 5.0),
            p(10.0, 5.0),
            p(5.0, 0.0),
            p(5.0, 10.0),
            p(10.0, 10.0),
        ] {
            assert!(cw.contains(q), "{q:?}");
            assert!(ccw.contains(q), "{q:?}");
        }
        assert_eq!(cw.signed_area(), 100.0);
        assert_eq!(ccw.signed_area(), -100.0);
    }

    #[test]
    fn angles_between_vectors() {
        assert!((angle_between_deg(p(1.0, 0.0), p(0.0, 1.0)) - 90.0).abs() < 1e-9);
        assert!((angle_between_deg(p(1.0, 0.0), p(-3.0, 0.0)) - 180.0).abs() < 1e-9);
        assert!(angle_between_deg(p(2.0, 2.0), p(1.0, 1.0)).abs() < 1e-4);
        assert!((angle_between_deg(p(1.0, 0.0), p(1.0, 1.0)) - 45.0).abs() < 1e-9);
    }
}
