//! Events to a real MQTT broker (Mosquitto, started by each test) through the `mqtt://`
//! adapter, read back by an independent client (paho-mqtt): every event arrives once per frame,
//! on its sensor's topic, in order per sensor, for MQTT 5 and 3.1.1 and QoS 1 and 2; a broker
//! outage mid-run loses nothing; wrong credentials and oversized messages are clear errors
//! while the rest of the pipeline keeps running.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use vidmesh_tests::events::{
    self, assert_refused, beside_file_topology, clip_uri, meta_frames, meta_lines, ReadBack,
};
use vidmesh_tests::make_clip;
use vidmesh_tests::mqtt::{Mosquitto, MosquittoConfig, Received};
use vidmesh_tests::rtsp::RtspServer;

/// Validates a message against DeepStream's minimal schema and returns its sensor id and
/// frame number.
fn sensor_and_frame(message: &Received) -> (String, u64) {
    events::minimal_sensor_and_frame(&message.payload)
}

/// Per sensor, the frame numbers in the order their first copies arrived. Repeats (sent again
/// after an outage) must carry the message id, topic and payload of the first copy.
fn first_copies(received: &[Received]) -> BTreeMap<String, Vec<u64>> {
    events::first_copies(received, |m| {
        let (sensor, frame) = sensor_and_frame(m);
        ReadBack {
            id: m.id.clone().expect("every MQTT 5 message has a message-id"),
            sensor,
            frame,
            content: format!("{} {}", m.topic, m.payload),
        }
    })
}

#[test]
fn every_frame_reaches_mqtt_5_once_on_its_sensors_topic_in_order() {
    let mosquitto = Mosquitto::start();
    mosquitto.subscribe("reader", "vidmesh/+/events", "5");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 75);
    let path = beside_file_topology(
        scratch.path(),
        "mqtt",
        &[("cam-a", &uri), ("cam-b", &uri)],
        &format!(
            "uri = \"mqtt://127.0.0.1:{}/vidmesh/{{sensor}}/events\", timeout = \"2s\", \
             options = {{ protocol = \"5\" }}",
            mosquitto.port
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "messages"), Some("150"));
    assert_eq!(summary.fact("events", "delivered"), Some("150"));
    assert_eq!(summary.fact("events", "rejected"), Some("0"));

    let received = mosquitto.consume("reader", "vidmesh/+/events", "5", 150);
    assert_eq!(received.len(), 150, "exactly one message per frame");
    let ids: HashSet<_> = received.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 150, "distinct message ids");
    for m in &received {
        let (sensor, _) = sensor_and_frame(m);
        assert_eq!(m.topic, format!("vidmesh/{sensor}/events"));
        assert_eq!(m.qos, 1);
    }
    let frames = first_copies(&received);
    assert_eq!(frames.keys().collect::<Vec<_>>(), ["cam-a", "cam-b"]);
    for (sensor, numbers) in &frames {
        assert_eq!(
            numbers,
            &(0..75).collect::<Vec<_>>(),
            "{sensor}: every frame, in order"
        );
    }
}

#[test]
fn mqtt_3_1_1_with_qos_2_delivers_every_frame_in_order() {
    let mosquitto = Mosquitto::start();
    mosquitto.subscribe("reader", "events", "3.1.1");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 60);
    let path = beside_file_topology(
        scratch.path(),
        "mqtt",
        &[("cam", &uri)],
        &format!(
            "uri = \"mqtt://127.0.0.1:{}/events\", timeout = \"2s\", \
             options = {{ qos = 2, protocol = \"3.1.1\", client_id = \"vidmesh-qos2\" }}",
            mosquitto.port
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("60"));
    let received = mosquitto.consume("reader", "events", "3.1.1", 60);
    let frames: Vec<u64> = received.iter().map(|m| sensor_and_frame(m).1).collect();
    assert_eq!(
        frames,
        (0..60).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    assert!(
        received.iter().all(|m| m.id.is_none()),
        "MQTT 3.1.1 has no properties"
    );
    assert!(
        mosquitto.log().contains("as vidmesh-qos2"),
        "the configured client id: {}",
        mosquitto.log()
    );
}

#[test]
fn a_broker_outage_mid_run_loses_nothing() {
    let mut mosquitto = Mosquitto::start();
    mosquitto.subscribe("reader", "events/#", "5");
    mosquitto.subscribe("probe", "events/#", "5");
    let scratch = tempfile::tempdir().unwrap();
    // Two cameras played by an RTSP server at 30 fps: 20 s of video, so the run is still
    // producing when the broker goes away after 4 s and when it comes back 10 s later.
    let camera = scratch.path().join("camera.mp4");
    make_clip(&camera, 600, 320, 240, false);
    let server = RtspServer::serve(&camera, None);
    let path = beside_file_topology(
        scratch.path(),
        "mqtt",
        &[("cam-a", &server.url), ("cam-b", &server.url)],
        &format!(
            "uri = \"mqtt://127.0.0.1:{}/events/{{sensor}}\", timeout = \"1s\", \
             drain_timeout = \"60s\", options = {{ protocol = \"5\" }}",
            mosquitto.port
        ),
    );
    let run = std::thread::spawn(move || common::run_ok(&path));
    std::thread::sleep(Duration::from_secs(4));
    let before = mosquitto.consume("probe", "events/#", "5", 1).len();
    mosquitto.stop();
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    mosquitto.restart();
    let summary = run.join().expect("the run finishes");
    assert!(
        outage.elapsed() > Duration::from_secs(11),
        "the run was still going when the broker came back"
    );
    assert!(before >= 1, "events were flowing before the outage");
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

    let received = mosquitto.consume("reader", "events/#", "5", produced);
    assert_eq!(
        first_copies(&received),
        meta_frames(scratch.path()),
        "every frame the pipeline produced, once, in order per sensor"
    );
    eprintln!(
        "outage: {} messages read for {produced} events ({} repeats), {retries} failed attempts",
        received.len(),
        received.len().saturating_sub(produced)
    );
}

#[test]
fn wrong_credentials_are_refused_clearly() {
    let mosquitto = Mosquitto::start_with(MosquittoConfig {
        users: vec![
            ("reader".into(), "reader-password".into()),
            ("vidmesh".into(), "right-password".into()),
        ],
        ..Default::default()
    });
    mosquitto.subscribe("reader", "events", "3.1.1");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    let events = |password: &str| {
        format!(
            "uri = \"mqtt://vidmesh:{password}@127.0.0.1:{}/events\", timeout = \"2s\", \
             drain_timeout = \"10s\"",
            mosquitto.port
        )
    };
    let started = Instant::now();
    let path = beside_file_topology(
        scratch.path(),
        "mqtt",
        &[("cam", &uri)],
        &events("wrong-password"),
    );
    let summary = common::run_file(&path);
    assert_refused(
        &summary.errors,
        scratch.path(),
        20,
        "refused the connection",
    );
    let error = &summary.errors[0];
    assert!(
        error.contains("not authorised") || error.contains("bad user name or password"),
        "{error}"
    );
    assert!(error.contains("mqtt://vidmesh:***@127.0.0.1"), "{error}");
    assert!(!error.contains("wrong-password"), "{error}");
    assert!(
        !serde_json::to_string(&summary)
            .unwrap()
            .contains("wrong-password"),
        "the password stays out of the summary"
    );
    // A refusal ends the drain early instead of waiting out drain_timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // With the right password the spooled messages of the refused run go out first, then
    // this run's.
    let path = beside_file_topology(
        scratch.path(),
        "mqtt",
        &[("cam", &uri)],
        &events("right-password"),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("40"));
    let received = mosquitto.consume("reader", "events", "3.1.1", 40);
    let frames: Vec<u64> = received.iter().map(|m| sensor_and_frame(m).1).collect();
    let expected: Vec<u64> = (0..20).chain(0..20).collect();
    assert_eq!(frames, expected);
}

/// Runs 20 frames of a normal camera and 20 of one whose long sensor id makes every message
/// larger than 1000 bytes, and checks that exactly the large ones were set aside.
fn oversized_run(mosquitto: &Mosquitto, protocol: &str, options: &str, why: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    let long = format!("cam-{}", "x".repeat(1000));
    let path = beside_file_topology(
        scratch.path(),
        "mqtt",
        &[("cam", &uri), (&long, &uri)],
        &format!(
            "uri = \"mqtt://127.0.0.1:{}/events\", timeout = \"2s\", drain_timeout = \"20s\", \
             options = {{ protocol = \"{protocol}\"{options} }}",
            mosquitto.port
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
        rejected.contains(why),
        "{}",
        rejected.lines().next().unwrap_or_default()
    );
    let received = mosquitto.consume("reader", "events", "3.1.1", 20);
    let frames: Vec<(String, u64)> = received.iter().map(sensor_and_frame).collect();
    let expected: Vec<(String, u64)> = (0..20).map(|n| ("cam".to_string(), n)).collect();
    assert_eq!(frames, expected);
}

#[test]
fn oversized_messages_are_set_aside_and_the_rest_delivered() {
    let mosquitto = Mosquitto::start_with(MosquittoConfig {
        max_packet_size: Some(1000),
        ..Default::default()
    });
    mosquitto.subscribe("reader", "events", "3.1.1");
    // MQTT 5: Mosquitto announces its limit in CONNACK.
    oversized_run(&mosquitto, "5", "", "more than the 1000 the broker takes");
    // MQTT 3.1.1 cannot announce it (Mosquitto would just drop the connection), so the
    // option tells the adapter.
    oversized_run(
        &mosquitto,
        "3.1.1",
        ", max_packet_size = 1000",
        "more than the 1000 the broker takes",
    );
}
