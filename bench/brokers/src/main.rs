//! `broker-throughput`: how many events per second the broker stage gets confirmed by Kafka
//! (tansu) and MQTT (Mosquitto), against a Python producer (confluent-kafka, paho-mqtt) sending
//! the same payloads with the same guarantees, in the same run, on the same broker.
//!
//! vidmesh's side is the real path of a broker stage minus the video: messages are appended to
//! a durable spool and the delivery thread sends them through the adapter in runs, counting
//! only what the broker confirmed. The Python side is `peer.py`: produce everything, wait for
//! every delivery report / PUBACK. Both start from the same JSON-lines file of full-schema
//! payloads, made here with vidmesh's msgconv from synthetic frames.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vidmesh_actors::broker::adapter::{self, AdapterConfig, Message};
use vidmesh_actors::broker::delivery::Delivery;
use vidmesh_actors::broker::spool::{Spool, SpoolSettings, WhenFull};
use vidmesh_actors::msgconv::{self, config::MsgConvConfig, Schema};
use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta};
use vidmesh_tests::kafka::KafkaBroker;
use vidmesh_tests::mqtt::Mosquitto;

#[derive(Parser)]
struct Args {
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Measurements per side; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Which brokers: kafka, mqtt or both.
    #[arg(long, default_value = "both")]
    only: String,
}

/// Full-schema payloads (one per object, ~4 cameras, 5 people per frame), as the broker stage
/// would publish them.
fn messages(n: usize) -> Vec<Message> {
    let config = MsgConvConfig::default();
    let mut out = Vec::with_capacity(n);
    let mut frame_num = 0u64;
    while out.len() < n {
        let source_id = (frame_num % 4) as u32;
        let frame = FrameMeta {
            source_id,
            source_name: format!("cam-{source_id}"),
            frame_num,
            ingest_ns: 1_700_000_000_000_000_000 + frame_num * 33_333_333,
            width: 1280,
            height: 720,
            objects: (0..5)
                .map(|i| ObjectMeta {
                    label: "person".into(),
                    confidence: 0.8,
                    track_id: Some(i),
                    bbox: BBox::from_corners(10.0 * i as f32, 20.0, 10.0 * i as f32 + 50.0, 140.0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let key = msgconv::publish_key(Schema::Full, &config, &frame).to_string();
        let payloads = msgconv::payloads(Schema::Full, &config, &frame);
        let ids = msgconv::message_ids(Schema::Full, &frame);
        for (payload, id) in payloads.into_iter().zip(ids) {
            out.push(Message {
                key: key.clone(),
                id,
                payload: payload.into_bytes(),
            });
        }
        frame_num += 1;
    }
    out.truncate(n);
    out
}

fn write_messages(path: &Path, messages: &[Message]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for m in messages {
        let line = serde_json::json!({
            "key": m.key,
            "id": m.id,
            "payload": String::from_utf8_lossy(&m.payload),
        });
        writeln!(f, "{line}")?;
    }
    f.flush()?;
    Ok(())
}

/// vidmesh: spool + delivery thread + adapter, until the broker confirmed every message.
fn vidmesh_rate(uri: &str, options: &toml::Table, messages: &[Message]) -> Result<f64> {
    let spool_dir = tempfile::tempdir()?;
    let config = AdapterConfig {
        uri,
        options,
        timeout: Duration::from_secs(10),
        replica: 0,
    };
    let adapter = adapter::open(&config)?.context("a network adapter")?;
    let spool = Spool::open(SpoolSettings::new(
        spool_dir.path().to_path_buf(),
        1 << 30,
        WhenFull::Block,
    ))?;
    let started = Instant::now();
    let delivery = Delivery::start(spool, adapter)?;
    for chunk in messages.chunks(20) {
        // The stage appends one frame's messages at a time; 20 ≈ a batch of 4 frames.
        delivery.submit(chunk)?;
    }
    let stats = delivery.finish(Duration::from_secs(300))?;
    let elapsed = started.elapsed().as_secs_f64();
    if stats.delivered != messages.len() as u64 {
        bail!("{} of {} delivered", stats.delivered, messages.len());
    }
    Ok(messages.len() as f64 / elapsed)
}

fn python_rate(system: &str, target: &str, file: &Path) -> Result<f64> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer.py");
    let out = Command::new(vidmesh_tests::venv_python())
        .arg(&script)
        .args([system, target])
        .arg(file)
        .output()
        .context("running peer.py")?;
    if !out.status.success() {
        bail!("peer.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).with_context(|| format!("peer.py printed `{text}`"))?;
    v["rate"].as_f64().context("rate")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(
    name: &str,
    repeat: usize,
    mut ours: impl FnMut(usize) -> Result<f64>,
    mut peer: impl FnMut(usize) -> Result<f64>,
) -> Result<()> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..repeat {
        // Alternate who goes first so a warming broker favours neither side.
        if round % 2 == 0 {
            a.push(ours(round)?);
            b.push(peer(round)?);
        } else {
            b.push(peer(round)?);
            a.push(ours(round)?);
        }
        eprintln!(
            "{name} round {}: vidmesh {:.0} msg/s, python {:.0} msg/s",
            round + 1,
            a[round],
            b[round]
        );
    }
    let (ours, peer) = (median(a), median(b));
    println!(
        "{name}: vidmesh {ours:.0} msg/s, python {peer:.0} msg/s, ratio {:.2}x",
        ours / peer
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let messages = messages(args.messages);
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join("messages.jsonl");
    write_messages(&file, &messages)?;
    let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
    println!(
        "{} full-schema messages, {} bytes on average, median of {} runs each",
        messages.len(),
        bytes / messages.len(),
        args.repeat
    );

    if args.only == "both" || args.only == "kafka" {
        let kafka = KafkaBroker::start();
        for round in 0..args.repeat {
            kafka.create_topic(&format!("ours-{round}"), 4);
            kafka.create_topic(&format!("peer-{round}"), 4);
        }
        let options = toml::Table::new();
        measure(
            "kafka (tansu, acks=all, idempotent)",
            args.repeat,
            |round| {
                vidmesh_rate(
                    &format!("kafka://{}/ours-{round}", kafka.bootstrap()),
                    &options,
                    &messages,
                )
            },
            |round| {
                python_rate(
                    "kafka",
                    &format!("{}/peer-{round}", kafka.bootstrap()),
                    &file,
                )
            },
        )?;
    }
    if args.only == "both" || args.only == "mqtt" {
        let mosquitto = Mosquitto::start();
        let options = toml::Table::new();
        measure(
            "mqtt (mosquitto, QoS 1)",
            args.repeat,
            |_| {
                vidmesh_rate(
                    &format!("mqtt://127.0.0.1:{}/bench/ours/{{sensor}}", mosquitto.port),
                    &options,
                    &messages,
                )
            },
            |_| {
                python_rate(
                    "mqtt",
                    &format!("127.0.0.1:{}/bench/peer", mosquitto.port),
                    &file,
                )
            },
        )?;
    }
    Ok(())
}
