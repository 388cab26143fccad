//! Messages a stage sends to the stages downstream of it.

use serde::{Deserialize, Serialize};

use crate::meta::Batch;

/// What travels along a link, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataMessage {
    /// Frames and their metadata.
    Batch(Batch),
    /// A source has no more frames. Stages that keep per-source state (trackers, per-stream
    /// encoders) finish that stream; the pipeline itself goes on while other sources run.
    EndOfStream(StreamEnd),
}

/// The end of one source's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    pub source_id: u32,
    pub source_name: String,
    /// How many frames the source delivered (numbered `0..frames`). Across processes a stage
    /// holds the notice back until it has seen all of them, because frames that went through
    /// other replicas or were re-sent after a restart may still be on their way.
    pub frames: u64,
}
