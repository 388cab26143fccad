//! The live dashboard, as a user opens it: `vidmesh run --dashboard` checked in a real headless
//! Chromium (graph, numbers that update, a preview thumbnail, charts, a screenshot), and
//! `vidmesh launch --dashboard` checked through its JSON, previews and merged metrics while the
//! stages run as separate processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vidmesh::http;
use vidmesh_tests::{ensure_onnxruntime, model, repo_root, topology_in, venv_python};

/// The README demo on the street video, its sink paced in real time so that the pipeline runs
/// long enough to be watched; outputs in `dir`.
fn demo(dir: &Path, name: &str) -> PathBuf {
    ensure_onnxruntime();
    model();
    let renamed = format!("name = \"{name}\"");
    topology_in(
        "demo.toml",
        dir,
        &[
            ("name = \"people-count\"", renamed.as_str()),
            ("kind = \"sink\"", "kind = \"sink\"\nsync = true"),
        ],
    )
}

/// Starts `vidmesh ARGS… --dashboard 127.0.0.1:0` and returns it with the dashboard's address
/// (read from its "dashboard: http://…/" line) and the rest of its output as it comes.
// The child is handed to the caller, which waits for it (`interrupt_and_wait`).
#[allow(clippy::zombie_processes)]
fn start(args: &[&str], topology: &Path) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args(args)
        .args(["--progress", "0s", "--dashboard", "127.0.0.1:0"])
        .arg(topology)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vidmesh starts");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(url) = line.strip_prefix("dashboard: http://") {
            let addr = url.trim_end_matches('/').parse().expect("an address");
            return (child, addr, rx);
        }
        seen.push(line);
    }
    let _ = child.kill();
    panic!(
        "no dashboard address announced; output:\n{}",
        seen.join("\n")
    );
}

/// Ctrl-C: sources stop, the pipeline drains; returns whether it exited successfully and the
/// rest of its output.
fn interrupt_and_wait(mut child: Child, rest: mpsc::Receiver<String>) -> (bool, String) {
    // SAFETY: signalling a process we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output: Vec<String> = rest.try_iter().collect();
    (status.is_some_and(|s| s.success()), output.join("\n"))
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http::get(addr, path, Duration::from_secs(5), 16 << 20).unwrap();
    assert_eq!(status, 200, "{path}");
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn run_dashboard_works_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let topology = demo(dir.path(), "dash-run");
    let (child, addr, rest) = start(&["run"], &topology);
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-run.png");
    let _ = std::fs::remove_file(&screenshot);
    let check = Command::new(venv_python())
        .arg(repo_root().join("tests/scripts/dashboard_check.py"))
        .arg(format!("http://{addr}/"))
        .arg(&screenshot)
        // One source and seven stages.
        .arg("8")
        .output()
        .expect("python runs");
    let state = get_json(addr, "/api/state");
    let (status, metrics) = http::get(addr, "/metrics", Duration::from_secs(5), 16 << 20).unwrap();
    let (ok, output) = interrupt_and_wait(child, rest);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    for stage in ["source.street", "mux", "detect", "osd", "events"] {
        assert!(
            metrics.contains(&format!(
                "vidmesh_frames_total{{stage=\"{stage}\",replica=\"0\"}}"
            )),
            "no frames of {stage} in /metrics:\n{metrics}"
        );
    }
    assert!(metrics.contains("vidmesh_latency_seconds_bucket{stage=\"detect\""));
    assert!(metrics.contains("vidmesh_inbox_depth{stage=\"detect\"}"));
    // The official client's parser reads it, and the names follow Prometheus conventions.
    let scraped = dir.path().join("metrics.txt");
    std::fs::write(&scraped, &metrics).unwrap();
    let parsed = Command::new(venv_python())
        .arg(repo_root().join("tests/scripts/check_metrics.py"))
        .arg(&scraped)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families = String::from_utf8_lossy(&parsed.stdout);
    for family in [
        "vidmesh_frames_total",
        "vidmesh_latency_seconds",
        "vidmesh_fps",
    ] {
        assert!(families.contains(family), "{families}");
    }
    assert!(
        check.status.success(),
        "browser check failed:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&check.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    eprintln!("browser saw: {seen}\nscreenshot: {}", screenshot.display());
    assert_eq!(seen["nodes"], 8);
    assert!(seen["fps"].as_f64().unwrap() > 0.0);
    assert!(seen["later_sample"].as_u64() > seen["first_sample"].as_u64());
    assert_eq!(
        seen["preview_width"], 320,
        "vtest.avi is 768 px wide: 320 px thumbnails"
    );
    assert_eq!(seen["stream_status"], "running");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );

    assert_eq!(state["pipeline"], "dash-run");
    assert_eq!(state["mode"], "run");
    let detect = state["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "detect")
        .unwrap();
    assert!(detect["frames"].as_u64().unwrap() > 0, "{detect}");
    assert!(detect["latency_ms"].as_f64().unwrap() > 0.0, "{detect}");
    assert!(ok, "the run did not end cleanly after Ctrl-C:\n{output}");
}

#[test]
fn launch_dashboard_shows_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let topology = demo(dir.path(), "dash-launch");
    let state_dir = dir.path().join("state");
    let (child, addr, rest) = start(
        &["launch", "--state-dir", state_dir.to_str().unwrap()],
        &topology,
    );
    // Wait until every stage has processed frames and a preview came from the OSD process.
    let deadline = Instant::now() + Duration::from_secs(180);
    let state = loop {
        let state = get_json(addr, "/api/state");
        let stages = state["stages"].as_array().unwrap();
        let all_moving = stages.iter().all(|s| s["frames"].as_u64() > Some(0));
        let preview = state["streams"][0]["preview_frame"].as_u64().is_some();
        if all_moving && preview && stages.iter().any(|s| s["fps"].as_f64() > Some(0.0)) {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed a moving pipeline: {state}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(state["mode"], "launch");
    assert_eq!(state["graph"]["nodes"].as_array().unwrap().len(), 8);
    assert!(state["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["up"] == 1 && s["health"] != "down"));
    assert_eq!(state["streams"][0]["status"], "running");
    let (status, jpeg) =
        http::get(addr, "/preview/0.jpg", Duration::from_secs(5), 4 << 20).unwrap();
    assert_eq!(status, 200);
    assert!(jpeg.starts_with(&[0xFF, 0xD8]), "a JPEG");
    let (status, metrics) = http::get(addr, "/metrics", Duration::from_secs(5), 16 << 20).unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    for stage in [
        "mux",
        "preprocess",
        "detect",
        "track",
        "osd",
        "out",
        "events",
    ] {
        assert!(
            metrics.contains(&format!(
                "vidmesh_frames_total{{stage=\"{stage}\",replica=\"0\""
            )),
            "no frames of {stage} in the merged metrics"
        );
    }
    let (ok, output) = interrupt_and_wait(child, rest);
    assert!(ok, "the launch did not end cleanly after Ctrl-C:\n{output}");
}
