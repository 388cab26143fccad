//! The two binaries end to end: files in, MOTChallenge results and summaries out.

use std::process::Command;

fn det_txt() -> String {
    // Two boxes moving apart for 8 frames, a false positive in frame 3, nothing in frame 9
    // and 10 (the sequence is 10 frames long).
    let mut s = String::new();
    for f in 1..=8 {
        let x = f as f32 * 3.0;
        s.push_str(&format!("{f},-1,{},10,20,40,0.9,-1,-1,-1\n", 100.0 - x));
        s.push_str(&format!("{f},-1,{},10,20,40,0.8,-1,-1,-1\n", 200.0 + x));
    }
    s.push_str("3,-1,500,500,20,20,0.3,-1,-1,-1\n");
    s
}

#[test]
fn track_eval_writes_mot_results_and_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let det = dir.path().join("det.txt");
    let res = dir.path().join("res.txt");
    std::fs::write(&det, det_txt()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_track-eval"))
        .args([
            "--algorithm",
            "iou",
            "--set",
            "min_hits=2",
            "--frames",
            "10",
        ])
        .args(["--repeat", "3", "--json", "--input"])
        .arg(&det)
        .arg("--out")
        .arg(&res)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["frames"], 10);
    assert_eq!(summary["detections"], 17);
    assert_eq!(summary["track_ids"], 2);
    // min_hits = 2: each box is tracked from its second frame on.
    assert_eq!(summary["tracked_objects"], 14);
    assert_eq!(
        summary["runs_mean_us_per_frame"].as_array().unwrap().len(),
        3
    );
    assert!(summary["mean_us_per_frame"].as_f64().unwrap() > 0.0);

    let results = std::fs::read_to_string(&res).unwrap();
    let lines: Vec<Vec<&str>> = results.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(lines.len(), 14);
    assert!(lines
        .iter()
        .all(|l| l.len() == 10 && l[7..] == ["-1", "-1", "-1"]));
    assert_eq!(lines[0][0], "2", "first tracked frame, 1-based");
    // Each box keeps one id: the left-moving one (left < 150) and the right-moving one.
    let ids_of = |left: bool| {
        let mut ids: Vec<&str> = lines
            .iter()
            .filter(|l| (l[2].parse::<f32>().unwrap() < 150.0) == left)
            .map(|l| l[1])
            .collect();
        ids.dedup();
        ids
    };
    assert_eq!(ids_of(true).len(), 1);
    assert_eq!(ids_of(false).len(), 1);
    assert_ne!(ids_of(true), ids_of(false));
}

#[test]
fn track_eval_refuses_an_unknown_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let det = dir.path().join("det.txt");
    std::fs::write(&det, det_txt()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_track-eval"))
        .args(["--algorithm", "no-such-tracker", "--input"])
        .arg(&det)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-tracker"), "{err}");
}

#[test]
fn track_cost_measures_known_algorithms_and_lists_unknown_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_track-cost"))
        .args(["--algorithms", "iou,no-such-tracker", "--objects", "5,20"])
        .args(["--frames", "20", "--runs", "3", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows[0]["algorithm"], "iou");
    assert!(rows[0]["unavailable"].is_null());
    let cells = rows[0]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert!(cells
        .iter()
        .all(|c| c["us_per_frame"].as_f64().unwrap() > 0.0));
    assert!(rows[1]["unavailable"]
        .as_str()
        .unwrap()
        .contains("no-such-tracker"));
}
