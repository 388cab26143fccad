//! Events to a real Redis server (Debian's redis-server, started by the test): every frame's
//! message lands in the stream, in order, with its sensor and message ids; the server going
//! away for 10 s mid-run loses nothing; an unreachable server keeps the events in the spool
//! for the next run and says so.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmesh_tests::events::{assert_all_frames_once_in_order, broker_topology};
use vidmesh_tests::redis::RedisServer;
use vidmesh_tests::{free_port, make_clip};

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
            panic!(
                "the run ended early: {:?}",
                run.join().unwrap().map(|s| s.errors)
            );
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
    let redis = RedisServer::start_on(port);
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
