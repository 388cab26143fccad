//! Events to a real Redis server (Debian's redis-server, started by the test): every frame's
//! message lands in the stream, in order, with its sensor and message ids; the server going
//! away for 10 s mid-run loses nothing; an unreachable server keeps the events in the spool
//! for the next run and says so.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmesh_tests::events::{assert_valid, broker_topology, Format};
use vidmesh_tests::{free_port, make_clip, ServerProcess};

/// A throwaway redis-server on a loopback port, its data (append-only file) in `dir` so a
/// restarted server still has what it confirmed before.
struct RedisServer {
    process: Option<ServerProcess>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Self {
        let mut server = Self {
            process: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            self.dir.path().to_str().unwrap(),
        ]);
        self.process = Some(ServerProcess::start(command, self.port));
    }

    /// Stops the server the way an operator would (SIGTERM: it finishes its append-only file).
    fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
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

    fn len(&self, stream: &str) -> usize {
        self.cli(&["XLEN", stream]).trim().parse().unwrap_or(0)
    }

    /// (sensorId, messageId, payload) of every entry, in stream order.
    fn entries(&self, stream: &str) -> Vec<(String, String, String)> {
        let script = format!(
            "import json,redis\n\
             r=redis.Redis(port={})\n\
             for _id,f in r.xrange('{stream}'):\n\
             \x20   print(json.dumps([f[b'sensorId'].decode(),f[b'messageId'].decode(),f[b'payload'].decode()]))",
            self.port
        );
        let out = Command::new(vidmesh_tests::venv_python())
            .args(["-c", &script])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn broker(port: u16, scratch: &Path, extra: &str) -> String {
    format!(
        "uri = \"redis://127.0.0.1:{port}/vidmesh-events\", schema = \"minimal\", timeout = \"2s\", \
         spool = \"{}\"{extra}",
        scratch.join("spool").display()
    )
}

fn parse_and_run(path: &Path) -> Result<vidmesh::RunSummary, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let topology = vidmesh::Topology::parse(path, &text, &vidmesh_tests::repo_root())
        .map_err(|e| e.to_string())?;
    vidmesh::run(
        &topology,
        &vidmesh::RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| e.to_string())
}

/// Checks what an independent client reads: `frames` distinct messages, each a valid minimal
/// payload, first seen in frame order; a repeat has the same message id and payload.
fn assert_all_frames_once_in_order(entries: &[(String, String, String)], frames: usize) {
    let mut seen = HashSet::new();
    let mut first_seen = Vec::new();
    let mut payload_of = std::collections::HashMap::new();
    for (sensor, id, payload) in entries {
        assert_eq!(sensor, "cam7");
        let v = assert_valid(Format::Minimal, payload);
        assert_eq!(v["sensorId"], "cam7");
        if let Some(earlier) = payload_of.insert(id.clone(), payload.clone()) {
            assert_eq!(&earlier, payload, "a repeated message id carries the same payload");
        }
        if seen.insert(id.clone()) {
            first_seen.push(v["id"].as_str().unwrap().parse::<usize>().unwrap());
        }
    }
    assert_eq!(first_seen, (0..frames).collect::<Vec<_>>());
}

#[test]
fn every_frame_reaches_the_redis_stream_in_order() {
    let redis = RedisServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    make_clip(&clip, 75, 320, 240, false);
    let summary = common::run_ok(&broker_topology(
        scratch.path(),
        &clip,
        &broker(redis.port, scratch.path(), ""),
        false,
    ));
    assert_eq!(summary.fact("events", "messages"), Some("75"));
    assert_eq!(summary.fact("events", "delivered"), Some("75"));
    let entries = redis.entries("vidmesh-events");
    assert_eq!(entries.len(), 75, "no repeats without an outage");
    assert_all_frames_once_in_order(&entries, 75);
}

#[test]
fn a_redis_outage_mid_run_loses_nothing() {
    let mut redis = RedisServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    // 150 frames at 30 fps, paced by a real-time sink: 5 s of events.
    make_clip(&clip, 150, 320, 240, false);
    let path = broker_topology(
        scratch.path(),
        &clip,
        &broker(redis.port, scratch.path(), ", drain_timeout = \"60s\""),
        true,
    );
    let run = std::thread::spawn(move || parse_and_run(&path));
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.len("vidmesh-events") < 10 {
        if run.is_finished() {
            panic!("the run ended early: {:?}", run.join().unwrap().map(|s| s.errors));
        }
        assert!(Instant::now() < deadline, "no events reached Redis");
        std::thread::sleep(Duration::from_millis(50));
    }
    redis.stop();
    std::thread::sleep(Duration::from_secs(10));
    redis.restart();
    let summary = run.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.fact("events", "messages"), Some("150"));
    let retries: u64 = summary.fact("events", "retries").unwrap().parse().unwrap();
    assert!(retries > 0, "the outage was seen");
    let entries = redis.entries("vidmesh-events");
    assert!(entries.len() >= 150);
    assert_all_frames_once_in_order(&entries, 150);
}

#[test]
fn an_unreachable_redis_keeps_the_events_for_the_next_run() {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    make_clip(&clip, 20, 320, 240, false);
    let unreachable = broker_topology(
        scratch.path(),
        &clip,
        &format!(
            "uri = \"redis://user:pw-never-shown@127.0.0.1:{port}/vidmesh-events\", \
             schema = \"minimal\", timeout = \"1s\", spool = \"{}\", drain_timeout = \"2s\"",
            scratch.path().join("spool").display()
        ),
        false,
    );
    let summary = common::run_file(&unreachable);
    let errors = format!("{:?}", summary.errors);
    assert!(
        errors.contains("20 messages not delivered to redis://user:***@127.0.0.1")
            && errors.contains("kept in the spool"),
        "{errors}"
    );
    assert!(!errors.contains("pw-never-shown"), "{errors}");
    assert_eq!(summary.fact("events", "messages"), None, "the stage failed");

    // The server comes up; the next run (no new frames needed) delivers the kept events first.
    let redis = RedisServer {
        process: Some(ServerProcess::start(
            {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
                c
            },
            port,
        )),
        port,
        dir: tempfile::tempdir().unwrap(),
    };
    let summary = common::run_ok(&broker_topology(
        scratch.path(),
        &clip,
        &broker(port, scratch.path(), ""),
        false,
    ));
    assert_eq!(summary.fact("events", "recovered"), Some("20"));
    let entries = redis.entries("vidmesh-events");
    assert_eq!(entries.len(), 40);
    // The kept events of the first run come first, then the second run's: each run's frames
    // in order, and new ids for the new run.
    assert_all_frames_once_in_order(&entries[..20], 20);
    assert_all_frames_once_in_order(&entries[20..], 20);
    let ids: HashSet<&str> = entries.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 40);
}
