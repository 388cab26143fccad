//! A custom adapter as an external program (`exec://`): the example in
//! examples/adapters/jsonl_file_adapter.py receives every event and confirms it, and events
//! follow DeepStream's schema.

mod common;

use vidmesh_tests::events::{assert_valid, broker_topology, Format};
use vidmesh_tests::{make_clip, repo_root, venv_python};

#[test]
fn the_example_external_adapter_receives_every_event_once() {
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    make_clip(&clip, 40, 320, 240, false);
    let received = scratch.path().join("received.jsonl");
    let broker = format!(
        "uri = \"exec://jsonl\", schema = \"minimal\", spool = \"{}\", \
         options = {{ command = [\"{}\", \"{}\", \"{}\"] }}",
        scratch.path().join("spool").display(),
        venv_python().display(),
        repo_root()
            .join("examples/adapters/jsonl_file_adapter.py")
            .display(),
        received.display()
    );
    let summary = common::run_ok(&broker_topology(scratch.path(), &clip, &broker, false));
    assert_eq!(summary.fact("events", "delivered"), Some("40"));
    assert_eq!(summary.fact("events", "output"), Some("exec://jsonl"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&received)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["sensor"], "cam7");
        let payload = assert_valid(Format::Minimal, &line["payload"].to_string());
        assert_eq!(payload["id"], n.to_string());
    }
    let ids: std::collections::HashSet<&str> =
        lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 40);
}
