//! The launcher's observation: what every process's `/metrics` says, plus what the launcher
//! knows of each process's life (running, restarting, ended, given up).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Observation, PreviewImage, SourceObservation, SourceState, StageObservation};
use crate::http;
use crate::node::source_instance;
use crate::prometheus::Sample;
use crate::topology::Topology;

/// A supervised process as the launcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    /// A stage name or `source.<id>`.
    pub name: String,
    pub replica: u32,
    pub restarts: u32,
    pub life: InstanceLife,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstanceLife {
    Running,
    /// Dead, waiting for its restart.
    Restarting,
    Succeeded,
    GaveUp(String),
}

/// Sum of the samples named `name` whose `stage` label is `stage`.
fn sum(scraped: &[(String, Vec<Sample>)], name: &str, stage: &str) -> f64 {
    scraped
        .iter()
        .flat_map(|(_, samples)| samples)
        .filter(|s| s.name == name && s.label("stage") == Some(stage))
        .map(|s| s.value)
        .sum()
}

/// Builds the observation from the scraped samples (instance label → samples) and the
/// launcher's process table.
pub fn observe_scraped(
    topology: &Topology,
    scraped: &[(String, Vec<Sample>)],
    instances: &[InstanceView],
) -> Observation {
    let mut stages = Vec::new();
    for stage in &topology.stages {
        let mine = instances.iter().filter(|i| i.name == stage.name);
        let up = scraped
            .iter()
            .flat_map(|(_, samples)| samples)
            .filter(|s| s.name == "vidmesh_up" && s.label("stage") == Some(&stage.name))
            .filter(|s| s.value > 0.0)
            .count() as u32;
        // Deliveries to this stage that its producers have not had acknowledged yet.
        let into = format!("->{}", stage.name);
        let queue = scraped
            .iter()
            .flat_map(|(_, samples)| samples)
            .filter(|s| s.name == "vidmesh_link_queue_depth")
            .filter(|s| s.label("link").is_some_and(|l| l.ends_with(&into)))
            .map(|s| s.value)
            .sum::<f64>();
        let name = stage.name.as_str();
        stages.push(StageObservation {
            name: stage.name.clone(),
            up,
            frames: sum(scraped, "vidmesh_frames_total", name) as u64,
            batches: sum(scraped, "vidmesh_batches_total", name) as u64,
            busy_s: sum(scraped, "vidmesh_stage_busy_seconds_total", name),
            latency_sum_s: sum(scraped, "vidmesh_latency_seconds_sum", name),
            latency_count: sum(scraped, "vidmesh_latency_seconds_count", name) as u64,
            queue: queue as u64,
            dropped: sum(scraped, "vidmesh_link_dropped_total", name) as u64,
            resent: sum(scraped, "vidmesh_link_resent_total", name) as u64,
            restarts: mine.map(|i| i.restarts as u64).sum(),
        });
    }
    let mut sources = Vec::new();
    for (id, source) in topology.sources.iter().enumerate() {
        let instance = source_instance(&source.settings.id);
        let frames = sum(scraped, "vidmesh_frames_total", &instance) as u64;
        let state = match instances
            .iter()
            .find(|i| i.name == instance)
            .map(|i| &i.life)
        {
            Some(InstanceLife::Running) | None => SourceState::Running,
            Some(InstanceLife::Restarting) => SourceState::Restarting,
            Some(InstanceLife::Succeeded) => SourceState::Ended,
            Some(InstanceLife::GaveUp(why)) => SourceState::Failed(why.clone()),
        };
        sources.push(SourceObservation {
            id: id as u32,
            name: source.settings.id.clone(),
            frames,
            state,
        });
    }
    Observation {
        stages,
        sources,
        ..Default::default()
    }
}

/// One entry of a stage process's `/previews`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PreviewEntry {
    pub source_id: u32,
    pub frame_num: u64,
    pub taken_ms: u64,
}

/// The newest thumbnail of every source among the processes at `addrs` (replicas of the
/// previewed stages): `/previews` says who has what, then the newest JPEGs are fetched.
pub fn fetch_previews(addrs: &[SocketAddr]) -> Vec<PreviewImage> {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let mut newest: Vec<(SocketAddr, PreviewEntry)> = Vec::new();
    for &addr in addrs {
        let Ok((200, body)) = http::get(addr, "/previews", TIMEOUT, 64 << 10) else {
            continue;
        };
        let Ok(entries) = serde_json::from_slice::<Vec<PreviewEntry>>(&body) else {
            continue;
        };
        for entry in entries {
            match newest
                .iter_mut()
                .find(|(_, e)| e.source_id == entry.source_id)
            {
                Some(slot) if slot.1.taken_ms < entry.taken_ms => *slot = (addr, entry),
                Some(_) => {}
                None => newest.push((addr, entry)),
            }
        }
    }
    newest
        .into_iter()
        .filter_map(|(addr, entry)| {
            let path = format!("/preview/{}.jpg", entry.source_id);
            match http::get(addr, &path, TIMEOUT, 4 << 20) {
                Ok((200, jpeg)) => Some(PreviewImage {
                    source_id: entry.source_id,
                    frame_num: entry.frame_num,
                    jpeg: Arc::new(jpeg),
                }),
                _ => None,
            }
        })
        .collect()
}
