//! `broker`: publishes one message per frame (schema from [`crate::msgconv`]) to an outside
//! system, like nvmsgconv + nvmsgbroker. Adapters sit behind [`Publisher`]; the one here writes
//! JSON lines to a file (`file://PATH`), flushed and synced when the stream ends so nothing
//! that was accepted is lost.

mod file;

use serde::Deserialize;
use vidmesh_protocol::Batch;

use crate::msgconv::{self, Schema};
use crate::registry::StageKind;
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport};

pub const KIND: StageKind = StageKind {
    name: "broker",
    summary: "publish per-frame metadata in DeepStream's nvmsgconv schema (file:// JSON lines)",
    check: |t, ctx| Settings::load(t).and_then(|s| s.target(ctx)).map(|_| ()),
    build: |t, ctx| {
        let s = Settings::load(t)?;
        let target = s.target(ctx)?;
        Ok(Box::new(Broker {
            publisher: Box::new(file::JsonLinesFile::create(&target)?),
            settings: s,
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
    /// Where to publish. `file://PATH` appends JSON lines. Required.
    pub uri: String,
    /// "minimal" (default) or "native".
    #[serde(default)]
    pub schema: Schema,
    /// Publish every Nth frame of each source (nvmsgconv `frame-interval`). Default 1.
    #[serde(default = "one")]
    pub frame_interval: u64,
}

fn one() -> u64 {
    1
}

impl Settings {
    fn load(t: &toml::Table) -> Result<Self, StageError> {
        let s: Settings = settings::parse(t)?;
        if s.frame_interval == 0 {
            return Err(StageError::Settings(
                "frame_interval must be at least 1".into(),
            ));
        }
        Ok(s)
    }

    fn target(&self, ctx: &BuildContext) -> Result<std::path::PathBuf, StageError> {
        Ok(ctx.resolve(&settings::file_uri_path(&self.uri)?))
    }
}

#[derive(Debug, Default)]
struct Stats {
    messages: u64,
}

struct Broker {
    settings: Settings,
    publisher: Box<dyn Publisher>,
    stats: Stats,
}

impl Stage for Broker {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &batch.frames {
            if frame.frame_num % self.settings.frame_interval != 0 {
                continue;
            }
            let payload = msgconv::frame_payload(self.settings.schema, frame);
            self.publisher.publish(&frame.source_name, &payload)?;
            self.stats.messages += 1;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(
        &mut self,
        source_id: u32,
        source_name: &str,
        out: &mut Outputs,
    ) -> Result<(), StageError> {
        self.publisher.flush()?;
        out.end_of_stream(source_id, source_name)
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        self.publisher.flush()?;
        Ok(StageReport::default()
            .with("messages", self.stats.messages)
            .with("output", self.publisher.describe()))
    }
}
