//! The vidmesh launcher as a library: load and validate topology files, and run them.
//!
//! The `vidmesh` binary is a thin CLI over this; tests and the Python bindings use it directly.

pub mod dashboard;
pub mod deploy;
pub mod gpu;
pub mod http;
pub mod import;
pub mod inspect;
pub mod launch;
pub mod node;
pub mod prometheus;
pub mod runner;
#[cfg(test)]
mod test_rng;
pub mod topology;

pub use runner::{run, RunError, RunOptions, RunSummary};
pub use topology::{Topology, TopologyError};
