//! The stage on synthetic frames: what it attaches, counts and reports.

use serde_json::Value;
use vidmesh_protocol::{BBox, DataMessage, StreamEnd};
use vidmesh_transport::{in_process_link, Received};

use super::*;
use crate::stage::{BuildContext, Resume};

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
        peers: Default::default(),
        replica: 0,
        stage_name: "analytics".into(),
        base_dir: ".".into(),
        sources: vec!["cam0".into(), "cam1".into()],
        resume: None,
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
    a.on_end_of_stream(
        &StreamEnd {
            source_id: 0,
            source_name: "cam0".into(),
            frames: 2,
        },
        &mut out,
    )
    .unwrap();
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

/// What a stage is fed, one call each.
enum Event {
    Batch(Vec<FrameMeta>),
    End(u32),
}

/// 30 frames of cam0 and 12 of cam1 (then its end), with crossings both ways, jitter inside
/// the hysteresis band, a track forgotten late, untracked objects and overcrowding changes, so
/// that every cut point leaves some state mid-way.
fn restart_script() -> Vec<Event> {
    let jitter = [315.0, 322.0, 318.0, 325.5, 319.0, 326.0, 321.0, 314.0];
    let mut events = Vec::new();
    for n in 0..30u64 {
        let mut cam0 = vec![
            person(Some(1), 250.0 + 5.3 * n as f32),
            person(Some(2), 420.0 - 4.1 * n as f32),
            person(Some(3), jitter[n as usize % jitter.len()]),
        ];
        if n < 8 {
            cam0.push(person(Some(4), 100.0));
        }
        if n % 3 == 0 {
            cam0.push(person(None, 60.0));
        }
        let mut frames = vec![frame(0, n, cam0)];
        if n < 12 {
            frames.push(frame(1, n, vec![person(Some(10), 290.0 + 6.0 * n as f32)]));
        }
        events.push(Event::Batch(frames));
        if n == 11 {
            events.push(Event::End(1));
        }
    }
    events
}

/// Both streams on the "*" entry, with a hysteresis band to be caught inside.
fn restart_topology() -> String {
    TOPOLOGY
        .replace("\"cam0\"", "\"*\"")
        .replace("hysteresis = 0", "hysteresis = 4")
}

fn build(text: &str, resume: Option<Resume>) -> Result<Box<dyn Stage>, StageError> {
    let table: toml::Table = toml::from_str(text).unwrap();
    (KIND.build)(&table, &BuildContext { resume, ..ctx() })
}

/// Feeds `events` to `stage` and returns the frames it emitted.
fn feed(stage: &mut dyn Stage, events: &[Event]) -> Vec<FrameMeta> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, mut rx) = in_process_link("analytics->x", 256, rt.handle().clone());
    let mut out = Outputs::new(vec![tx]);
    for event in events {
        match event {
            Event::Batch(frames) => {
                let batch = Batch {
                    frames: frames.clone(),
                    ..Default::default()
                };
                stage.on_batch(batch, &mut out).unwrap();
            }
            Event::End(source_id) => {
                let end = StreamEnd {
                    source_id: *source_id,
                    source_name: ctx().sources[*source_id as usize].clone(),
                    frames: 12,
                };
                stage.on_end_of_stream(&end, &mut out).unwrap();
            }
        }
    }
    let mut frames = Vec::new();
    while let Received::Message(m) = rx.recv_blocking(Some(std::time::Instant::now())) {
        if let DataMessage::Batch(b) = m {
            frames.extend(b.frames);
        }
    }
    frames
}

fn finish(stage: &mut dyn Stage) -> StageReport {
    stage.on_finish(&mut Outputs::new(Vec::new())).unwrap()
}

#[test]
fn a_restored_snapshot_carries_on_as_if_uninterrupted() {
    let text = restart_topology();
    let events = restart_script();
    let mut uninterrupted = build(&text, None).unwrap();
    let expected = feed(uninterrupted.as_mut(), &events);
    let expected_report = finish(uninterrupted.as_mut());

    // The script exercises what a snapshot must carry.
    let fact = |key: &str| {
        let found = expected_report.facts.iter().find(|(k, _)| k == key);
        found.map(|(_, v)| v.clone()).unwrap_or_default()
    };
    assert_eq!(fact("cam0/middle entries"), "2");
    assert_eq!(fact("cam0/middle exits"), "2");
    assert_eq!(fact("cam1/middle entries"), "1");
    let changes = expected
        .iter()
        .filter(|f| {
            json(&f.user, FRAME_META_KIND)
                .get("overcrowding_changes")
                .is_some()
        })
        .count();
    assert!(changes >= 2, "{changes} overcrowding changes");

    for cut in 0..=events.len() {
        let mut first = build(&text, None).unwrap();
        let mut got = feed(first.as_mut(), &events[..cut]);
        let snapshot = first.snapshot().expect("analytics is stateful");
        drop(first);
        let resume = Resume {
            snapshot: Some(snapshot),
        };
        let mut second = build(&text, Some(resume)).unwrap();
        got.extend(feed(second.as_mut(), &events[cut..]));
        assert!(
            got == expected,
            "outputs differ when restarted after event {cut}"
        );
        assert_eq!(finish(second.as_mut()), expected_report, "cut at {cut}");
    }
}

#[test]
fn the_snapshot_is_versioned_json_with_exact_coordinates() {
    let text = restart_topology();
    let mut stage = build(&text, None).unwrap();
    feed(stage.as_mut(), &restart_script()[..3]);
    let snapshot: Value = serde_json::from_slice(&stage.snapshot().unwrap()).unwrap();
    assert_eq!(snapshot["version"], 1);
    let cam0 = &snapshot["streams"][0];
    assert_eq!(cam0["name"], "cam0");
    assert_eq!(
        cam0["lines"],
        serde_json::json!([["middle", {"entries": 0, "exits": 0}]])
    );
    assert_eq!(cam0["running"]["overcrowded"], serde_json::json!([true]));
    let track1 = &cam0["running"]["tracks"][0];
    assert_eq!(track1["id"], 1);
    // 250 + 5.3 * 2 in f32, widened to f64 without loss.
    assert_eq!(
        track1["history"][2],
        serde_json::json!([2, "260.6000061035156", "300"])
    );
}

#[test]
fn a_snapshot_that_does_not_fit_is_a_settings_error_naming_the_stage() {
    let text = restart_topology();
    let mut stage = build(&text, None).unwrap();
    feed(stage.as_mut(), &restart_script()[..3]);
    let snapshot = stage.snapshot().unwrap();
    let track_snapshot = br#"{"ids": {"next": 3}, "confirmed": 2, "streams": []}"#.to_vec();
    let next_version = String::from_utf8(snapshot.clone())
        .unwrap()
        .replace("\"version\":1", "\"version\":2");
    let cases = [
        (
            &text,
            b"{not json".to_vec(),
            "unreadable analytics snapshot: key must be a string",
        ),
        (
            &text,
            track_snapshot,
            "unreadable analytics snapshot: missing field `version`",
        ),
        (
            &text,
            next_version.into_bytes(),
            "analytics snapshot version 2 is not supported (this build reads version 1)",
        ),
        (
            &text.replace("name = \"middle\"", "name = \"gate\""),
            snapshot,
            "stream `cam0`: the snapshot's lines are [middle], the configuration's [gate]",
        ),
    ];
    for (text, snapshot, reason) in cases {
        let resume = Resume {
            snapshot: Some(snapshot),
        };
        let e = build(text, Some(resume)).err().expect("refused");
        assert!(matches!(e, StageError::Settings(_)), "{e:?}");
        let e = e.to_string();
        let expected = format!("analytics: cannot resume from the last snapshot: {reason}");
        assert!(e.starts_with(&expected), "{e}");
    }
}

#[test]
fn a_replacement_without_a_committed_snapshot_starts_afresh() {
    let resume = Resume { snapshot: None };
    let mut stage = build(&restart_topology(), Some(resume)).unwrap();
    let fresh = build(&restart_topology(), None).unwrap();
    assert_eq!(stage.snapshot(), fresh.snapshot());
    assert_eq!(finish(stage.as_mut()), StageReport::default());
}
