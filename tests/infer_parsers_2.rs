//! The classifier, semantic-segmentation, instance-segmentation and CenterFace parsers against
//! their Python references: scripts/model/make_parser_models_2.py builds random-weight models
//! (and takes the real CenterFace model with a photograph), runs them in ONNX Runtime and
//! decodes the outputs with numpy; here the infer stage runs the same models on the same
//! input through `vidmesh_actors::infer::KIND.build`, and what it attaches to the frames must
//! match: labels and probabilities within 1e-3, class maps equal (except where the reference's
//! top two scores tie within 1e-5), boxes and landmarks within 1 px, scores and mask values
//! within 1e-3.

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use vidmesh_actors::infer::{LANDMARKS_KIND, SEGMENTATION_KIND};
use vidmesh_actors::stage::BuildContext;
use vidmesh_protocol::FrameMeta;
use vidmesh_tests::{ensure_onnxruntime, prepared, repo_root, venv_python};

#[path = "common/infer_batch.rs"]
mod infer_batch;

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    model: PathBuf,
    input: PathBuf,
    input_shape: Vec<usize>,
    stage: String,
    kind: String,
    expected: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Label {
    class_id: i32,
    label: String,
    probability: f32,
}

#[derive(Debug, Deserialize)]
struct SegmentationMap {
    width: u32,
    height: u32,
    transform: [f32; 4],
    class_map: Vec<u8>,
    ambiguous: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct ExpectedMask {
    width: u32,
    height: u32,
    threshold: f32,
    data: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct Object {
    class_id: i32,
    confidence: f32,
    /// x0, y0, x1, y1 in network (= frame) pixels.
    bbox: [f32; 4],
    landmarks: Option<Vec<[f32; 2]>>,
    mask: Option<ExpectedMask>,
}

/// Runs the reference script once per test binary run, into a scratch directory.
fn cases(dir: &std::path::Path) -> Vec<Case> {
    let out = Command::new(venv_python())
        .arg(repo_root().join("scripts/model/make_parser_models_2.py"))
        .arg(dir)
        .arg("--centerface")
        .arg(prepared("models/centerface.onnx"))
        .arg("--image")
        .arg("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")
        .output()
        .expect("the reference script runs");
    assert!(
        out.status.success(),
        "make_parser_models_2.py failed (scripts/setup installs its packages and opencv-doc):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json written");
    serde_json::from_str(&text).expect("cases.json parses")
}

/// Builds the infer stage of `case` and runs its input through it as one batch of frames of
/// the network size, each row an identity transform of its frame.
fn run_stage(case: &Case) -> Vec<FrameMeta> {
    ensure_onnxruntime();
    let mut table: toml::Table = toml::from_str(&case.stage)
        .unwrap_or_else(|e| panic!("{}: stage TOML: {e}\n{}", case.name, case.stage));
    table.insert("kind".into(), "infer".into());
    table.insert(
        "model".into(),
        case.model.to_str().expect("utf-8 path").into(),
    );
    let data = std::fs::read(&case.input).expect("input written");
    infer_batch::infer_whole_frames(&table, &repo_root(), data, &case.input_shape, &case.name)
}

fn close(a: f32, b: f32, tolerance: f32) -> bool {
    (a - b).abs() <= tolerance
}

fn check_classes(case: &Case, frames: &[FrameMeta]) {
    for (i, (frame, expected)) in frames.iter().zip(&case.expected).enumerate() {
        let expected: Vec<Label> = serde_json::from_value(expected.clone()).unwrap();
        if expected.is_empty() {
            assert!(
                frame.objects.is_empty(),
                "{} image {i}: nothing passes the threshold, got {:?}",
                case.name,
                frame.objects
            );
            continue;
        }
        assert_eq!(
            frame.objects.len(),
            1,
            "{} image {i}: one full-frame object",
            case.name
        );
        let object = &frame.objects[0];
        assert_eq!(object.classifiers.len(), 1, "{} image {i}", case.name);
        let got = &object.classifiers[0].labels;
        assert_eq!(
            got.len(),
            expected.len(),
            "{} image {i}: labels {got:?}, expected {expected:?}",
            case.name
        );
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                g.class_id == e.class_id
                    && g.label == e.label
                    && close(g.probability, e.probability, 1e-3),
                "{} image {i}: {g:?}, expected {e:?}",
                case.name
            );
        }
        assert_eq!(object.class_id, expected[0].class_id);
        assert_eq!(object.label, expected[0].label);
    }
}

fn check_segmentation(case: &Case, frames: &[FrameMeta]) {
    for (i, (frame, expected)) in frames.iter().zip(&case.expected).enumerate() {
        let expected: SegmentationMap = serde_json::from_value(expected.clone()).unwrap();
        let meta: Vec<_> = frame
            .user
            .iter()
            .filter(|u| u.kind == SEGMENTATION_KIND)
            .collect();
        assert_eq!(meta.len(), 1, "{} image {i}: one segmentation", case.name);
        let bytes = &meta[0].data;
        assert!(bytes.len() >= 24, "{} image {i}: header", case.name);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let f32_at = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(
            (u32_at(0), u32_at(4)),
            (expected.width, expected.height),
            "{} image {i}: map size",
            case.name
        );
        let transform = [f32_at(8), f32_at(12), f32_at(16), f32_at(20)];
        assert!(
            transform
                .iter()
                .zip(&expected.transform)
                .all(|(a, b)| close(*a, *b, 1e-6)),
            "{} image {i}: frame → map transform {transform:?}, expected {:?}",
            case.name,
            expected.transform
        );
        let map = &bytes[24..];
        assert_eq!(
            map.len(),
            expected.class_map.len(),
            "{} image {i}",
            case.name
        );
        let ambiguous: std::collections::HashSet<usize> =
            expected.ambiguous.iter().copied().collect();
        let wrong: Vec<(usize, u8, u8)> = map
            .iter()
            .zip(&expected.class_map)
            .enumerate()
            .filter(|(p, (g, e))| g != e && !ambiguous.contains(p))
            .map(|(p, (g, e))| (p, *g, *e))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} image {i}: {} pixels differ (pixel, got, expected), first: {:?}",
            case.name,
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    }
}

fn check_detections(case: &Case, frames: &[FrameMeta]) {
    for (i, (frame, expected)) in frames.iter().zip(&case.expected).enumerate() {
        let expected: Vec<Object> = serde_json::from_value(expected.clone()).unwrap();
        assert_eq!(
            frame.objects.len(),
            expected.len(),
            "{} image {i}: object count; got {:?}",
            case.name,
            frame
                .objects
                .iter()
                .map(|o| o.confidence)
                .collect::<Vec<_>>()
        );
        // Each reference object is matched with the stage's object of the same class and the
        // nearest score; scores of random and real models do not tie within 1e-3 here.
        let mut unused: Vec<&vidmesh_protocol::ObjectMeta> = frame.objects.iter().collect();
        for e in &expected {
            let at = unused
                .iter()
                .enumerate()
                .filter(|(_, o)| o.class_id == e.class_id)
                .min_by(|(_, a), (_, b)| {
                    (a.confidence - e.confidence)
                        .abs()
                        .total_cmp(&(b.confidence - e.confidence).abs())
                })
                .map(|(k, _)| k)
                .unwrap_or_else(|| panic!("{} image {i}: no object for {e:?}", case.name));
            let g = unused.swap_remove(at);
            let b = g.bbox;
            let got_box = [b.left, b.top, b.right(), b.bottom()];
            assert!(
                close(g.confidence, e.confidence, 1e-3)
                    && got_box.iter().zip(&e.bbox).all(|(a, b)| close(*a, *b, 1.0)),
                "{} image {i}: got score {} box {got_box:?}, expected {e:?}",
                case.name,
                g.confidence
            );
            match &e.landmarks {
                Some(points) => {
                    let meta = g
                        .user
                        .iter()
                        .find(|u| u.kind == LANDMARKS_KIND)
                        .unwrap_or_else(|| panic!("{} image {i}: no landmarks", case.name));
                    let got: Vec<f32> = meta
                        .data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    let want: Vec<f32> = points.iter().flatten().copied().collect();
                    assert!(
                        got.len() == want.len()
                            && got.iter().zip(&want).all(|(a, b)| close(*a, *b, 1.0)),
                        "{} image {i}: landmarks {got:?}, expected {want:?}",
                        case.name
                    );
                }
                None => assert!(g.user.iter().all(|u| u.kind != LANDMARKS_KIND)),
            }
            match (&e.mask, &g.mask) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    assert_eq!(
                        (got.width, got.height, got.threshold),
                        (want.width, want.height, want.threshold),
                        "{} image {i}: mask size of {e:?}",
                        case.name
                    );
                    let worst = got
                        .data
                        .iter()
                        .zip(&want.data)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        got.data.len() == want.data.len() && worst <= 1e-3,
                        "{} image {i}: mask values differ by up to {worst}",
                        case.name
                    );
                }
                (want, got) => panic!("{} image {i}: mask {got:?}, expected {want:?}", case.name),
            }
        }
    }
}

#[test]
fn parsers_match_their_python_references() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let cases = cases(dir.path());
    let kinds: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "classifier_logits",
        "classifier_probabilities",
        "semantic_scores",
        "semantic_class_ids",
        "instance_segmentation",
        "centerface_candidates",
        "centerface_faces",
    ] {
        assert!(kinds.contains(&want), "the script made no `{want}` case");
    }
    // Every case runs, so one failure does not hide another; the panic messages say why.
    let failed: Vec<&str> = cases
        .iter()
        .filter(|case| {
            let outcome = std::panic::catch_unwind(|| {
                let frames = run_stage(case);
                assert_eq!(frames.len(), case.expected.len(), "{}", case.name);
                match case.kind.as_str() {
                    "classes" => check_classes(case, &frames),
                    "segmentation" => check_segmentation(case, &frames),
                    "detections" => check_detections(case, &frames),
                    other => panic!("unknown case kind {other}"),
                }
            });
            match outcome {
                Ok(()) => eprintln!("{}: matches the reference", case.name),
                Err(_) => eprintln!("{}: DIFFERS from the reference (see above)", case.name),
            }
            outcome.is_err()
        })
        .map(|case| case.name.as_str())
        .collect();
    assert!(failed.is_empty(), "cases that differ: {failed:?}");
}

#[test]
fn a_model_without_the_parsers_outputs_is_refused_when_the_stage_is_built() {
    ensure_onnxruntime();
    let model = prepared("models/centerface.onnx");
    let ctx = BuildContext {
        stage_name: "faces".into(),
        replica: 0,
        base_dir: repo_root(),
        sources: vec!["cam0".into()],
        resume: None,
        peers: Default::default(),
    };
    for (parser, needle) in [
        ("{ type = 'instance-segmentation' }", "output0"),
        ("{ type = 'semantic-segmentation', output = '537' }", ""),
        ("{ type = 'classifier' }", "set parser.output"),
        ("{ type = 'centerface', landmarks_output = 'lms' }", "lms"),
    ] {
        let table: toml::Table = toml::from_str(&format!(
            "kind = 'infer'\nmodel = '{}'\nparser = {parser}\n[preprocess]\nwidth = 640\nheight = 480",
            model.display()
        ))
        .unwrap();
        let result = (vidmesh_actors::infer::KIND.build)(&table, &ctx);
        if needle.is_empty() {
            // A [N, 1, h, w] heatmap reads as a one-class score map: accepted.
            assert!(result.is_ok(), "{parser}: {:?}", result.err());
        } else {
            let err = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains(needle),
                "{parser}: `{err}` should name `{needle}`"
            );
        }
    }
}
