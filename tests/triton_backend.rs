//! `backend = "triton"` against a real Triton Inference Server (the `tritonserver` binary of the
//! PyPI package nvidia-pytriton, in .venv-triton from scripts/setup-triton) serving the demo
//! person detector: its detections equal ONNX Runtime's in-process ones on the same clip, and
//! a missing server, an unknown model and a server killed mid-run are clear errors.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vidmesh::{run, RunOptions, Topology};
use vidmesh_tests::{ensure_onnxruntime, model, prepared, read_native, repo_root, NativeFrame};

/// The name the server gives the model.
const MODEL_NAME: &str = "ssdlite_person";

/// A Triton server in its own process group (pytriton starts tritonserver and the Python
/// backend's stubs as children), killed as a whole when dropped.
struct TritonServer {
    child: Child,
    port: u16,
    _workspace: tempfile::TempDir,
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

impl TritonServer {
    fn start() -> Self {
        let python = prepared(".venv-triton/bin/python");
        let workspace = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(python)
            .current_dir(repo_root())
            .arg("tests/scripts/triton_server.py")
            .args(["--model".as_ref(), model().as_os_str()])
            .args(["--name", MODEL_NAME])
            .args(["--grpc-port", &port.to_string()])
            .args(["--http-port", &free_port().to_string()])
            .args(["--metrics-port", &free_port().to_string()])
            .arg("--workspace")
            .arg(workspace.path().join("triton"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("tests/scripts/triton_server.py starts");
        // tritonserver logs to the same stdout; the script's READY line says the model loaded.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = tx.send(());
                }
            }
        });
        let server = Self {
            child,
            port,
            _workspace: workspace,
        };
        if rx.recv_timeout(Duration::from_secs(180)).is_err() {
            panic!("the Triton server did not report READY within 180 s (its log is above)");
        }
        server
    }

    fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// SIGKILL to the whole group: the server dies as it would in a crash.
    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for TritonServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Source → mux → preprocess (the detector's own TF1 resize and scale) → detect → events.
/// `backend` is the detect stage's model and backend keys.
fn topology(dir: &Path, backend: &str, looping: bool) -> PathBuf {
    let clip = prepared("data/gt/people.mp4");
    let text = format!(
        r#"
[pipeline]
name = "triton-backend"
links = [["sources", "mux"], ["mux", "preprocess"], ["preprocess", "detect"], ["detect", "events"]]

[[source]]
id = "people"
uri = "file://{clip}"
loop = {looping}

[stage.mux]
kind = "mux"
batch_size = 4
batch_timeout = "40ms"

[stage.preprocess]
kind = "preprocess"
width = 300
height = 300
layout = "nhwc"
color_order = "rgb"
interpolation = "bilinear-tf1"
net_scale_factor = 0.00784313725490196
offsets = [127.5, 127.5, 127.5]

[stage.detect]
kind = "infer"
{backend}
labels = ["background", "person"]
score_threshold = 0.3
nms_iou = 0.45
parser = {{ type = "ssd", boxes_output = "boxes", scores_output = "scores", box_format = "yxyx", background_class = 0 }}

[stage.events]
kind = "broker"
uri = "file://{events}"
schema = "native"
"#,
        clip = clip.display(),
        events = dir.join("detections.jsonl").display(),
    );
    let path = dir.join("triton-backend.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn triton_keys(server: &str, model: &str) -> String {
    format!("model = \"{model}\"\nbackend = \"triton\"\nserver = \"{server}\"\nrequest_timeout = \"20s\"")
}

fn parse(path: &Path) -> Topology {
    let text = std::fs::read_to_string(path).unwrap();
    Topology::parse(path, &text, &repo_root()).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the topology; `Err` carries the build error or the summary's errors as text.
fn run_topology(path: &Path) -> Result<Vec<NativeFrame>, String> {
    let summary = run(
        &parse(path),
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| e.to_string())?;
    if !summary.errors.is_empty() {
        return Err(summary.errors.join("\n"));
    }
    Ok(read_native(&path.with_file_name("detections.jsonl")))
}

/// Same frames, same objects in the same order, boxes within 1 px, scores within 1e-3.
fn assert_same_detections(ours: &[NativeFrame], reference: &[NativeFrame]) -> usize {
    assert_eq!(ours.len(), reference.len(), "frame counts differ");
    let mut objects = 0;
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.frame_num, b.frame_num);
        assert_eq!(
            a.objects.len(),
            b.objects.len(),
            "frame {}: triton found {} objects, ort {}",
            a.frame_num,
            a.objects.len(),
            b.objects.len()
        );
        for (x, y) in a.objects.iter().zip(&b.objects) {
            let worst = x
                .bbox
                .corners()
                .iter()
                .zip(y.bbox.corners())
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1.0
                    && (x.confidence - y.confidence).abs() <= 1e-3
                    && x.class_id == y.class_id,
                "frame {}: triton {:?} score {} vs ort {:?} score {}",
                a.frame_num,
                x.bbox.corners(),
                x.confidence,
                y.bbox.corners(),
                y.confidence
            );
            objects += 1;
        }
    }
    objects
}

#[test]
fn detections_through_triton_equal_onnx_runtime_in_process() {
    ensure_onnxruntime();
    let server = TritonServer::start();

    let ort_dir = tempfile::tempdir().unwrap();
    let ort_keys = format!("model = \"{}\"", model().display());
    let reference = run_topology(&topology(ort_dir.path(), &ort_keys, false))
        .unwrap_or_else(|e| panic!("the ort run failed: {e}"));

    let triton_dir = tempfile::tempdir().unwrap();
    let keys = triton_keys(&server.url(), MODEL_NAME);
    let ours = run_topology(&topology(triton_dir.path(), &keys, false))
        .unwrap_or_else(|e| panic!("the triton run failed: {e}"));

    assert_eq!(reference.len(), 300, "every frame of the clip reported");
    let objects = assert_same_detections(&ours, &reference);
    assert!(
        objects > 300,
        "the clip has people in most frames; only {objects} objects found"
    );
}

#[test]
fn no_server_is_a_clear_error_before_any_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("grpc://127.0.0.1:{}", free_port());
    let path = topology(dir.path(), &triton_keys(&server, MODEL_NAME), false);
    let started = Instant::now();
    let error = run_topology(&path).expect_err("no server listens there");
    eprintln!("no server: {error}");
    assert!(
        error.contains("cannot reach inference server") && error.contains(&server),
        "{error}"
    );
    assert!(
        !dir.path().join("detections.jsonl").exists(),
        "no frame may have flowed"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
}

#[test]
fn an_unknown_model_is_a_clear_error_and_a_killed_server_stops_the_run() {
    let mut server = TritonServer::start();

    let dir = tempfile::tempdir().unwrap();
    let path = topology(
        dir.path(),
        &triton_keys(&server.url(), "no_such_model"),
        false,
    );
    let error = run_topology(&path).expect_err("the server has no such model");
    eprintln!("unknown model: {error}");
    assert!(
        error.contains("no_such_model")
            && error.contains(&server.url())
            && error.contains("NotFound"),
        "{error}"
    );
    assert!(!dir.path().join("detections.jsonl").exists());

    // An endless (looping) source: only the backend's failure can end this run.
    let dir = tempfile::tempdir().unwrap();
    let path = topology(dir.path(), &triton_keys(&server.url(), MODEL_NAME), true);
    let topology = parse(&path);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stopper = stop.clone();
    std::thread::spawn(move || {
        let _ = tx.send(run(&topology, &RunOptions::default(), stopper));
    });
    let events = dir.path().join("detections.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&events).map_or(0, |t| t.lines().count()) < 20 {
        assert!(Instant::now() < deadline, "no detections within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();
    let result = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!("the run went on for 120 s after the server died")
        });
    let summary = result.unwrap_or_else(|e| panic!("{e}"));
    let errors = summary.errors.join("\n");
    eprintln!("killed server: {errors}");
    assert!(
        errors.contains(&server.url()) && errors.contains("inference on model `ssdlite_person`"),
        "the error names the server: {errors}"
    );
}
