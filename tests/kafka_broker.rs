//! Events to a real Kafka broker (tansu, started by each test) through the `kafka://` adapter,
//! read back by an independent client (confluent-kafka): every event arrives once per frame,
//! keyed by sensor, in order per sensor; a broker outage mid-run loses nothing; wrong
//! credentials, an unknown topic and oversized messages are clear errors while the rest of
//! the pipeline keeps running.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use vidmesh_tests::events::{
    self, assert_refused, assert_valid, beside_file_topology, clip_uri, meta_frames, meta_lines,
    Format, ReadBack,
};
use vidmesh_tests::kafka::{Consumed, KafkaBroker};
use vidmesh_tests::make_clip;
use vidmesh_tests::rtsp::RtspServer;

/// Validates a payload against the JSON Schema of DeepStream's minimal format and returns its
/// frame number.
fn minimal_frame(message: &Consumed) -> u64 {
    let payload = assert_valid(Format::Minimal, &message.payload);
    assert_eq!(
        payload["sensorId"].as_str(),
        message.key.as_deref(),
        "the key is the sensor id: {payload}"
    );
    payload["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("frame number in `id`: {payload}"))
}

/// Per sensor, the frame numbers in the order their first copies arrived. Repeats (re-sent
/// after an outage) must carry the message id and payload of the first copy.
fn first_copies(consumed: &[Consumed]) -> BTreeMap<String, Vec<u64>> {
    events::first_copies(consumed, |m| ReadBack {
        id: m.id.clone().expect("every message has a message-id header"),
        sensor: m.key.clone().expect("every message has a key"),
        frame: minimal_frame(m),
        content: format!("{:?} {}", m.key, m.payload),
    })
}

#[test]
fn every_frame_reaches_kafka_once_in_order_per_sensor() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("vidmesh-events", 3);
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 75);
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam-a", &uri), ("cam-b", &uri)],
        &format!(
            "uri = \"kafka://{}/vidmesh-events\", timeout = \"2s\"",
            kafka.bootstrap()
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "messages"), Some("150"));
    assert_eq!(summary.fact("events", "delivered"), Some("150"));
    assert_eq!(summary.fact("events", "rejected"), Some("0"));

    let consumed = kafka.consume("vidmesh-events", 150, None);
    assert_eq!(consumed.len(), 150, "exactly one message per frame");
    let ids: HashSet<_> = consumed.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 150, "distinct message ids");
    let frames = first_copies(&consumed);
    let expected: Vec<u64> = (0..75).collect();
    assert_eq!(frames.keys().collect::<Vec<_>>(), ["cam-a", "cam-b"]);
    for (sensor, numbers) in &frames {
        assert_eq!(numbers, &expected, "{sensor}: every frame, in order");
        let partitions: HashSet<i32> = consumed
            .iter()
            .filter(|m| m.key.as_deref() == Some(sensor))
            .map(|m| m.partition)
            .collect();
        assert_eq!(partitions.len(), 1, "{sensor} stays in one partition");
    }
}

#[test]
fn a_broker_outage_mid_run_loses_nothing() {
    let mut kafka = KafkaBroker::start();
    kafka.create_topic("events", 3);
    let scratch = tempfile::tempdir().unwrap();
    // Two cameras played by an RTSP server at 30 fps: 20 s of video, so the run is still
    // producing when the broker goes away after 4 s and when it comes back 10 s later.
    let camera = scratch.path().join("camera.mp4");
    make_clip(&camera, 600, 320, 240, false);
    let server = RtspServer::serve(&camera, None);
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam-a", &server.url), ("cam-b", &server.url)],
        &format!(
            "uri = \"kafka://{}/events\", timeout = \"1s\", drain_timeout = \"60s\"",
            kafka.bootstrap()
        ),
    );
    let run = std::thread::spawn(move || common::run_ok(&path));
    std::thread::sleep(Duration::from_secs(4));
    let before = kafka.consume("events", 1, None).len();
    kafka.stop();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        !run.is_finished(),
        "the run is still going when the broker comes back"
    );
    kafka.restart();
    let summary = run.join().expect("the run finishes");
    assert_eq!(before, 1, "events were flowing before the outage");
    // What the pipeline produced, as the file:// stage beside the broker got it: on a loaded
    // machine the RTSP source may skip a frame, which is not the broker's business.
    let produced = meta_lines(scratch.path());
    assert!(produced > 1100, "{produced} of 1200 frames");
    assert_eq!(
        summary.fact("events", "messages"),
        Some(produced.to_string().as_str())
    );
    assert_eq!(
        summary.fact("events", "delivered"),
        Some(produced.to_string().as_str())
    );
    let retries: u64 = summary.fact("events", "retries").unwrap().parse().unwrap();
    assert!(retries > 0, "the outage was noticed: {summary:?}");

    let consumed = kafka.consume("events", produced, None);
    assert_eq!(
        first_copies(&consumed),
        meta_frames(scratch.path()),
        "every frame the pipeline produced, once, in order per sensor"
    );
    eprintln!(
        "outage: {} messages read for {produced} events ({} repeats), {retries} failed attempts",
        consumed.len(),
        consumed.len() - produced
    );
}

#[test]
fn wrong_credentials_are_refused_clearly() {
    let mut kafka = KafkaBroker::start();
    kafka.create_user("vidmesh", "right-password");
    kafka.create_topic("events", 1);
    kafka.require_authentication("vidmesh", "right-password");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    let events = |password: &str| {
        format!(
            "uri = \"kafka://vidmesh:{password}@{}/events\", timeout = \"2s\", \
             drain_timeout = \"10s\", options = {{ \"sasl.mechanism\" = \"SCRAM-SHA-512\" }}",
            kafka.bootstrap()
        )
    };
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam", &uri)],
        &events("wrong-password"),
    );
    let summary = common::run_file(&path);
    assert_refused(&summary.errors, scratch.path(), 20, "Authentication");
    let error = &summary.errors[0];
    assert!(error.contains("kafka://vidmesh:***@127.0.0.1"), "{error}");
    assert!(!error.contains("wrong-password"), "{error}");
    assert!(
        !serde_json::to_string(&summary)
            .unwrap()
            .contains("wrong-password"),
        "the password stays out of the summary"
    );

    // With the right password the spooled messages of the refused run go out first, then
    // this run's: frames 0..20 of the same camera twice, as two sets of events (their ids
    // include the ingest time).
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam", &uri)],
        &events("right-password"),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("40"));
    let consumed = kafka.consume("events", 40, None);
    let frames: Vec<u64> = consumed.iter().map(minimal_frame).collect();
    let expected: Vec<u64> = (0..20).chain(0..20).collect();
    assert_eq!(frames, expected);
    let ids: HashSet<_> = consumed.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 40, "two runs, two sets of events");
}

#[test]
fn an_unknown_topic_is_refused_clearly() {
    let kafka = KafkaBroker::start();
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam", &uri)],
        &format!(
            "uri = \"kafka://{}/no-such-topic\", timeout = \"2s\", drain_timeout = \"10s\"",
            kafka.bootstrap()
        ),
    );
    let started = Instant::now();
    let summary = common::run_file(&path);
    assert_refused(&summary.errors, scratch.path(), 20, "Unknown topic");
    // A refusal ends the drain early instead of waiting out drain_timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn oversized_messages_are_set_aside_and_the_rest_delivered() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("events", 2);
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    // The sensor id is repeated in every message, so a long one makes each of that camera's
    // messages larger than the 1000 bytes the producer is told to allow.
    let long = format!("cam-{}", "x".repeat(1000));
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam", &uri), (&long, &uri)],
        &format!(
            "uri = \"kafka://{}/events\", timeout = \"2s\", drain_timeout = \"20s\", \
             options = {{ \"message.max.bytes\" = 1000 }}",
            kafka.bootstrap()
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(
        meta_lines(scratch.path()),
        40,
        "the rest of the pipeline ran"
    );
    assert_eq!(summary.fact("events", "delivered"), Some("20"));
    assert_eq!(summary.fact("events", "rejected"), Some("20"));
    let rejected = std::fs::read_to_string(scratch.path().join("spool/rejected.jsonl"))
        .expect("rejected messages are kept next to the spool");
    assert_eq!(rejected.lines().count(), 20);
    assert!(
        rejected.contains("Broker: Message size too large") || rejected.contains("too large"),
        "{}",
        rejected.lines().next().unwrap_or_default()
    );
    let frames = first_copies(&kafka.consume("events", 20, None));
    assert_eq!(frames.keys().collect::<Vec<_>>(), ["cam"]);
    assert_eq!(frames["cam"], (0..20).collect::<Vec<_>>());
}

/// Runs examples/kafka_people_count.py as a member of `group` until the topic is idle.
fn people_count(kafka: &KafkaBroker, topic: &str, group: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(vidmesh_tests::venv_python())
        .arg(vidmesh_tests::repo_root().join("examples/kafka_people_count.py"))
        .args(["--bootstrap", &kafka.bootstrap(), "--topic", topic])
        .args(["--group", group, "--idle", "5"])
        .output()
        .expect("the example runs");
    assert!(
        out.status.success(),
        "kafka_people_count.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_consumer_groups_each_read_every_event() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("events", 3);
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 30);
    let path = beside_file_topology(
        scratch.path(),
        "kafka",
        &[("cam-a", &uri), ("cam-b", &uri)],
        &format!("uri = \"kafka://{}/events\"", kafka.bootstrap()),
    );
    common::run_ok(&path);
    let per_camera = |report: &[serde_json::Value]| -> Vec<(String, u64)> {
        report
            .iter()
            .map(|c| {
                (
                    c["sensor"].as_str().unwrap().to_string(),
                    c["frames"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected = vec![("cam-a".to_string(), 30), ("cam-b".to_string(), 30)];
    // Two services, each in its own group: both see the whole topic.
    assert_eq!(
        per_camera(&people_count(&kafka, "events", "occupancy")),
        expected
    );
    assert_eq!(
        per_camera(&people_count(&kafka, "events", "dashboard")),
        expected
    );
    // A group resumes from its committed offsets: nothing new for `occupancy` now.
    assert_eq!(
        people_count(&kafka, "events", "occupancy"),
        Vec::<serde_json::Value>::new()
    );
}
