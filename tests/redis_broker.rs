//! Events to a real Redis server (Debian's redis-server, started by the test): every frame's
//! message lands in the stream, in order, with its sensor id; an unreachable server is one clear
//! error before the pipeline starts.

mod common;

use std::process::Command;

use vidmesh_tests::{free_port, make_clip, ServerProcess};

/// A throwaway redis-server on a free loopback port.
struct RedisServer(ServerProcess);

impl RedisServer {
    fn start() -> Self {
        let port = free_port();
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        Self(ServerProcess::start(command, port))
    }

    fn port(&self) -> u16 {
        self.0.port
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn topology(dir: &std::path::Path, clip: &std::path::Path, broker_uri: &str) -> std::path::PathBuf {
    let text = format!(
        "[pipeline]\nname = \"redis\"\nlinks = [[\"sources\", \"mux\"], [\"mux\", \"events\"]]\n\n\
         [[source]]\nid = \"cam7\"\nuri = \"file://{}\"\n\n[stage]\nmux = {{ kind = \"mux\", batch_size = 4 }}\n\
         events = {{ kind = \"broker\", uri = \"{broker_uri}\", schema = \"minimal\", timeout = \"2s\" }}\n",
        clip.display()
    );
    let path = dir.join("redis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_frame_reaches_the_redis_stream_in_order() {
    let redis = RedisServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    make_clip(&clip, 75, 320, 240, false);
    let summary = common::run_ok(&topology(
        scratch.path(),
        &clip,
        &format!("redis://127.0.0.1:{}/vidmesh-events", redis.port()),
    ));
    assert_eq!(summary.fact("events", "messages"), Some("75"));
    assert_eq!(redis.cli(&["XLEN", "vidmesh-events"]).trim(), "75");
    // Entries come back as: id, "sensorId", sensor, "payload", json — one value per line.
    let entries = redis.cli(&["XRANGE", "vidmesh-events", "-", "+"]);
    let payloads: Vec<serde_json::Value> = entries
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(payloads.len(), 75);
    for (n, p) in payloads.iter().enumerate() {
        assert_eq!(p["id"], n.to_string(), "frames arrive in order");
        assert_eq!(p["sensorId"], "cam7");
    }
    assert_eq!(
        entries.lines().filter(|l| *l == "cam7").count(),
        75,
        "sensorId field on every entry"
    );
}

#[test]
fn an_unreachable_redis_is_one_clear_error_before_anything_runs() {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    make_clip(&clip, 5, 320, 240, false);
    let path = topology(
        scratch.path(),
        &clip,
        &format!("redis://user:pw-never-shown@127.0.0.1:{port}/events"),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let topology = vidmesh::Topology::parse(&path, &text, &vidmesh_tests::repo_root()).unwrap();
    let err = vidmesh::run(
        &topology,
        &vidmesh::RunOptions::default(),
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("stage `events` (broker): cannot connect to redis://user:***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("pw-never-shown"), "{err}");
}
