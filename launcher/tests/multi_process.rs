//! `vidmesh launch`: one process per stage gives the same metadata as one process, and a stage
//! killed with SIGKILL mid-stream loses no frame — every frame of the clip appears in the final
//! metadata exactly once after deduplication, and the output video has every frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmesh::{run, RunOptions, Topology};
use vidmesh_tests::{
    count_frames, ensure_onnxruntime, model, prepared, read_native, repo_root, same_objects,
    topology_in, NativeFrame,
};

const FRAMES: u64 = 300;

/// The ground-truth topology, outputs in `dir`, under its own pipeline name (launches of
/// different tests must not share shared-memory segment names).
fn topology(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    ensure_onnxruntime();
    model();
    prepared("data/gt/people.mp4");
    let renamed = format!("name = \"{name}\"");
    let mut all = vec![("name = \"ground-truth\"", renamed.as_str())];
    all.extend_from_slice(edits);
    topology_in("ground-truth.toml", dir, &all)
}

fn events(dir: &Path) -> PathBuf {
    dir.join("gt/detections.jsonl")
}

/// Metadata of a reference run in this process.
fn reference() -> &'static Vec<NativeFrame> {
    static REFERENCE: std::sync::OnceLock<Vec<NativeFrame>> = std::sync::OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = topology(dir.path(), "mp-reference", &[]);
        let text = std::fs::read_to_string(&path).unwrap();
        let t = Topology::parse(&path, &text, &repo_root()).unwrap();
        let summary = run(&t, &RunOptions::default(), Arc::new(AtomicBool::new(false))).unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        read_native(&events(dir.path()))
    })
}

fn launch(dir: &Path, topology: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args(["launch", "--progress", "0s", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--summary-json")
        .arg(dir.join("summary.json"))
        .arg(topology)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vidmesh launch starts")
}

/// Waits for the launcher; returns (success, stdout + stderr).
fn wait(child: Child, limit: Duration) -> (bool, String) {
    let started = Instant::now();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: signalling a process we spawned; harmless if it already exited.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("launcher output");
    drop(watchdog);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < limit,
        "the launch did not finish within {limit:?}:\n{text}"
    );
    (out.status.success(), text)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Kills `instance`/`replica` of a running launch once `events` has at least `after` lines.
fn kill_when(dir: &Path, instance: &str, replica: u32, after: usize) {
    let started = Instant::now();
    while lines(&events(dir)) < after {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid_file = dir.join("state").join(format!("{instance}-{replica}.pid"));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap();
    // SAFETY: the pid is a child of the launcher we started, alive mid-stream.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill {instance}"
    );
}

/// Frames by number after deduplication; repeated frames must be identical.
fn deduplicated(frames: Vec<NativeFrame>) -> BTreeMap<u64, NativeFrame> {
    let mut by_number: BTreeMap<u64, NativeFrame> = BTreeMap::new();
    for f in frames {
        if let Some(first) = by_number.get(&f.frame_num) {
            same_objects(first, &f, "a re-sent copy");
        } else {
            by_number.insert(f.frame_num, f);
        }
    }
    by_number
}

/// Every frame exactly once after deduplication, equal to the one-process run, and the video
/// holds every frame.
fn assert_complete(dir: &Path) {
    let frames = deduplicated(read_native(&events(dir)));
    let numbers: Vec<u64> = frames.keys().copied().collect();
    assert_eq!(
        numbers,
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame's metadata, once"
    );
    for (want, got) in reference().iter().zip(frames.values()) {
        same_objects(want, got, "the launched pipeline vs one process");
    }
    assert_eq!(
        count_frames(&dir.join("gt/annotated.mp4")) as u64,
        FRAMES,
        "the annotated video holds every frame"
    );
}

#[test]
fn one_process_per_stage_gives_the_same_metadata_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology(dir.path(), "mp-same", &[]);
    let (ok, log) = wait(launch(dir.path(), &path), Duration::from_secs(240));
    assert!(ok, "{log}");
    assert_complete(dir.path());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["frames"], FRAMES);
    assert_eq!(summary["stages"].as_array().unwrap().len(), 7, "{summary}");
}

fn survives_kill(instance: &str, after: usize) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("mp-kill-{}", instance.replace('.', "-"));
    let path = topology(dir.path(), &name, &[]);
    let child = launch(dir.path(), &path);
    kill_when(dir.path(), instance, 0, after);
    let (ok, log) = wait(child, Duration::from_secs(300));
    assert!(ok, "{log}");
    assert!(
        log.contains(&format!("{instance}/0 was killed by signal 9; restarting")),
        "the launcher restarts it:\n{log}"
    );
    assert_complete(dir.path());
}

#[test]
fn sigkill_of_the_source_loses_no_frame() {
    survives_kill("source.people", 30);
}

#[test]
fn sigkill_of_the_detector_loses_no_frame() {
    survives_kill("detect", 60);
}

#[test]
fn sigkill_of_the_tracker_loses_no_frame_and_keeps_track_ids() {
    survives_kill("track", 90);
}

#[test]
fn sigkill_of_the_osd_loses_no_frame() {
    survives_kill("osd", 60);
}

#[test]
fn sigkill_of_the_broker_loses_no_frame() {
    survives_kill("events", 120);
}

#[test]
fn a_detector_replica_killed_for_good_leaves_its_frames_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology(
        dir.path(),
        "mp-replicas",
        &[(
            "[stage.detect]\nkind = \"infer\"",
            "[stage.detect]\nkind = \"infer\"\nreplicas = 2\nmax_restarts = 0",
        )],
    );
    let child = launch(dir.path(), &path);
    kill_when(dir.path(), "detect", 1, 60);
    let (ok, log) = wait(child, Duration::from_secs(300));
    assert!(!ok, "a replica that was given up on is reported");
    assert!(
        log.contains("detect/1 was killed by signal 9; giving up after 0 restart(s)"),
        "{log}"
    );
    assert_complete(dir.path());
}

/// Resident memory of a process in bytes (0 once it is gone).
fn rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn frames_total(state: &Path, instance: &str) -> Option<f64> {
    let addr = std::fs::read_to_string(state.join(format!("{instance}-0.metrics"))).ok()?;
    let samples =
        vidmesh::prometheus::scrape(addr.trim().parse().ok()?, Duration::from_secs(1)).ok()?;
    samples
        .iter()
        .find(|s| s.name == "vidmesh_frames_total")
        .map(|s| s.value)
}

#[test]
fn a_slow_sink_slows_the_source_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology(
        dir.path(),
        "mp-slow-sink",
        &[("kind = \"sink\"", "kind = \"sink\"\nsync = true")],
    );
    let mut child = launch(dir.path(), &path);
    let state = dir.path().join("state");
    let (mut peak_rss, mut peak_gap, mut samples) = (0u64, 0f64, 0);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(300), "no end");
        std::thread::sleep(Duration::from_millis(200));
        for entry in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name
                .strip_suffix(".pid")
                .and_then(|_| std::fs::read_to_string(entry.path()).ok())
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                peak_rss = peak_rss.max(rss(pid));
            }
        }
        if let (Some(decoded), Some(written)) = (
            frames_total(&state, "source.people"),
            frames_total(&state, "out"),
        ) {
            peak_gap = peak_gap.max(decoded - written);
            samples += 1;
        }
    }
    let (ok, log) = wait(child, Duration::from_secs(10));
    assert!(ok, "{log}");
    assert_complete(dir.path());
    eprintln!(
        "slow sink: {samples} samples, at most {peak_gap} frames between the source and the sink, largest process {} MiB",
        peak_rss >> 20
    );
    assert!(
        samples >= 10,
        "the run was long enough to watch ({samples} samples)"
    );
    // A source is at most 16 deliveries (4 × the link queue of 4) ahead of what the whole
    // pipeline finished, because acknowledgements come back only when frames are done.
    assert!(
        peak_gap <= 24.0,
        "the source ran {peak_gap} frames ahead of the sink"
    );
    // 300 frames of 1280×720 RGB queued anywhere would be 830 MB.
    assert!(
        peak_rss < 400 << 20,
        "a process grew to {} MiB",
        peak_rss >> 20
    );
}

#[test]
fn interrupting_the_launcher_stops_the_source_and_drains_what_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology(dir.path(), "mp-interrupt", &[]);
    let child = launch(dir.path(), &path);
    while lines(&events(dir.path())) < 40 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (ok, log) = wait(child, Duration::from_secs(120));
    assert!(ok, "{log}");
    assert!(log.contains("stopping the sources"), "{log}");
    let frames = deduplicated(read_native(&events(dir.path())));
    let n = frames.len() as u64;
    assert!((40..FRAMES).contains(&n), "stopped early, after {n} frames");
    assert_eq!(
        frames.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "every frame the source delivered before stopping reached the end"
    );
    assert_eq!(
        count_frames(&dir.path().join("gt/annotated.mp4")) as u64,
        n,
        "and the video was finalised with them"
    );
}

#[test]
fn a_stage_placed_on_another_host_joins_through_its_router_with_raw_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology(dir.path(), "mp-hosts", &[]);
    let port = vidmesh_tests::free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[hosts]\nother = {{ zenoh = \"{endpoint}\" }}\n\n[placement]\ndetect = {{ host = \"other\" }}\n"
    ));
    std::fs::write(&path, text).unwrap();
    // "The other host": the detector started by hand, listening where [hosts] says.
    let remote = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args([
            "stage",
            "--stage",
            "detect",
            "--listen",
            &endpoint,
            "--topology",
        ])
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.path().join("remote-state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, log) = wait(launch(dir.path(), &path), Duration::from_secs(240));
    assert!(ok, "{log}");
    assert!(
        log.contains("`detect` replica 0 is placed on host `other`"),
        "{log}"
    );
    let (remote_ok, remote_log) = wait(remote, Duration::from_secs(30));
    assert!(remote_ok, "{remote_log}");
    assert_complete(dir.path());
}

/// (source id, frame number) → objects as (track id, box corners), from native JSON lines.
type Objects = Vec<(Option<u64>, [f32; 4])>;

fn by_source_and_frame(path: &Path) -> BTreeMap<(u64, u64), Objects> {
    let mut out: BTreeMap<(u64, u64), Objects> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["source_id"].as_u64().unwrap(),
            v["frame_num"].as_u64().unwrap(),
        );
        let objects: Objects = v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let b = &o["bbox"];
                let (l, t) = (b["left"].as_f64().unwrap(), b["top"].as_f64().unwrap());
                let (w, h) = (b["width"].as_f64().unwrap(), b["height"].as_f64().unwrap());
                (
                    o["track_id"].as_u64(),
                    [l as f32, t as f32, (l + w) as f32, (t + h) as f32],
                )
            })
            .collect();
        if let Some(first) = out.get(&key) {
            assert_eq!(
                first.len(),
                objects.len(),
                "{key:?}: a re-sent copy differs"
            );
        } else {
            out.insert(key, objects);
        }
    }
    out
}

#[test]
fn a_tracker_replica_retired_mid_stream_hands_its_source_over_with_its_snapshot() {
    let two_sources = [
        (
            "[[source]]\nid = \"people\"\nuri = \"file://data/gt/people.mp4\"",
            "[[source]]\nid = \"a\"\nuri = \"file://data/gt/people.mp4\"\n\n[[source]]\nid = \"b\"\nuri = \"file://data/gt/people.mp4\"",
        ),
        ("gt/annotated.mp4", "gt/{source}.mp4"),
    ];
    // The same two-source pipeline in one process is the reference.
    let reference_dir = tempfile::tempdir().unwrap();
    let reference_path = topology(reference_dir.path(), "mp-adopt-reference", &two_sources);
    let text = std::fs::read_to_string(&reference_path).unwrap();
    let t = Topology::parse(&reference_path, &text, &repo_root()).unwrap();
    let summary = run(&t, &RunOptions::default(), Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let want = by_source_and_frame(&events(reference_dir.path()));
    assert_eq!(want.len() as u64, 2 * FRAMES);

    let dir = tempfile::tempdir().unwrap();
    let mut edits = two_sources.to_vec();
    edits.push((
        "[stage.track]\nkind = \"track\"",
        "[stage.track]\nkind = \"track\"\nreplicas = 2\nmax_restarts = 0",
    ));
    let path = topology(dir.path(), "mp-adopt", &edits);
    let child = launch(dir.path(), &path);
    kill_when(dir.path(), "track", 1, 160);
    let (ok, log) = wait(child, Duration::from_secs(300));
    assert!(!ok, "the retired replica is reported");
    assert!(
        log.contains("took over source 1 from replica 1 at frame"),
        "{log}"
    );
    let got = by_source_and_frame(&events(dir.path()));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "every frame of both sources, once"
    );
    for (key, objects) in &want {
        let other = &got[key];
        assert_eq!(objects.len(), other.len(), "{key:?}");
        for ((id_a, box_a), (id_b, box_b)) in objects.iter().zip(other) {
            assert_eq!(
                id_a, id_b,
                "{key:?}: track ids continue across the hand-over"
            );
            for (p, q) in box_a.iter().zip(box_b) {
                assert!((p - q).abs() < 1e-3, "{key:?}");
            }
        }
    }
}

#[test]
fn a_stage_that_keeps_failing_stops_the_pipeline_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.onnx");
    std::fs::write(&broken, b"not an onnx model").unwrap();
    let model_line = format!("model = \"{}\"\nmax_restarts = 1", broken.display());
    let path = topology(
        dir.path(),
        "mp-broken",
        &[(
            "model = \"models/ssdlite_person.onnx\"",
            model_line.as_str(),
        )],
    );
    let (ok, log) = wait(launch(dir.path(), &path), Duration::from_secs(120));
    assert!(!ok, "{log}");
    assert!(
        log.contains("detect/0 exited with code 1; giving up after 1 restart(s)")
            && log.contains("no replica of `detect` is left; stopping the pipeline"),
        "{log}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("detect/0") && e.contains("broken.onnx")),
        "the stage's own error is in the summary: {errors:?}"
    );
}
