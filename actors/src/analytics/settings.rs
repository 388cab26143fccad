//! What the user configures for `analytics`, and its validation into [`StreamConfig`]s.

use serde::Deserialize;

use super::geometry::{Point, Polygon};
use crate::stage::{BuildContext, StageError};

/// The `source` of the entry that applies to every stream without an entry of its own.
pub const ANY_SOURCE: &str = "*";

/// What the user configures: one entry per stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[[stage.NAME.stream]]` entries; at least one. Required.
    #[serde(default)]
    pub stream: Vec<StreamSettings>,
}

/// Which point of an object's box stands for the object (nvdsanalytics uses bottom-centre:
/// where a person's feet touch the ground).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReferencePoint {
    #[default]
    BottomCenter,
    Center,
}

/// The analytics of one stream (or of every stream, with `source = "*"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// A `[[source]]` id, or "*" for every stream that has no entry of its own. Required.
    pub source: String,
    /// The frame size `[width, height]` the coordinates are meant for; checked at load time
    /// when given. Coordinates are always checked against the first frame. Default none.
    #[serde(default)]
    pub frame_size: Option<[u32; 2]>,
    /// "bottom-center" (default) or "center" of the box.
    #[serde(default)]
    pub reference_point: ReferencePoint,
    /// Add display meta (ROI outlines, lines, counts) for the OSD. Default true.
    #[serde(default = "yes")]
    pub draw: bool,
    /// How far (pixels) beyond a line a track's reference point must get before its crossing
    /// counts, so detector jitter around the line is not counted as crossing back and forth.
    /// 0 counts on the step that crosses. Default 5.
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f64,
    /// Frames after which a track that has not been seen is forgotten (its crossing history
    /// too). Keep it above the tracker's `max_age`. Default 150.
    #[serde(default = "default_forget_after")]
    pub forget_after: i64,
    /// Direction of travel is the motion over the last this many frames. Default 15.
    #[serde(default = "default_direction_frames")]
    pub direction_frames: i64,
    /// Motion shorter than this (pixels) over `direction_frames` has no direction. Default 10.
    #[serde(default = "default_direction_min_distance")]
    pub direction_min_distance: f64,
    /// Largest angle (degrees) between the motion and the nearest named direction. Default 45.
    #[serde(default = "default_direction_tolerance")]
    pub direction_tolerance: f64,
    /// `[[stage.NAME.stream.roi]]` regions of interest.
    #[serde(default)]
    pub roi: Vec<RoiSettings>,
    /// `[[stage.NAME.stream.line]]` counting lines.
    #[serde(default)]
    pub line: Vec<LineSettings>,
    /// `[[stage.NAME.stream.direction]]` named directions of travel.
    #[serde(default)]
    pub direction: Vec<DirectionSettings>,
}

fn yes() -> bool {
    true
}
fn default_hysteresis() -> f64 {
    5.0
}
fn default_forget_after() -> i64 {
    150
}
fn default_direction_frames() -> i64 {
    15
}
fn default_direction_min_distance() -> f64 {
    10.0
}
fn default_direction_tolerance() -> f64 {
    45.0
}

/// A named polygon (nvdsanalytics `roi-<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiSettings {
    /// Unique within the stream. Required.
    pub name: String,
    /// At least 3 `[x, y]` vertices in frame pixels, e.g. `[[100, 500], [700, 500], [700, 650]]`.
    pub points: Vec<[f64; 2]>,
    /// Objects *outside* the polygon are the ones in this ROI (`inverse-roi`). Default false.
    #[serde(default)]
    pub inverse: bool,
    /// Overcrowding threshold: the ROI is overcrowded while it holds more objects. Default none.
    #[serde(default)]
    pub max_objects: Option<i64>,
}

/// A named counting line (nvdsanalytics `line-crossing-<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSettings {
    /// Unique within the stream. Required.
    pub name: String,
    /// The segment: 2 `[x, y]` points in frame pixels. Required.
    pub points: Vec<[f64; 2]>,
    /// 2 points `[from, to]`: crossing towards the side this vector points to is an entry, the
    /// other way an exit. Only the difference `to - from` matters; it must not be parallel to
    /// the segment. Required.
    pub direction: Vec<[f64; 2]>,
}

/// A named direction of travel (nvdsanalytics `direction-<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionSettings {
    /// Unique within the stream. Required.
    pub name: String,
    /// 2 points `[from, to]`; only the difference `to - from` matters. Required.
    pub points: Vec<[f64; 2]>,
}

/// A region of interest ready to use.
#[derive(Debug, Clone, PartialEq)]
pub struct Roi {
    pub name: String,
    pub polygon: Polygon,
    pub inverse: bool,
    pub max_objects: Option<usize>,
}

impl Roi {
    /// Whether an object with reference point `p` is in this ROI.
    pub fn holds(&self, p: Point) -> bool {
        self.polygon.contains(p) != self.inverse
    }
}

/// A counting line ready to use.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub a: Point,
    pub b: Point,
    /// The user's direction vector (for drawing).
    pub direction: Point,
    /// The sign of [`super::geometry::orientation`] on the entry side: +1 or -1.
    pub entry_side: f64,
}

/// A named direction ready to use.
#[derive(Debug, Clone, PartialEq)]
pub struct Direction {
    pub name: String,
    pub vector: Point,
}

/// One stream entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub source: String,
    pub frame_size: Option<[u32; 2]>,
    pub reference_point: ReferencePoint,
    pub draw: bool,
    pub hysteresis: f64,
    pub forget_after: u64,
    pub direction_frames: u64,
    pub direction_min_distance: f64,
    pub direction_tolerance: f64,
    pub rois: Vec<Roi>,
    pub lines: Vec<Line>,
    pub directions: Vec<Direction>,
}

impl StreamConfig {
    /// Checks every ROI and line point against a `width` x `height` frame (pixel-edge
    /// coordinates: 0..=width, 0..=height). `what` says where the size came from.
    pub fn check_frame_size(&self, width: u32, height: u32, what: &str) -> Result<(), String> {
        let (w, h) = (f64::from(width), f64::from(height));
        let outside = |p: &Point| !(0.0..=w).contains(&p.x) || !(0.0..=h).contains(&p.y);
        let named = self
            .rois
            .iter()
            .map(|r| (format!("roi `{}`", r.name), r.polygon.points.clone()))
            .chain(
                self.lines
                    .iter()
                    .map(|l| (format!("line `{}`", l.name), vec![l.a, l.b])),
            );
        for (name, points) in named {
            if let Some(p) = points.iter().find(|p| outside(p)) {
                return Err(format!(
                    "stream `{}`: {name}: point [{}, {}] is outside the {width}x{height} frame ({what})",
                    self.source, p.x, p.y
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// Validates every entry against the topology's sources and returns them ready to use.
    pub fn compile(&self, ctx: &BuildContext) -> Result<Vec<StreamConfig>, StageError> {
        if self.stream.is_empty() {
            return Err(StageError::Settings(format!(
                "no stream entries: add [[stage.{}.stream]] with source = \"*\" or a source id",
                ctx.stage_name
            )));
        }
        let mut configs: Vec<StreamConfig> = Vec::new();
        for s in &self.stream {
            if s.source != ANY_SOURCE && !ctx.sources.contains(&s.source) {
                return Err(StageError::Settings(format!(
                    "stream entry `{}` names no [[source]] (sources: {}); use a source id or \"*\"",
                    s.source,
                    ctx.sources.join(", ")
                )));
            }
            if configs.iter().any(|c| c.source == s.source) {
                return Err(StageError::Settings(format!(
                    "two stream entries for `{}`",
                    s.source
                )));
            }
            let config = s
                .compile()
                .map_err(|e| StageError::Settings(format!("stream `{}`: {e}", s.source)))?;
            if let Some([w, h]) = config.frame_size {
                config
                    .check_frame_size(w, h, "frame_size")
                    .map_err(StageError::Settings)?;
            }
            configs.push(config);
        }
        Ok(configs)
    }
}

fn point(p: [f64; 2], what: &str) -> Result<Point, String> {
    if p.iter().all(|v| v.is_finite()) {
        Ok(p.into())
    } else {
        Err(format!("{what}: point {p:?} is not finite"))
    }
}

fn two_points(points: &[[f64; 2]], what: &str) -> Result<(Point, Point), String> {
    match points {
        [a, b] => {
            let (a, b) = (point(*a, what)?, point(*b, what)?);
            if a == b {
                return Err(format!(
                    "{what}: the 2 points are the same, {:?}",
                    [a.x, a.y]
                ));
            }
            Ok((a, b))
        }
        _ => Err(format!(
            "{what}: needs exactly 2 points [[x1, y1], [x2, y2]], got {}",
            points.len()
        )),
    }
}

fn unique_name<'a>(names: impl Iterator<Item = &'a str>, kind: &str) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for name in names {
        if name.is_empty() {
            return Err(format!("a {kind} has an empty name"));
        }
        if seen.contains(&name) {
            return Err(format!("two {kind}s are named `{name}`"));
        }
        seen.push(name);
    }
    Ok(())
}

impl StreamSettings {
    fn compile(&self) -> Result<StreamConfig, String> {
        if !self.hysteresis.is_finite() || self.hysteresis < 0.0 {
            return Err(format!("hysteresis must be >= 0, got {}", self.hysteresis));
        }
        if self.forget_after < 1 {
            return Err(format!(
                "forget_after must be >= 1, got {}",
                self.forget_after
            ));
        }
        if self.direction_frames < 1 {
            return Err(format!(
                "direction_frames must be >= 1, got {}",
                self.direction_frames
            ));
        }
        if !self.direction_min_distance.is_finite() || self.direction_min_distance < 0.0 {
            return Err(format!(
                "direction_min_distance must be >= 0, got {}",
                self.direction_min_distance
            ));
        }
        if !(self.direction_tolerance > 0.0 && self.direction_tolerance <= 180.0) {
            return Err(format!(
                "direction_tolerance must be within (0, 180] degrees, got {}",
                self.direction_tolerance
            ));
        }
        if let Some([w, h]) = self.frame_size {
            if w == 0 || h == 0 {
                return Err(format!("frame_size must not be empty, got [{w}, {h}]"));
            }
        }
        unique_name(self.roi.iter().map(|r| r.name.as_str()), "roi")?;
        unique_name(self.line.iter().map(|l| l.name.as_str()), "line")?;
        unique_name(self.direction.iter().map(|d| d.name.as_str()), "direction")?;

        let mut rois = Vec::new();
        for r in &self.roi {
            let what = format!("roi `{}`", r.name);
            if r.points.len() < 3 {
                return Err(format!(
                    "{what}: a polygon needs at least 3 points, got {}",
                    r.points.len()
                ));
            }
            let points = r
                .points
                .iter()
                .map(|p| point(*p, &what))
                .collect::<Result<Vec<_>, _>>()?;
            let polygon = Polygon::new(points);
            if polygon.signed_area() == 0.0 {
                return Err(format!("{what}: the polygon has no area"));
            }
            let max_objects = match r.max_objects {
                Some(n) if n < 0 => {
                    return Err(format!("{what}: max_objects must be >= 0, got {n}"));
                }
                Some(n) => Some(n as usize),
                None => None,
            };
            rois.push(Roi {
                name: r.name.clone(),
                polygon,
                inverse: r.inverse,
                max_objects,
            });
        }

        let mut lines = Vec::new();
        for l in &self.line {
            let what = format!("line `{}`", l.name);
            let (a, b) = two_points(&l.points, &format!("{what}: points"))?;
            let (from, to) = two_points(&l.direction, &format!("{what}: direction"))?;
            let direction = to.sub(from);
            let turn = b.sub(a).cross(direction);
            if turn == 0.0 {
                return Err(format!(
                    "{what}: direction is parallel to the line, so no crossing could be along it"
                ));
            }
            lines.push(Line {
                name: l.name.clone(),
                a,
                b,
                direction,
                entry_side: turn.signum(),
            });
        }

        let mut directions = Vec::new();
        for d in &self.direction {
            let (from, to) = two_points(&d.points, &format!("direction `{}`: points", d.name))?;
            directions.push(Direction {
                name: d.name.clone(),
                vector: to.sub(from),
            });
        }

        Ok(StreamConfig {
            source: self.source.clone(),
            frame_size: self.frame_size,
            reference_point: self.reference_point,
            draw: self.draw,
            hysteresis: self.hysteresis,
            forget_after: self.forget_after as u64,
            direction_frames: self.direction_frames as u64,
            direction_min_distance: self.direction_min_distance,
            direction_tolerance: self.direction_tolerance,
            rois,
            lines,
            directions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse;

    fn ctx() -> BuildContext {
        BuildContext {
            peers: Default::default(),
            replica: 0,
            stage_name: "analytics".into(),
            base_dir: ".".into(),
            sources: vec!["cam0".into(), "cam1".into()],
            resume: None,
        }
    }

    fn compile(text: &str) -> Result<Vec<StreamConfig>, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        parse::<Settings>(&table)
            .and_then(|s| s.compile(&ctx()))
            .map_err(|e| e.to_string())
    }

    fn error(text: &str) -> String {
        compile(text).expect_err("settings should be rejected")
    }

    const GOOD: &str = r#"
        kind = "analytics"
        [[stream]]
        source = "cam0"
        frame_size = [1280, 720]
        [[stream.roi]]
        name = "walkway"
        points = [[100, 500], [700, 500], [700, 650], [100, 650]]
        max_objects = 3
        [[stream.line]]
        name = "gate"
        points = [[200, 500], [200, 700]]
        direction = [[150, 600], [250, 600]]
        [[stream.direction]]
        name = "east"
        points = [[0, 0], [1, 0]]
        [[stream]]
        source = "*"
    "#;

    #[test]
    fn a_good_configuration_compiles_with_documented_defaults() {
        let configs = compile(GOOD).unwrap();
        assert_eq!(configs.len(), 2);
        let c = &configs[0];
        assert_eq!(c.reference_point, ReferencePoint::BottomCenter);
        assert!(c.draw);
        assert_eq!(c.hysteresis, 5.0);
        assert_eq!(c.forget_after, 150);
        assert_eq!(c.direction_frames, 15);
        assert_eq!(c.rois[0].max_objects, Some(3));
        // Direction +x against a segment pointing +y (down): clockwise on screen, negative.
        assert_eq!(c.lines[0].entry_side, -1.0);
        assert_eq!(c.directions[0].vector, Point::new(1.0, 0.0));
        assert_eq!(configs[1].source, "*");
    }

    #[test]
    fn a_line_with_one_point_is_rejected() {
        let e = error(
            r#"
            [[stream]]
            source = "cam0"
            [[stream.line]]
            name = "gate"
            points = [[200, 500]]
            direction = [[0, 0], [1, 0]]
        "#,
        );
        assert_eq!(
            e,
            "stream `cam0`: line `gate`: points: needs exactly 2 points [[x1, y1], [x2, y2]], got 1"
        );
    }

    #[test]
    fn a_polygon_with_two_points_is_rejected() {
        let e = error(
            r#"
            [[stream]]
            source = "*"
            [[stream.roi]]
            name = "door"
            points = [[0, 0], [10, 10]]
        "#,
        );
        assert_eq!(
            e,
            "stream `*`: roi `door`: a polygon needs at least 3 points, got 2"
        );
    }

    #[test]
    fn coordinates_outside_the_configured_frame_are_rejected() {
        let e = error(&GOOD.replace("[700, 650]", "[1300, 650]"));
        assert_eq!(
            e,
            "stream `cam0`: roi `walkway`: point [1300, 650] is outside the 1280x720 frame (frame_size)"
        );
        let e = error(&GOOD.replace("[200, 700]", "[200, 721]"));
        assert!(
            e.contains("line `gate`: point [200, 721] is outside"),
            "{e}"
        );
        // The frame's far edges are inside (pixel-edge coordinates).
        assert!(compile(&GOOD.replace("[700, 650]", "[1280, 720]")).is_ok());
    }

    #[test]
    fn negative_thresholds_are_rejected() {
        let e = error(&GOOD.replace("max_objects = 3", "max_objects = -1"));
        assert_eq!(
            e,
            "stream `cam0`: roi `walkway`: max_objects must be >= 0, got -1"
        );
        let e = error(&GOOD.replace("frame_size", "hysteresis = -2\nframe_size"));
        assert_eq!(e, "stream `cam0`: hysteresis must be >= 0, got -2");
        let e = error(&GOOD.replace("frame_size", "direction_min_distance = -1.0\nframe_size"));
        assert!(e.contains("direction_min_distance must be >= 0"), "{e}");
        let e = error(&GOOD.replace("frame_size", "direction_frames = 0\nframe_size"));
        assert!(e.contains("direction_frames must be >= 1"), "{e}");
    }

    #[test]
    fn unknown_stream_names_are_rejected() {
        let e = error(&GOOD.replace("\"cam0\"", "\"cam9\""));
        assert_eq!(
            e,
            "stream entry `cam9` names no [[source]] (sources: cam0, cam1); use a source id or \"*\""
        );
    }

    #[test]
    fn other_mistakes_are_named() {
        let e = error(&GOOD.replace("[[150, 600], [250, 600]]", "[[0, 0], [0, 5]]"));
        assert!(e.contains("line `gate`: direction is parallel"), "{e}");
        let e = error(&GOOD.replace("source = \"*\"", "source = \"cam0\""));
        assert_eq!(e, "two stream entries for `cam0`");
        let e = error(&format!(
            "{GOOD}\n[[stream.roi]]\nname = \"everything\"\npoints = [[0, 0], [1, 0], [0, 1]]\n\
             [[stream.roi]]\nname = \"everything\"\npoints = [[0, 0], [1, 0], [0, 1]]"
        ));
        assert_eq!(e, "stream `*`: two rois are named `everything`");
        let e = error(&GOOD.replace("[[0, 0], [1, 0]]", "[[3, 3], [3, 3]]"));
        assert!(
            e.contains("direction `east`: points: the 2 points are the same"),
            "{e}"
        );
        let e = error("kind = \"analytics\"");
        assert!(e.contains("no stream entries"), "{e}");
        let e = error(&GOOD.replace("max_objects", "max_object"));
        assert!(e.contains("max_object"), "{e}");
        let e = error(
            &GOOD
                .replace("[100, 650]]", "[100, 500]]")
                .replace("[700, 650]", "[400, 500]"),
        );
        assert!(e.contains("roi `walkway`: the polygon has no area"), "{e}");
    }

    #[test]
    fn the_first_frame_checks_coordinates_when_no_frame_size_was_given() {
        let configs = compile(&GOOD.replace("frame_size = [1280, 720]", "")).unwrap();
        assert!(configs[0]
            .check_frame_size(1280, 720, "first frame")
            .is_ok());
        let e = configs[0]
            .check_frame_size(640, 480, "first frame")
            .unwrap_err();
        assert_eq!(
            e,
            "stream `cam0`: roi `walkway`: point [100, 500] is outside the 640x480 frame (first frame)"
        );
    }
}
