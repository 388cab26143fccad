//! Events to a real RabbitMQ (Debian's rabbitmq-server, a throwaway node per test) through the
//! `amqp://` adapter, read back by an independent client (pika) from a durable queue bound to
//! the exchange before the run: every event arrives once per frame, validated against
//! DeepStream's schema, in order per sensor, with its message id, sensor header and persistent
//! delivery mode; a broker outage mid-run loses nothing; wrong credentials, a missing
//! exchange, unroutable and oversized messages are clear errors while the rest of the pipeline
//! keeps running.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use vidmesh_tests::amqp::{Consumed, RabbitMq, PASSWORD, USER};
use vidmesh_tests::events::{
    self, assert_refused, assert_valid, beside_file_topology, clip_uri, meta_frames, meta_lines,
    Format, ReadBack,
};
use vidmesh_tests::make_clip;
use vidmesh_tests::rtsp::RtspServer;

/// Validates a message against DeepStream's minimal schema and what the adapter promises
/// (routing key and `sensorId` header = the payload's sensor, persistent, JSON), and returns
/// its frame number.
fn minimal_frame(message: &Consumed) -> u64 {
    let payload = assert_valid(Format::Minimal, &message.payload);
    let sensor = payload["sensorId"].as_str();
    assert_eq!(message.sensor_id.as_deref(), sensor, "sensorId header");
    assert_eq!(
        Some(message.routing_key.as_str()),
        sensor,
        "routing key {{sensor}}"
    );
    assert_eq!(message.delivery_mode, Some(2), "persistent");
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    payload["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("frame number in `id`: {payload}"))
}

/// Per sensor, the frame numbers in the order their first copies arrived. Repeats (re-sent
/// after an outage) must carry the message id and payload of the first copy.
fn first_copies(consumed: &[Consumed]) -> BTreeMap<String, Vec<u64>> {
    first_copies_of(consumed, minimal_frame)
}

/// [`first_copies`] with `frame` checking each message and giving its frame number.
fn first_copies_of(
    consumed: &[Consumed],
    frame: impl Fn(&Consumed) -> u64,
) -> BTreeMap<String, Vec<u64>> {
    events::first_copies(consumed, |m| ReadBack {
        id: m
            .message_id
            .clone()
            .expect("every message has a message_id"),
        sensor: m
            .sensor_id
            .clone()
            .expect("every message has a sensorId header"),
        frame: frame(m),
        content: format!("{} {}", m.routing_key, m.payload),
    })
}

#[test]
fn every_frame_reaches_rabbitmq_once_in_order_per_sensor() {
    let rabbit = RabbitMq::start();
    rabbit.declare_queue("analytics", "amq.topic", "#");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 75);
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam-a", &uri), ("cam-b", &uri)],
        &format!("uri = \"{}\", timeout = \"2s\"", rabbit.uri()),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "messages"), Some("150"));
    assert_eq!(summary.fact("events", "delivered"), Some("150"));
    assert_eq!(summary.fact("events", "rejected"), Some("0"));
    assert_eq!(meta_lines(scratch.path()), 150);

    let consumed = rabbit.drain("analytics", 150);
    assert_eq!(consumed.len(), 150, "exactly one message per frame");
    let ids: HashSet<_> = consumed.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len(), 150, "distinct message ids");
    let frames = first_copies(&consumed);
    let expected: Vec<u64> = (0..75).collect();
    assert_eq!(frames.keys().collect::<Vec<_>>(), ["cam-a", "cam-b"]);
    for (sensor, numbers) in &frames {
        assert_eq!(numbers, &expected, "{sensor}: every frame, in order");
    }
}

#[test]
fn a_broker_outage_mid_run_loses_nothing() {
    let mut rabbit = RabbitMq::start();
    rabbit.declare_queue("analytics", "amq.topic", "#");
    let scratch = tempfile::tempdir().unwrap();
    // Two cameras played by an RTSP server at 30 fps: 20 s of video, so the run is still
    // producing when the broker goes away after 4 s and when it comes back 10 s later.
    let camera = scratch.path().join("camera.mp4");
    make_clip(&camera, 600, 320, 240, false);
    let server = RtspServer::serve(&camera, None);
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam-a", &server.url), ("cam-b", &server.url)],
        &format!(
            "uri = \"{}\", timeout = \"1s\", drain_timeout = \"60s\"",
            rabbit.uri()
        ),
    );
    let run = std::thread::spawn(move || common::run_ok(&path));
    std::thread::sleep(Duration::from_secs(4));
    // Read what came so far: events were flowing before the outage. (Consumed messages
    // leave the queue; the rest stays in it, durable and persistent, across the restart.)
    let before = rabbit.drain("analytics", 1);
    assert!(!before.is_empty(), "events were flowing before the outage");
    rabbit.stop();
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    rabbit.restart();
    let summary = run.join().expect("the run finishes");
    assert!(
        outage.elapsed() > Duration::from_secs(11),
        "the run was still going when the broker came back"
    );
    // RTSP over a loaded machine may lose a frame; whatever the pipeline produced (the file
    // output has it all) must reach RabbitMQ.
    let produced = meta_lines(scratch.path());
    assert!(
        produced > 1100,
        "the run produced {produced} of 1200 events"
    );
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

    let mut consumed = before;
    consumed.extend(rabbit.drain("analytics", produced - consumed.len()));
    let frames = first_copies(&consumed);
    assert_eq!(frames.len(), 2, "{:?}", frames.keys());
    assert_eq!(
        frames,
        meta_frames(scratch.path()),
        "every event the pipeline produced arrived, in order per sensor"
    );
    eprintln!(
        "outage: {} messages read for {produced} events ({} repeats), {retries} failed attempts",
        consumed.len(),
        consumed.len() - produced
    );
}

#[test]
fn wrong_credentials_are_refused_clearly_and_nothing_is_lost() {
    let rabbit = RabbitMq::start();
    rabbit.declare_queue("analytics", "amq.topic", "#");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    let events = |password: &str| {
        format!(
            "uri = \"{}\", timeout = \"2s\", drain_timeout = \"10s\"",
            rabbit.uri_as(USER, password)
        )
    };
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam", &uri)],
        &events("wrong-password"),
    );
    let started = Instant::now();
    let summary = common::run_file(&path);
    assert_refused(&summary.errors, scratch.path(), 20, "ACCESS_REFUSED");
    // A refusal ends the drain early instead of waiting out drain_timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let error = &summary.errors[0];
    assert!(
        error.contains(&format!("amqp://{USER}:***@127.0.0.1")),
        "{error}"
    );
    assert!(
        !serde_json::to_string(&summary)
            .unwrap()
            .contains("wrong-password"),
        "the password stays out of the summary"
    );

    // With the right password the spooled messages of the refused run go out first, then
    // this run's: frames 0..20 twice, distinct events (different timestamps), same ids.
    let path = beside_file_topology(scratch.path(), "amqp", &[("cam", &uri)], &events(PASSWORD));
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("40"));
    let consumed = rabbit.drain("analytics", 40);
    let frames: Vec<u64> = consumed.iter().map(minimal_frame).collect();
    let expected: Vec<u64> = (0..20).chain(0..20).collect();
    assert_eq!(frames, expected);
}

#[test]
fn a_missing_exchange_or_an_unbound_routing_key_is_refused_clearly() {
    let rabbit = RabbitMq::start();
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam", &uri)],
        &format!(
            "uri = \"{}\", timeout = \"2s\", drain_timeout = \"10s\", \
             options = {{ exchange = \"no-such-exchange\" }}",
            rabbit.uri()
        ),
    );
    let summary = common::run_file(&path);
    assert_refused(&summary.errors, scratch.path(), 20, "NOT_FOUND");
    assert!(
        summary.errors[0].contains("no-such-exchange"),
        "{}",
        summary.errors[0]
    );

    // The exchange exists but no queue is bound for this camera: with `mandatory` (the
    // default) the broker returns the message, which is reported instead of vanishing.
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    rabbit.declare_queue("other-cameras", "amq.topic", "cam-other");
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam", &uri)],
        &format!(
            "uri = \"{}\", timeout = \"2s\", drain_timeout = \"10s\"",
            rabbit.uri()
        ),
    );
    let summary = common::run_file(&path);
    assert_refused(&summary.errors, scratch.path(), 20, "unroutable");
    // Once a consumer binds a queue, the next run delivers the spooled messages, then its own.
    rabbit.declare_queue("analytics", "amq.topic", "#");
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("40"));
    assert_eq!(rabbit.drain("analytics", 40).len(), 40);
}

#[test]
fn oversized_messages_are_set_aside_and_the_rest_delivered() {
    let rabbit = RabbitMq::start_with(&["max_message_size = 1000"]);
    rabbit.declare_queue("analytics", "amq.topic", "events.#");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    // The sensor id is repeated in every message, so a long one makes each of that camera's
    // messages larger than the 1000 bytes the broker accepts. (A fixed routing key: a
    // 1000-byte one would be refused by AMQP itself, which is another test.)
    let long = format!("cam-{}", "x".repeat(1000));
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam", &uri), (&long, &uri)],
        &format!(
            "uri = \"{}\", timeout = \"2s\", drain_timeout = \"20s\", \
             options = {{ routing_key = \"events.all\" }}",
            rabbit.uri()
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
    let first = rejected.lines().next().unwrap_or_default();
    assert!(first.contains("max_message_size of 1000 bytes"), "{first}");
    // The broker closes the channel over the first large message, losing the acks of the
    // small ones sent just before it: those come again, with the same message ids.
    let frames = first_copies_of(&rabbit.drain("analytics", 20), |m| {
        let payload = assert_valid(Format::Minimal, &m.payload);
        assert_eq!(payload["sensorId"], "cam");
        assert_eq!(m.routing_key, "events.all");
        payload["id"].as_str().unwrap().parse().unwrap()
    });
    assert_eq!(frames.keys().collect::<Vec<_>>(), ["cam"]);
    assert_eq!(frames["cam"], (0..20).collect::<Vec<_>>());
}

#[test]
fn tls_checks_the_brokers_certificate() {
    let rabbit = RabbitMq::start_tls();
    rabbit.declare_queue("analytics", "amq.topic", "#");
    let scratch = tempfile::tempdir().unwrap();
    let uri = clip_uri(scratch.path(), 20);
    // Without the CA that issued the broker's certificate the connection is not trusted...
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam", &uri)],
        &format!(
            "uri = \"{}\", timeout = \"2s\", drain_timeout = \"3s\"",
            rabbit.tls_uri()
        ),
    );
    let summary = common::run_file(&path);
    assert_eq!(
        meta_lines(scratch.path()),
        20,
        "the rest of the pipeline ran"
    );
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(error.contains("certificate"), "{error}");
    assert!(error.contains("kept in the spool"), "{error}");
    // ...with it, the spooled messages and this run's go out over TLS.
    let path = beside_file_topology(
        scratch.path(),
        "amqp",
        &[("cam", &uri)],
        &format!(
            "uri = \"{}\", timeout = \"2s\", options = {{ ca_file = \"{}\" }}",
            rabbit.tls_uri(),
            rabbit.ca_file().display()
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.fact("events", "delivered"), Some("40"));
    // Both runs publish frames 0..20 of the same camera: the same message ids, different
    // events (timestamps).
    let consumed = rabbit.drain("analytics", 40);
    let frames: Vec<u64> = consumed.iter().map(minimal_frame).collect();
    assert_eq!(frames, (0..20).chain(0..20).collect::<Vec<_>>());
}
