//! `broker`: publishes one message per frame (`minimal`, `native`) or per object (`full`),
//! schemas from [`crate::msgconv`], to an outside system, like nvmsgconv + nvmsgbroker.
//! Adapters sit behind [`Publisher`]: `file://PATH` writes JSON lines, flushed and synced when
//! a stream ends; `redis://HOST[:PORT]/STREAM` appends to a Redis stream, each message
//! confirmed by the server.
//!
//! The stage is stateless. A replacement for an instance that stopped mid-stream
//! ([`BuildContext::resume`]) appends to the file instead of truncating it: the earlier lines
//! stay, and the reader deduplicates messages published again.

mod file;
mod redis;

use serde::Deserialize;
use vidmesh_protocol::{Batch, StreamEnd};

use crate::msgconv::config::MsgConvConfig;
use crate::msgconv::{self, Schema};
use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport};

pub const KIND: StageKind = StageKind {
    name: "broker",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "publish metadata in DeepStream's nvmsgconv schemas (file:// JSON lines)",
    check: |t, ctx| {
        let s = Settings::load(t)?;
        s.target(ctx)?;
        s.msgconv_config(ctx).map(|_| ())
    },
    build: |t, ctx| {
        let s = Settings::load(t)?;
        let publisher: Box<dyn Publisher> = match s.target(ctx)? {
            Target::File(path) if ctx.resume.is_some() => {
                Box::new(file::JsonLinesFile::append(&path)?)
            }
            Target::File(path) => Box::new(file::JsonLinesFile::create(&path)?),
            Target::Redis(target) => {
                Box::new(redis::RedisStream::connect(target, s.maxlen, s.timeout)?)
            }
        };
        let config = s.msgconv_config(ctx)?;
        Ok(Box::new(Broker {
            publisher,
            settings: s,
            config,
            stats: Stats::default(),
        }))
    },
};

/// An outside system messages go to.
pub trait Publisher: Send {
    /// Publishes one payload; `key` (the sensor id) keeps one camera's messages in order on
    /// partitioned brokers.
    fn publish(&mut self, key: &str, payload: &str) -> Result<(), StageError>;
    /// Makes everything published so far durable.
    fn flush(&mut self) -> Result<(), StageError>;
    /// Where messages go, for the summary.
    fn describe(&self) -> String;
}

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where to publish: `file://PATH` (JSON lines) or `redis://[user:pass@]HOST[:PORT]/STREAM`.
    /// Required.
    pub uri: String,
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
    /// redis: keep about this many entries in the stream (`XADD MAXLEN ~`). Default 1000000.
    #[serde(default = "maxlen_default")]
    pub maxlen: u64,
    /// Network adapters: how long to wait for the broker (connect, replies). Default "5s".
    #[serde(default = "timeout_default", with = "humantime_serde")]
    pub timeout: std::time::Duration,
}

fn one() -> u64 {
    1
}
fn maxlen_default() -> u64 {
    1_000_000
}
fn timeout_default() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// Where messages go.
enum Target {
    File(std::path::PathBuf),
    Redis(redis::RedisTarget),
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
        Ok(s)
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

    fn target(&self, ctx: &BuildContext) -> Result<Target, StageError> {
        match self.uri.split_once("://").map(|(scheme, _)| scheme) {
            Some("redis") => Ok(Target::Redis(redis::RedisTarget::parse(&self.uri)?)),
            Some("file") | None => Ok(Target::File(
                ctx.resolve(&settings::file_uri_path(&self.uri)?),
            )),
            Some(other) => Err(StageError::Settings(format!(
                "unsupported broker URI scheme `{other}` in `{}` (supported: file, redis)",
                crate::source::redact(&self.uri)
            ))),
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    messages: u64,
}

struct Broker {
    settings: Settings,
    config: MsgConvConfig,
    publisher: Box<dyn Publisher>,
    stats: Stats,
}

impl Stage for Broker {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &batch.frames {
            if frame.frame_num % self.settings.frame_interval != 0 {
                continue;
            }
            let schema = self.settings.schema;
            let key = msgconv::publish_key(schema, &self.config, frame);
            for payload in msgconv::payloads(schema, &self.config, frame) {
                self.publisher.publish(key, &payload)?;
                self.stats.messages += 1;
            }
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.publisher.flush()?;
        out.end_of_stream(end.clone())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        self.publisher.flush()
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        self.publisher.flush()?;
        Ok(StageReport::default()
            .with("messages", self.stats.messages)
            .with("output", self.publisher.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{FrameMeta, ObjectMeta};

    fn ctx(dir: &std::path::Path) -> BuildContext {
        BuildContext {
            stage_name: "events".into(),
            base_dir: dir.to_path_buf(),
            sources: vec!["street".into()],
            resume: None,
        }
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn unknown_broker_schemes_are_named_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let t = table("kind = \"broker\"\nuri = \"kafka://u:secret@h:9092/t\"\n");
        let err = (KIND.check)(&t, &ctx(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("unsupported broker URI scheme `kafka`") && err.contains("file, redis"),
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
