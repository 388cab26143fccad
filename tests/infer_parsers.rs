//! Each detector output parser of the infer stage against an independent Python reference:
//! scripts/model/make_parser_models.py builds a small random-weight ONNX model of each output
//! layout (YOLOv5, YOLOv8 84xN and Nx84, CenterNet-style [N, K, 6], DETR, SSD with an anchors
//! output and with generated anchors), runs it with onnxruntime's Python package and decodes
//! it with numpy. The infer stage, built from the settings the script chose, runs the same
//! input; its objects must be the reference's: same count and classes, boxes within 1 pixel,
//! scores within 1e-3.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use vidmesh_protocol::ObjectMeta;
use vidmesh_tests::{ensure_onnxruntime, repo_root, venv_python};

#[path = "common/infer_batch.rs"]
mod infer_batch;

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<String>,
}

#[derive(Deserialize)]
struct Case {
    model: String,
    input: String,
    input_shape: Vec<usize>,
    /// The infer stage's settings other than `model`, as TOML.
    stage: String,
    /// Per image, the objects the reference keeps, best first.
    expected: Vec<Vec<Expected>>,
}

#[derive(Deserialize, Debug)]
struct Expected {
    class_id: i32,
    confidence: f32,
    /// x0, y0, x1, y1 in network-input (= frame) pixels.
    #[serde(rename = "box")]
    corners: [f32; 4],
}

fn corners(o: &ObjectMeta) -> [f32; 4] {
    [o.bbox.left, o.bbox.top, o.bbox.right(), o.bbox.bottom()]
}

/// Runs one case through the infer stage and returns the objects of each frame.
fn run_case(dir: &Path, case: &Case) -> Vec<Vec<ObjectMeta>> {
    let text = format!("model = {:?}\n{}", case.model, case.stage);
    let table: toml::Table = toml::from_str(&text).expect("the script writes valid TOML");
    let data = std::fs::read(dir.join(&case.input)).expect("the script wrote the input");
    infer_batch::infer_whole_frames(&table, dir, data, &case.input_shape, &case.model)
        .into_iter()
        .map(|f| f.objects)
        .collect()
}

/// Pairs each expected object with one of `ours` of the same class, score within 1e-3 and
/// corners within 1 pixel.
fn compare(ours: &[ObjectMeta], expected: &[Expected]) -> Result<(), String> {
    if ours.len() != expected.len() {
        return Err(format!(
            "vidmesh kept {} objects, the reference {}:\n ours {:?}\n reference {:?}",
            ours.len(),
            expected.len(),
            ours.iter()
                .map(|o| (o.class_id, o.confidence, corners(o)))
                .collect::<Vec<_>>(),
            expected
        ));
    }
    let mut used = vec![false; ours.len()];
    for e in expected {
        let close = |o: &ObjectMeta| {
            o.class_id == e.class_id
                && (o.confidence - e.confidence).abs() <= 1e-3
                && corners(o)
                    .iter()
                    .zip(e.corners)
                    .all(|(a, b)| (a - b).abs() <= 1.0)
        };
        match (0..ours.len()).find(|&i| !used[i] && close(&ours[i])) {
            Some(i) => used[i] = true,
            None => {
                return Err(format!(
                    "no object of vidmesh matches the reference's {e:?}"
                ))
            }
        }
    }
    Ok(())
}

#[test]
fn every_parser_matches_its_python_reference() {
    ensure_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let script = repo_root().join("scripts/model/make_parser_models.py");
    let made = Command::new(venv_python())
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("the venv's python runs");
    assert!(
        made.status.success(),
        "{} failed (run scripts/setup for onnx, onnxruntime and numpy): {}",
        script.display(),
        String::from_utf8_lossy(&made.stderr)
    );
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.path().join("manifest.json")).expect("the script wrote a manifest"),
    )
    .unwrap();
    assert!(manifest.cases.len() >= 7, "{:?}", manifest.cases);
    let mut failures = Vec::new();
    let mut objects = 0;
    for name in &manifest.cases {
        let case: Case = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let frames = run_case(dir.path(), &case);
        assert_eq!(frames.len(), case.expected.len());
        for (i, (ours, expected)) in frames.iter().zip(&case.expected).enumerate() {
            assert!(
                !expected.is_empty(),
                "{name}: the reference found nothing in image {i}, the test would prove little"
            );
            objects += ours.len();
            if let Err(e) = compare(ours, expected) {
                failures.push(format!("{name} image {i}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} models, {objects} objects, all within 1 px and 1e-3 of the reference",
        manifest.cases.len()
    );
}
