use super::*;
use crate::gpu::GpuSample;
use crate::prometheus::Sample;

/// Two sources into mux → osd (×2 replicas) → broker, with a side branch mux → events.
fn topology(dir: &std::path::Path) -> Topology {
    std::fs::write(dir.join("a.mp4"), b"x").unwrap();
    std::fs::write(dir.join("b.mp4"), b"x").unwrap();
    let text = r#"
[pipeline]
name = "dash"
links = [["sources", "mux"], ["mux", "osd"], ["osd", "out"], ["mux", "events"]]

[[source]]
id = "a"
uri = "file://a.mp4"

[[source]]
id = "b"
uri = "file://b.mp4"

[stage.mux]
kind = "mux"

[stage.osd]
kind = "osd"
replicas = 2

[stage.out]
kind = "broker"
uri = "file://out.jsonl"

[stage.events]
kind = "broker"
uri = "file://events.jsonl"
"#;
    Topology::parse(&dir.join("t.toml"), text, dir).unwrap()
}

fn stage(name: &str, frames: u64, latency_sum_s: f64, latency_count: u64) -> StageObservation {
    StageObservation {
        name: name.into(),
        up: 1,
        frames,
        batches: frames / 2,
        busy_s: frames as f64 * 0.001,
        latency_sum_s,
        latency_count,
        ..Default::default()
    }
}

fn source(id: u32, frames: u64, state: SourceState) -> SourceObservation {
    SourceObservation {
        id,
        name: ["a", "b"][id as usize].into(),
        frames,
        state,
    }
}

fn state(d: &Dashboard) -> serde_json::Value {
    serde_json::from_str(&d.state_json()).unwrap()
}

#[test]
fn the_graph_places_stages_right_of_their_producers() {
    let dir = tempfile::tempdir().unwrap();
    let g = layout(&topology(dir.path()));
    let x = |id: &str| g.nodes.iter().find(|n| n.id == id).unwrap().x;
    assert_eq!(g.nodes.len(), 6);
    assert_eq!(x("source.a"), x("source.b"));
    assert!(x("source.a") < x("mux") && x("mux") < x("osd") && x("osd") < x("out"));
    assert_eq!(x("osd"), x("events"), "both fed by mux");
    // One edge from each source to mux, then the stage links.
    assert_eq!(g.edges.len(), 2 + 3);
    assert_eq!(g.nodes.iter().find(|n| n.id == "osd").unwrap().replicas, 2);
    for n in &g.nodes {
        assert!(
            n.x > 0.0 && n.x < g.width && n.y > 0.0 && n.y < g.height,
            "{n:?}"
        );
    }
}

#[test]
fn rates_statuses_events_and_history_follow_the_observations() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dashboard::new(&topology(dir.path()), "run");
    let t0 = Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    d.update(
        at(0.0),
        Observation {
            stages: vec![stage("mux", 0, 0.0, 0)],
            sources: vec![
                source(0, 0, SourceState::Running),
                source(1, 0, SourceState::Running),
            ],
            previews: vec![],
            gpus: vec![],
        },
    );
    let s = state(&d);
    assert_eq!(s["streams"][0]["status"], "starting");
    assert_eq!(s["stages"][0]["fps"], 0.0);
    assert!(s["events"].as_array().unwrap().is_empty(), "{s}");

    d.update(
        at(1.0),
        Observation {
            stages: vec![stage("mux", 30, 0.6, 30)],
            sources: vec![
                source(0, 30, SourceState::Running),
                source(1, 0, SourceState::Running),
            ],
            previews: vec![PreviewImage {
                source_id: 0,
                frame_num: 29,
                jpeg: Arc::new(vec![0xFF, 0xD8, 0xFF]),
            }],
            gpus: vec![GpuSample {
                index: 0,
                name: "NVIDIA H200".into(),
                utilization: 0.5,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 2 << 30,
            }],
        },
    );
    let s = state(&d);
    let mux = &s["stages"][0];
    assert_eq!(mux["fps"], 30.0);
    assert!(
        (mux["latency_ms"].as_f64().unwrap() - 20.0).abs() < 1e-9,
        "{mux}"
    );
    assert_eq!(mux["health"], "ok");
    // A stage nobody reported on is down, not invented.
    let osd = s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "osd")
        .unwrap();
    assert_eq!(osd["health"], "down");
    assert_eq!(s["streams"][0]["status"], "running");
    assert_eq!(s["streams"][0]["preview_frame"], 29);
    assert_eq!(s["streams"][1]["preview_frame"], serde_json::Value::Null);
    assert_eq!(d.preview(0).unwrap().as_slice(), &[0xFF, 0xD8, 0xFF]);
    assert_eq!(s["history"]["t_s"].as_array().unwrap().len(), 1);
    assert_eq!(s["history"]["fps"]["mux"][0], 30.0);
    assert_eq!(s["gpus"][0]["name"], "NVIDIA H200");
    assert_eq!(s["gpus"][0]["utilization"], 0.5);

    // Source 1 never delivers: stalled after STALL_AFTER; source 0 ends; mux restarts.
    let mut restarted = stage("mux", 60, 1.2, 60);
    restarted.restarts = 1;
    d.update(
        at(1.0 + STALL_AFTER.as_secs_f64()),
        Observation {
            stages: vec![restarted],
            sources: vec![
                source(0, 60, SourceState::Ended),
                source(1, 0, SourceState::Running),
            ],
            previews: vec![],
            gpus: vec![],
        },
    );
    let s = state(&d);
    assert_eq!(s["streams"][0]["status"], "ended");
    assert_eq!(s["streams"][1]["status"], "stalled");
    let events: Vec<String> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.iter().any(|e| e == "stream `a` is running"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e == "stream `a` ended after 60 frames"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e == "stream `b` stalled"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("`mux` restarted")),
        "{events:?}"
    );
    // The preview stays after the source ended.
    assert_eq!(s["streams"][0]["preview_frame"], 29);

    d.update(
        at(5.0),
        Observation {
            stages: vec![],
            sources: vec![
                source(0, 60, SourceState::Ended),
                source(1, 0, SourceState::Failed("cannot open b.mp4".into())),
            ],
            previews: vec![],
            gpus: vec![],
        },
    );
    let s = state(&d);
    assert_eq!(s["streams"][1]["status"], "failed");
    assert_eq!(s["streams"][1]["detail"], "cannot open b.mp4");
    assert_eq!(
        s["events"].as_array().unwrap().last().unwrap()["level"],
        "error"
    );
}

#[test]
fn routes_answer_the_page_state_and_previews() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dashboard::new(&topology(dir.path()), "launch");
    let get = |path: &str| d.handle(&Request::get(path), None);
    let page = get("/");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8(page.body).unwrap().contains("/api/state"));
    let state = get("/api/state");
    assert_eq!(state.content_type, "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&state.body).unwrap()["mode"],
        "launch"
    );
    assert_eq!(get("/preview/0.jpg").status, 404);
    assert_eq!(get("/preview/x.jpg").status, 404);
    assert_eq!(get("/preview/99999999999.jpg").status, 404);
    assert_eq!(get("/metrics").status, 404, "no renderer given");
}

#[test]
fn the_launchers_samples_become_an_observation() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path());
    let sample = |name: &str, labels: &[(&str, &str)], value: f64| Sample {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    };
    let scraped = vec![
        (
            "osd/0".to_string(),
            vec![
                sample("vidmesh_up", &[("stage", "osd"), ("replica", "0")], 1.0),
                sample(
                    "vidmesh_frames_total",
                    &[("stage", "osd"), ("replica", "0")],
                    10.0,
                ),
                sample(
                    "vidmesh_latency_seconds_sum",
                    &[("stage", "osd"), ("replica", "0")],
                    0.5,
                ),
                sample(
                    "vidmesh_latency_seconds_count",
                    &[("stage", "osd"), ("replica", "0")],
                    5.0,
                ),
            ],
        ),
        (
            "osd/1".to_string(),
            vec![
                sample("vidmesh_up", &[("stage", "osd"), ("replica", "1")], 1.0),
                sample(
                    "vidmesh_frames_total",
                    &[("stage", "osd"), ("replica", "1")],
                    7.0,
                ),
            ],
        ),
        (
            "mux/0".to_string(),
            vec![
                sample(
                    "vidmesh_link_queue_depth",
                    &[("stage", "mux"), ("replica", "0"), ("link", "mux->osd")],
                    3.0,
                ),
                sample(
                    "vidmesh_link_queue_depth",
                    &[("stage", "mux"), ("replica", "0"), ("link", "mux->events")],
                    1.0,
                ),
            ],
        ),
        (
            "source.a/0".to_string(),
            vec![sample(
                "vidmesh_frames_total",
                &[("stage", "source.a"), ("replica", "0")],
                42.0,
            )],
        ),
    ];
    let views = vec![
        InstanceView {
            name: "osd".into(),
            replica: 1,
            restarts: 2,
            life: InstanceLife::Running,
        },
        InstanceView {
            name: "source.a".into(),
            replica: 0,
            restarts: 0,
            life: InstanceLife::Succeeded,
        },
        InstanceView {
            name: "source.b".into(),
            replica: 0,
            restarts: 1,
            life: InstanceLife::Restarting,
        },
    ];
    let o = observe_scraped(&t, &scraped, &views);
    let osd = o.stages.iter().find(|s| s.name == "osd").unwrap();
    assert_eq!((osd.up, osd.frames, osd.restarts), (2, 17, 2));
    assert_eq!((osd.latency_sum_s, osd.latency_count), (0.5, 5));
    assert_eq!(osd.queue, 3, "only the links into osd");
    assert_eq!(o.stages.iter().find(|s| s.name == "mux").unwrap().up, 0);
    assert_eq!(o.sources[0].frames, 42);
    assert_eq!(o.sources[0].state, SourceState::Ended);
    assert_eq!(o.sources[1].state, SourceState::Restarting);
}
