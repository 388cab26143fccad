//! The stage on synthetic frames: what it attaches, counts and reports.

use serde_json::Value;
use vidmesh_protocol::BBox;

use super::*;
use crate::stage::BuildContext;

const TOPOLOGY: &str = r#"
    kind = "analytics"
    [[stream]]
    source = "cam0"
    frame_size = [640, 480]
    hysteresis = 0
    forget_after = 10
    direction_frames = 5
    direction_min_distance = 8
    [[stream.roi]]
    name = "left"
    points = [[0, 0], [320, 0], [320, 480], [0, 480]]
    max_objects = 1
    [[stream.line]]
    name = "middle"
    points = [[320, 100], [320, 400]]
    direction = [[300, 250], [340, 250]]
    [[stream.direction]]
    name = "east"
    points = [[0, 0], [1, 0]]
    [[stream.direction]]
    name = "west"
    points = [[1, 0], [0, 0]]
"#;

fn ctx() -> BuildContext {
    BuildContext {
        stage_name: "analytics".into(),
        base_dir: ".".into(),
        sources: vec!["cam0".into(), "cam1".into()],
    }
}

fn stage(text: &str) -> Analytics {
    let table: toml::Table = toml::from_str(text).unwrap();
    let configs = crate::settings::parse::<Settings>(&table)
        .unwrap()
        .compile(&ctx())
        .unwrap();
    Analytics::new(configs, ctx().sources)
}

/// A 20x60 person whose feet are at (`x`, 300).
fn person(track_id: Option<u64>, x: f32) -> ObjectMeta {
    ObjectMeta {
        label: "person".into(),
        class_id: 0,
        bbox: BBox::from_corners(x - 10.0, 240.0, x + 10.0, 300.0),
        track_id,
        ..Default::default()
    }
}

fn frame(source_id: u32, frame_num: u64, objects: Vec<ObjectMeta>) -> FrameMeta {
    FrameMeta {
        source_id,
        source_name: ctx().sources[source_id as usize].clone(),
        frame_num,
        width: 640,
        height: 480,
        objects,
        ..Default::default()
    }
}

fn json(user: &[UserMeta], kind: &str) -> Value {
    let meta = user
        .iter()
        .find(|u| u.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} meta"));
    serde_json::from_slice(&meta.data).unwrap()
}

#[test]
fn counts_rois_and_line_crossings_and_classifies_direction() {
    let mut a = stage(TOPOLOGY);
    let mut frames = Vec::new();
    // Track 1 walks east across the line at x = 320, track 2 stays in the left ROI.
    for n in 0..10u64 {
        let mut f = frame(
            0,
            n,
            vec![
                person(Some(1), 280.0 + 10.0 * n as f32),
                person(Some(2), 100.0),
            ],
        );
        a.analyse_frame(&mut f).unwrap();
        frames.push(f);
    }
    let first = json(&frames[0].user, FRAME_META_KIND);
    assert_eq!(first["rois"]["left"]["count"], 2);
    assert_eq!(first["rois"]["left"]["by_label"]["person"], 2);
    assert_eq!(first["rois"]["left"]["overcrowded"], true);
    assert_eq!(
        first["overcrowding_changes"],
        serde_json::json!([{"roi": "left", "overcrowded": true}])
    );
    let track1 = json(&frames[0].objects[0].user, OBJECT_META_KIND);
    assert_eq!(track1["reference_point"], serde_json::json!([280.0, 300.0]));
    assert_eq!(track1["rois"], serde_json::json!(["left"]));
    assert_eq!(track1["direction"], Value::Null, "no motion yet");

    // x = 320 on frame 4 is on the line; frame 5 (330) is past it.
    for (n, f) in frames.iter().enumerate() {
        let o = json(&f.objects[0].user, OBJECT_META_KIND);
        let expected = if n == 5 {
            serde_json::json!([{"line": "middle", "crossing": "entry"}])
        } else {
            serde_json::json!([])
        };
        assert_eq!(o["lines_crossed"], expected, "frame {n}");
    }
    let f5 = json(&frames[5].user, FRAME_META_KIND);
    assert_eq!(f5["rois"]["left"]["count"], 1);
    assert_eq!(f5["rois"]["left"]["overcrowded"], false);
    assert_eq!(
        f5["overcrowding_changes"],
        serde_json::json!([{"roi": "left", "overcrowded": false}])
    );
    assert_eq!(
        f5["lines"]["middle"],
        serde_json::json!({"entries": 1, "exits": 0})
    );
    let f6 = json(&frames[6].user, FRAME_META_KIND);
    assert!(f6.get("overcrowding_changes").is_none());
    assert_eq!(f6["lines"]["middle"]["entries"], 1, "totals are cumulative");

    let moving = json(&frames[9].objects[0].user, OBJECT_META_KIND);
    assert_eq!(moving["direction"], "east");
    assert_eq!(moving["rois"], serde_json::json!([]), "outside every ROI");
    let still = json(&frames[9].objects[1].user, OBJECT_META_KIND);
    assert_eq!(still["direction"], Value::Null);

    let report = a.on_finish(&mut Outputs::new(Vec::new())).unwrap();
    assert_eq!(
        report.facts,
        [
            ("cam0/middle entries".to_string(), "1".to_string()),
            ("cam0/middle exits".to_string(), "0".to_string()),
            ("cam0/left max count".to_string(), "2".to_string()),
        ]
    );
}

#[test]
fn a_track_walking_back_and_forth_counts_once_each_way() {
    let mut a = stage(TOPOLOGY);
    let xs = [300.0, 340.0, 300.0, 340.0, 300.0, 340.0, 300.0];
    for (n, x) in xs.iter().enumerate() {
        let mut f = frame(0, n as u64, vec![person(Some(7), *x)]);
        a.analyse_frame(&mut f).unwrap();
    }
    let totals = &a.stats[&0].lines[0].1;
    assert_eq!((totals.entries, totals.exits), (1, 1));
}

#[test]
fn untracked_objects_are_counted_in_rois_but_never_cross_lines() {
    let mut a = stage(TOPOLOGY);
    for (n, x) in [300.0, 340.0].iter().enumerate() {
        let mut f = frame(0, n as u64, vec![person(None, *x)]);
        a.analyse_frame(&mut f).unwrap();
        let rois = &json(&f.user, FRAME_META_KIND)["rois"]["left"]["count"];
        assert_eq!(rois, if n == 0 { 1 } else { 0 });
    }
    assert_eq!(a.stats[&0].lines[0].1, LineTotals::default());
}

#[test]
fn tracks_not_seen_for_forget_after_frames_are_dropped() {
    let mut a = stage(TOPOLOGY);
    let mut f = frame(0, 0, vec![person(Some(1), 100.0)]);
    a.analyse_frame(&mut f).unwrap();
    for n in 1..=10 {
        let mut f = frame(0, n, vec![person(Some(2), 500.0)]);
        a.analyse_frame(&mut f).unwrap();
        assert!(a.streams[&0].tracks.contains_key(&1), "frame {n}");
    }
    let mut f = frame(0, 11, vec![person(Some(2), 500.0)]);
    a.analyse_frame(&mut f).unwrap();
    assert!(!a.streams[&0].tracks.contains_key(&1));
    assert!(a.streams[&0].tracks.contains_key(&2));
}

#[test]
fn end_of_stream_drops_tracks_but_keeps_totals() {
    let mut a = stage(TOPOLOGY);
    for (n, x) in [300.0, 340.0].iter().enumerate() {
        let mut f = frame(0, n as u64, vec![person(Some(1), *x)]);
        a.analyse_frame(&mut f).unwrap();
    }
    let mut out = Outputs::new(Vec::new());
    a.on_end_of_stream(0, "cam0", &mut out).unwrap();
    assert!(a.streams.is_empty());
    let report = a.on_finish(&mut out).unwrap();
    assert_eq!(report.facts[0], ("cam0/middle entries".into(), "1".into()));
}

#[test]
fn streams_without_an_entry_pass_untouched_and_star_applies_to_the_rest() {
    let mut a = stage(TOPOLOGY);
    let mut f = frame(1, 0, vec![person(Some(1), 100.0)]);
    let before = f.clone();
    a.analyse_frame(&mut f).unwrap();
    assert_eq!(f, before);

    let mut a = stage(&TOPOLOGY.replace("\"cam0\"", "\"*\""));
    let mut f = frame(1, 0, vec![person(Some(1), 100.0)]);
    a.analyse_frame(&mut f).unwrap();
    assert_eq!(json(&f.user, FRAME_META_KIND)["rois"]["left"]["count"], 1);
    assert_eq!(a.stats[&1].name, "cam1");
}

#[test]
fn the_first_frame_must_fit_the_configuration() {
    let mut a = stage(TOPOLOGY);
    let mut f = frame(0, 0, Vec::new());
    f.width = 320;
    f.height = 240;
    let e = a.analyse_frame(&mut f).unwrap_err().to_string();
    assert_eq!(
        e,
        "stream `cam0`: frame_size is [640, 480] but the frames of source `cam0` are 320x240"
    );

    let mut a = stage(&TOPOLOGY.replace("frame_size = [640, 480]", ""));
    let e = a.analyse_frame(&mut f).unwrap_err().to_string();
    assert_eq!(
        e,
        "stream `cam0`: roi `left`: point [320, 480] is outside the 320x240 frame (first frame of source `cam0`)"
    );
}

#[test]
fn display_meta_outlines_rois_and_lines_with_their_counts() {
    let mut a = stage(TOPOLOGY);
    let mut f = frame(0, 0, vec![person(Some(1), 100.0), person(Some(2), 120.0)]);
    a.analyse_frame(&mut f).unwrap();
    // 4 ROI edges, the line, an arrow shaft and its 2 head strokes.
    assert_eq!(f.display.lines.len(), 8);
    let texts: Vec<&str> = f.display.texts.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["left: 2 (max 1)", "middle: in 0 out 0"]);

    let mut a = stage(&TOPOLOGY.replace("hysteresis = 0", "hysteresis = 0\ndraw = false"));
    let mut f = frame(0, 0, vec![person(Some(1), 100.0)]);
    a.analyse_frame(&mut f).unwrap();
    assert!(f.display.is_empty());
}

#[test]
fn inverse_rois_and_the_centre_reference_point() {
    let text = TOPOLOGY
        .replace("max_objects = 1", "inverse = true")
        .replace("hysteresis = 0", "reference_point = \"center\"");
    let mut a = stage(&text);
    let mut f = frame(0, 0, vec![person(Some(1), 100.0), person(Some(2), 500.0)]);
    a.analyse_frame(&mut f).unwrap();
    let left = &json(&f.user, FRAME_META_KIND)["rois"]["left"];
    assert_eq!(left["count"], 1);
    assert!(left.get("overcrowded").is_none(), "no threshold, no status");
    let o = json(&f.objects[1].user, OBJECT_META_KIND);
    assert_eq!(o["rois"], serde_json::json!(["left"]));
    assert_eq!(o["reference_point"], serde_json::json!([500.0, 270.0]));
}
