//! The README demo topology runs on the street video and produces what the README promises:
//! an annotated MP4 with every frame and one DeepStream minimal-schema event line per frame.

mod common;

use vidmesh_tests::{count_frames, ensure_onnxruntime, model, prepared, topology_in};

#[test]
fn demo_topology_annotates_the_street_video_and_publishes_events() {
    ensure_onnxruntime();
    model();
    prepared("data/vtest.avi");
    let scratch = tempfile::tempdir().unwrap();
    let path = topology_in("demo.toml", scratch.path(), &[]);
    let summary = common::run_ok(&path);
    assert_eq!(summary.frames, 795, "vtest.avi has 795 frames");

    let objects: u64 = summary.fact("detect", "objects").unwrap().parse().unwrap();
    let tracks: u64 = summary.fact("track", "tracks").unwrap().parse().unwrap();
    assert!(
        objects > 795,
        "people walk through the whole video; got {objects} detections"
    );
    assert!(tracks > 5 && tracks < objects, "got {tracks} tracks");

    let events = std::fs::read_to_string(scratch.path().join("events.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 795);
    let with_ids = lines
        .iter()
        .flat_map(|l| l["objects"].as_array().unwrap().iter())
        .map(|o| o.as_str().unwrap().split('|').collect::<Vec<_>>())
        .inspect(|f| assert_eq!(f.len(), 6, "minimal schema object string: {f:?}"))
        .filter(|f| f[0] != "18446744073709551615")
        .count();
    assert!(with_ids > 0, "tracked objects carry their ids in events");
    assert_eq!(lines[0]["sensorId"], "street");

    // The MP4 decodes to the same number of frames.
    assert_eq!(
        count_frames(&scratch.path().join("annotated.mp4")),
        795,
        "annotated.mp4 holds every frame"
    );
}
