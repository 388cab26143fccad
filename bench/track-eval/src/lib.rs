//! Tools for evaluating vidmesh's trackers outside a pipeline.
//!
//! * [`tracker`]: builds a [`vidmesh_actors::track::Track`] from an algorithm name and
//!   `key=value` settings, through the same settings deserialisation a topology uses, so a new
//!   algorithm is usable here as soon as the `track` stage accepts its name.
//! * [`mot`]: detections in and results out, in MOTChallenge's text formats (and vidmesh's
//!   native JSON events as input).
//! * [`synthetic`]: deterministic moving boxes for cost measurements.
//! * [`timing`]: running a tracker over a sequence with the clock around `track_frame` only.

pub mod mot;
pub mod synthetic;
pub mod timing;
pub mod tracker;
