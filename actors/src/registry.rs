//! The one table that knows every stage kind.

use crate::stage::{BuildContext, Stage, StageError};

/// Builds a ready-to-run stage from its settings table.
pub type BuildFn = fn(&toml::Table, &BuildContext) -> Result<Box<dyn Stage>, StageError>;

/// A stage kind: its name in topology files, and how to check and build it.
pub struct StageKind {
    pub name: &'static str,
    /// One line for `vidmesh kinds` and error messages.
    pub summary: &'static str,
    /// Validates settings without starting anything heavy (no model loading, no pipelines).
    pub check: fn(&toml::Table, &BuildContext) -> Result<(), StageError>,
    /// Builds a ready-to-run stage.
    pub build: BuildFn,
}

/// Every stage kind vidmesh knows.
pub static STAGE_KINDS: &[StageKind] = &[
    crate::mux::KIND,
    crate::preprocess::KIND,
    crate::infer::KIND,
    crate::track::KIND,
    crate::analytics::KIND,
    crate::osd::KIND,
    crate::sink::KIND,
    crate::broker::KIND,
];

/// Looks a kind up by name.
pub fn find_kind(name: &str) -> Option<&'static StageKind> {
    STAGE_KINDS.iter().find(|k| k.name == name)
}
