//! Messages a stage sends to the stages downstream of it.

use serde::{Deserialize, Serialize};

use crate::meta::Batch;

/// What travels along a link, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataMessage {
    /// Frames and their metadata.
    Batch(Batch),
    /// Source `source_id` has no more frames. Stages that keep per-source state (trackers,
    /// per-stream encoders) finish that stream; the pipeline itself goes on while other
    /// sources run.
    EndOfStream { source_id: u32, source_name: String },
}
