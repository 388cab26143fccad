//! The stage trait every actor implements, and what the runner hands it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;
use vidmesh_protocol::{Batch, DataMessage, FrameMeta, StreamEnd};
use vidmesh_transport::{LinkClosed, LinkSender};

/// Why a stage failed. The runner prints it as one line prefixed with the stage's name.
#[derive(Debug, Error)]
pub enum StageError {
    /// The stage's settings are wrong (caught at validation time where possible).
    #[error("{0}")]
    Settings(String),
    /// Data arrived that this stage cannot process (wrong tensor shape, missing pixels...).
    #[error("{0}")]
    Input(String),
    /// A library or system call failed (GStreamer, ONNX Runtime, file I/O).
    #[error("{0}")]
    Runtime(String),
    /// A downstream stage stopped; this is a consequence of another failure, not a cause.
    #[error(transparent)]
    Downstream(#[from] LinkClosed),
}

impl StageError {
    pub fn runtime(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        StageError::Runtime(format!("{context}: {err}"))
    }
}

/// Facts a stage may need when it is built: where relative paths start, which sources exist
/// (names in topology order, index = `source_id`), and whether it takes over mid-stream.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub stage_name: String,
    /// Which replica of the stage this is (0 unless the topology runs several).
    pub replica: u32,
    pub base_dir: PathBuf,
    pub sources: Vec<String>,
    /// `Some` when this instance replaces one that stopped mid-stream; `None` on a fresh start.
    pub resume: Option<Resume>,
    /// The topology's other stages by name, for stages whose settings refer to one (an infer
    /// stage operating on another's objects, or checking the preprocess stage that feeds it).
    pub peers: std::sync::Arc<std::collections::BTreeMap<String, PeerStage>>,
}

/// What a stage may know about another stage of its topology.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStage {
    /// The stage kind's name (`infer`, `preprocess`...).
    pub kind: String,
    /// Its settings as written (runtime keys taken out).
    pub table: toml::Table,
    /// The stages that feed it (`sources` for the sources).
    pub inputs: Vec<String>,
}

/// This stage instance replaces one that stopped (crashed or was killed) mid-stream.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The last snapshot the previous instance committed, if it had one.
    pub snapshot: Option<Vec<u8>>,
}

impl BuildContext {
    /// Resolves a path from the topology against the base directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// The name a frame's source goes by: the one the frame carries (sources added at run time
/// and streams a stage made, like the tiler's, are not in the topology), else the topology's
/// name for its id, else `source<N>`.
pub fn source_name_of(sources: &[String], frame: &FrameMeta) -> String {
    if !frame.source_name.is_empty() {
        return frame.source_name.clone();
    }
    sources
        .get(frame.source_id as usize)
        .cloned()
        .unwrap_or_else(|| format!("source{}", frame.source_id))
}

/// Lines a stage contributes to the end-of-run summary, e.g. ("tracks", "17").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageReport {
    pub facts: Vec<(String, String)>,
}

impl StageReport {
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.facts.push((key.to_string(), value.to_string()));
        self
    }
}

/// A number a stage kind exports beyond the runtime's standard metrics (fps, latency, queue
/// depth), e.g. a broker's spool depth. Exported to Prometheus as `vidmesh_<name>` with the
/// stage and replica as labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageValue {
    /// Without the `vidmesh_` prefix; counters end in `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: ValueKind,
    pub value: f64,
}

impl StageValue {
    pub fn new(name: &'static str, help: &'static str, kind: ValueKind, value: f64) -> Self {
        Self {
            name,
            help,
            kind,
            value,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// An actor in the pipeline. Calls arrive one at a time on the stage's own thread.
pub trait Stage: Send {
    /// Processes one batch and emits what follows from it.
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError>;

    /// Source `source_id` ended. The default forwards the notice.
    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        out.end_of_stream(end.clone())
    }

    /// When the stage next wants [`Stage::on_timer`] called even without input (batch timeouts).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _now: Instant, _out: &mut Outputs) -> Result<(), StageError> {
        Ok(())
    }

    /// Every input has ended: flush, finalise files, and report.
    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        Ok(StageReport::default())
    }

    /// Makes everything processed so far durable (written files flushed, broker deliveries
    /// confirmed). Across processes the runtime calls it before acknowledging frames upstream,
    /// so a sink killed right after an acknowledgement has lost nothing.
    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    /// Takes over `sources` from `snapshot`, taken by another replica of this stage that is
    /// gone for good, so their streams continue here with the same state.
    fn adopt(&mut self, _snapshot: &[u8], _sources: &[u32]) -> Result<(), StageError> {
        Err(StageError::Settings(
            "this stage kind cannot take over another replica's streams".into(),
        ))
    }

    /// The stage kind's own metrics, read by the runtime after every batch.
    fn values(&self) -> Vec<StageValue> {
        Vec::new()
    }

    /// State from which a replacement replica can resume; `None` for stateless stages.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }
}

/// Something that looks at the batches a stage emits ([`Outputs::with_tap`]).
pub type Tap = std::sync::Arc<dyn Fn(&Batch) + Send + Sync>;

/// The links a stage writes to. A batch goes to every downstream stage; frames are shared by
/// reference count, so fan-out does not copy pixels.
pub struct Outputs {
    links: Vec<LinkSender>,
    /// Sees every batch before it leaves (e.g. the dashboard's preview thumbnails).
    tap: Option<Tap>,
    /// Time spent in sends since the last [`Outputs::take_send_time`]: mostly waiting for a
    /// full downstream queue, which the runner must not count as this stage's work.
    send_time: Duration,
}

impl Outputs {
    pub fn new(links: Vec<LinkSender>) -> Self {
        Self {
            links,
            tap: None,
            send_time: Duration::ZERO,
        }
    }

    /// Shows every batch to `tap` before it is sent; the tap must be quick, it runs on the
    /// stage's thread.
    pub fn with_tap(mut self, tap: Tap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Time spent sending since the previous call.
    pub fn take_send_time(&mut self) -> Duration {
        std::mem::take(&mut self.send_time)
    }

    /// Sends a batch downstream; waits while a downstream queue is full.
    pub fn emit(&mut self, batch: Batch) -> Result<(), StageError> {
        if let Some(tap) = &self.tap {
            tap(&batch);
        }
        self.send(DataMessage::Batch(batch))
    }

    pub fn end_of_stream(&mut self, end: StreamEnd) -> Result<(), StageError> {
        self.send(DataMessage::EndOfStream(end))
    }

    fn send(&mut self, message: DataMessage) -> Result<(), StageError> {
        let started = Instant::now();
        let result = (|| {
            if let Some((last, rest)) = self.links.split_last() {
                for link in rest {
                    link.send_blocking(message.clone())?;
                }
                last.send_blocking(message)?;
            }
            Ok(())
        })();
        self.send_time += started.elapsed();
        result
    }
}
