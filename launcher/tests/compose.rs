//! `vidmesh compose` with real Docker: the compose demo topology runs as containers on two
//! Docker networks standing in for two hosts (source, mux and preprocess on `edge`; detector,
//! tracker, OSD, sinks on `core`; Kafka on a network of its own) and gives the same metadata
//! as one process; a detector container killed mid-run is restarted by its restart policy and
//! nothing is lost; the edge host cut off from the others for 10 s resumes without a crash;
//! the detector scaled from one to three containers mid-run shares the work; a tracker replica
//! stopped mid-run hands its stream to the other and takes it back when started again.
//!
//! The images come from `scripts/images` (a debootstrap rootfs, no registry), built once per
//! binary. Each test is its own compose project, removed with its volumes at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vidmesh::{run, RunOptions, Topology};
use vidmesh_tests::{
    compose_cli, count_frames, ensure_onnxruntime, model, prepared, read_native, repo_root,
    same_objects, stdout_of, venv_python, NativeFrame,
};

const FRAMES: u64 = 300;

/// The vidmesh image for this build of the binary.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/images"))
            .arg(env!("CARGO_BIN_EXE_vidmesh"))
            .output()
            .expect("scripts/images runs");
        assert!(
            out.status.success(),
            "scripts/images failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the image tag")
            .to_string()
    })
}

/// One compose deployment of the compose demo, its files under `out/<project>/` of the repo
/// (the project directory the containers mount), taken down with its volumes when dropped.
struct Deployment {
    project: String,
    dir: PathBuf,
    file: PathBuf,
}

impl Deployment {
    /// Writes the compose demo's topology reading the 300-frame ground-truth clip, with native
    /// metadata, then its compose file, and starts it.
    fn start(project: &str) -> Self {
        Self::start_with(project, "data/gt/people.mp4", &[])
    }

    /// The same on another clip, with `edits` to the topology's text.
    fn start_with(project: &str, clip: &str, edits: &[(&str, &str)]) -> Self {
        ensure_onnxruntime();
        model();
        prepared(clip);
        image();
        let dir = repo_root().join("out").join(project);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = compose_topology(project).replace("data/gt/people.mp4", clip);
        for (from, to) in edits {
            assert!(text.contains(from), "no `{from}` in the topology");
            text = text.replace(from, to);
        }
        std::fs::write(dir.join("topology.toml"), text).unwrap();
        let file = dir.join("docker-compose.yml");
        stdout_of(
            Command::new(env!("CARGO_BIN_EXE_vidmesh"))
                .current_dir(repo_root())
                .args(["compose", &format!("out/{project}/topology.toml"), "-o"])
                .arg(&file)
                .output()
                .unwrap(),
            "vidmesh compose",
        );
        let d = Deployment {
            project: project.to_string(),
            dir,
            file,
        };
        stdout_of(d.compose(&["up", "-d"]), "docker compose up");
        d
    }

    fn compose(&self, args: &[&str]) -> Output {
        let (program, first) = compose_cli();
        Command::new(program)
            .args(first)
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .env("VIDMESH_IMAGE", image())
            .output()
            .expect("docker compose runs")
    }

    /// The (first) container of `service`, by compose's labels (compose 1 and 2 name
    /// containers differently).
    fn container(&self, service: &str) -> String {
        let out = stdout_of(
            Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=com.docker.compose.project={}", self.project))
                .arg("--filter")
                .arg(format!("label=com.docker.compose.service={service}"))
                .output()
                .unwrap(),
            "docker ps",
        );
        out.split_whitespace()
            .last()
            .unwrap_or_else(|| panic!("no container for {service}:\n{}", self.logs()))
            .to_string()
    }

    /// Kills the process inside `service`'s container as a crash would (SIGKILL from outside
    /// Docker), so its restart policy applies; `docker kill` counts as an operator's stop.
    fn crash(&self, service: &str) {
        let init = self.inspect(service, "{{.State.Pid}}");
        let children = stdout_of(
            Command::new("pgrep").args(["-P", &init]).output().unwrap(),
            "pgrep",
        );
        let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
        // SAFETY: signalling the stage process of a container this test started.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill {service}"
        );
    }

    fn inspect(&self, service: &str, format: &str) -> String {
        stdout_of(
            Command::new("docker")
                .args(["inspect", "-f", format, &self.container(service)])
                .output()
                .unwrap(),
            "docker inspect",
        )
        .trim()
        .to_string()
    }

    fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until every source and stage container has exited; returns each one's
    /// (service, exit code, restarts).
    fn wait_finished(&self, limit: Duration) -> Vec<(String, i64, i64)> {
        let started = Instant::now();
        loop {
            let out = stdout_of(
                Command::new("docker")
                    .args(["ps", "-a", "--filter"])
                    .arg(format!("label=com.docker.compose.project={}", self.project))
                    .args(["--filter", "label=io.vidmesh.role=instance", "-q"])
                    .output()
                    .unwrap(),
                "docker ps",
            );
            let ids: Vec<&str> = out.split_whitespace().collect();
            assert!(!ids.is_empty(), "no instance containers:\n{}", self.logs());
            let states = stdout_of(
                Command::new("docker")
                    .arg("inspect")
                    .arg("-f")
                    .arg(
                        "{{index .Config.Labels \"com.docker.compose.service\"}} {{.State.Status}} \
                         {{.State.ExitCode}} {{.RestartCount}}",
                    )
                    .args(&ids)
                    .output()
                    .unwrap(),
                "docker inspect",
            );
            let rows: Vec<Vec<&str>> = states
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            if rows.iter().all(|r| r[1] == "exited") {
                return rows
                    .iter()
                    .map(|r| {
                        (
                            r[0].to_string(),
                            r[2].parse().unwrap(),
                            r[3].parse().unwrap(),
                        )
                    })
                    .collect();
            }
            assert!(
                started.elapsed() < limit,
                "the deployment did not finish within {limit:?}: {states}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn wait_for_events(&self, at_least: usize) {
        let started = Instant::now();
        while lines(&self.events()) < at_least {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "no progress:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Messages on a Kafka topic of the deployment's broker, read by confluent-kafka from a
    /// container on the broker's network (its advertised address is the service name).
    fn kafka_messages(&self, topic: &str) -> usize {
        let python = venv_python();
        let base = stdout_of(
            Command::new(&python)
                .args(["-c", "import sys; print(sys.base_prefix)"])
                .output()
                .unwrap(),
            "python",
        );
        let venv = repo_root().join(".venv");
        let script = format!(
            "from confluent_kafka import Consumer\n\
             c = Consumer({{'bootstrap.servers': 'kafka:9092', 'group.id': 'count', \
             'auto.offset.reset': 'earliest', 'enable.auto.commit': False}})\n\
             c.subscribe(['{topic}'])\n\
             n, idle = 0, 0\n\
             while idle < 20:\n\
             \x20   m = c.poll(0.5)\n\
             \x20   if m is None or m.error():\n\
             \x20       idle += 1\n\
             \x20       continue\n\
             \x20   idle = 0\n\
             \x20   n += 1\n\
             print(n)\n"
        );
        let out = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                &format!("{}_kafka", self.project),
            ])
            .arg("-v")
            .arg(format!("{}:{}:ro", base.trim(), base.trim()))
            .arg("-v")
            .arg(format!("{}:{}:ro", venv.display(), venv.display()))
            .arg("--entrypoint")
            .arg(&python)
            .arg(image())
            .args(["-c", &script])
            .output()
            .unwrap();
        stdout_of(out, "the Kafka consumer")
            .trim()
            .parse()
            .expect("a count")
    }
}

impl Deployment {
    /// The end-of-run summaries the replicas of `stage` on `host` left in the host's state
    /// volume: (replica, frames processed, whether it left before the end).
    fn summaries(&self, host: &str, stage: &str) -> Vec<(u64, u64, bool)> {
        let text = stdout_of(
            Command::new("docker")
                .args(["run", "--rm", "-v"])
                .arg(format!("{}_{host}-state:/state:ro", self.project))
                .args(["--entrypoint", "bash", image(), "-c"])
                .arg(format!("cat /state/launch/{stage}-*.summary.json"))
                .output()
                .unwrap(),
            "reading the summaries",
        );
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map(|v| {
                let v = v.expect("a summary");
                let left = v["facts"].to_string().contains("\"left\"");
                (
                    v["replica"].as_u64().unwrap(),
                    v["frames"].as_u64().unwrap(),
                    left,
                )
            })
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// topologies/compose.toml on the ground-truth clip, outputs in `out/<project>/`, native
/// metadata, under the project's own pipeline name.
fn compose_topology(project: &str) -> String {
    let mut text = std::fs::read_to_string(repo_root().join("topologies/compose.toml")).unwrap();
    for (from, to) in [
        ("name = \"people-count\"", format!("name = \"{project}\"")),
        ("file://data/vtest.avi", "file://data/gt/people.mp4".into()),
        ("file://out/compose/", format!("file://out/{project}/")),
        ("schema = \"minimal\"", "schema = \"native\"".into()),
    ] {
        assert!(text.contains(from), "compose.toml has no `{from}`");
        text = text.replace(from, &to);
    }
    text
}

/// The same pipeline in this process, without the Kafka stage.
fn reference() -> &'static Vec<NativeFrame> {
    static REFERENCE: OnceLock<Vec<NativeFrame>> = OnceLock::new();
    REFERENCE.get_or_init(|| run_in_one_process(&compose_topology("reference")))
}

/// The events of a compose test topology (written for project `reference`) run in this
/// process, without the Kafka stage.
fn run_in_one_process(topology: &str) -> Vec<NativeFrame> {
    ensure_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let mut text = topology.replace(", [\"track\", \"publish\"]", "").replace(
        "file://out/reference/",
        &format!("file://{}/", dir.path().display()),
    );
    // `vidmesh run` ignores [hosts] and [placement]; they go with the Kafka stage.
    let cut = text.find("[stage.publish]").unwrap();
    text.truncate(cut);
    let path = dir.path().join("t.toml");
    std::fs::write(&path, &text).unwrap();
    let t = Topology::parse(&path, &text, &repo_root()).unwrap();
    let summary = run(&t, &RunOptions::default(), Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    read_native(&dir.path().join("events.jsonl"))
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Every frame exactly once after deduplication, the same objects as one process, and the
/// annotated video complete.
fn assert_complete(d: &Deployment) {
    let mut frames: BTreeMap<u64, NativeFrame> = BTreeMap::new();
    for f in read_native(&d.events()) {
        frames.entry(f.frame_num).or_insert(f);
    }
    let numbers: Vec<u64> = frames.keys().copied().collect();
    assert_eq!(
        numbers,
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame, once"
    );
    for (want, got) in reference().iter().zip(frames.values()) {
        same_objects(want, got, "the containers vs one process");
    }
    assert_eq!(
        count_frames(&d.dir.join("annotated.mp4")) as u64,
        FRAMES,
        "the annotated video holds every frame"
    );
}

fn networks_of(d: &Deployment, service: &str) -> Vec<String> {
    let mut nets: Vec<String> = d
        .inspect(
            service,
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        )
        .split_whitespace()
        .map(|n| n.trim_start_matches(&format!("{}_", d.project)).to_string())
        .collect();
    nets.sort();
    nets
}

#[test]
fn the_demo_runs_as_containers_on_two_hosts_with_the_metadata_of_one_process() {
    let d = Deployment::start("vmcompose-same");
    // Edge and core meet only through their routers.
    assert_eq!(networks_of(&d, "source-street"), vec!["edge"]);
    assert_eq!(networks_of(&d, "preprocess"), vec!["edge"]);
    assert_eq!(networks_of(&d, "detect"), vec!["core"]);
    assert_eq!(networks_of(&d, "publish"), vec!["core", "kafka"]);
    assert_eq!(networks_of(&d, "zenoh-edge"), vec!["edge", "wan"]);
    assert_eq!(networks_of(&d, "kafka"), vec!["kafka"]);
    let finished = d.wait_finished(Duration::from_secs(420));
    for (service, code, restarts) in &finished {
        assert_eq!((*code, *restarts), (0, 0), "{service}:\n{}", d.logs());
    }
    assert_complete(&d);
    assert_eq!(
        d.kafka_messages("people"),
        FRAMES as usize,
        "one Kafka message per frame"
    );
}

#[test]
fn a_killed_detector_container_is_restarted_and_nothing_is_lost() {
    let d = Deployment::start("vmcompose-kill");
    // A crash: the restart policy brings the detector back.
    d.wait_for_events(60);
    d.crash("detect");
    let started = Instant::now();
    while d.inspect("detect", "{{.RestartCount}}") == "0" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the detector was not restarted:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `docker kill` is an operator's stop, which Docker's restart policies leave alone: the
    // operator starts it again, and it too loses nothing.
    d.wait_for_events(150);
    let detect = d.container("detect");
    for verb in ["kill", "start"] {
        stdout_of(
            Command::new("docker")
                .args([verb, &detect])
                .output()
                .unwrap(),
            verb,
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let finished = d.wait_finished(Duration::from_secs(420));
    for (service, code, _) in &finished {
        assert_eq!(*code, 0, "{service}:\n{}", d.logs());
    }
    assert_complete(&d);
}

#[test]
fn the_edge_host_cut_off_for_ten_seconds_resumes_without_a_crash() {
    let d = Deployment::start("vmcompose-cut");
    d.wait_for_events(40);
    let wan = format!("{}_wan", d.project);
    let router = d.container("zenoh-edge");
    stdout_of(
        Command::new("docker")
            .args(["network", "disconnect", &wan, &router])
            .output()
            .unwrap(),
        "docker network disconnect",
    );
    let during = lines(&d.events());
    std::thread::sleep(Duration::from_secs(10));
    let after_cut = lines(&d.events());
    stdout_of(
        Command::new("docker")
            .args(["network", "connect", &wan, &router])
            .output()
            .unwrap(),
        "docker network connect",
    );
    eprintln!("events when the edge was cut off: {during}, 10 s later: {after_cut}");
    // The cut stopped the flow (what was in flight may still have landed).
    assert!(
        after_cut < FRAMES as usize,
        "the cut came too late to matter: {during} → {after_cut} events"
    );
    let finished = d.wait_finished(Duration::from_secs(420));
    for (service, code, restarts) in &finished {
        assert_eq!((*code, *restarts), (0, 0), "{service}:\n{}", d.logs());
    }
    assert_complete(&d);
}

#[test]
fn the_detector_scaled_from_one_to_three_replicas_mid_run_shares_the_work_and_loses_nothing() {
    // Each detector gets a quarter of a core, as replicas on machines of their own would each bring
    // their own: on this 2-core machine one unbounded detector already takes every core.
    let d = Deployment::start_with(
        "vmcompose-scale",
        "data/vtest.avi",
        &[("cpus = 2.0", "cpus = 0.25")],
    );
    d.wait_for_events(40);
    let (t0, n0) = (Instant::now(), lines(&d.events()));
    std::thread::sleep(Duration::from_secs(5));
    let rate_one = (lines(&d.events()) - n0) as f64 / t0.elapsed().as_secs_f64();
    stdout_of(
        d.compose(&["up", "-d", "--no-recreate", "--scale", "detect=3", "detect"]),
        "docker compose up --scale detect=3",
    );
    // The new replicas start and load the model first.
    std::thread::sleep(Duration::from_secs(10));
    let (t1, n1) = (Instant::now(), lines(&d.events()));
    std::thread::sleep(Duration::from_secs(10));
    let rate_three = (lines(&d.events()) - n1) as f64 / t1.elapsed().as_secs_f64();
    // Scaling down: the removed replica (SIGTERM) leaves and hands its work back.
    stdout_of(
        d.compose(&["up", "-d", "--no-recreate", "--scale", "detect=2", "detect"]),
        "docker compose up --scale detect=2",
    );
    let finished = d.wait_finished(Duration::from_secs(600));
    // Reported, not asserted (machines here are shared and noisy); docs/BENCHMARKS.md.
    eprintln!("events/s with one detector {rate_one:.1}, after scaling to three {rate_three:.1}");
    let detectors: Vec<_> = finished.iter().filter(|(s, _, _)| s == "detect").collect();
    assert_eq!(detectors.len(), 2, "{finished:?}");
    for (service, code, _) in &finished {
        assert_eq!(*code, 0, "{service}:\n{}", d.logs());
    }
    let summaries = d.summaries("core", "detect");
    eprintln!("frames per detector replica: {summaries:?}");
    assert_eq!(summaries.len(), 3, "{summaries:?}");
    assert!(
        summaries.iter().all(|(_, frames, _)| *frames > 0),
        "every detector replica took batches: {summaries:?}"
    );
    assert_eq!(
        summaries.iter().filter(|(_, _, left)| *left).count(),
        1,
        "the replica scaled away left: {summaries:?}"
    );
    // Every frame once after deduplication, and the video complete.
    let total = count_frames(&repo_root().join("data/vtest.avi")) as u64;
    let numbers: std::collections::BTreeSet<u64> = read_native(&d.events())
        .iter()
        .map(|f| f.frame_num)
        .collect();
    assert_eq!(numbers, (0..total).collect(), "every frame's metadata");
    assert_eq!(count_frames(&d.dir.join("annotated.mp4")) as u64, total);
}

/// The compose demo with a second stream of the clip (`street2`, source 1) and two tracker
/// replicas, `track-0` and `track-1`, each taking one stream (`source_id % 2`); without the
/// OSD and the video sink, which would need a tiler for two streams.
fn two_streams_two_trackers(project: &str) -> Vec<(String, String)> {
    let source = "[[source]]\nid = \"street\"\nuri = \"file://data/gt/people.mp4\"\n";
    let out = format!(
        "[stage.osd]\nkind = \"osd\"\n\n[stage.out]\nkind = \"sink\"\n\
         uri = \"file://out/{project}/annotated.mp4\"\n\n"
    );
    [
        (
            source.to_string(),
            format!(
                "{source}\n[[source]]\nid = \"street2\"\nuri = \"file://data/gt/people.mp4\"\n"
            ),
        ),
        (
            "[\"track\", \"osd\"], [\"osd\", \"out\"], ".into(),
            String::new(),
        ),
        (out, String::new()),
        (
            "osd = { host = \"core\" }\nout = { host = \"core\" }\n".into(),
            String::new(),
        ),
        (
            "[stage.track]\nkind = \"track\"\n".into(),
            "[stage.track]\nkind = \"track\"\nreplicas = 2\n".into(),
        ),
    ]
    .into_iter()
    .collect()
}

#[test]
fn a_tracker_replica_stopped_mid_run_hands_its_stream_over_and_takes_it_back_when_started() {
    let project = "vmcompose-shard";
    let edits = two_streams_two_trackers(project);
    let borrowed: Vec<(&str, &str)> = edits
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let d = Deployment::start_with(project, "data/gt/people.mp4", &borrowed);
    let of_street2 = || {
        std::fs::read_to_string(d.events())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"street2\""))
            .count()
    };
    d.wait_for_events(80);
    // SIGTERM, as a scaler or a rolling update stops a replica: track-1 leaves at once.
    stdout_of(
        d.compose(&["stop", "-t", "30", "track-1"]),
        "docker compose stop track-1",
    );
    assert_eq!(
        d.inspect("track-1", "{{.State.ExitCode}}"),
        "0",
        "track-1 left cleanly:\n{}",
        d.logs()
    );
    // Its stream goes on at track-0.
    let stopped_at = of_street2();
    let started = Instant::now();
    while of_street2() < stopped_at + 30 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "street2 did not go on without track-1 ({} events):\n{}",
            of_street2(),
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let handed_over = of_street2();
    stdout_of(
        d.compose(&["start", "track-1"]),
        "docker compose start track-1",
    );
    let finished = d.wait_finished(Duration::from_secs(600));
    for (service, code, _) in &finished {
        assert_eq!(*code, 0, "{service}:\n{}", d.logs());
    }
    eprintln!(
        "street2: {stopped_at} events when track-1 was stopped, {handed_over} when it was started again"
    );
    let log_of = |service: &str| {
        let out = d.compose(&["logs", "--no-color", service]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (zero, one) = (log_of("track-0"), log_of("track-1"));
    assert!(
        zero.contains("took over source 1 from replica 1"),
        "track-0 took street2 over:\n{zero}"
    );
    assert!(
        one.contains("took over source 1 from replica 0"),
        "track-1 took street2 back with track-0's state:\n{one}"
    );
    // Every frame of both streams once, with the objects and track ids of one process.
    let mut text = compose_topology("reference");
    for (from, to) in two_streams_two_trackers("reference") {
        assert!(text.contains(&from), "no `{from}` in the topology");
        text = text.replace(&from, &to);
    }
    let want: BTreeMap<(String, u64), NativeFrame> = run_in_one_process(&text)
        .into_iter()
        .map(|f| ((f.source_name.clone(), f.frame_num), f))
        .collect();
    let mut got: BTreeMap<(String, u64), NativeFrame> = BTreeMap::new();
    for f in read_native(&d.events()) {
        got.entry((f.source_name.clone(), f.frame_num)).or_insert(f);
    }
    assert_eq!(want.len(), 2 * FRAMES as usize);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "every frame of both streams"
    );
    for (key, w) in &want {
        same_objects(
            w,
            &got[key],
            &format!("{key:?}: two tracker replicas vs one process"),
        );
    }
    assert_eq!(
        d.kafka_messages("people"),
        2 * FRAMES as usize,
        "one Kafka message per frame, none twice"
    );
}
