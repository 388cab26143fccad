//! The pipeline finds the people of the ground-truth clip (real photographs moved along known
//! paths, see docs/DATA.md): recall and precision at IoU 0.5 of at least 0.9, and at most one
//! track-id switch per person.

mod common;

use std::collections::HashMap;
use std::path::Path;

use vidmesh_tests::{
    ensure_onnxruntime, ground_truth, iou, model, read_native, topology_in, NativeFrame, Truth,
    TruthBox, REQUIRED_VISIBILITY,
};

struct Score {
    required: usize,
    true_positives: usize,
    false_positives: usize,
    /// Per person: the track ids of the detections matched to them, in frame order.
    ids: HashMap<u32, Vec<Option<u64>>>,
}

fn score(truth: &Truth, frames: &[NativeFrame]) -> Score {
    let mut s = Score {
        required: 0,
        true_positives: 0,
        false_positives: 0,
        ids: HashMap::new(),
    };
    for frame in frames {
        let people: Vec<(u32, &TruthBox)> = truth
            .objects
            .iter()
            .flat_map(|o| {
                o.track
                    .iter()
                    .filter(|b| b.frame == frame.frame_num)
                    .map(move |b| (o.id, b))
            })
            .collect();
        s.required += people
            .iter()
            .filter(|(_, b)| b.visible >= REQUIRED_VISIBILITY)
            .count();
        // Greedy matching, best overlap first, one detection per person.
        let mut pairs = Vec::new();
        for (d, det) in frame.objects.iter().enumerate() {
            for (p, (_, person)) in people.iter().enumerate() {
                let overlap = iou(det.bbox.corners(), person.bbox);
                if overlap >= 0.5 {
                    pairs.push((overlap, d, p));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut det_used, mut person_used) =
            (vec![false; frame.objects.len()], vec![false; people.len()]);
        for (_, d, p) in pairs {
            if det_used[d] || person_used[p] {
                continue;
            }
            det_used[d] = true;
            person_used[p] = true;
            let (id, person) = people[p];
            // A match to a barely visible person is neither required nor wrong.
            if person.visible >= REQUIRED_VISIBILITY {
                s.true_positives += 1;
            }
            s.ids.entry(id).or_default().push(frame.objects[d].track_id);
        }
        s.false_positives += det_used.iter().filter(|u| !**u).count();
    }
    s
}

fn id_switches(ids: &[Option<u64>]) -> usize {
    let tracked: Vec<u64> = ids.iter().flatten().copied().collect();
    tracked.windows(2).filter(|w| w[0] != w[1]).count()
}

#[test]
fn detects_and_tracks_the_people_of_the_ground_truth_clip() {
    ensure_onnxruntime();
    model();
    let truth = ground_truth();
    let scratch = tempfile::tempdir().unwrap();
    let topology_path = topology_in("ground-truth.toml", scratch.path(), &[]);
    let summary = common::run_ok(&topology_path);
    let frames = read_native(&scratch.path().join("gt/detections.jsonl"));
    assert_eq!(frames.len() as u64, summary.frames);

    let s = score(&truth, &frames);
    let recall = s.true_positives as f64 / s.required as f64;
    let precision = s.true_positives as f64 / (s.true_positives + s.false_positives) as f64;
    println!(
        "recall {recall:.3} precision {precision:.3} ({} required, {} TP, {} FP)",
        s.required, s.true_positives, s.false_positives
    );
    assert!(
        s.required > 100,
        "the truth should require many detections, got {}",
        s.required
    );
    assert!(recall >= 0.9, "recall {recall:.3} < 0.9");
    assert!(precision >= 0.9, "precision {precision:.3} < 0.9");
    for (person, ids) in &s.ids {
        let switches = id_switches(ids);
        println!(
            "person {person}: {} matched detections, {switches} id switches",
            ids.len()
        );
        assert!(
            switches <= 1,
            "person {person} switched track id {switches} times: {ids:?}"
        );
    }
    assert!(Path::new(&scratch.path().join("gt/annotated.mp4")).is_file());
}

/// One run of the ground-truth topology with a SORT tracker and the detector's `interval`.
struct IntervalRun {
    frames: Vec<NativeFrame>,
    score: Score,
    /// The infer stage's report: frames seen, frames skipped.
    seen: u64,
    skipped: u64,
    carried: u64,
}

fn run_with_interval(interval: u32) -> IntervalRun {
    let scratch = tempfile::tempdir().unwrap();
    let interval_line = format!("nms_iou = 0.45\ninterval = {interval}");
    let topology_path = topology_in(
        "ground-truth.toml",
        scratch.path(),
        &[
            ("nms_iou = 0.45", &interval_line),
            ("algorithm = \"iou\"", "algorithm = \"sort\""),
        ],
    );
    let summary = common::run_ok(&topology_path);
    let frames = read_native(&scratch.path().join("gt/detections.jsonl"));
    assert_eq!(frames.len() as u64, summary.frames);
    let fact = |stage: &str, key: &str| -> u64 {
        summary
            .fact(stage, key)
            .unwrap_or_else(|| panic!("stage {stage} reports no `{key}`: {:?}", summary.stages))
            .parse()
            .unwrap()
    };
    let score = score(&ground_truth(), &frames);
    IntervalRun {
        seen: fact("detect", "frames"),
        skipped: fact("detect", "skipped_frames"),
        carried: fact("track", "carried_objects"),
        frames,
        score,
    }
}

#[test]
fn with_interval_2_the_tracker_carries_the_people_over_the_skipped_frames() {
    ensure_onnxruntime();
    model();
    let truth = ground_truth();
    let people = truth.objects.len();
    let every = run_with_interval(0);
    let sparse = run_with_interval(2);
    for (name, run) in [("interval 0", &every), ("interval 2", &sparse)] {
        let s = &run.score;
        let ids: std::collections::BTreeSet<u64> = run
            .frames
            .iter()
            .flat_map(|f| f.objects.iter().filter_map(|o| o.track_id))
            .collect();
        let switches: usize = s.ids.values().map(|ids| id_switches(ids)).sum();
        println!(
            "{name}: detector ran on {} of {} frames; {} objects carried; recall {:.3}, \
             precision {:.3} ({} required, {} TP, {} FP); {} distinct track ids for {people} \
             people, {switches} id switches",
            run.seen - run.skipped,
            run.seen,
            run.carried,
            s.true_positives as f64 / s.required as f64,
            s.true_positives as f64 / (s.true_positives + s.false_positives).max(1) as f64,
            s.required,
            s.true_positives,
            s.false_positives,
            ids.len(),
        );
        assert!(
            ids.len() >= people && ids.len() <= people + 2,
            "{name}: {} distinct track ids for {people} people: {ids:?}",
            ids.len()
        );
    }
    assert_eq!((every.skipped, every.carried), (0, 0));
    assert_eq!(sparse.seen, 300);
    assert_eq!(sparse.skipped, 200, "2 of every 3 frames are skipped");

    // Frame n is inferred when n % 3 == 0. From frame 3 on (a track needs min_hits = 2
    // detections, the second on frame 3), every frame shows tracked people; on the skipped
    // ones every object is a carried track, so it has an id.
    let mut carried_per_frame = Vec::new();
    for frame in &sparse.frames {
        let tracked = frame
            .objects
            .iter()
            .filter(|o| o.track_id.is_some())
            .count();
        if frame.frame_num >= 3 {
            assert!(
                tracked > 0,
                "frame {}: {:?}",
                frame.frame_num,
                frame.objects
            );
        }
        if !frame.frame_num.is_multiple_of(3) {
            assert_eq!(
                tracked,
                frame.objects.len(),
                "frame {}: {:?}",
                frame.frame_num,
                frame.objects
            );
            carried_per_frame.push(tracked);
        }
    }
    assert_eq!(
        sparse.carried,
        carried_per_frame.iter().sum::<usize>() as u64,
        "the tracker's report counts the objects it added"
    );
    // The carried boxes are good enough to score like detections (IoU >= 0.5 with the truth),
    // and ids hold through the gaps.
    let recall = sparse.score.true_positives as f64 / sparse.score.required as f64;
    assert!(recall >= 0.9, "recall with interval 2: {recall:.3}");
    for (person, ids) in &sparse.score.ids {
        let switches = id_switches(ids);
        assert!(
            switches <= 1,
            "interval 2: person {person} switched track id {switches} times: {ids:?}"
        );
    }
}

#[test]
fn id_switches_count_changes_between_tracked_ids() {
    assert_eq!(id_switches(&[None, Some(1), Some(1), None, Some(1)]), 0);
    assert_eq!(id_switches(&[Some(1), Some(2), Some(2), Some(1)]), 2);
}
