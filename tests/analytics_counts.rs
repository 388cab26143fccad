//! The `analytics` stage counts on the ground-truth clip what the clip's true paths imply
//! (topologies/analytics.toml, docs/DATA.md): line crossings exactly, ROI counts on at least
//! 95% of frames (the detector misses a few boxes), and the direction of travel of the people
//! who clearly walk one way.
//!
//! The expected numbers come from `data/gt/people.truth.json` with the topology's own geometry
//! and the same reference point (bottom-centre) on the true boxes, computed here independently
//! of the stage's code.

mod common;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use vidmesh::Topology;
use vidmesh_tests::{
    ensure_onnxruntime, ground_truth, iou, model, repo_root, topology_in, Truth,
    REQUIRED_VISIBILITY,
};

const FRAME_META: &str = "vidmesh.analytics/frame+json";
const OBJECT_META: &str = "vidmesh.analytics/object+json";

/// The parts of the analytics stage's settings this test reads.
#[derive(Deserialize)]
struct AnalyticsSettings {
    stream: Vec<StreamGeometry>,
}

#[derive(Deserialize)]
struct StreamGeometry {
    reference_point: String,
    direction_frames: u64,
    direction_min_distance: f64,
    direction_tolerance: f64,
    roi: Vec<Named>,
    line: Vec<LineGeometry>,
    direction: Vec<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    points: Vec<[f64; 2]>,
}

#[derive(Deserialize)]
struct LineGeometry {
    name: String,
    points: Vec<[f64; 2]>,
    direction: Vec<[f64; 2]>,
}

/// One line of the broker's native output, with the analytics user meta.
#[derive(Deserialize)]
struct EventFrame {
    frame_num: u64,
    objects: Vec<EventObject>,
    user: Vec<EventUser>,
}

#[derive(Deserialize)]
struct EventObject {
    bbox: EventBox,
    user: Vec<EventUser>,
}

#[derive(Deserialize)]
struct EventBox {
    left: f32,
    top: f32,
    width: f32,
    height: f32,
}

#[derive(Deserialize)]
struct EventUser {
    kind: String,
    data: Value,
}

fn meta<'a>(user: &'a [EventUser], kind: &str) -> &'a Value {
    &user
        .iter()
        .find(|u| u.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} user meta"))
        .data
}

type P = (f64, f64);

fn sub(a: P, b: P) -> P {
    (a.0 - b.0, a.1 - b.1)
}

fn cross(a: P, b: P) -> f64 {
    a.0 * b.1 - a.1 * b.0
}

/// Side of `p` relative to the directed line `a → b`.
fn side(a: P, b: P, p: P) -> f64 {
    cross(sub(b, a), sub(p, a)).signum()
}

/// Proper intersection of two segments (the true paths never touch a line exactly).
fn crosses(p: P, q: P, a: P, b: P) -> bool {
    side(a, b, p) * side(a, b, q) < 0.0 && side(p, q, a) * side(p, q, b) < 0.0
}

/// Even-odd rule; the true reference points never lie on an ROI edge here.
fn inside(poly: &[[f64; 2]], p: P) -> bool {
    let mut c = false;
    for i in 0..poly.len() {
        let ([x1, y1], [x2, y2]) = (poly[i], poly[(i + 1) % poly.len()]);
        if (y1 > p.1) != (y2 > p.1) && p.0 < x1 + (p.1 - y1) * (x2 - x1) / (y2 - y1) {
            c = !c;
        }
    }
    c
}

fn reference(b: [f32; 4], kind: &str) -> P {
    let x = (b[0] as f64 + b[2] as f64) / 2.0;
    match kind {
        "bottom-center" => (x, b[3] as f64),
        "center" => (x, (b[1] as f64 + b[3] as f64) / 2.0),
        other => panic!("unknown reference point {other}"),
    }
}

fn angle_deg(u: P, v: P) -> f64 {
    let cos = (u.0 * v.0 + u.1 * v.1) / (u.0.hypot(u.1) * v.0.hypot(v.1));
    cos.clamp(-1.0, 1.0).acos().to_degrees()
}

/// Per person, their observations that the detector is expected to find: (frame, box).
fn visible_tracks(truth: &Truth) -> BTreeMap<u32, Vec<(u64, [f32; 4])>> {
    truth
        .objects
        .iter()
        .map(|o| {
            let track = o
                .track
                .iter()
                .filter(|b| b.visible >= REQUIRED_VISIBILITY)
                .map(|b| (b.frame, b.bbox))
                .collect();
            (o.id, track)
        })
        .collect()
}

/// (entries, exits) per line implied by the true paths, each person counted at most once per
/// line and direction.
fn expected_crossings(
    g: &StreamGeometry,
    tracks: &BTreeMap<u32, Vec<(u64, [f32; 4])>>,
) -> BTreeMap<String, (u64, u64)> {
    let mut totals = BTreeMap::new();
    for line in &g.line {
        let (a, b) = (
            (line.points[0][0], line.points[0][1]),
            (line.points[1][0], line.points[1][1]),
        );
        let dir = sub(
            (line.direction[1][0], line.direction[1][1]),
            (line.direction[0][0], line.direction[0][1]),
        );
        let entry_side = cross(sub(b, a), dir).signum();
        let (mut entries, mut exits) = (0, 0);
        for (person, track) in tracks {
            let (mut entered, mut exited) = (false, false);
            for w in track.windows(2) {
                let (p, q) = (
                    reference(w[0].1, &g.reference_point),
                    reference(w[1].1, &g.reference_point),
                );
                if !crosses(p, q, a, b) {
                    continue;
                }
                let along = side(a, b, q) == entry_side;
                println!(
                    "truth: person {person} crosses `{}` at frame {} ({})",
                    line.name,
                    w[1].0,
                    if along { "entry" } else { "exit" }
                );
                if along && !entered {
                    entered = true;
                    entries += 1;
                } else if !along && !exited {
                    exited = true;
                    exits += 1;
                }
            }
        }
        totals.insert(line.name.clone(), (entries, exits));
    }
    totals
}

fn analytics_geometry(topology_path: &std::path::Path) -> StreamGeometry {
    let text = std::fs::read_to_string(topology_path).unwrap();
    let topology = Topology::parse(topology_path, &text, &repo_root()).unwrap();
    let stage = topology
        .stages
        .iter()
        .find(|s| s.name == "analytics")
        .expect("the topology has an analytics stage");
    let settings: AnalyticsSettings =
        serde_json::from_value(serde_json::to_value(&stage.table).unwrap()).unwrap();
    settings
        .stream
        .into_iter()
        .next()
        .expect("one stream entry")
}

#[test]
fn analytics_counts_match_the_ground_truth() {
    ensure_onnxruntime();
    model();
    let truth = ground_truth();
    let scratch = tempfile::tempdir().unwrap();
    let topology_path = topology_in("analytics.toml", scratch.path(), &[]);
    let g = analytics_geometry(&topology_path);
    assert!(!g.line.is_empty() && !g.roi.is_empty());

    let summary = common::run_ok(&topology_path);
    let text = std::fs::read_to_string(scratch.path().join("analytics/events.jsonl")).unwrap();
    let frames: Vec<EventFrame> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len() as u64, summary.frames);
    assert_eq!(frames.len(), 300);
    let tracks = visible_tracks(&truth);

    // Line crossings: cumulative totals exactly, in the last frame's meta and in the report.
    let expected = expected_crossings(&g, &tracks);
    let last = meta(&frames.last().unwrap().user, FRAME_META);
    for (name, (entries, exits)) in &expected {
        let got = (
            last["lines"][name]["entries"].as_u64().unwrap(),
            last["lines"][name]["exits"].as_u64().unwrap(),
        );
        println!("line `{name}`: truth entries {entries} exits {exits}, pipeline {got:?}");
        assert_eq!(got, (*entries, *exits), "line `{name}` (entries, exits)");
        let fact = |what: &str| summary.fact("analytics", &format!("people/{name} {what}"));
        assert_eq!(fact("entries"), Some(entries.to_string().as_str()));
        assert_eq!(fact("exits"), Some(exits.to_string().as_str()));
    }
    assert!(
        expected.values().map(|(i, o)| i + o).sum::<u64>() >= 3,
        "the lines should be crossed on this clip: {expected:?}"
    );
    // Totals are cumulative: never decreasing, and each increase comes with an object's
    // `lines_crossed` entry on that frame.
    let mut previous: BTreeMap<String, u64> = BTreeMap::new();
    for f in &frames {
        let lines = &meta(&f.user, FRAME_META)["lines"];
        for line in &g.line {
            let total = lines[&line.name]["entries"].as_u64().unwrap()
                + lines[&line.name]["exits"].as_u64().unwrap();
            let before = previous.insert(line.name.clone(), total).unwrap_or(0);
            let reported = f
                .objects
                .iter()
                .flat_map(|o| {
                    meta(&o.user, OBJECT_META)["lines_crossed"]
                        .as_array()
                        .unwrap()
                        .clone()
                })
                .filter(|c| c["line"] == line.name.as_str())
                .count() as u64;
            assert_eq!(total - before, reported, "frame {}", f.frame_num);
        }
    }

    // ROI counts per frame.
    for roi in &g.roi {
        let mut equal = 0;
        let mut max_truth = 0;
        let mut differing = Vec::new();
        for f in &frames {
            let truth_count = tracks
                .values()
                .flatten()
                .filter(|(n, b)| {
                    *n == f.frame_num && inside(&roi.points, reference(*b, &g.reference_point))
                })
                .count() as u64;
            max_truth = max_truth.max(truth_count);
            let got = &meta(&f.user, FRAME_META)["rois"][&roi.name];
            let count = got["count"].as_u64().unwrap();
            if count == truth_count {
                equal += 1;
            } else {
                differing.push((f.frame_num, truth_count, count));
            }
            if let Some(max) = got.get("max_objects").and_then(|m| m.as_u64()) {
                assert_eq!(got["overcrowded"], count > max, "frame {}", f.frame_num);
            }
        }
        let share = equal as f64 / frames.len() as f64;
        println!(
            "roi `{}`: equal on {equal}/{} frames ({share:.3}), truth max {max_truth}; (frame, truth, pipeline) where not: {differing:?}",
            roi.name,
            frames.len()
        );
        assert!(
            share >= 0.95,
            "roi `{}`: counts equal on {share:.3} < 0.95 of frames",
            roi.name
        );
        assert!(max_truth >= 1, "roi `{}` should see someone", roi.name);
    }
    // Overcrowding changes are reported exactly where the status flips.
    let mut status: BTreeMap<String, bool> = BTreeMap::new();
    for f in &frames {
        let m = meta(&f.user, FRAME_META);
        let mut flipped = Vec::new();
        for (name, r) in m["rois"].as_object().unwrap() {
            if let Some(over) = r.get("overcrowded").and_then(|o| o.as_bool()) {
                if status.insert(name.clone(), over).unwrap_or(false) != over {
                    flipped.push(serde_json::json!({"roi": name, "overcrowded": over}));
                }
            }
        }
        let reported = m
            .get("overcrowding_changes")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        assert_eq!(reported, Value::Array(flipped), "frame {}", f.frame_num);
    }

    let by_number: BTreeMap<u64, &EventFrame> = frames.iter().map(|f| (f.frame_num, f)).collect();
    // Direction of travel, where the truth moves clearly (twice the minimum distance over the
    // window): the pipeline's direction for the detection matched to that person.
    let (mut compared, mut agreed) = (0, 0);
    for track in tracks.values() {
        for (i, &(n, bbox)) in track.iter().enumerate() {
            let Some(&(_, old)) = track[..i].iter().find(|(m, _)| m + g.direction_frames >= n)
            else {
                continue;
            };
            let motion = sub(
                reference(bbox, &g.reference_point),
                reference(old, &g.reference_point),
            );
            if motion.0.hypot(motion.1) < 2.0 * g.direction_min_distance {
                continue;
            }
            let nearest = g
                .direction
                .iter()
                .map(|d| {
                    let v = sub(
                        (d.points[1][0], d.points[1][1]),
                        (d.points[0][0], d.points[0][1]),
                    );
                    (angle_deg(motion, v), d.name.as_str())
                })
                .filter(|(a, _)| *a <= g.direction_tolerance)
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, name)| name);
            let frame = by_number[&n];
            let matched = frame.objects.iter().find(|o| {
                let b = &o.bbox;
                iou([b.left, b.top, b.left + b.width, b.top + b.height], bbox) >= 0.5
            });
            let Some(got) = matched.and_then(|o| meta(&o.user, OBJECT_META)["direction"].as_str())
            else {
                continue;
            };
            compared += 1;
            if Some(got) == nearest {
                agreed += 1;
            }
        }
    }
    println!("direction: {agreed}/{compared} agree with the truth's motion");
    assert!(compared >= 150, "too few directions to compare: {compared}");
    assert!(
        agreed as f64 >= 0.95 * compared as f64,
        "direction agrees on {agreed}/{compared}"
    );
    assert!(scratch.path().join("analytics/annotated.mp4").is_file());
}
