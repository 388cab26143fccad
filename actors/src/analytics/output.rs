//! What `analytics` attaches to frames: the JSON of its user meta, and display meta for the OSD.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{DisplayLine, DisplayMeta, DisplayText, Rgba};

use super::crossing::Crossing;
use super::geometry::Point;
use super::settings::StreamConfig;

/// `vidmesh.analytics/frame+json`: one per analysed frame.
#[derive(Debug, Serialize)]
pub struct FrameAnalytics<'a> {
    /// Per ROI: the objects in it on this frame.
    pub rois: BTreeMap<&'a str, RoiCount>,
    /// Per line: crossings counted since the stream started.
    pub lines: BTreeMap<&'a str, LineTotals>,
    /// ROIs whose overcrowding status changed on this frame; omitted when none did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overcrowding_changes: Vec<OvercrowdingChange<'a>>,
}

/// Objects in one ROI on one frame.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoiCount {
    pub count: usize,
    /// The same count split by object label (the class id when an object has no label).
    pub by_label: BTreeMap<String, usize>,
    /// The ROI's overcrowding threshold; omitted when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_objects: Option<usize>,
    /// `count > max_objects`; omitted when the ROI has no threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overcrowded: Option<bool>,
}

/// Cumulative crossings of one line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTotals {
    pub entries: u64,
    pub exits: u64,
}

impl LineTotals {
    pub fn add(&mut self, crossing: Crossing) {
        match crossing {
            Crossing::Entry => self.entries += 1,
            Crossing::Exit => self.exits += 1,
        }
    }
}

/// An overcrowding status transition.
#[derive(Debug, Clone, Serialize)]
pub struct OvercrowdingChange<'a> {
    pub roi: &'a str,
    /// true: the ROI became overcrowded on this frame; false: it stopped being.
    pub overcrowded: bool,
}

/// `vidmesh.analytics/object+json`: one per object of an analysed frame.
#[derive(Debug, Serialize)]
pub struct ObjectAnalytics<'a> {
    /// The point of the box that stands for the object, `[x, y]` in frame pixels.
    pub reference_point: [f32; 2],
    /// The ROIs the object is in; empty when it is outside all of them.
    pub rois: Vec<&'a str>,
    /// Crossings counted for this object on this frame.
    pub lines_crossed: Vec<LineCrossed<'a>>,
    /// The named direction of travel; null when untracked, too slow, or none is near.
    pub direction: Option<&'a str>,
}

/// One counted crossing.
#[derive(Debug, Clone, Serialize)]
pub struct LineCrossed<'a> {
    pub line: &'a str,
    pub crossing: Crossing,
}

const ROI_COLOR: Rgba = Rgba::new(64, 220, 64, 255);
const OVERCROWDED_COLOR: Rgba = Rgba::new(255, 64, 64, 255);
const LINE_COLOR: Rgba = Rgba::new(255, 210, 0, 255);
const TEXT_COLOR: Rgba = Rgba::new(0, 0, 0, 255);
const FONT_SIZE: f32 = 18.0;
const ARROW_LENGTH: f64 = 40.0;

fn segment(a: Point, b: Point, width: u32, color: Rgba) -> DisplayLine {
    DisplayLine {
        x1: a.x as f32,
        y1: a.y as f32,
        x2: b.x as f32,
        y2: b.y as f32,
        width,
        color,
    }
}

/// A label just above `anchor`, kept inside the frame's top edge.
fn label(text: String, anchor: Point, color: Rgba) -> DisplayText {
    DisplayText {
        text,
        x: anchor.x.max(0.0) as f32,
        y: (anchor.y as f32 - FONT_SIZE - 6.0).max(0.0),
        font_size: FONT_SIZE,
        color: TEXT_COLOR,
        background: Some(color),
    }
}

/// The top-most (then left-most) of some points: where a shape's label goes.
fn top_left(points: &[Point]) -> Point {
    points
        .iter()
        .copied()
        .min_by(|p, q| p.y.total_cmp(&q.y).then(p.x.total_cmp(&q.x)))
        .unwrap_or(Point::new(0.0, 0.0))
}

/// Outlines of the ROIs (red while overcrowded) with their counts, and the lines with an arrow
/// towards their entry side and their totals.
pub fn draw(
    config: &StreamConfig,
    rois: &[RoiCount],
    lines: &[LineTotals],
    display: &mut DisplayMeta,
) {
    for (roi, count) in config.rois.iter().zip(rois) {
        let over = count.overcrowded == Some(true);
        let color = if over { OVERCROWDED_COLOR } else { ROI_COLOR };
        for (a, b) in roi.polygon.edges() {
            display.lines.push(segment(a, b, 2, color));
        }
        let mut text = format!("{}: {}", roi.name, count.count);
        if let Some(max) = roi.max_objects {
            text.push_str(&format!(" (max {max})"));
        }
        display
            .texts
            .push(label(text, top_left(&roi.polygon.points), color));
    }
    for (line, totals) in config.lines.iter().zip(lines) {
        display.lines.push(segment(line.a, line.b, 3, LINE_COLOR));
        // The direction vector turned to the entry side's normal would hide the user's choice
        // of angle; draw the vector itself from the segment's middle.
        let mid = Point::new((line.a.x + line.b.x) / 2.0, (line.a.y + line.b.y) / 2.0);
        let unit = Point::new(
            line.direction.x / line.direction.length(),
            line.direction.y / line.direction.length(),
        );
        let tip = Point::new(mid.x + unit.x * ARROW_LENGTH, mid.y + unit.y * ARROW_LENGTH);
        display.lines.push(segment(mid, tip, 2, LINE_COLOR));
        for turn in [150f64.to_radians(), -150f64.to_radians()] {
            let (s, c) = turn.sin_cos();
            let head = Point::new(
                tip.x + (unit.x * c - unit.y * s) * 12.0,
                tip.y + (unit.x * s + unit.y * c) * 12.0,
            );
            display.lines.push(segment(tip, head, 2, LINE_COLOR));
        }
        display.texts.push(label(
            format!("{}: in {} out {}", line.name, totals.entries, totals.exits),
            top_left(&[line.a, line.b]),
            LINE_COLOR,
        ));
    }
}
