//! `backend = "triton"` against a real Triton Inference Server (the `tritonserver` binary of the
//! PyPI package nvidia-pytriton, in .venv-triton from scripts/setup-triton) serving the demo
//! person detector: its detections equal ONNX Runtime's in-process ones on the same clip, and
//! a missing server, an unknown model and a server killed mid-run are clear errors.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vidmesh::{run, RunOptions, Topology};
use vidmesh_tests::{
    ensure_onnxruntime, first_frames, free_port, iou, model, prepared, read_native, repo_root,
    NativeFrame,
};

/// The name the server gives the model.
const MODEL_NAME: &str = "ssdlite_person";

/// A Triton server in its own process group (pytriton starts tritonserver and the Python
/// backend's stubs as children), killed as a whole when dropped.
struct TritonServer {
    child: Child,
    port: u16,
    /// "grpcs" when it serves gRPC over TLS.
    scheme: &'static str,
    _workspace: tempfile::TempDir,
}

/// The same model, served with its outputs converted to FP16.
const FP16_MODEL_NAME: &str = "people_fp16";

impl TritonServer {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With `extra` arguments for tests/scripts/triton_server.py.
    fn start_with(extra: &[String]) -> Self {
        let python = prepared(".venv-triton/bin/python");
        let workspace = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(python)
            .current_dir(repo_root())
            .arg("tests/scripts/triton_server.py")
            .args(["--model".as_ref(), model().as_os_str()])
            .args(["--name", MODEL_NAME])
            .args(["--fp16-name", FP16_MODEL_NAME])
            .args(["--grpc-port", &port.to_string()])
            .args(["--http-port", &free_port().to_string()])
            .args(["--metrics-port", &free_port().to_string()])
            .arg("--workspace")
            .arg(workspace.path().join("triton"))
            .args(extra)
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
        let tls = extra.iter().any(|a| a == "--tls-dir");
        let server = Self {
            child,
            port,
            scheme: if tls { "grpcs" } else { "grpc" },
            _workspace: workspace,
        };
        if rx.recv_timeout(Duration::from_secs(180)).is_err() {
            panic!("the Triton server did not report READY within 180 s (its log is above)");
        }
        server
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
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

    // The same model with FP16 outputs: converted to f32, the detections agree within FP16's
    // precision. Where two anchors' scores nearly tie, rounding may let NMS keep the other one
    // (a box of the same person, overlapping less), and a score at the threshold may fall
    // either side: objects are matched by overlap.
    let fp16_dir = tempfile::tempdir().unwrap();
    let keys = triton_keys(&server.url(), FP16_MODEL_NAME);
    let half = run_topology(&topology(fp16_dir.path(), &keys, false))
        .unwrap_or_else(|e| panic!("the FP16 triton run failed: {e}"));
    assert_eq!(half.len(), reference.len());
    let (mut matched, mut same, mut total, mut worst) = (0, 0, 0, 0f32);
    for (a, b) in half.iter().zip(&reference) {
        for y in &b.objects {
            total += 1;
            let best = a
                .objects
                .iter()
                .map(|x| (iou(x.bbox.corners(), y.bbox.corners()), x))
                .max_by(|p, q| p.0.total_cmp(&q.0));
            let Some((overlap, x)) = best.filter(|(o, _)| *o > 0.5) else {
                continue;
            };
            matched += 1;
            if overlap > 0.97 {
                same += 1;
                worst = worst.max((x.confidence - y.confidence).abs());
            }
        }
    }
    eprintln!(
        "FP16 outputs: {matched} of {total} objects matched, {same} with IoU > 0.97 (worst score \
         difference {worst})"
    );
    assert!(matched * 100 >= total * 99, "{matched} of {total} matched");
    assert!(
        same * 100 >= total * 95,
        "{same} of {total} nearly identical"
    );
    assert!(worst < 2e-3, "scores differ by {worst}");
    let found: usize = half.iter().map(|f| f.objects.len()).sum();
    assert!(
        found.abs_diff(total) * 100 <= total,
        "{found} objects with FP16 outputs, {total} with FP32"
    );
    assert!(worst < 2e-3, "scores differ by {worst}");
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

/// A private CA, a server certificate for 127.0.0.1 and a client certificate it signed, made
/// with the openssl command line in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=vidmesh test CA",
    ]);
    for (name, extensions) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "subjectAltName=DNS:vidmesh-client\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        let (key, csr, cert, ext) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN=vidmesh {name}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ]);
    }
}

#[test]
fn grpcs_with_mutual_tls_runs_and_wrong_credentials_are_refused_before_any_frame() {
    ensure_onnxruntime();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = TritonServer::start_with(&[
        "--tls-dir".into(),
        certs.path().display().to_string(),
        "--mutual".into(),
    ]);
    let pem = |name: &str| certs.path().join(name).display().to_string();
    let keys = |url: &str, tls: &str| format!("{}\n{tls}", triton_keys(url, MODEL_NAME));
    let full = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        pem("ca.pem"),
        pem("client.pem"),
        pem("client-key.pem")
    );

    let dir = tempfile::tempdir().unwrap();
    let frames = run_topology(&topology(dir.path(), &keys(&server.url(), &full), false))
        .unwrap_or_else(|e| panic!("the grpcs run failed: {e}"));
    assert_eq!(frames.len(), 300);
    let objects: usize = frames.iter().map(|f| f.objects.len()).sum();
    assert!(objects > 300, "people found over TLS: {objects}");

    let plain = format!("grpc://127.0.0.1:{}", server.port);
    let cases = [
        (keys(&server.url(), ""), "the server's CA is not trusted"),
        (
            keys(
                &server.url(),
                &format!("tls = {{ ca = \"{}\" }}", pem("ca.pem")),
            ),
            "no client certificate for a server that wants one",
        ),
        (
            keys(
                &server.url(),
                &full.replace(" }", ", domain = \"triton.example\" }"),
            ),
            "the certificate does not name triton.example",
        ),
        (keys(&plain, ""), "plain gRPC to a TLS port"),
    ];
    for (backend, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let error = run_topology(&topology(dir.path(), &backend, false)).expect_err(why);
        eprintln!("{why}: {error}");
        assert!(
            error.contains(&format!("127.0.0.1:{}", server.port)),
            "{why}: {error}"
        );
        assert!(
            !dir.path().join("detections.jsonl").exists(),
            "{why}: frames flowed"
        );
    }
}

/// `source1_file_dec_infer_ssdlite.txt` (nvinfer) and its nvinferserver twin, imported with
/// `vidmesh import-deepstream` in a scratch copy of tests/deepstream whose clip is the demo
/// clip's first frames and whose nvinferserver config points at `server`; each topology gets a
/// broker stage writing the detector's objects. Returns (nvinfer, nvinferserver) topologies.
fn imported_pair(root: &Path, server: &TritonServer) -> (PathBuf, PathBuf) {
    let configs = root.join("tests/deepstream");
    std::fs::create_dir_all(&configs).unwrap();
    for entry in std::fs::read_dir(repo_root().join("tests/deepstream")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), configs.join(entry.file_name())).unwrap();
    }
    let server_config = configs.join("config_inferserver_primary_ssdlite.txt");
    let text = std::fs::read_to_string(&server_config).unwrap();
    assert!(text.contains("url: \"localhost:8001\""));
    let text = text.replace(
        "url: \"localhost:8001\"",
        &format!("url: \"127.0.0.1:{}\"", server.port),
    );
    // The same threshold as the nvinfer config's [class-attrs-all].
    let text = text.replace("confidence_threshold: 0.3", "confidence_threshold: 0.5");
    std::fs::write(&server_config, text).unwrap();
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::os::unix::fs::symlink(model(), root.join("models/ssdlite_person.onnx")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    first_frames(
        &prepared("data/vtest.avi"),
        40,
        &root.join("data/vtest.avi"),
    );

    let mut out = Vec::new();
    for (name, config) in [
        ("nvinfer", "source1_file_dec_infer_ssdlite.txt"),
        ("nvinferserver", "source1_file_dec_inferserver_ssdlite.txt"),
    ] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let imported = vidmesh::import::import_deepstream(&configs.join(config), None)
            .unwrap_or_else(|e| panic!("import of {config}: {e}"));
        let mut topology: toml::Table = toml::from_str(&imported.topology).unwrap();
        let links = topology["pipeline"]["links"].as_array_mut().unwrap();
        links.push(toml::Value::Array(vec!["detect".into(), "events".into()]));
        let mut events = toml::Table::new();
        events.insert("kind".into(), "broker".into());
        let uri = format!("file://{}", dir.join("detections.jsonl").display());
        events.insert("uri".into(), uri.into());
        events.insert("schema".into(), "native".into());
        let stages = topology["stage"].as_table_mut().unwrap();
        for (_, stage) in stages.iter_mut() {
            if stage["kind"].as_str() == Some("sink") {
                let mp4 = format!("file://{}", dir.join("out.mp4").display());
                stage
                    .as_table_mut()
                    .unwrap()
                    .insert("uri".into(), mp4.into());
            }
        }
        stages.insert("events".into(), events.into());
        let path = dir.join("triton-backend.toml");
        std::fs::write(&path, toml::to_string(&topology).unwrap()).unwrap();
        out.push(path);
    }
    (out[0].clone(), out[1].clone())
}

#[test]
fn an_imported_nvinferserver_config_detects_what_its_nvinfer_twin_does() {
    ensure_onnxruntime();
    let server = TritonServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let (nvinfer, nvinferserver) = imported_pair(scratch.path(), &server);
    let text = std::fs::read_to_string(&nvinferserver).unwrap();
    assert!(
        text.contains("backend = \"triton\"") && text.contains(&server.url()),
        "{text}"
    );
    let reference = run_topology(&nvinfer).unwrap_or_else(|e| panic!("nvinfer run: {e}"));
    let ours = run_topology(&nvinferserver).unwrap_or_else(|e| panic!("nvinferserver run: {e}"));
    assert!(
        (30..=50).contains(&reference.len()),
        "{} frames",
        reference.len()
    );
    let objects = assert_same_detections(&ours, &reference);
    assert!(
        objects > reference.len(),
        "people in most frames: {objects}"
    );
}
