//! The one table that knows every stage kind.

use crate::stage::{BuildContext, Stage, StageError};

/// Builds a ready-to-run stage from its settings table.
pub type BuildFn = fn(&toml::Table, &BuildContext) -> Result<Box<dyn Stage>, StageError>;

/// How a stage kind's replicas share the work when it runs as several processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Whole sources go to one replica (`source_id % replicas`) because the stage keeps
    /// per-source state (tracks, counts, open files); otherwise any replica with credit.
    pub per_source: bool,
    /// The stage needs each source's frames in order (a reorder point stands before it).
    pub ordered: bool,
}

impl Delivery {
    /// Stateless: any replica, any order.
    pub const ANY_REPLICA: Delivery = Delivery {
        per_source: false,
        ordered: false,
    };
    /// Per-source state, order does not matter.
    pub const PER_SOURCE: Delivery = Delivery {
        per_source: true,
        ordered: false,
    };
    /// Per-source state built frame after frame.
    pub const PER_SOURCE_ORDERED: Delivery = Delivery {
        per_source: true,
        ordered: true,
    };
}

/// A stage kind: its name in topology files, and how to check and build it.
pub struct StageKind {
    pub name: &'static str,
    pub delivery: Delivery,
    /// One line for `vidmesh kinds` and error messages.
    pub summary: &'static str,
    /// Validates settings without starting anything heavy (no model loading, no pipelines).
    pub check: fn(&toml::Table, &BuildContext) -> Result<(), StageError>,
    /// Builds a ready-to-run stage.
    pub build: BuildFn,
    /// For a stage that makes new streams out of its inputs (the tiler's one grid): their
    /// names. Stages after it see these streams instead of the sources (`BuildContext::sources`).
    pub makes_streams: Option<fn(&toml::Table) -> Vec<String>>,
}

/// Every stage kind vidmesh knows.
pub static STAGE_KINDS: &[StageKind] = &[
    crate::mux::KIND,
    crate::preprocess::KIND,
    crate::infer::KIND,
    crate::track::KIND,
    crate::analytics::KIND,
    crate::osd::KIND,
    crate::tile::KIND,
    crate::sink::KIND,
    crate::record::RECORD_KIND,
    crate::record::SNAPSHOT_KIND,
    crate::broker::KIND,
];

/// Looks a kind up by name.
pub fn find_kind(name: &str) -> Option<&'static StageKind> {
    STAGE_KINDS.iter().find(|k| k.name == name)
}
