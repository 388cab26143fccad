//! The vidmesh protocol: what flows between stages, and how it looks on a wire.
//!
//! * [`meta`] is the metadata model. It mirrors DeepStream's `NvDsBatchMeta` tree so that a
//!   DeepStream user recognises it: a [`Batch`] holds [`FrameMeta`]s, a frame holds
//!   [`ObjectMeta`]s (with classifier results, masks and user meta) and [`DisplayMeta`].
//! * [`payload`] says where a frame's pixels live ([`PayloadRef`]); pixels are never part of the
//!   metadata itself, so the same metadata can travel with an in-process buffer, a shared-memory
//!   slot, a CUDA IPC handle or an encoded blob.
//! * [`envelope`] is the versioned binary framing (magic, version, kind, length, body). Decoding
//!   untrusted bytes never panics and never allocates more than the input justifies.
//! * Messages are grouped by who sends them to whom, one module per direction
//!   ([`stage_to_stage`] inside a pipeline, [`link`] between stage processes), so the file tree
//!   tells who may send what.

pub mod envelope;
pub mod link;
pub mod meta;
pub mod payload;
pub mod stage_to_stage;

pub use envelope::{
    attach_buffers, decode, decode_body, decode_header, encode, encode_detached, DecodeError,
    Detached, EncodeError, Envelope, Header, Limits, MessageKind,
};
pub use link::{Announce, Delivery, Feedback, Instance, SlotRelease};
pub use meta::*;
pub use payload::{ImageLayout, PayloadRef, PixelFormat};
pub use stage_to_stage::{DataMessage, StreamEnd};

/// The protocol version this build speaks. Bumped whenever the body encoding of any message
/// kind changes incompatibly; a peer with a newer version is rejected with both versions named.
///
/// 4: [`Feedback`] became one coalesced report (credit, acks and releases together) instead of
/// an enum of three separate messages.
/// 5: header flag bit 0, detached buffers after the body ([`encode_detached`]); a
/// [`Feedback`]'s `consumed` counts credit units (a metadata-only delivery costs less than a
/// frame), no longer deliveries.
pub const PROTOCOL_VERSION: u16 = 5;
