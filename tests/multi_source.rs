//! Several sources at once: each keeps its own frame numbers, gets its own output file and its
//! own end of stream, and track ids never collide across streams. A source that fails does not
//! stop the others.

mod common;

use std::collections::{HashMap, HashSet};

use vidmesh_tests::{
    count_frames, ensure_onnxruntime, make_clip, model, prepared, read_native, topology_in,
};

#[test]
fn two_streams_run_side_by_side_with_separate_outputs_and_ids() {
    ensure_onnxruntime();
    model();
    prepared("data/gt/people.mp4");
    let scratch = tempfile::tempdir().unwrap();
    let short = scratch.path().join("short.mp4");
    make_clip(&short, 45, 640, 360, false);
    let second = format!("[[source]]\nid = \"people\"\nuri = \"file://data/gt/people.mp4\"\n\n[[source]]\nid = \"short\"\nuri = \"file://{}\"", short.display());
    let path = topology_in(
        "ground-truth.toml",
        scratch.path(),
        &[
            (
                "[[source]]\nid = \"people\"\nuri = \"file://data/gt/people.mp4\"",
                second.as_str(),
            ),
            ("gt/annotated.mp4", "gt/annotated-{source}.mp4"),
        ],
    );
    let summary = common::run_ok(&path);
    let frames: HashMap<&str, u64> = summary
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.frames))
        .collect();
    assert_eq!(frames, HashMap::from([("people", 300), ("short", 45)]));

    assert_eq!(
        count_frames(&scratch.path().join("gt/annotated-people.mp4")),
        300
    );
    assert_eq!(
        count_frames(&scratch.path().join("gt/annotated-short.mp4")),
        45
    );

    let meta = read_native(&scratch.path().join("gt/detections.jsonl"));
    assert_eq!(meta.len(), 345);
    let mut per_source: HashMap<(u32, u32), Vec<u64>> = HashMap::new();
    for f in &meta {
        per_source
            .entry((f.width, f.height))
            .or_default()
            .push(f.frame_num);
    }
    for numbers in per_source.values() {
        let expected: Vec<u64> = (0..numbers.len() as u64).collect();
        assert_eq!(
            numbers, &expected,
            "each source numbers its frames 0.. in order"
        );
    }
    let ids_people: HashSet<u64> = meta
        .iter()
        .filter(|f| f.width == 1280)
        .flat_map(|f| f.objects.iter().filter_map(|o| o.track_id))
        .collect();
    let ids_short: HashSet<u64> = meta
        .iter()
        .filter(|f| f.width == 640)
        .flat_map(|f| f.objects.iter().filter_map(|o| o.track_id))
        .collect();
    assert!(!ids_people.is_empty());
    assert!(
        ids_people.is_disjoint(&ids_short),
        "track ids are unique across streams"
    );
}

#[test]
fn a_failing_source_does_not_stop_the_others() {
    ensure_onnxruntime();
    model();
    let scratch = tempfile::tempdir().unwrap();
    let good = scratch.path().join("good.mp4");
    make_clip(&good, 60, 320, 240, false);
    let bad = scratch.path().join("bad.mp4");
    std::fs::write(&bad, vec![7u8; 50_000]).unwrap();
    let sources = format!(
        "[[source]]\nid = \"good\"\nuri = \"file://{}\"\n\n[[source]]\nid = \"bad\"\nuri = \"file://{}\"",
        good.display(),
        bad.display()
    );
    let path = topology_in(
        "ground-truth.toml",
        scratch.path(),
        &[
            (
                "[[source]]\nid = \"people\"\nuri = \"file://data/gt/people.mp4\"",
                sources.as_str(),
            ),
            ("gt/annotated.mp4", "gt/annotated-{source}.mp4"),
        ],
    );
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    assert!(
        summary.errors[0].starts_with("source `bad`"),
        "{:?}",
        summary.errors
    );
    assert_eq!(
        summary
            .sources
            .iter()
            .find(|s| s.name == "good")
            .unwrap()
            .frames,
        60
    );
    assert_eq!(
        count_frames(&scratch.path().join("gt/annotated-good.mp4")),
        60
    );
}
