//! The topology file as written, before validation. Every table rejects unknown keys so a
//! typo is an error, not a silently ignored setting.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub pipeline: PipelineSection,
    #[serde(default)]
    pub source: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    pub stage: toml::map::Map<String, toml::Value>,
    #[serde(default)]
    pub hosts: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub placement: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
    pub links: Vec<Spanned<(String, String)>>,
    /// Capacity of every link, in messages (batches): the credits a producer holds.
    #[serde(default = "queue_default")]
    pub queue: usize,
    /// Sources running at once, counting those added through the control API while the
    /// pipeline runs; 0 (the default): no sources can be added at run time.
    #[serde(default)]
    pub max_sources: usize,
}

fn queue_default() -> usize {
    4
}
