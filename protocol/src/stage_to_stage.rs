//! Messages a stage sends to the stages downstream of it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::meta::Batch;
use crate::payload::PayloadRef;

/// What travels along a link, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataMessage {
    /// Frames and their metadata.
    Batch(Batch),
    /// A source has no more frames. Stages that keep per-source state (trackers, per-stream
    /// encoders) finish that stream; the pipeline itself goes on while other sources run.
    EndOfStream(StreamEnd),
}

impl DataMessage {
    /// The buffers that may be large (frame pixels, encoded frames, tensors), in a fixed
    /// order: each frame's payload, then each tensor. The wire format detaches exactly these
    /// (see `envelope::encode_detached`), so both sides must walk them alike.
    pub fn large_buffers_mut(&mut self) -> Vec<&mut Bytes> {
        let DataMessage::Batch(batch) = self else {
            return Vec::new();
        };
        let frames = batch
            .frames
            .iter_mut()
            .filter_map(|frame| match &mut frame.payload {
                PayloadRef::Inline { data, .. } | PayloadRef::Encoded { data, .. } => Some(data),
                PayloadRef::None | PayloadRef::SharedMemory { .. } | PayloadRef::CudaIpc { .. } => {
                    None
                }
            });
        let tensors = batch.tensors.iter_mut().map(|tensor| &mut tensor.data);
        frames.chain(tensors).collect()
    }
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
