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

#[test]
fn id_switches_count_changes_between_tracked_ids() {
    assert_eq!(id_switches(&[None, Some(1), Some(1), None, Some(1)]), 0);
    assert_eq!(id_switches(&[Some(1), Some(2), Some(2), Some(1)]), 2);
}
