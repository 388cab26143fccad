//! The infer stage as a user meets it: the face-anonymisation demo (secondary inference on
//! person crops, faces blurred by the OSD) checked pixel by pixel and by an independent face
//! detector, and configuration mistakes refused with a clear error before any frame flows.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vidmesh::{run, RunOptions, Topology};
use vidmesh_tests::{
    ensure_onnxruntime, model, prepared, read_native, repo_root, topology_in, venv_python,
};

#[test]
fn the_anonymisation_demo_blurs_the_faces_inside_people_and_nothing_else() {
    ensure_onnxruntime();
    model();
    let centerface = prepared("models/centerface.onnx");
    let clip = prepared("data/gt/people.mp4");
    let scratch = tempfile::tempdir().unwrap();
    let path = topology_in("anonymise.toml", scratch.path(), &[]);
    let summary = common::run_ok(&path);
    assert_eq!(summary.frames, 300, "people.mp4 has 300 frames");
    let crops: u64 = summary
        .fact("faces", "inferred_images")
        .unwrap()
        .parse()
        .unwrap();
    let faces: u64 = summary.fact("faces", "objects").unwrap().parse().unwrap();
    assert!(
        crops >= 300,
        "people are in every frame; {crops} person crops inferred"
    );
    assert!(
        faces >= 100,
        "faces are visible in most frames; found {faces}"
    );

    // Every face hangs off a person of the primary detector and lies inside it.
    let events = read_native(&scratch.path().join("anonymised-events.jsonl"));
    let raw = std::fs::read_to_string(scratch.path().join("anonymised-events.jsonl")).unwrap();
    let mut checked = 0;
    for (line, frame) in raw.lines().zip(&events) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        for object in value["objects"].as_array().unwrap() {
            if object["label"] != "face" {
                continue;
            }
            let parent = object["parent"].as_u64().expect("a face has a parent") as usize;
            let person = &frame.objects[parent];
            assert_eq!(person.label, "person", "frame {}", frame.frame_num);
            let (f, p) = (&object["bbox"], person.bbox);
            let left = f["left"].as_f64().unwrap() as f32;
            let top = f["top"].as_f64().unwrap() as f32;
            assert!(
                left >= p.left - 1.0 && top >= p.top - 1.0,
                "frame {}: face at ({left}, {top}) outside its person {p:?}",
                frame.frame_num
            );
            checked += 1;
        }
    }
    assert_eq!(checked as u64, faces);

    let out = Command::new(venv_python())
        .arg(repo_root().join("tests/scripts/check_anonymised.py"))
        .args([&clip, &scratch.path().join("anonymised.mp4")])
        .arg(scratch.path().join("anonymised-events.jsonl"))
        .arg(&centerface)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the anonymised video fails the independent check: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a variant of the demo topology and returns the error that stopped it; no frame may
/// have reached the output.
fn refused(edits: &[(&str, &str)]) -> String {
    ensure_onnxruntime();
    model();
    prepared("data/vtest.avi");
    let scratch = tempfile::tempdir().unwrap();
    let path = topology_in("demo.toml", scratch.path(), edits);
    let text = std::fs::read_to_string(&path).unwrap();
    let topology = match Topology::parse(&path, &text, &repo_root()) {
        Ok(t) => t,
        Err(e) => return e.to_string(),
    };
    match run(
        &topology,
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    ) {
        Err(e) => e.to_string(),
        Ok(summary) => {
            assert!(
                !summary.errors.is_empty(),
                "the run succeeded with {edits:?}"
            );
            assert!(
                !scratch.path().join("events.jsonl").exists()
                    || std::fs::read_to_string(scratch.path().join("events.jsonl"))
                        .unwrap()
                        .is_empty(),
                "frames flowed before the error"
            );
            format!("{:?}", summary.errors)
        }
    }
}

#[test]
fn a_preprocess_size_the_model_does_not_take_is_refused_before_any_frame() {
    let err = refused(&[("width = 300\nheight = 300", "width = 224\nheight = 224")]);
    assert!(
        err.contains("expects input `image` of shape [N,300,300,3]")
            && err.contains("preprocess")
            && err.contains("224"),
        "{err}"
    );
}

#[test]
fn labels_of_the_wrong_count_are_refused_before_any_frame() {
    let err = refused(&[(
        "labels = [\"background\", \"person\"]",
        "labels = [\"person\"]",
    )]);
    assert!(
        err.contains("1 labels given") && err.contains("distinguishes 2 classes"),
        "{err}"
    );
}

#[test]
fn an_unknown_parser_is_refused_with_the_known_ones() {
    let err = refused(&[("type = \"ssd\"", "type = \"yolov99\"")]);
    assert!(
        err.contains("unknown parser type `yolov99`") && err.contains("ssd"),
        "{err}"
    );
}

#[test]
fn operate_on_must_name_an_infer_stage() {
    let err = refused(&[(
        "[stage.detect]\nkind = \"infer\"",
        "[stage.detect]\nkind = \"infer\"\noperate_on = \"track\"\npreprocess = {}",
    )]);
    assert!(
        err.contains("operate_on = \"track\" is not an infer stage") && err.contains("detect"),
        "{err}"
    );
}
