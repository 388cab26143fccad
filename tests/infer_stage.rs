//! The infer stage as a user meets it: the face-anonymisation demo (secondary inference on
//! person crops, faces blurred by the OSD) checked pixel by pixel and by an independent face
//! detector, and configuration mistakes refused with a clear error before any frame flows.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vidmesh::{run, RunOptions, RunSummary, Topology};
use vidmesh_tests::{
    ensure_onnxruntime, model, prepared, read_native, repo_root, topology_in, venv_python,
    NativeFrame,
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

/// The anonymisation demo's people and tracks, with a colour classifier (component 3, made by
/// scripts/model/make_colour_classifier.py) on every person crop instead of the face detector;
/// `reinfer` is its `reinfer_interval`.
fn classify_people(dir: &Path, reinfer: u64) -> (RunSummary, Vec<NativeFrame>) {
    let base = std::fs::read_to_string(repo_root().join("topologies/anonymise.toml")).unwrap();
    let front = &base[..base
        .find("[stage.faces]")
        .expect("the demo has a faces stage")];
    let links = "[\"track\", \"faces\"], [\"faces\", \"osd\"], [\"osd\", \"out\"], [\"faces\", \"events\"],";
    assert!(front.contains(links), "the demo's links changed");
    let dir_text = dir.display();
    let text = front.replace(links, "[\"track\", \"colour\"], [\"colour\", \"events\"],")
        + &format!(
            r#"
[stage.colour]
kind = "infer"
model = "{dir_text}/colour.onnx"
component_id = 3
operate_on = "people"
operate_on_classes = [1]
labels_file = "{dir_text}/labels.txt"
score_threshold = 0.0
reinfer_interval = {reinfer}
parser = {{ type = "classifier", output = "predictions" }}
preprocess = {{ width = 32, height = 64, net_scale_factor = 0.00392156862745, interpolation = "bilinear" }}

[stage.events]
kind = "broker"
uri = "file://{dir_text}/events-{reinfer}.jsonl"
schema = "native"
"#
        );
    let path = dir.join(format!("classify-{reinfer}.toml"));
    std::fs::write(&path, text).unwrap();
    let summary = common::run_ok(&path);
    let frames = read_native(&dir.join(format!("events-{reinfer}.jsonl")));
    (summary, frames)
}

/// The one label component 3 gave an object.
fn colour_of(object: &vidmesh_tests::NativeObject) -> &str {
    let ours: Vec<_> = object
        .classifiers
        .iter()
        .filter(|c| c.component_id == 3)
        .collect();
    assert_eq!(ours.len(), 1, "one colour result per person: {object:?}");
    assert_eq!(ours[0].labels.len(), 1, "{object:?}");
    &ours[0].labels[0].label
}

#[test]
fn a_secondary_classifier_reuses_a_tracks_result_within_its_reinfer_interval() {
    ensure_onnxruntime();
    model();
    prepared("data/gt/people.mp4");
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    // Six grey levels close together, so a person's label changes as they walk.
    let labels = ["g25", "g31", "g37", "g43", "g49", "g55"];
    let out = Command::new(venv_python())
        .arg(repo_root().join("scripts/model/make_colour_classifier.py"))
        .arg(dir.join("colour.onnx"))
        .args([
            "--width",
            "32",
            "--height",
            "64",
            "--labels",
            &labels.join(";"),
        ])
        .arg("--colours")
        .arg(
            labels
                .iter()
                .map(|l| {
                    let v = l[1..].parse::<f32>().unwrap() / 100.0;
                    format!("{v}:{v}:{v}")
                })
                .collect::<Vec<_>>()
                .join(";"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_colour_classifier.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // nvinfer's classifier label format: one line, `;`-separated.
    std::fs::write(dir.join("labels.txt"), labels.join(";") + "\n").unwrap();

    let fact =
        |s: &RunSummary, key: &str| -> u64 { s.fact("colour", key).unwrap().parse().unwrap() };
    let (every_run, every) = classify_people(dir, 0);
    let (cached_run, cached) = classify_people(dir, 5);

    // Every frame: each person crop classified, nothing reused.
    let people = every
        .iter()
        .flat_map(|f| &f.objects)
        .filter(|o| o.label == "person")
        .count() as u64;
    assert!(people > 300, "people in every frame: {people}");
    assert_eq!(fact(&every_run, "inferred_images"), people);
    assert_eq!(fact(&every_run, "cached_results"), 0);
    let mut by_track: HashMap<(u64, u64), String> = HashMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for frame in &every {
        for o in frame.objects.iter().filter(|o| o.label == "person") {
            let colour = colour_of(o).to_string();
            seen.insert(colour.clone());
            if let Some(t) = o.track_id {
                by_track.insert((frame.frame_num, t), colour);
            }
        }
    }
    assert!(
        seen.len() >= 2,
        "the classifier tells crops apart: {seen:?}"
    );

    // reinfer_interval = 5: the same people and tracks, a fifth of the crops run, and each
    // tracked person's label is what the classifier said of that track within the last 5
    // frames.
    let inferred = fact(&cached_run, "inferred_images");
    let reused = fact(&cached_run, "cached_results");
    assert_eq!(
        inferred + reused,
        people,
        "every person is classified or reused"
    );
    assert!(
        inferred * 3 < people,
        "{inferred} of {people} crops inferred with reinfer_interval = 5"
    );
    assert_eq!(cached.len(), every.len());
    let mut differs = 0;
    for (a, b) in every.iter().zip(&cached) {
        assert_eq!(a.frame_num, b.frame_num);
        assert_eq!(a.objects.len(), b.objects.len(), "frame {}", a.frame_num);
        for (oa, ob) in a.objects.iter().zip(&b.objects) {
            assert_eq!(oa.track_id, ob.track_id, "frame {}", a.frame_num);
            assert_eq!(
                oa.bbox.corners(),
                ob.bbox.corners(),
                "frame {}",
                a.frame_num
            );
            if ob.label != "person" {
                continue;
            }
            let colour = colour_of(ob);
            let Some(track) = ob.track_id else {
                assert_eq!(
                    colour,
                    colour_of(oa),
                    "an untracked person is classified anew"
                );
                continue;
            };
            let window: Vec<&String> = (a.frame_num.saturating_sub(4)..=a.frame_num)
                .filter_map(|f| by_track.get(&(f, track)))
                .collect();
            assert!(
                window.iter().any(|c| c.as_str() == colour),
                "frame {}, track {track}: {colour} is none of the track's last labels {window:?}",
                a.frame_num
            );
            differs += usize::from(colour != colour_of(oa));
        }
    }
    eprintln!(
        "{people} person objects: {inferred} classified, {reused} reused; {differs} reused \
         labels differ from that frame's own classification"
    );
    assert!(differs > 0, "some reused labels are older than the frame");
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
