//! Smart record and event snapshots on the ground-truth clip (data/gt/people.mp4, 300 frames at
//! 30 fps, 1280x720), with the real detector, tracker and analytics of
//! topologies/analytics.toml: `record` writes clips around the `west-gate` crossings (person 1
//! at ~frame 50, person 4 at ~frame 255), one of them extended by person 1 then leaving the
//! `walkway` ROI; `snapshot` saves crops of each crossing person and rate-limited whole frames.
//!
//! Which frames the triggers should fire on comes from the analytics meta the pipeline's own
//! broker wrote (events.jsonl); the clips and images are decoded again with GStreamer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gst::prelude::*;
use gstreamer as gst;
use serde::Deserialize;
use serde_json::Value;
use vidmesh::Topology;
use vidmesh_tests::{count_frames, ensure_onnxruntime};

const FPS: f64 = 30.0;
const FRAMES: u64 = 300;
/// The record stages' keyframe interval (frames) and pre/post (seconds).
const GOP: u64 = 15;
const PRE: f64 = 1.0;
const POST: f64 = 1.0;
const MARGIN: f32 = 8.0;
const OBJECT_META: &str = "vidmesh.analytics/object+json";

/// The repository this test was compiled from. (`vidmesh_tests::repo_root` is compiled into
/// the shared library crate, which another checkout building into the same target directory
/// may have compiled last.)
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The analytics pipeline up to its `analytics` stage, then the stages under test.
fn topology(dir: &Path) -> PathBuf {
    let base = std::fs::read_to_string(root().join("topologies/analytics.toml")).unwrap();
    let upstream = &base[..base
        .find("[stage.osd]")
        .expect("analytics.toml has an osd stage")];
    let upstream = upstream.replace(
        r#"["track", "analytics"], ["analytics", "osd"], ["osd", "out"], ["analytics", "events"],"#,
        r#"["track", "analytics"], ["analytics", "events"], ["analytics", "clips"],
  ["analytics", "extended"], ["analytics", "crops"], ["analytics", "frames"],"#,
    );
    assert!(
        upstream.contains(r#"["analytics", "clips"]"#),
        "links were rewritten"
    );
    let r = root();
    let upstream = upstream
        .replace("file://data/", &format!("file://{}/data/", r.display()))
        .replace("\"models/", &format!("\"{}/models/", r.display()));
    assert!(
        r.join("data/gt/people.mp4").is_file() && r.join("models/ssdlite_person.onnx").is_file(),
        "data/gt/people.mp4 or the model is missing: run scripts/setup first"
    );
    let d = dir.display();
    let text = format!(
        r#"{upstream}
[stage.events]
kind = "broker"
uri = "file://{d}/events.jsonl"
schema = "native"

[stage.clips]
kind = "record"
dir = "file://{d}/clips"
on = [{{ analytics = "line_crossing", name = "west-gate" }}]
pre = "1s"
post = "1s"
max_duration = "30s"
key_int_max = {GOP}
speed_preset = "ultrafast"

[stage.extended]
kind = "record"
dir = "{d}/extended"
on = [
  {{ analytics = "line_crossing", name = "west-gate", crossing = "exit" }},
  {{ analytics = "roi_exit", name = "walkway", class = "person" }},
]
pre = "1s"
post = "1s"
key_int_max = {GOP}
speed_preset = "ultrafast"

[stage.crops]
kind = "snapshot"
dir = "{d}/crops"
on = [{{ analytics = "line_crossing" }}]
crop = true
margin = {MARGIN}
min_interval = "1s"

[stage.frames]
kind = "snapshot"
dir = "{d}/frames"
on = [{{ class = "person", min_confidence = 0.5 }}]
min_interval = "2s"
"#
    );
    let path = dir.join("smart-record.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Deserialize)]
struct EventFrame {
    frame_num: u64,
    pts_ns: u64,
    objects: Vec<EventObject>,
}

#[derive(Deserialize)]
struct EventObject {
    label: String,
    confidence: f32,
    bbox: EventBox,
    track_id: Option<u64>,
    user: Vec<EventUser>,
}

#[derive(Deserialize, Clone, Copy, Debug)]
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

impl EventObject {
    fn analytics(&self) -> &Value {
        &self
            .user
            .iter()
            .find(|u| u.kind == OBJECT_META)
            .expect("analytics object meta")
            .data
    }

    /// Crossings of `line` (any when `None`) on this frame: "entry"/"exit".
    fn crossings(&self, line: Option<&str>) -> Vec<String> {
        self.analytics()["lines_crossed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| line.is_none_or(|l| c["line"] == l))
            .map(|c| c["crossing"].as_str().unwrap().to_string())
            .collect()
    }

    fn in_walkway(&self) -> bool {
        self.analytics()["rois"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "walkway")
    }
}

/// A clip's sidecar.
#[derive(Deserialize, Debug)]
struct Clip {
    source: String,
    path: String,
    first_frame: u64,
    last_frame: u64,
    frames: u64,
    capped: bool,
    triggers: Vec<ClipTrigger>,
}

#[derive(Deserialize, Debug)]
struct ClipTrigger {
    frame_num: u64,
    hits: Vec<Value>,
}

fn clips(dir: &Path) -> Vec<(PathBuf, Clip)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let clip: Clip = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            out.push((path.with_extension("mp4"), clip));
        }
    }
    out.sort_by_key(|(_, c)| c.first_frame);
    out
}

/// Checks a clip against its sidecar and the record settings, with `pts` the stream time of
/// every frame: the file decodes to the frames the sidecar lists, starts on the keyframe at or
/// before `first trigger - pre`, ends with the last frame before `last trigger + post` (or the
/// stream's end), so it lasts pre + (last - first trigger) + post, plus at most one GOP.
/// Returns its duration in seconds.
fn check_clip(path: &Path, clip: &Clip, pts: &BTreeMap<u64, u64>) -> f64 {
    assert!(path.is_file(), "{} exists", path.display());
    assert_eq!(Path::new(&clip.path), path);
    assert_eq!(clip.source, "people");
    assert!(!clip.capped);
    let decoded = count_frames(path) as u64;
    assert_eq!(
        decoded,
        clip.frames,
        "{} decodes to every frame",
        path.display()
    );
    assert_eq!(
        clip.last_frame + 1 - clip.first_frame,
        clip.frames,
        "consecutive frames"
    );
    let first = clip.triggers.first().unwrap().frame_num;
    let last = clip.triggers.last().unwrap().frame_num;
    let (pre, post) = ((PRE * 1e9) as u64, (POST * 1e9) as u64);
    let wanted_start = pts[&first].saturating_sub(pre);
    let wanted_end = pts[&last] + post;
    // Keyframes are every GOP frames: the clip starts on the latest one at or before
    // `first - pre`.
    assert_eq!(clip.first_frame % GOP, 0, "clips start on a keyframe");
    assert!(
        pts[&clip.first_frame] <= wanted_start
            && pts
                .get(&(clip.first_frame + GOP))
                .is_none_or(|&p| p > wanted_start),
        "{}: starts at frame {}, trigger {first} - pre is at {wanted_start} ns",
        path.display(),
        clip.first_frame
    );
    let expected_last = *pts
        .iter()
        .filter(|(_, &p)| p < wanted_end)
        .map(|(n, _)| n)
        .next_back()
        .unwrap();
    assert_eq!(
        clip.last_frame,
        expected_last,
        "{}: ends at trigger {last} + post",
        path.display()
    );
    let duration = decoded as f64 / FPS;
    let stream_end = FRAMES as f64 / FPS;
    let expected = (wanted_end as f64 / 1e9).min(stream_end) - wanted_start as f64 / 1e9;
    println!(
        "{}: {decoded} frames, {duration:.3} s (pre + triggers + post {expected:.3} s), frames {}..={}, triggers {:?}",
        path.display(),
        clip.first_frame,
        clip.last_frame,
        clip.triggers.iter().map(|t| t.frame_num).collect::<Vec<_>>()
    );
    let frame = 1.0 / FPS;
    assert!(
        duration >= expected - frame && duration <= expected + GOP as f64 * frame + frame,
        "{}: {duration} s, expected {expected} s within one GOP",
        path.display()
    );
    duration
}

/// Decodes a JPEG with GStreamer and returns its size.
fn jpeg_size(path: &Path) -> (u32, u32) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! jpegdec ! fakesink name=sink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let pad = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let caps = pad.current_caps();
    let _ = pipeline.set_state(gst::State::Null);
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{} decodes: {msg:?}",
        path.display()
    );
    let s = caps.expect("decoded caps").structure(0).unwrap().to_owned();
    (
        s.get::<i32>("width").unwrap() as u32,
        s.get::<i32>("height").unwrap() as u32,
    )
}

#[test]
fn clips_and_snapshots_follow_the_analytics_events() {
    ensure_onnxruntime();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let path = topology(dir);
    let text = std::fs::read_to_string(&path).unwrap();
    let topology = Topology::parse(&path, &text, &root()).unwrap_or_else(|e| panic!("{e}"));
    let summary = vidmesh::run(
        &topology,
        &vidmesh::RunOptions::default(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.frames, FRAMES);

    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let frames: Vec<EventFrame> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len() as u64, FRAMES);
    let by_number: BTreeMap<u64, &EventFrame> = frames.iter().map(|f| (f.frame_num, f)).collect();
    let pts: BTreeMap<u64, u64> = frames.iter().map(|f| (f.frame_num, f.pts_ns)).collect();

    // --- record: one clip per west-gate crossing (they are far apart), each pre + post long.
    let west: BTreeSet<u64> = frames
        .iter()
        .filter(|f| {
            f.objects
                .iter()
                .any(|o| !o.crossings(Some("west-gate")).is_empty())
        })
        .map(|f| f.frame_num)
        .collect();
    println!("west-gate crossings on frames {west:?}");
    assert!(
        west.len() >= 2,
        "the clip has two west-gate crossings: {west:?}"
    );
    let made = clips(&dir.join("clips"));
    let triggered: BTreeSet<u64> = made
        .iter()
        .flat_map(|(_, c)| c.triggers.iter().map(|t| t.frame_num))
        .collect();
    assert_eq!(
        triggered, west,
        "every crossing, and only crossings, triggered"
    );
    for (path, clip) in &made {
        check_clip(path, clip, &pts);
        for t in &clip.triggers {
            assert!(t
                .hits
                .iter()
                .all(|h| h["event"] == "line_crossing" && h["name"] == "west-gate"));
        }
    }
    assert_eq!(
        summary.fact("clips", "clips"),
        Some(made.len().to_string().as_str())
    );

    // --- extended: person 1's exit over west-gate, then their leaving the walkway, within
    // `post` of each other, make one longer clip.
    let mut expected_triggers = BTreeSet::new();
    let mut previous_walkway: BTreeMap<u64, bool> = BTreeMap::new();
    for f in &frames {
        for o in &f.objects {
            if o.crossings(Some("west-gate")).contains(&"exit".to_string()) {
                expected_triggers.insert(f.frame_num);
            }
            if let Some(id) = o.track_id {
                let now = o.in_walkway();
                if previous_walkway.insert(id, now) == Some(true) && !now && o.label == "person" {
                    expected_triggers.insert(f.frame_num);
                }
            }
        }
    }
    let extended = clips(&dir.join("extended"));
    let got: BTreeSet<u64> = extended
        .iter()
        .flat_map(|(_, c)| c.triggers.iter().map(|t| t.frame_num))
        .collect();
    assert_eq!(got, expected_triggers);
    let mut longest = 0.0f64;
    for (path, clip) in &extended {
        let d = check_clip(path, clip, &pts);
        if clip.triggers.len() > 1 {
            longest = longest.max(d);
        }
    }
    assert!(
        longest > PRE + POST + GOP as f64 / FPS,
        "a recording was extended by a later trigger: {extended:?}"
    );

    // --- crops: one per crossing object (crossings of one track are > 1 s apart here), the
    // image is the object's box plus the margin.
    let sidecar = std::fs::read_to_string(dir.join("crops/snapshots.jsonl")).unwrap();
    let lines: Vec<Value> = sidecar
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let crossing_objects: usize = frames
        .iter()
        .flat_map(|f| &f.objects)
        .filter(|o| !o.crossings(None).is_empty())
        .count();
    assert!(crossing_objects >= 3, "{crossing_objects}");
    assert_eq!(lines.len(), crossing_objects);
    for line in &lines {
        let file = dir.join("crops").join(line["file"].as_str().unwrap());
        let (w, h) = jpeg_size(&file);
        let region: Vec<u32> = serde_json::from_value(line["region"].clone()).unwrap();
        assert_eq!((w, h), (region[2], region[3]), "{}", file.display());
        let frame = by_number[&line["frame_num"].as_u64().unwrap()];
        let track = line["object"]["track_id"].as_u64().unwrap();
        let object = frame
            .objects
            .iter()
            .find(|o| o.track_id == Some(track))
            .expect("the cropped track is on the frame");
        assert!(!object.crossings(None).is_empty());
        assert_eq!(line["triggers"][0]["event"], "line_crossing");
        let b = object.bbox;
        let want = [
            (b.left - MARGIN).max(0.0),
            (b.top - MARGIN).max(0.0),
            (b.left + b.width + MARGIN).min(1280.0),
            (b.top + b.height + MARGIN).min(720.0),
        ];
        let got = [
            region[0] as f32,
            region[1] as f32,
            (region[0] + w) as f32,
            (region[1] + h) as f32,
        ];
        for (g, e) in got.iter().zip(want) {
            assert!(
                (g - e).abs() <= 2.0,
                "{}: crop {got:?}, box + margin {want:?}",
                file.display()
            );
        }
        assert!(file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&format!("-track{track}.jpg")));
    }

    // --- whole frames: a person is always in view, so one image every 2 s of stream time.
    let sidecar = std::fs::read_to_string(dir.join("frames/snapshots.jsonl")).unwrap();
    let lines: Vec<Value> = sidecar
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // min_interval counts stream time: the next image is the first frame 2 s after the last.
    let expected: Vec<u64> = {
        let mut last: Option<u64> = None;
        frames
            .iter()
            .filter(|f| {
                f.objects
                    .iter()
                    .any(|o| o.label == "person" && o.confidence >= 0.5)
            })
            .filter_map(|f| {
                let due = last.is_none_or(|l| f.pts_ns >= l + 2_000_000_000);
                if due {
                    last = Some(f.pts_ns);
                }
                due.then_some(f.frame_num)
            })
            .collect()
    };
    let got: Vec<u64> = lines
        .iter()
        .map(|l| l["frame_num"].as_u64().unwrap())
        .collect();
    assert_eq!(got, expected);
    assert!(got.len() >= 4, "{got:?}");
    for line in &lines {
        let file = dir.join("frames").join(line["file"].as_str().unwrap());
        assert_eq!(jpeg_size(&file), (1280, 720));
        assert_eq!(
            file.file_name().unwrap().to_string_lossy(),
            format!("people-{}.jpg", line["frame_num"])
        );
    }
    assert_eq!(
        summary.fact("frames", "snapshots"),
        Some(got.len().to_string().as_str())
    );
}

#[test]
fn bad_triggers_fail_before_anything_starts() {
    let scratch = tempfile::tempdir().unwrap();
    let path = topology(scratch.path());
    let text = std::fs::read_to_string(&path).unwrap();
    for (from, to, expected) in [
        (
            r#"analytics = "line_crossing", name = "west-gate" }]"#,
            r#"analytics = "line_cross", name = "west-gate" }]"#,
            "on[0]: unknown analytics event `line_cross`; expected one of line_crossing, roi_entry, roi_exit, overcrowding",
        ),
        (
            r#"crop = true"#,
            r#"crop = "yes""#,
            "crop",
        ),
        (
            r#"max_duration = "30s""#,
            r#"max_duration = "1s""#,
            "max_duration (1s) is shorter than pre + post (2s)",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let bad = text.replace(from, to);
        let err = Topology::parse(&path, &bad, &root())
            .err()
            .unwrap_or_else(|| panic!("`{to}` should be rejected"))
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}
