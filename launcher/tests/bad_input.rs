//! Bad input gives one clear error line naming the problem and the culprit, and a non-zero
//! exit — and loses nothing that was already accepted.

use std::path::Path;
use std::process::{Command, Output};

use vidmesh_tests::{count_frames, ensure_onnxruntime, make_clip, model, repo_root};

/// A small pipeline: source → mux → osd → sink, plus native metadata, no model needed.
fn plain_topology(dir: &Path, uri: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "bad-input"
links = [["sources", "mux"], ["mux", "out"], ["mux", "meta"]]

[[source]]
id = "cam0"
uri = "{uri}"
timeout = "3s"

[stage]
mux = {{ kind = "mux", batch_size = 2 }}
out = {{ kind = "sink", uri = "file://{dir}/out.mp4" }}
meta = {{ kind = "broker", uri = "file://{dir}/meta.jsonl", schema = "native" }}
"#,
        dir = dir.display()
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn vidmesh(args: &[&str]) -> Output {
    ensure_onnxruntime();
    Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args(args)
        .output()
        .expect("vidmesh runs")
}

/// Runs the plain topology on a local file, without progress lines.
fn run_on_clip(dir: &Path, clip: &Path) -> Output {
    let topology = plain_topology(dir, &format!("file://{}", clip.display()));
    vidmesh(&["run", "--progress", "0s", topology.to_str().unwrap()])
}

/// The `error:` lines of stderr; asserts there is exactly one and the run failed.
fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    errors[0].to_string()
}

fn frames_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn missing_file_is_named_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let topo = plain_topology(dir.path(), "file:///no/such/dir/clip.mp4");
    let out = vidmesh(&["run", topo.to_str().unwrap()]);
    let line = one_error_line(&out);
    assert!(
        line.contains("topology.toml:6:1")
            && line.contains("/no/such/dir/clip.mp4")
            && line.contains("does not exist"),
        "{line}"
    );
    assert!(!dir.path().join("out.mp4").exists(), "nothing starts");
}

#[test]
fn corrupt_file_names_the_source_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("corrupt.mp4");
    // Deterministic junk that no demuxer accepts.
    let junk: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&clip, junk).unwrap();
    let out = run_on_clip(dir.path(), &clip);
    let line = one_error_line(&out);
    assert!(
        line.contains("source `cam0`") && line.contains("corrupt.mp4"),
        "{line}"
    );
}

#[test]
fn truncated_file_delivers_the_frames_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.mp4");
    make_clip(&whole, 120, 320, 240, true);
    let bytes = std::fs::read(&whole).unwrap();
    let clip = dir.path().join("truncated.mp4");
    std::fs::write(&clip, &bytes[..bytes.len() * 6 / 10]).unwrap();

    let out = run_on_clip(dir.path(), &clip);
    let line = one_error_line(&out);
    assert!(
        line.contains("source `cam0`") && line.contains("truncated.mp4"),
        "{line}"
    );
    let delivered = frames_in(&dir.path().join("meta.jsonl"));
    assert!(
        (30..120).contains(&delivered),
        "frames before the damage reach the sinks: {delivered}"
    );
    // The video file was finalised with every frame that arrived.
    assert_eq!(
        count_frames(&dir.path().join("out.mp4")),
        delivered,
        "out.mp4 holds every delivered frame"
    );
}

#[test]
fn unreachable_rtsp_names_the_source_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let topo = plain_topology(dir.path(), "rtsp://admin:hunter2@127.0.0.1:9/stream");
    let out = vidmesh(&["run", "--progress", "0s", topo.to_str().unwrap()]);
    let line = one_error_line(&out);
    assert!(
        line.contains("source `cam0`") && line.contains("rtsp://admin:***@127.0.0.1:9/stream"),
        "{line}"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "the password leaked:\n{all}");
}

#[test]
fn model_input_shape_mismatch_names_model_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 8, 320, 240, false);
    let text = std::fs::read_to_string(repo_root().join("topologies/demo.toml"))
        .unwrap()
        .replace(
            "file://data/vtest.avi",
            &format!("file://{}", clip.display()),
        )
        .replace("file://out/", &format!("file://{}/", dir.path().display()))
        .replace("width = 300\nheight = 300", "width = 224\nheight = 224");
    let topo = dir.path().join("shape.toml");
    std::fs::write(&topo, text).unwrap();
    model();
    let out = vidmesh(&["run", "--progress", "0s", topo.to_str().unwrap()]);
    let line = one_error_line(&out);
    assert!(
        line.contains("stage `detect` (infer)") && line.contains("ssdlite_person.onnx"),
        "{line}"
    );
    assert!(
        line.contains("[N,300,300,3]") && line.contains("224, 224"),
        "{line}"
    );
}

#[test]
fn malformed_topology_points_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("broken.toml");
    std::fs::write(
        &topo,
        "[pipeline]\nname = \"x\"\nlinks = [[\"sources\", \"a\"]\n",
    )
    .unwrap();
    let out = vidmesh(&["validate", topo.to_str().unwrap()]);
    let line = one_error_line(&out);
    assert!(line.contains("broken.toml:3:"), "{line}");
}

#[test]
fn every_example_topology_validates() {
    for entry in std::fs::read_dir(repo_root().join("topologies"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = vidmesh(&["validate", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
