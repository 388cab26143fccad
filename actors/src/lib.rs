//! vidmesh's stage kinds.
//!
//! Every stage is an actor implementing [`Stage`]: it owns its state, receives batches and
//! end-of-stream notices from its inbox, and writes to its outputs. Where it runs (a thread of
//! this process, its own process, another host) is the runner's business, not the stage's.
//!
//! A new stage kind is one module here plus one line in [`registry::STAGE_KINDS`].

pub mod analytics;
pub mod broker;
pub mod infer;
pub mod msgconv;
pub mod mux;
pub mod osd;
pub mod preprocess;
pub mod preview;
pub mod record;
pub mod registry;
pub mod settings;
pub mod sink;
pub mod source;
pub mod stage;
pub mod tile;
pub mod track;

mod gst_util;

pub use registry::{find_kind, Delivery, StageKind, STAGE_KINDS};
pub use stage::{
    BuildContext, Outputs, PeerStage, Resume, Stage, StageError, StageReport, StageValue, ValueKind,
};
