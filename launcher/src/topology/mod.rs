//! Topology files: load, validate, and describe a pipeline.
//!
//! Validation happens before anything starts and reports the file, the line, and what was
//! expected: syntax and type errors, unknown keys, unknown stage kinds, links to missing
//! stages, cycles, stages nothing feeds, missing model or input files, bad URIs.
//! The format is documented in docs/TOPOLOGY.md.

mod file;
mod graph;
pub mod runtime;
mod secrets;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use vidmesh_actors::source::{self, SourceUri};
use vidmesh_actors::{find_kind, BuildContext, PeerStage, StageKind, STAGE_KINDS};

use file::TopologyFile;
pub use runtime::{Deployment, Payload, StageRuntime};

/// The name links use for "all sources".
pub const SOURCES: &str = "sources";

/// A validation failure, pointing into the file.
#[derive(Debug, Error)]
pub struct TopologyError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A configured source.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    pub settings: source::Settings,
    pub uri: SourceUri,
}

/// A configured stage.
#[derive(Clone)]
pub struct StageEntry {
    pub name: String,
    pub kind: &'static StageKind,
    /// The kind's own settings (runtime keys taken out).
    pub table: toml::Table,
    pub runtime: StageRuntime,
    /// The streams reaching this stage, index = `source_id`: the sources, or what a stage
    /// before it made of them (the tiler's grid).
    pub streams: Vec<String>,
}

impl fmt::Debug for StageEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageEntry")
            .field("name", &self.name)
            .field("kind", &self.kind.name)
            .finish()
    }
}

/// A validated pipeline: stages are in an order where every stage comes after its producers.
#[derive(Debug, Clone)]
pub struct Topology {
    pub path: PathBuf,
    pub name: String,
    pub queue: usize,
    /// Sources running at once, counting those added at run time; 0: no sources are added at
    /// run time.
    pub max_sources: usize,
    /// Where relative paths in the file start (the working directory).
    pub base_dir: PathBuf,
    pub sources: Vec<SourceEntry>,
    pub stages: Vec<StageEntry>,
    /// (producer, consumer); the producer may be [`SOURCES`].
    pub links: Vec<(String, String)>,
    pub deployment: Deployment,
    /// The stages as each stage's [`BuildContext`] shows them.
    pub peers: Arc<BTreeMap<String, PeerStage>>,
}

impl Topology {
    /// Reads and validates a topology file. Relative paths inside it resolve against the
    /// current working directory, as they do for every other command-line tool.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read the topology: {e}"),
        })?;
        let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::parse(path, &text, &base_dir)
    }

    /// Validates topology `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str, base_dir: &Path) -> Result<Self, TopologyError> {
        let at = |offset: Option<usize>, message: String| TopologyError {
            file: path.to_path_buf(),
            position: offset.map(|o| line_col(text, o)),
            message,
        };
        let mut parsed: TopologyFile = toml::from_str(text)
            .map_err(|e| at(e.span().map(|s| s.start), e.message().trim().to_string()))?;
        for (i, entry) in parsed.source.iter_mut().enumerate() {
            let offset = entry.span().start;
            secrets::expand_table(entry.get_mut(), base_dir)
                .map_err(|e| at(Some(offset), format!("source #{}: {e}", i + 1)))?;
        }
        for (name, value) in parsed.stage.iter_mut() {
            if let toml::Value::Table(table) = value {
                secrets::expand_table(table, base_dir).map_err(|e| {
                    at(
                        find_stage_offset(text, name),
                        format!("stage `{name}`: {e}"),
                    )
                })?;
            }
        }
        if parsed.pipeline.queue == 0 || parsed.pipeline.queue > 4096 {
            return Err(at(
                None,
                format!(
                    "pipeline.queue must be 1..=4096, got {}",
                    parsed.pipeline.queue
                ),
            ));
        }

        // Stage offsets: find each `[stage.NAME]` / `NAME = {` in the text for error positions.
        let stage_offset = |name: &str| find_stage_offset(text, name);

        let source_names: Vec<String> = parsed
            .source
            .iter()
            .map(|s| {
                s.get_ref()
                    .get("id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let ctx = |stage: &str| BuildContext {
            replica: 0,
            stage_name: stage.to_string(),
            base_dir: base_dir.to_path_buf(),
            sources: source_names.clone(),
            resume: None,
            peers: Default::default(),
        };

        let mut sources = Vec::new();
        for (i, entry) in parsed.source.iter().enumerate() {
            let (settings, uri) = source::Settings::load(entry.get_ref(), &ctx(SOURCES))
                .map_err(|e| at(Some(entry.span().start), format!("source #{}: {e}", i + 1)))?;
            if sources
                .iter()
                .any(|s: &SourceEntry| s.settings.id == settings.id)
            {
                return Err(at(
                    Some(entry.span().start),
                    format!("two sources are named `{}`", settings.id),
                ));
            }
            sources.push(SourceEntry { settings, uri });
        }

        let mut stages = Vec::new();
        for (name, value) in &parsed.stage {
            let offset = stage_offset(name);
            let table = value.as_table().ok_or_else(|| {
                at(
                    offset,
                    format!("stage `{name}` must be a table like {{ kind = \"infer\", ... }}"),
                )
            })?;
            if name == SOURCES {
                return Err(at(
                    offset,
                    format!(
                        "`{SOURCES}` is reserved for the [[source]] entries; rename this stage"
                    ),
                ));
            }
            let mut table = table.clone();
            let runtime = StageRuntime::take_from(&mut table)
                .map_err(|e| at(offset, format!("stage `{name}`: {e}")))?;
            let table = &table;
            let kind_name = table.get("kind").and_then(|k| k.as_str()).ok_or_else(|| {
                at(
                    offset,
                    format!("stage `{name}` has no `kind` (one of {})", kind_names()),
                )
            })?;
            let kind = find_kind(kind_name).ok_or_else(|| {
                let hint = closest(kind_name, STAGE_KINDS.iter().map(|k| k.name))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                at(
                    offset,
                    format!(
                        "stage `{name}`: unknown stage kind `{kind_name}` (known: {}){hint}",
                        kind_names()
                    ),
                )
            })?;
            stages.push(StageEntry {
                name: name.clone(),
                kind,
                table: table.clone(),
                runtime,
                streams: Vec::new(),
            });
        }

        let mut links = Vec::new();
        for link in &parsed.pipeline.links {
            let (from, to) = link.get_ref();
            let here = Some(link.span().start);
            for end in [from, to] {
                if end != SOURCES && !stages.iter().any(|s| &s.name == end) {
                    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
                    let hint = closest(end, names.iter().copied())
                        .map(|k| format!("; did you mean `{k}`?"))
                        .unwrap_or_default();
                    return Err(at(here, format!("link [\"{from}\", \"{to}\"] names a missing stage `{end}` (stages: {}){hint}", names.join(", "))));
                }
            }
            if to == SOURCES {
                return Err(at(
                    here,
                    format!(
                        "link [\"{from}\", \"{to}\"]: `{SOURCES}` cannot receive, it only produces"
                    ),
                ));
            }
            if from == to {
                return Err(at(
                    here,
                    format!("link [\"{from}\", \"{to}\"] connects a stage to itself"),
                ));
            }
            if links.contains(&(from.clone(), to.clone())) {
                return Err(at(
                    here,
                    format!("link [\"{from}\", \"{to}\"] appears twice"),
                ));
            }
            links.push((from.clone(), to.clone()));
        }

        let peers = Arc::new(peers_of(&stages, &links));
        let order = graph::order(&stages, &links).map_err(|e| at(None, e))?;
        let mut stages = order
            .into_iter()
            .map(|i| stages[i].clone())
            .collect::<Vec<_>>();
        // In dependency order, so every producer's streams are known before its consumers'.
        for i in 0..stages.len() {
            let mut streams: Vec<String> = Vec::new();
            for (from, _) in links.iter().filter(|(_, to)| to == &stages[i].name) {
                let produced = if from == SOURCES {
                    source_names.clone()
                } else {
                    let p = stages.iter().find(|s| &s.name == from).expect("linked");
                    p.kind
                        .makes_streams
                        .map(|names| names(&p.table))
                        .unwrap_or_else(|| p.streams.clone())
                };
                for name in produced {
                    if !streams.contains(&name) {
                        streams.push(name);
                    }
                }
            }
            stages[i].streams = streams;
            let s = &stages[i];
            if s.kind.makes_streams.is_some() && s.runtime.replicas > 1 {
                return Err(at(
                    stage_offset(&s.name),
                    format!(
                        "stage `{}` ({}) makes one stream out of all its inputs, so it runs as \
                         one replica; remove `replicas = {}`",
                        s.name, s.kind.name, s.runtime.replicas
                    ),
                ));
            }
            let context = BuildContext {
                sources: s.streams.clone(),
                peers: peers.clone(),
                ..ctx(&s.name)
            };
            (s.kind.check)(&s.table, &context).map_err(|e| {
                at(
                    stage_offset(&s.name),
                    format!("stage `{}` ({}): {e}", s.name, s.kind.name),
                )
            })?;
        }
        let max_sources = parsed.pipeline.max_sources;
        if max_sources > 0 && max_sources < sources.len() {
            return Err(at(
                None,
                format!(
                    "pipeline.max_sources is {max_sources} but the topology declares {} sources",
                    sources.len()
                ),
            ));
        }
        if max_sources > 4096 {
            return Err(at(
                None,
                format!("pipeline.max_sources must be at most 4096, got {max_sources}"),
            ));
        }
        if (!sources.is_empty() || max_sources > 0) && !links.iter().any(|(f, _)| f == SOURCES) {
            return Err(at(
                None,
                format!("no link starts at `{SOURCES}`, so no frames would enter the pipeline"),
            ));
        }
        if sources.is_empty() && max_sources == 0 {
            return Err(at(
                None,
                "the topology has no [[source]] entries (declare one, or set \
                 pipeline.max_sources to add sources while it runs)"
                    .into(),
            ));
        }
        let deployment = parse_deployment(&parsed, &stages).map_err(|(o, m)| at(o, m))?;
        Ok(Topology {
            deployment,
            path: path.to_path_buf(),
            name: parsed.pipeline.name,
            queue: parsed.pipeline.queue,
            max_sources,
            base_dir: base_dir.to_path_buf(),
            sources,
            stages,
            links,
            peers,
        })
    }

    /// The build context stage `name` (or [`SOURCES`]) gets.
    pub fn context(&self, name: &str) -> BuildContext {
        let sources = match self.stages.iter().find(|s| s.name == name) {
            Some(stage) => stage.streams.clone(),
            None => self.sources.iter().map(|s| s.settings.id.clone()).collect(),
        };
        BuildContext {
            replica: 0,
            stage_name: name.to_string(),
            base_dir: self.base_dir.clone(),
            sources,
            resume: None,
            peers: self.peers.clone(),
        }
    }
}

/// Every stage as the others may see it.
fn peers_of(stages: &[StageEntry], links: &[(String, String)]) -> BTreeMap<String, PeerStage> {
    stages
        .iter()
        .map(|s| {
            let inputs = links
                .iter()
                .filter(|(_, to)| to == &s.name)
                .map(|(from, _)| from.clone())
                .collect();
            let peer = PeerStage {
                kind: s.kind.name.to_string(),
                table: s.table.clone(),
                inputs,
            };
            (s.name.clone(), peer)
        })
        .collect()
}

fn parse_deployment(
    parsed: &TopologyFile,
    stages: &[StageEntry],
) -> Result<Deployment, (Option<usize>, String)> {
    let mut d = Deployment::default();
    if let Some(hosts) = &parsed.hosts {
        let here = Some(hosts.span().start);
        for (name, v) in hosts.get_ref() {
            let entry: runtime::HostEntry = v
                .clone()
                .try_into()
                .map_err(|e| (here, format!("[hosts.{name}]: {e}")))?;
            d.hosts.insert(name.clone(), entry);
        }
    }
    if let Some(placement) = &parsed.placement {
        let here = Some(placement.span().start);
        for (name, v) in placement.get_ref() {
            let entry: runtime::PlacementEntry = v
                .clone()
                .try_into()
                .map_err(|e| (here, format!("[placement.{name}]: {e}")))?;
            d.placement.insert(name.clone(), entry);
        }
        d.check(&|stage| {
            stages
                .iter()
                .find(|s| s.name == stage)
                .map(|s| s.runtime.replicas)
        })
        .map_err(|e| (here, e))?;
    }
    Ok(d)
}

fn kind_names() -> String {
    STAGE_KINDS
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where stage `name` is defined: `[stage.NAME]` or `NAME = {` inside `[stage]`.
fn find_stage_offset(text: &str, name: &str) -> Option<usize> {
    let mut offset = 0;
    let mut in_stage_table = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_stage_table = t == "[stage]";
            let header = t.trim_start_matches('[').trim_end_matches(']').trim();
            if header == format!("stage.{name}") || header == format!("stage.\"{name}\"") {
                return Some(offset + line.find('[').unwrap_or(0));
            }
        } else if in_stage_table {
            let key = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if key == name && t.contains('=') {
                return Some(offset + line.len() - line.trim_start().len());
            }
        }
        offset += line.len();
    }
    None
}

/// The candidate within edit distance 2 of `word`, for "did you mean" hints.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
