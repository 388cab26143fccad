//! `broker`: publishes one message per frame (`minimal`, `native`) or per object (`full`),
//! schemas from [`crate::msgconv`], to an outside system, like nvmsgconv + nvmsgbroker.
//! `format = "protobuf"` publishes one binary `vidmesh.events.v1.Frame` per frame instead
//! ([`msgconv::protobuf`]).
//!
//! `file://PATH` writes JSON lines directly. Every network adapter ([`adapter`]) sits behind
//! a durable spool ([`spool`]) and a delivery thread ([`delivery`]): `on_batch` only appends to
//! the spool, so a slow or absent broker never stalls the pipeline until the spool is full,
//! and what was accepted survives broker outages and a SIGKILL of the stage. At the end of
//! the run the stage waits up to `drain_timeout` for the broker to confirm the rest.
//!
//! A replacement for an instance that stopped mid-stream ([`BuildContext::resume`]) appends
//! to a `file://` output instead of truncating it, and finds the unconfirmed messages of a
//! network adapter in the same spool directory.

pub mod adapter;
mod amqp;
mod azure_iot;
pub mod delivery;
mod file;
mod kafka;
mod mqtt;
mod process;
mod redis;
pub mod spool;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vidmesh_protocol::{Batch, StreamEnd};

use self::adapter::{AdapterConfig, Message};
use self::delivery::Delivery;
use self::spool::{Spool, SpoolSettings, WhenFull};
use crate::msgconv::config::MsgConvConfig;
use crate::msgconv::{self, Schema};
use crate::registry::{Delivery as Routing, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport, StageValue, ValueKind};

pub const KIND: StageKind = StageKind {
    name: "broker",
    delivery: Routing::PER_SOURCE_ORDERED,
    summary: "publish metadata in DeepStream's nvmsgconv schemas (file, Kafka, MQTT, Azure IoT, AMQP, Redis)",
    check: |t, ctx| {
        let s = Settings::load(t)?;
        adapter::open(&s.adapter_config(ctx))?;
        s.msgconv_config(ctx).map(|_| ())
    },
    build: |t, ctx| {
        let s = Settings::load(t)?;
        let output = match adapter::open(&s.adapter_config(ctx))? {
            None => {
                let path = ctx.resolve(&settings::file_uri_path(&s.uri)?);
                Output::File(if ctx.resume.is_some() {
                    file::JsonLinesFile::append(&path)?
                } else {
                    file::JsonLinesFile::create(&path)?
                })
            }
            Some(adapter) => {
                let spool = Spool::open(SpoolSettings::new(
                    s.spool_dir(ctx),
                    s.spool_max_mb.saturating_mul(1 << 20),
                    s.when_full,
                ))?;
                Output::Spooled(Delivery::start(spool, adapter)?)
            }
        };
        let config = s.msgconv_config(ctx)?;
        Ok(Box::new(Broker {
            output: Some(output),
            settings: s,
            config,
            stats: Stats::default(),
        }))
    },
    makes_streams: None,
};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where to publish: `file://PATH` (JSON lines) or `redis://[user:pass@]HOST[:PORT]/STREAM`.
    /// Required.
    pub uri: String,
    /// "json" (default): the JSON `schema` below; "protobuf": one binary
    /// `vidmesh.events.v1.Frame` per frame (proto/vidmesh/events/v1/frame.proto), which takes
    /// the place of `schema`. Not named `payload`: every stage's `payload` key is the
    /// launcher's (how pixels reach the stage).
    #[serde(default)]
    pub format: MessageFormat,
    /// "minimal" (default), "native" or "full".
    #[serde(default)]
    pub schema: Schema,
    /// The msgconv config file (sensor, place, analytics module per source index) for the
    /// `full` schema; relative to the topology. Optional.
    #[serde(default)]
    pub config: Option<String>,
    /// Publish every Nth frame of each source (nvmsgconv `frame-interval`). Default 1.
    #[serde(default = "one")]
    pub frame_interval: u64,
    /// Adapter-specific settings (e.g. librdkafka properties, MQTT QoS); see docs/BROKERS.md.
    #[serde(default)]
    pub options: toml::Table,
    /// Network adapters: how long to wait for the broker (connect, confirmations). Default "5s".
    #[serde(default = "timeout_default", with = "humantime_serde")]
    pub timeout: Duration,
    /// Network adapters: the spool directory, relative to the working directory. Default
    /// `.vidmesh/spool/<stage>` (`<stage>-<replica>` for replicas above 0).
    #[serde(default)]
    pub spool: Option<String>,
    /// Network adapters: the spool's size bound in MiB. Default 1024.
    #[serde(default = "spool_max_mb_default")]
    pub spool_max_mb: u64,
    /// Network adapters: "block" (default: wait for the broker, lose nothing), "drop_oldest"
    /// or "fail", when the spool is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Network adapters: how long the end of the run waits for the broker to confirm what
    /// is still in the spool. Default "30s".
    #[serde(default = "drain_timeout_default", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// How messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// Text in one of msgconv's JSON schemas.
    #[default]
    Json,
    /// [`msgconv::protobuf::Frame`], binary.
    Protobuf,
}

fn one() -> u64 {
    1
}
fn timeout_default() -> Duration {
    Duration::from_secs(5)
}
fn spool_max_mb_default() -> u64 {
    1024
}
fn drain_timeout_default() -> Duration {
    Duration::from_secs(30)
}

impl Settings {
    fn load(t: &toml::Table) -> Result<Self, StageError> {
        let s: Settings = settings::parse(t)?;
        if s.frame_interval == 0 {
            return Err(StageError::Settings(
                "frame_interval must be at least 1".into(),
            ));
        }
        if s.config.is_some() && s.schema != Schema::Full {
            return Err(StageError::Settings(
                "`config` is only used by schema = \"full\"".into(),
            ));
        }
        if s.format == MessageFormat::Protobuf {
            // `schema` has a default, so whether the user wrote it is only in the table.
            if t.contains_key("schema") {
                return Err(StageError::Settings(
                    "`schema` does not apply to format = \"protobuf\" (one vidmesh.events.v1.Frame \
                     per frame replaces the JSON schemas); leave it out"
                        .into(),
                ));
            }
            if matches!(s.uri.split_once("://"), Some(("file", _)) | None) {
                return Err(StageError::Settings(format!(
                    "format = \"protobuf\" cannot go to `{}`: file:// writes JSON lines, which \
                     cannot hold binary payloads; use a network adapter or format = \"json\"",
                    s.uri
                )));
            }
        }
        if s.spool_max_mb == 0 {
            return Err(StageError::Settings(
                "spool_max_mb must be at least 1".into(),
            ));
        }
        Ok(s)
    }

    fn adapter_config(&self, ctx: &BuildContext) -> AdapterConfig<'_> {
        AdapterConfig {
            uri: &self.uri,
            options: &self.options,
            timeout: self.timeout,
            replica: ctx.replica,
        }
    }

    fn spool_dir(&self, ctx: &BuildContext) -> PathBuf {
        match &self.spool {
            Some(dir) => ctx.resolve(dir),
            None if ctx.replica == 0 => ctx.resolve(&format!(".vidmesh/spool/{}", ctx.stage_name)),
            None => ctx.resolve(&format!(
                ".vidmesh/spool/{}-{}",
                ctx.stage_name, ctx.replica
            )),
        }
    }

    /// Loads and checks the msgconv config; empty without one.
    fn msgconv_config(&self, ctx: &BuildContext) -> Result<MsgConvConfig, StageError> {
        let Some(path) = &self.config else {
            return Ok(MsgConvConfig::default());
        };
        let path = ctx.resolve(path);
        let config = MsgConvConfig::load(&path)?;
        config.check_sources(&path, ctx.sources.len())?;
        Ok(config)
    }
}

/// Where messages go: straight to a local file, or through the spool to a broker.
enum Output {
    File(file::JsonLinesFile),
    Spooled(Delivery),
}

#[derive(Debug, Default)]
struct Stats {
    messages: u64,
}

struct Broker {
    settings: Settings,
    config: MsgConvConfig,
    /// `None` once finished.
    output: Option<Output>,
    stats: Stats,
}

impl Broker {
    fn output(&mut self) -> Result<&mut Output, StageError> {
        self.output
            .as_mut()
            .ok_or_else(|| StageError::Runtime("the broker stage has already finished".into()))
    }
}

impl Stage for Broker {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        let schema = self.settings.schema;
        let mut messages = Vec::new();
        for frame in &batch.frames {
            if frame.frame_num % self.settings.frame_interval != 0 {
                continue;
            }
            if self.settings.format == MessageFormat::Protobuf {
                let message = msgconv::protobuf::frame_message(frame);
                messages.push(Message {
                    key: frame.source_name.clone(),
                    id: message.message_id.clone(),
                    payload: prost::Message::encode_to_vec(&message),
                });
                continue;
            }
            let key = msgconv::publish_key(schema, &self.config, frame);
            let payloads = msgconv::payloads(schema, &self.config, frame);
            let ids = msgconv::message_ids(schema, frame);
            messages.extend(payloads.into_iter().zip(ids).map(|(payload, id)| Message {
                key: key.to_string(),
                id,
                payload: payload.into_bytes(),
            }));
        }
        self.stats.messages += messages.len() as u64;
        match self.output()? {
            Output::File(file) => file.write(&messages)?,
            Output::Spooled(delivery) => delivery.submit(&messages)?,
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.flush()?;
        out.end_of_stream(end.clone())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        match self.output()? {
            Output::File(file) => file.flush(),
            Output::Spooled(delivery) => delivery.sync(),
        }
    }

    fn values(&self) -> Vec<StageValue> {
        let mut values = vec![StageValue::new(
            "broker_messages_total",
            "Messages the broker stage produced from frame metadata.",
            ValueKind::Counter,
            self.stats.messages as f64,
        )];
        if let Some(Output::Spooled(delivery)) = &self.output {
            let s = delivery.stats();
            values.extend([
                StageValue::new(
                    "broker_delivered_total",
                    "Messages the broker confirmed.",
                    ValueKind::Counter,
                    s.delivered as f64,
                ),
                StageValue::new(
                    "broker_rejected_total",
                    "Messages the broker refused for good (set aside in rejected.jsonl).",
                    ValueKind::Counter,
                    s.rejected as f64,
                ),
                StageValue::new(
                    "broker_retries_total",
                    "Failed publish attempts, each retried.",
                    ValueKind::Counter,
                    s.retries as f64,
                ),
                StageValue::new(
                    "broker_dropped_total",
                    "Unconfirmed messages deleted because the spool was full (drop_oldest).",
                    ValueKind::Counter,
                    s.spool.dropped as f64,
                ),
                StageValue::new(
                    "broker_spool_messages",
                    "Messages in the spool not yet confirmed by the broker.",
                    ValueKind::Gauge,
                    s.spool.pending as f64,
                ),
                StageValue::new(
                    "broker_spool_bytes",
                    "Size of the spool on disk.",
                    ValueKind::Gauge,
                    s.spool.bytes as f64,
                ),
                StageValue::new(
                    "broker_up",
                    "1 while the last delivery attempt succeeded, 0 while the broker fails.",
                    ValueKind::Gauge,
                    if s.failing.is_some() { 0.0 } else { 1.0 },
                ),
            ]);
        }
        values
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        let report = StageReport::default().with("messages", self.stats.messages);
        match self.output.take() {
            Some(Output::File(mut file)) => {
                file.flush()?;
                Ok(report.with("output", file.describe()))
            }
            Some(Output::Spooled(delivery)) => {
                let destination = delivery.destination().to_string();
                let stats = delivery.finish(self.settings.drain_timeout)?;
                Ok(report
                    .with("delivered", stats.delivered)
                    .with("rejected", stats.rejected)
                    .with("retries", stats.retries)
                    .with("dropped", stats.spool.dropped)
                    .with("recovered", stats.spool.recovered)
                    .with("output", destination))
            }
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{FrameMeta, ObjectMeta};

    fn ctx(dir: &std::path::Path) -> BuildContext {
        BuildContext {
            replica: 0,
            stage_name: "events".into(),
            base_dir: dir.to_path_buf(),
            sources: vec!["street".into()],
            resume: None,
            peers: Default::default(),
        }
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn unknown_broker_schemes_are_named_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let t = table("kind = \"broker\"\nuri = \"nats://u:secret@h:4222/t\"\n");
        let err = (KIND.check)(&t, &ctx(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("unsupported broker URI scheme `nats`") && err.contains("kafka, mqtt"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }

    fn frame(frame_num: u64, objects: usize) -> FrameMeta {
        FrameMeta {
            source_name: "street".into(),
            frame_num,
            objects: (0..objects)
                .map(|i| ObjectMeta {
                    label: "person".into(),
                    track_id: Some(i as u64),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn full_schema_writes_one_line_per_object() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("msgconv.toml"),
            "[[sensor]]\nindex = 0\nid = \"CAM-0\"\n",
        )
        .unwrap();
        let t = table(
            "kind = \"broker\"\nuri = \"file://events.jsonl\"\nschema = \"full\"\nconfig = \"msgconv.toml\"\n",
        );
        (KIND.check)(&t, &ctx(dir.path())).unwrap();
        let mut broker = (KIND.build)(&t, &ctx(dir.path())).unwrap();
        let mut out = Outputs::new(Vec::new());
        let batch = Batch {
            frames: vec![frame(0, 2), frame(1, 0), frame(2, 1)],
            ..Default::default()
        };
        broker.on_batch(batch, &mut out).unwrap();
        let report = broker.on_finish(&mut out).unwrap();
        assert!(report
            .facts
            .iter()
            .any(|(k, v)| k == "messages" && v == "3"));
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|v| v["sensor"]["id"] == "CAM-0"));
        let ids: Vec<&str> = lines
            .iter()
            .map(|v| v["object"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["0", "1", "0"]);
        assert_ne!(lines[0]["messageid"], lines[2]["messageid"]);
    }

    #[test]
    fn a_replacement_appends_to_the_file_and_a_fresh_start_truncates_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = table("kind = \"broker\"\nuri = \"file://events.jsonl\"\nschema = \"native\"\n");
        let run = |ctx: &BuildContext, frames: std::ops::Range<u64>| {
            let mut broker = (KIND.build)(&t, ctx).unwrap();
            let mut out = Outputs::new(Vec::new());
            let batch = Batch {
                frames: frames.map(|n| frame(n, 1)).collect(),
                ..Default::default()
            };
            broker.on_batch(batch, &mut out).unwrap();
            broker.on_finish(&mut out).unwrap();
        };
        let frame_nums = || -> Vec<u64> {
            std::fs::read_to_string(dir.path().join("events.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["frame_num"].as_u64().unwrap()
                })
                .collect()
        };
        let fresh = ctx(dir.path());
        let resumed = BuildContext {
            resume: Some(crate::stage::Resume::default()),
            ..ctx(dir.path())
        };
        run(&fresh, 0..3);
        run(&resumed, 2..5);
        assert_eq!(frame_nums(), [0, 1, 2, 2, 3, 4]);
        run(&fresh, 7..8);
        assert_eq!(frame_nums(), [7]);
    }

    #[test]
    fn protobuf_payloads_refuse_json_only_settings() {
        let dir = tempfile::tempdir().unwrap();
        let check = |text: &str| (KIND.check)(&table(text), &ctx(dir.path()));
        let e = check("uri = \"file://e.jsonl\"\nformat = \"protobuf\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot hold binary payloads"), "{e}");
        let with_schema = "uri = \"redis://h/s\"\nformat = \"protobuf\"\nschema = \"full\"\n";
        let e = check(with_schema).unwrap_err().to_string();
        assert!(e.contains("`schema` does not apply"), "{e}");
        check("uri = \"redis://127.0.0.1:1/s\"\nformat = \"protobuf\"\n").unwrap();
        let e = check("uri = \"redis://127.0.0.1:1/s\"\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xml"), "{e}");
    }

    #[test]
    fn config_errors_are_caught_at_check_time() {
        let dir = tempfile::tempdir().unwrap();
        let missing =
            table("uri = \"file://e.jsonl\"\nschema = \"full\"\nconfig = \"missing.toml\"\n");
        let e = (KIND.check)(&missing, &ctx(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");

        std::fs::write(dir.path().join("m.toml"), "[[sensor]]\nindex = 1\n").unwrap();
        let bad_index = table("uri = \"file://e.jsonl\"\nschema = \"full\"\nconfig = \"m.toml\"\n");
        let e = (KIND.check)(&bad_index, &ctx(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.toml") && e.contains("index 1"), "{e}");

        let not_full = table("uri = \"file://e.jsonl\"\nconfig = \"m.toml\"\n");
        let e = (KIND.check)(&not_full, &ctx(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only used by schema"), "{e}");
    }
}
