//! Source options as users set them: `max_fps` delivers an evenly spread subset of the
//! frames, `loop = true` plays a clip again and again, numbering on, until stopped, and
//! `testsrc://` makes frames without any clip.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmesh_tests::{make_clip, metadata_topology, prepared, read_native, repo_root};

fn topology(
    dir: &std::path::Path,
    source_keys: &str,
    clip: &std::path::Path,
) -> std::path::PathBuf {
    let source = format!(
        "id = \"clip\"\nuri = \"file://{}\"\n{source_keys}",
        clip.display()
    );
    metadata_topology(dir, "source-options", &source)
}

#[test]
fn max_fps_keeps_an_even_subset() {
    let dir = tempfile::tempdir().unwrap();
    // 300 frames at 30 fps; at most 5 a second of stream time is every sixth.
    let clip = prepared("data/gt/people.mp4");
    let summary = common::run_ok(&topology(dir.path(), "max_fps = 5", &clip));
    assert_eq!(summary.sources[0].frames, 50);
    let frames = read_native(&dir.path().join("meta.jsonl"));
    assert_eq!(frames.len(), 50);
    assert!(frames
        .iter()
        .enumerate()
        .all(|(i, f)| f.frame_num == i as u64));
}

#[test]
fn a_looping_file_plays_again_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("short.mp4");
    make_clip(&clip, 30, 160, 120, false);
    let path = topology(dir.path(), "loop = true", &clip);
    let text = std::fs::read_to_string(&path).unwrap();
    let topology = vidmesh::Topology::parse(&path, &text, &repo_root()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let run = std::thread::spawn({
        let stop = stop.clone();
        move || vidmesh::run(&topology, &vidmesh::RunOptions::default(), stop).unwrap()
    });
    let events = dir.path().join("meta.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&events).map_or(0, |t| t.lines().count()) < 100 {
        assert!(
            Instant::now() < deadline,
            "the clip did not play past its end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let frames = read_native(&events);
    assert!(frames.len() >= 100, "{} frames", frames.len());
    assert_eq!(frames.len() as u64, summary.sources[0].frames);
    // More than three passes of a 30-frame clip, numbered as one stream.
    assert!(frames
        .iter()
        .enumerate()
        .all(|(i, f)| f.frame_num == i as u64));
}

#[test]
fn a_test_pattern_needs_no_clip() {
    let dir = tempfile::tempdir().unwrap();
    let path = metadata_topology(
        dir.path(),
        "testsrc",
        "id = \"pattern\"\nuri = \"testsrc://ball?width=320&height=240&fps=15&frames=45\"",
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.sources[0].frames, 45);
    let frames = read_native(&dir.path().join("meta.jsonl"));
    assert_eq!(frames.len(), 45);
    assert!(frames.iter().all(|f| (f.width, f.height) == (320, 240)));
}
