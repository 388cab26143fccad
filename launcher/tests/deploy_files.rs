//! The files `vidmesh compose` writes, checked by the tools that read them: the repo's
//! docker-compose.yml is what `vidmesh compose topologies/compose.toml` gives today; Docker
//! Compose accepts the compose files and Docker the Swarm stack; the Kubernetes manifests
//! pass kubernetes-validate's strict schema check (the API's own OpenAPI schemas).

use std::path::Path;
use std::process::{Command, Output};

use vidmesh_tests::{compose_cli, repo_root, stdout_of, venv_python};

fn compose(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .arg("compose")
        .args(args)
        // Loading checks the variables the features topology reads; the files written
        // name them, never their values.
        .env("CAM_USER", "viewer")
        .env("CAM_PASSWORD", "s3cret")
        .output()
        .expect("vidmesh runs")
}

/// A topology with what the demo does not use: replicas, GPU placement, limits, secrets, an
/// MQTT broker, unplaced stages.
const FEATURES: &str = r#"
[pipeline]
name = "Shop_Floor"
links = [["sources", "mux"], ["mux", "detect"], ["detect", "track"], ["track", "alerts"]]

[[source]]
id = "cam1"
uri = "rtsp://${env:CAM_USER}:${env:CAM_PASSWORD}@10.0.0.9/stream1"

[stage.mux]
kind = "mux"
batch_size = 1

[stage.detect]
kind = "infer"
model = "models/ssdlite_person.onnx"
labels = ["background", "person"]
parser = { type = "ssd", boxes_output = "boxes", scores_output = "scores", box_format = "yxyx", background_class = 0 }
replicas = 2

[stage.track]
kind = "track"
replicas = 2
max_restarts = 0

[stage.alerts]
kind = "broker"
uri = "mqtt://mosquitto/alerts"

[hosts]
gpu-box = {}

[placement]
detect = { host = "gpu-box", gpu = 1, cpus = 4.0, memory = "6g" }
"#;

fn features_topology(dir: &Path) -> String {
    let relative = dir.strip_prefix(repo_root()).unwrap().join("features.toml");
    std::fs::write(repo_root().join(&relative), FEATURES).unwrap();
    relative.display().to_string()
}

/// YAML as JSON, through PyYAML (kubernetes-validate's dependency in .venv).
fn yaml_to_json(yaml: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(venv_python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).expect("PyYAML turned the file into JSON")
}

/// A scratch directory inside the project (topologies must be, the containers mount it).
fn scratch() -> tempfile::TempDir {
    let out = repo_root().join("out");
    std::fs::create_dir_all(&out).unwrap();
    tempfile::tempdir_in(out).unwrap()
}

#[test]
fn the_repos_docker_compose_file_is_generated_from_the_compose_topology() {
    let generated = stdout_of(compose(&["topologies/compose.toml"]), "vidmesh compose");
    let committed = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    assert!(
        generated == committed,
        "docker-compose.yml is out of date: run `vidmesh compose topologies/compose.toml -o \
         docker-compose.yml`"
    );
}

#[test]
fn docker_compose_accepts_the_files_and_they_place_each_stage_on_its_host() {
    let dir = scratch();
    let features = features_topology(dir.path());
    for topology in ["topologies/compose.toml", features.as_str()] {
        let file = dir.path().join("compose.yml");
        stdout_of(
            compose(&[topology, "-o", file.to_str().unwrap()]),
            "vidmesh compose",
        );
        let (program, first) = compose_cli();
        let config = stdout_of(
            Command::new(program)
                .args(first)
                .arg("-f")
                .arg(&file)
                .arg("config")
                .env("CAM_USER", "viewer")
                .env("CAM_PASSWORD", "s3cret")
                .output()
                .unwrap(),
            "docker compose config",
        );
        let config = yaml_to_json(&config);
        let services = config["services"].as_object().unwrap();
        let networks_of = |s: &str| -> Vec<String> {
            let mut n: Vec<String> = services[s]["networks"]
                .as_object()
                .unwrap_or_else(|| panic!("{s} has networks"))
                .keys()
                .cloned()
                .collect();
            n.sort();
            n
        };
        if topology.ends_with("compose.toml") {
            assert_eq!(networks_of("source-street"), ["edge"]);
            assert_eq!(networks_of("detect"), ["core"]);
            assert_eq!(networks_of("publish"), ["core", "kafka"]);
            assert_eq!(networks_of("zenoh-core"), ["core", "wan"]);
            assert!(
                !services["detect"]["mem_limit"].is_null(),
                "{:?}",
                services["detect"]
            );
            assert!(
                !services["detect"]["cpus"].is_null(),
                "{:?}",
                services["detect"]
            );
            let command: Vec<&str> = services["detect"]["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert!(
                command
                    .windows(2)
                    .any(|w| w == ["--connect", "tcp/zenoh-core:7447"]),
                "{command:?}"
            );
            assert!(services["kafka"]["command"]
                .to_string()
                .contains("tansu broker"));
        } else {
            // Sharded replicas are services of their own, a load-balanced stage is one
            // scalable service; unplaced stages are on host `local`.
            for s in ["detect", "track-0", "track-1", "mux", "source-cam1"] {
                assert!(services.contains_key(s), "{s}: {:?}", services.keys());
            }
            assert_eq!(services["detect"]["scale"], 2);
            assert!(services["detect"]["command"]
                .to_string()
                .contains("\"auto\""));
            assert_eq!(networks_of("mux"), ["local"]);
            assert_eq!(networks_of("alerts"), ["local", "mosquitto"]);
            assert_eq!(
                services["detect"]["deploy"]["resources"]["reservations"]["devices"][0]
                    ["device_ids"][0],
                "1"
            );
            assert_eq!(services["track-0"]["restart"], "no");
            assert_eq!(
                services["source-cam1"]["environment"]["CAM_PASSWORD"],
                "s3cret"
            );
        }
    }
}

#[test]
fn the_swarm_stack_places_services_by_node_label() {
    let dir = scratch();
    let file = dir.path().join("stack.yml");
    stdout_of(
        compose(&[
            "topologies/compose.toml",
            "--format",
            "swarm",
            "-o",
            file.to_str().unwrap(),
        ]),
        "vidmesh compose --format swarm",
    );
    // `docker stack config` merges and checks a stack file without a swarm.
    let config = stdout_of(
        Command::new("docker")
            .args(["stack", "config", "-c"])
            .arg(&file)
            .env("VIDMESH_PROJECT", "/srv/vidmesh")
            .output()
            .unwrap(),
        "docker stack config",
    );
    assert!(
        config.contains("node.labels.vidmesh.host == edge")
            && config.contains("node.labels.vidmesh.host == core"),
        "{config}"
    );
    assert!(config.contains("driver: overlay"), "{config}");
    assert!(config.contains("source: /srv/vidmesh"), "{config}");
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schemas() {
    let dir = scratch();
    let features = features_topology(dir.path());
    for (i, topology) in ["topologies/compose.toml", features.as_str()]
        .iter()
        .enumerate()
    {
        let file = dir.path().join(format!("k8s-{i}.yaml"));
        stdout_of(
            compose(&[
                topology,
                "--format",
                "kubernetes",
                "-o",
                file.to_str().unwrap(),
            ]),
            "vidmesh compose --format kubernetes",
        );
        let python = venv_python();
        let validate = python.with_file_name("kubernetes-validate");
        let out = Command::new(&validate)
            .args(["--strict", "--no-warn"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", validate.display()));
        stdout_of(out, "kubernetes-validate --strict");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("kind: \"StatefulSet\""), "{text}");
        if i == 1 {
            assert!(
                text.contains("replicas: 2") && text.contains("nvidia.com/gpu"),
                "{text}"
            );
            assert!(
                text.contains("kind: \"Deployment\"\nmetadata:\n  name: \"detect\""),
                "{text}"
            );
            assert!(text.contains("$(VIDMESH_REPLICA)"), "{text}");
            assert!(text.contains("secretKeyRef"), "{text}");
        }
    }
}

#[test]
fn a_topology_outside_the_project_or_with_colliding_names_is_refused() {
    let out = compose(&["/etc/hostname"]);
    assert!(!out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("t.toml");
    std::fs::write(&outside, FEATURES).unwrap();
    let out = compose(&[outside.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("must be inside the project directory"),
        "{err}"
    );
    let scratch = scratch();
    let clash = scratch.path().join("clash.toml");
    std::fs::write(
        &clash,
        FEATURES
            .replace("gpu-box = {}", "gpu-box = {}\nmosquitto = {}")
            .replace(
                "[placement]\n",
                "[placement]\nmux = { host = \"mosquitto\" }\n",
            ),
    )
    .unwrap();
    let relative = clash.strip_prefix(repo_root()).unwrap();
    let out = compose(&[relative.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("would name two networks"),
        "{err}"
    );
}
