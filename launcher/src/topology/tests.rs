use super::*;

fn write_model(dir: &Path) {
    std::fs::write(
        dir.join("m.onnx"),
        b"not really a model, existence is what validation checks",
    )
    .unwrap();
    std::fs::write(dir.join("clip.mp4"), b"x").unwrap();
}

const GOOD: &str = r#"
[pipeline]
name = "t"
links = [["sources", "mux"], ["mux", "pre"], ["pre", "detect"], ["detect", "out"]]

[[source]]
id = "cam0"
uri = "file://clip.mp4"

[stage.mux]
kind = "mux"
batch_size = 2

[stage.pre]
kind = "preprocess"
width = 300
height = 300

[stage.detect]
kind = "infer"
model = "m.onnx"
parser = { type = "ssd" }

[stage.out]
kind = "broker"
uri = "file://out/events.jsonl"
"#;

fn check(text: &str) -> Result<Topology, TopologyError> {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    Topology::parse(Path::new("t.toml"), text, dir.path())
}

fn error(text: &str) -> String {
    check(text).unwrap_err().to_string()
}

#[test]
fn a_good_topology_orders_stages_producers_first() {
    let t = check(GOOD).unwrap();
    let names: Vec<&str> = t.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mux", "pre", "detect", "out"]);
    assert_eq!(t.sources[0].settings.id, "cam0");
}

#[test]
fn unknown_stage_kind_names_file_line_and_known_kinds() {
    let e = error(&GOOD.replace("kind = \"infer\"", "kind = \"infr\""));
    assert!(
        e.starts_with("t.toml:19:1: stage `detect`: unknown stage kind `infr`"),
        "{e}"
    );
    assert!(e.contains("did you mean `infer`"), "{e}");
}

#[test]
fn link_to_missing_stage_is_named_with_its_line() {
    let e = error(&GOOD.replace("[\"detect\", \"out\"]", "[\"detect\", \"outt\"]"));
    assert!(e.starts_with("t.toml:4:"), "{e}");
    assert!(
        e.contains("missing stage `outt`") && e.contains("did you mean `out`"),
        "{e}"
    );
}

#[test]
fn cycles_are_reported_as_a_path() {
    let e = error(&GOOD.replace(
        "[\"detect\", \"out\"]",
        "[\"detect\", \"out\"], [\"out\", \"pre\"]",
    ));
    assert!(e.contains("links form a cycle"), "{e}");
    assert!(
        e.contains("pre -> detect") && e.contains("out -> pre"),
        "{e}"
    );
}

#[test]
fn missing_model_file_is_named() {
    let e = error(&GOOD.replace("m.onnx", "missing.onnx"));
    assert!(
        e.contains("stage `detect` (infer): model file")
            && e.contains("missing.onnx")
            && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn bad_source_uri_is_named() {
    let e = error(&GOOD.replace("file://clip.mp4", "ftp://host/clip.mp4"));
    assert!(e.starts_with("t.toml:6:1: source #1:"), "{e}");
    assert!(e.contains("unsupported source URI scheme `ftp`"), "{e}");
}

#[test]
fn unknown_keys_and_wrong_types_point_at_the_problem() {
    let e = error(&GOOD.replace("batch_size = 2", "batch_size = \"two\""));
    assert!(
        e.contains("stage `mux` (mux)") && e.contains("batch_size"),
        "{e}"
    );
    let e = error(&GOOD.replace("name = \"t\"", "name = \"t\"\nlinkz = []"));
    assert!(e.starts_with("t.toml:4:1: unknown field `linkz`"), "{e}");
    let e = error("[pipeline\nname=");
    assert!(e.starts_with("t.toml:1:"), "{e}");
}

#[test]
fn a_stage_nothing_feeds_is_rejected() {
    let e = error(
        &GOOD
            .replace("[\"detect\", \"out\"]", "[\"pre\", \"out\"]")
            .replace("[\"pre\", \"detect\"], ", ""),
    );
    assert!(e.contains("stage `detect` has no input"), "{e}");
}

#[test]
fn max_sources_allows_an_empty_start_and_is_checked() {
    let no_sources = GOOD.replace("[[source]]\nid = \"cam0\"\nuri = \"file://clip.mp4\"\n", "");
    let e = error(&no_sources);
    assert!(
        e.contains("no [[source]] entries") && e.contains("max_sources"),
        "{e}"
    );
    let dynamic = no_sources.replace("name = \"t\"", "name = \"t\"\nmax_sources = 4");
    let t = check(&dynamic).unwrap();
    assert_eq!((t.sources.len(), t.max_sources), (0, 4));
    let e = error(
        &GOOD
            .replace("name = \"t\"", "name = \"t\"\nmax_sources = 1")
            .replace(
                "[stage.mux]",
                "[[source]]\nid = \"cam1\"\nuri = \"file://clip.mp4\"\n\n[stage.mux]",
            ),
    );
    assert!(
        e.contains("max_sources is 1 but the topology declares 2 sources"),
        "{e}"
    );
}

#[test]
fn placement_on_an_undeclared_host_names_the_stage_the_host_and_the_declared_ones() {
    let e = error(&format!(
        "{GOOD}\n[hosts]\ngpu-a = {{ zenoh = \"tcp/10.0.0.2:7447\" }}\n[placement]\ndetect = {{ host = \"gpu-z\" }}\n"
    ));
    assert!(
        e.starts_with("t.toml:")
            && e.contains("detect")
            && e.contains("gpu-z")
            && e.contains("gpu-a"),
        "{e}"
    );
}

#[test]
fn two_stages_on_one_metrics_port_are_refused() {
    let e = error(&format!(
        "{GOOD}\n[placement]\ndetect = {{ metrics_port = 9300 }}\nmux = {{ metrics_port = 9300 }}\n"
    ));
    assert!(
        e.contains("`detect`") && e.contains("`mux`") && e.contains("9300"),
        "{e}"
    );
}

#[test]
fn runtime_keys_do_not_reach_the_stage_kind() {
    let t = check(&GOOD.replace(
        "parser = { type = \"ssd\" }",
        "parser = { type = \"ssd\" }\nreplicas = 3",
    ))
    .unwrap();
    let detect = t.stages.iter().find(|s| s.name == "detect").unwrap();
    assert_eq!(detect.runtime.replicas, 3);
    assert!(!detect.table.contains_key("replicas"));
}

#[test]
fn stages_after_a_tiler_see_its_one_stream_instead_of_the_sources() {
    let text = r#"
[pipeline]
name = "t"
links = [["sources", "mux"], ["mux", "grid"], ["grid", "out"], ["mux", "files"]]

[[source]]
id = "cam0"
uri = "file://clip.mp4"

[[source]]
id = "cam1"
uri = "file://clip.mp4"

[stage.mux]
kind = "mux"

[stage.grid]
kind = "tile"
name = "wall"

[stage.out]
kind = "sink"
uri = "rtsp://127.0.0.1:8554/live"

[stage.files]
kind = "sink"
uri = "file://out/{source}.mp4"
"#;
    let t = check(text).unwrap();
    assert_eq!(t.context("grid").sources, ["cam0", "cam1"]);
    assert_eq!(t.context("out").sources, ["wall"]);
    assert_eq!(t.context("files").sources, ["cam0", "cam1"]);
    assert_eq!(t.context(SOURCES).sources, ["cam0", "cam1"]);
    // One stream: a file sink after the tiler needs no {source} in its path…
    check(&text.replace("rtsp://127.0.0.1:8554/live", "file://out/wall.mp4")).unwrap();
    // …where one fed by both sources does.
    let e = error(&text.replace("out/{source}.mp4", "out/all.mp4"));
    assert!(
        e.contains("stage `files` (sink)") && e.contains("{source}"),
        "{e}"
    );
    // Its picture is made of every source: one instance only.
    let e = error(&text.replace("name = \"wall\"", "name = \"wall\"\nreplicas = 2"));
    assert!(
        e.contains("stage `grid` (tile)") && e.contains("one replica"),
        "{e}"
    );
}

#[test]
fn secret_references_are_expanded_and_a_missing_one_is_named_at_its_entry() {
    std::env::set_var("VIDMESH_TOPOLOGY_TEST_TOPIC", "people");
    let t = check(&GOOD.replace(
        "file://out/events.jsonl",
        "file://out/${env:VIDMESH_TOPOLOGY_TEST_TOPIC}.jsonl",
    ))
    .unwrap();
    let out = t.stages.iter().find(|s| s.name == "out").unwrap();
    assert_eq!(out.table["uri"].as_str(), Some("file://out/people.jsonl"));

    std::env::remove_var("VIDMESH_TOPOLOGY_TEST_ABSENT");
    let e = error(&GOOD.replace(
        "file://clip.mp4",
        "rtsp://u:${env:VIDMESH_TOPOLOGY_TEST_ABSENT}@cam/live",
    ));
    assert!(
        e.starts_with("t.toml:6:1: source #1: `uri`: `${env:VIDMESH_TOPOLOGY_TEST_ABSENT}`"),
        "{e}"
    );
}
