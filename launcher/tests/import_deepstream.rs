//! `vidmesh import-deepstream` on the deepstream-app configs in tests/deepstream/: each converts
//! with the report a DeepStream user needs, the topology validates, and it runs on the demo clip
//! and writes the MP4 files the config asks for (the Kafka one is validated only: it needs a
//! broker). docs/IMPORT.md describes the mapping.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vidmesh_tests::{
    count_frames, ensure_onnxruntime, first_frames, model, prepared, repo_root, venv_python,
};

fn vidmesh(dir: &Path, args: &[&str]) -> Output {
    ensure_onnxruntime();
    Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("vidmesh runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Converts `config` into `dir/t.toml`; returns the topology's path and the report.
fn import(config: &Path, dir: &Path) -> (PathBuf, String) {
    let topology = dir.join("t.toml");
    let out = vidmesh(
        dir,
        &[
            "import-deepstream",
            config.to_str().unwrap(),
            "-o",
            topology.to_str().unwrap(),
        ],
    );
    let report = text(&out.stderr);
    assert!(
        out.status.success(),
        "import of {} failed:\n{report}",
        config.display()
    );
    assert!(out.stdout.is_empty(), "with -o nothing goes to stdout");
    assert!(
        report.contains(&format!("-> {}: valid (", topology.display())),
        "{report}"
    );
    assert!(!report.contains("panicked"), "{report}");
    (topology, report)
}

/// `vidmesh validate` on the converted topology, from another directory than the import's.
fn validate(topology: &Path) -> String {
    let out = vidmesh(&repo_root(), &["validate", topology.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "validate failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `vidmesh run` in `dir` (where relative outputs land), returning the summary JSON.
fn run(topology: &Path, dir: &Path) -> serde_json::Value {
    let summary = dir.join("summary.json");
    let out = vidmesh(
        dir,
        &[
            "run",
            "--progress",
            "0s",
            "--summary-json",
            summary.to_str().unwrap(),
            topology.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "run failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap()
}

/// A stage's fact from the run summary, e.g. ("detect", "objects").
fn fact(summary: &serde_json::Value, stage: &str, key: &str) -> String {
    let stage = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage} in {summary}"));
    stage["facts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == key)
        .and_then(|f| f[1].as_str())
        .unwrap_or_else(|| panic!("no fact {key} in {stage}"))
        .to_string()
}

/// Asserts each expected report line is there.
fn assert_reported(report: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            report.lines().any(|l| l.starts_with(line)),
            "missing report line `{line}…` in:\n{report}"
        );
    }
}

fn sample(name: &str) -> PathBuf {
    repo_root().join("tests/deepstream").join(name)
}

#[test]
fn the_single_source_sample_runs_on_the_demo_clip() {
    let clip = prepared("data/vtest.avi");
    model();
    let dir = tempfile::tempdir().unwrap();
    let (topology, report) = import(&sample("source1_file_dec_infer_ssdlite.txt"), dir.path());
    assert_reported(
        &report,
        &[
            "[streammux] width=768 height=576: approximate",
            "[primary-gie] config_infer_primary_ssdlite.txt network-mode=2 (FP16): approximate",
            "[osd] font=Serif: approximate",
            "[source0] gpu-id, cudadec-memtype: ignored",
        ],
    );
    assert!(
        !report.contains("[property] interval=0"),
        "keys the [primary-gie] group overrides are not reported:\n{report}"
    );
    let toml = std::fs::read_to_string(&topology).unwrap();
    assert!(toml.contains(&format!(
        "uri = \"file://{}\"",
        clip.canonicalize().unwrap().display()
    )));
    assert!(validate(&topology).contains("ok (1 sources, 5 stages, 5 links)"));

    let summary = run(&topology, dir.path());
    let frames = count_frames(&clip);
    assert_eq!(summary["frames"], frames as u64);
    let objects: u64 = fact(&summary, "detect", "objects").parse().unwrap();
    assert!(
        objects > frames as u64,
        "the street has people in most frames: {objects} objects"
    );
    // The relative output-file lands in the directory vidmesh ran in, as with deepstream-app.
    let mp4 = dir.path().join("out_source1.mp4");
    assert_eq!(count_frames(&mp4), frames, "{}", mp4.display());
}

#[test]
fn the_four_source_sample_runs_tiled_into_one_file() {
    // The sample unchanged, in a scratch tree whose data/vtest.avi is the demo clip's first
    // frames (four streams of the whole clip take minutes on a CPU in a debug build).
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let configs = root.join("tests/deepstream");
    std::fs::create_dir_all(&configs).unwrap();
    for entry in std::fs::read_dir(repo_root().join("tests/deepstream")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), configs.join(entry.file_name())).unwrap();
    }
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::os::unix::fs::symlink(model(), root.join("models/ssdlite_person.onnx")).unwrap();
    // The two secondary classifiers are not shipped: stand-ins of the configs' shapes (input
    // size, colour order, labels) from scripts/model/make_colour_classifier.py.
    for (name, width, height, labels, bgr) in [
        (
            "person_bag_classifier",
            64,
            128,
            "labels_person_attributes.txt",
            true,
        ),
        (
            "person_apparel_classifier",
            224,
            224,
            "labels_person_apparel.txt",
            false,
        ),
    ] {
        let labels = std::fs::read_to_string(configs.join(labels)).unwrap();
        let mut make = Command::new(venv_python());
        make.arg(repo_root().join("scripts/model/make_colour_classifier.py"))
            .arg(root.join(format!("models/{name}.onnx")))
            .args([
                "--width",
                &width.to_string(),
                "--height",
                &height.to_string(),
            ])
            .args(["--labels", labels.trim()]);
        if bgr {
            make.arg("--bgr");
        }
        let out = make.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    std::fs::create_dir_all(root.join("data")).unwrap();
    let clip = root.join("data/vtest.avi");
    first_frames(&prepared("data/vtest.avi"), 40, &clip);
    let frames = count_frames(&clip);
    assert!((30..=50).contains(&frames), "{frames} frames");

    let out_dir = root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let (topology, report) = import(
        &configs.join("source4_dec_infer_ssdlite_tracker_sgie_tiled_display.txt"),
        &out_dir,
    );
    assert_reported(
        &report,
        &[
            "[sink0] type=2 (EGL display): not mapped",
            "[secondary-gie0] config_infer_secondary_person_bag.txt classifier-async-mode=1: approximate",
            "[secondary-gie1] config_infer_secondary_person_apparel.txt network-mode=1 (INT8): approximate",
            "[tracker] libnvds_nvmultiobjecttracker.so + config_tracker_NvDCF_perf.yml (NvDCF): approximate",
            "[tracker] tracker-width=640 tracker-height=384: approximate",
        ],
    );
    assert!(
        !report.contains("[source1]"),
        "a disabled source is skipped silently:\n{report}"
    );
    let toml = std::fs::read_to_string(&topology).unwrap();
    assert!(toml.contains("algorithm = \"bytetrack\""), "{toml}");
    assert!(toml.contains("operate_on = \"detect\""), "{toml}");
    assert!(
        toml.contains("uri = \"rtsp://0.0.0.0:8554/ds-test\""),
        "{toml}"
    );
    assert!(toml.contains("[stage.tile]"), "{toml}");
    assert!(validate(&topology).contains("ok (4 sources, 10 stages, 10 links)"));

    let summary = run(&topology, &out_dir);
    assert_eq!(summary["frames"], 4 * frames as u64);
    let tracks: u64 = fact(&summary, "track", "tracks").parse().unwrap();
    assert!(tracks > 0, "people are tracked");
    // Both classifiers ran on person crops (the bag one only on crops of at least 32x64).
    for sgie in ["sgie0", "sgie1"] {
        let crops: u64 = fact(&summary, sgie, "inferred_images").parse().unwrap();
        assert!(crops > 0, "{sgie} classified no person");
    }
    // The tiler composes the four streams into one: one file, a picture per batch, so at
    // least as many pictures as each source has frames.
    let mp4 = out_dir.join("out_source4.mp4");
    let pictures = count_frames(&mp4);
    assert!(
        pictures >= frames,
        "{pictures} tiled pictures for {frames} frames per source"
    );
}

#[test]
fn the_test5_sample_converts_its_broker_and_analytics_and_validates() {
    prepared("data/vtest.avi");
    model();
    let dir = tempfile::tempdir().unwrap();
    let (topology, report) = import(&sample("test5_msgconv_kafka_nvdsanalytics.txt"), dir.path());
    assert_reported(
        &report,
        &[
            "[message-consumer0]: not mapped — vidmesh does not receive cloud-to-device messages",
            "[sink2] type=1 (fakesink): not mapped",
            "[sink1] msg-conv-payload-type=0 (full schema): approximate",
            "cfg_kafka.txt [message-broker] partition-key=sensor.id: approximate",
            "config_nvdsanalytics.txt [property] config-width=768 config-height=576: approximate",
            "config_nvdsanalytics.txt [line-crossing-stream-0] class-id=1: approximate",
            "msgconv_config.txt [place0] place-sub-field1..3, coordinate: approximate",
        ],
    );
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(&topology).unwrap()).unwrap();
    let broker = table["stage"]["sink1"].as_table().unwrap();
    assert_eq!(broker["kind"].as_str(), Some("broker"));
    assert_eq!(
        broker["uri"].as_str(),
        Some("kafka://localhost:9092/people-events")
    );
    assert_eq!(broker["schema"].as_str(), Some("full"));
    assert_eq!(broker["frame_interval"].as_integer(), Some(10));
    assert_eq!(broker["timeout"].as_str(), Some("2000ms"));
    assert_eq!(broker["options"]["compression.type"].as_str(), Some("lz4"));
    let msgconv = dir.path().join("t.msgconv.toml");
    assert_eq!(broker["config"].as_str(), Some(msgconv.to_str().unwrap()));
    let converted: toml::Table =
        toml::from_str(&std::fs::read_to_string(&msgconv).unwrap()).unwrap();
    assert_eq!(
        converted["sensor"][1]["id"].as_str(),
        Some("STREET_CAM_EAST")
    );
    let analytics = table["stage"]["analytics"]["stream"].as_array().unwrap();
    assert_eq!(analytics.len(), 2);
    assert_eq!(analytics[0]["roi"][1]["max_objects"].as_integer(), Some(3));
    let links: Vec<(String, String)> = table["pipeline"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l[0].as_str().unwrap().to_string(),
                l[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (a, b) in [
        ("track", "analytics"),
        ("analytics", "osd"),
        ("osd", "sink0"),
        ("analytics", "sink1"),
    ] {
        assert!(
            links.contains(&(a.into(), b.into())),
            "{a} -> {b}: {links:?}"
        );
    }
    assert!(validate(&topology).contains("ok (2 sources, 8 stages, 8 links)"));
}

#[test]
fn to_standard_output_without_o() {
    let dir = tempfile::tempdir().unwrap();
    let out = vidmesh(
        dir.path(),
        &[
            "import-deepstream",
            sample("source1_file_dec_infer_ssdlite.txt")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let topology: toml::Table = toml::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(topology["stage"]["detect"]["kind"].as_str(), Some("infer"));
    assert!(text(&out.stderr).contains("-> <stdout>: valid ("));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn errors_name_the_file_and_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.txt");
    let cases = [
        (
            "[source0]\nenable=1\ntype=2\nuri=file://x.mp4\n[primary-gie]\nenable=1\nconfig-file=missing_infer.txt\n",
            format!("error: {}:7: [primary-gie] config-file=missing_infer.txt: cannot read ", config.display()),
        ),
        (
            "[streammux]\nbatch-size=4\nthis line is not a key\n",
            format!("error: {}:3: `this line is not a key` is not a group, a key=value pair or a comment", config.display()),
        ),
        (
            "[streammux]\nbatch-size=\u{1}\u{ff}\n",
            format!("error: {}:2: [streammux] batch-size: expected an integer", config.display()),
        ),
    ];
    for (body, want) in cases {
        std::fs::write(&config, body).unwrap();
        let out = vidmesh(
            dir.path(),
            &[
                "import-deepstream",
                config.to_str().unwrap(),
                "-o",
                "t.toml",
            ],
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{body}: {stderr}");
        assert!(stderr.starts_with(&want), "want `{want}…`, got:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Bytes that are not UTF-8.
    std::fs::write(&config, b"[streammux]\n\xff\xfe=1\n").unwrap();
    let out = vidmesh(dir.path(), &["import-deepstream", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with(&format!("error: {}:2: invalid UTF-8", config.display())),
        "{}",
        text(&out.stderr)
    );
    // A topology that converts but does not validate (its clip is missing) is written, and the
    // exit says why.
    std::fs::write(
        &config,
        "[source0]\nenable=1\ntype=2\nuri=file://no-such-clip.mp4\n",
    )
    .unwrap();
    let out = vidmesh(
        dir.path(),
        &[
            "import-deepstream",
            config.to_str().unwrap(),
            "-o",
            "t.toml",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not validate") && stderr.contains("no-such-clip.mp4"),
        "{stderr}"
    );
    assert!(dir.path().join("t.toml").exists());
}
