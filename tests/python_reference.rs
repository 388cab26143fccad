//! vidmesh's detections equal those of an independent Python reference — onnxruntime's
//! Python package running the same ONNX model on the same decoded frames, with preprocessing
//! and post-processing written in numpy (bench/peer/ssdlite_reference.py): same boxes within
//! 1 pixel, same scores within 1e-3, frame by frame.

mod common;

use std::process::Command;

use vidmesh_tests::{
    ensure_onnxruntime, model, prepared, read_native, repo_root, topology_in, venv_python,
    NativeFrame,
};

fn compare(ours: &[NativeFrame], reference: &[NativeFrame]) -> Result<usize, String> {
    if ours.len() != reference.len() {
        return Err(format!(
            "vidmesh wrote {} frames, the reference {}",
            ours.len(),
            reference.len()
        ));
    }
    let mut boxes = 0;
    for (a, b) in ours.iter().zip(reference) {
        if a.frame_num != b.frame_num || a.objects.len() != b.objects.len() {
            return Err(format!(
                "frame {}: vidmesh found {} objects, the reference (frame {}) {}",
                a.frame_num,
                a.objects.len(),
                b.frame_num,
                b.objects.len()
            ));
        }
        for (i, (x, y)) in a.objects.iter().zip(&b.objects).enumerate() {
            let worst = x
                .bbox
                .corners()
                .iter()
                .zip(y.bbox.corners())
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            if worst > 1.0 || (x.confidence - y.confidence).abs() > 1e-3 || x.class_id != y.class_id
            {
                return Err(format!(
                    "frame {} object {i}: vidmesh {:?} score {} vs reference {:?} score {}",
                    a.frame_num,
                    x.bbox.corners(),
                    x.confidence,
                    y.bbox.corners(),
                    y.confidence
                ));
            }
            boxes += 1;
        }
    }
    Ok(boxes)
}

#[test]
fn detections_match_the_python_onnxruntime_reference() {
    ensure_onnxruntime();
    model();
    let clip = prepared("data/gt/people.mp4");
    let scratch = tempfile::tempdir().unwrap();
    let path = topology_in("ground-truth.toml", scratch.path(), &[]);
    common::run_ok(&path);

    let reference = scratch.path().join("reference.jsonl");
    let status = Command::new(venv_python())
        .current_dir(repo_root())
        .arg("bench/peer/ssdlite_reference.py")
        .args(["--video".as_ref(), clip.as_os_str()])
        .args(["--topology", "topologies/ground-truth.toml"])
        .args(["--out".as_ref(), reference.as_os_str()])
        .status()
        .expect("the reference script runs");
    assert!(status.success(), "the Python reference failed");

    let ours = read_native(&scratch.path().join("gt/detections.jsonl"));
    let theirs = read_native(&reference);
    let boxes = compare(&ours, &theirs).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} frames, {boxes} boxes identical within 1 px / 1e-3",
        ours.len()
    );
    assert!(
        boxes > 100,
        "the clip should yield many detections, got {boxes}"
    );
}
