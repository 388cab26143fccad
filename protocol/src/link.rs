//! Messages between stage processes: data deliveries one way, credits/acks/releases the other,
//! and liveness announcements to everyone.
//!
//! A stage *instance* is one process running one replica of one stage; its `epoch` changes
//! every time it starts, so a peer can tell a restarted instance from the one it was talking to
//! and re-send what the old one never acknowledged.

use serde::{Deserialize, Serialize};

use crate::stage_to_stage::DataMessage;

/// One running replica of one stage (or one source).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance {
    pub stage: String,
    pub replica: u32,
    /// Random per process start.
    pub epoch: u64,
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.stage, self.replica)
    }
}

/// Producer → consumer: one message of a link, numbered per (producer epoch, consumer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub from: Instance,
    /// The consumer epoch the producer believes it is talking to; a delivery meant for an
    /// earlier epoch is still accepted (it is a re-send candidate like any other).
    pub to_epoch: u64,
    /// Sequence number, unique per producer epoch and consumer replica; acks name it.
    pub seq: u64,
    pub message: DataMessage,
}

/// Consumer → producer: flow control and completion, everything one consumer replica has to
/// tell one producer instance since its previous report, in one message.
///
/// A consumer coalesces: while deliveries keep arriving it accumulates what it took, acked and
/// released, and sends one report when its inbox runs empty, when half a window is waiting, or
/// after a short timer, so the cost on the wire is per batch of deliveries, not per delivery.
/// Every field is idempotent (the credit is a running total; a repeated ack or release is
/// ignored), so a lost or repeated report is harmless and the periodic re-grant heals losses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The consumer replica reporting (its epoch tells the producer about restarts).
    pub from: Instance,
    /// The producer epoch the credit and the acks are about; a report for another epoch is
    /// ignored except for its releases.
    pub producer_epoch: u64,
    /// Credit: the consumer has taken deliveries of `producer_epoch` worth `consumed` credit
    /// units out of its inbox in total; the producer may have `window` full deliveries' worth
    /// more than that outstanding. A delivery of a frame costs a full delivery's units, one of
    /// metadata alone a fraction (the transport's `credit_cost`), so that a window of small
    /// messages holds about as many bytes as a window of frames.
    pub consumed: u64,
    pub window: u32,
    /// These deliveries are fully done: everything that followed from them downstream was
    /// acknowledged too, so the producer may forget them.
    pub acks: Vec<u64>,
    /// The consumer no longer reads these shared-memory slots.
    pub releases: Vec<SlotRelease>,
}

/// One released shared-memory slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRelease {
    pub segment: String,
    pub slot: u32,
    pub generation: u64,
}

/// Liveness and lifecycle, published by every instance and by the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Announce {
    /// Sent periodically while the instance runs. `finished` means it has nothing more to send
    /// and everything it sent was acknowledged.
    Heartbeat { instance: Instance, finished: bool },
    /// The launcher gave up restarting this replica: nobody should wait for it any more.
    Retired { stage: String, replica: u32 },
}
