//! Runs a validated topology in this process: one OS thread per source and per stage, bounded
//! in-process links between them, and a tokio runtime for timers and signals.
//!
//! Ending: when a source ends it sends an end-of-stream notice and drops its links; a stage
//! whose producers have all gone finishes (flushing files) and drops its own links, so the
//! pipeline drains from the sources to the sinks. A failing stage stops the sources; what was
//! already accepted still drains through the stages after it.

mod metrics;
mod progress;
pub mod sources;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;
use vidmesh_actors::{Outputs, Stage, StageError, StageReport};
use vidmesh_protocol::DataMessage;
use vidmesh_transport::{in_process_link, LinkReceiver, LinkSender, Received};

use crate::dashboard::{
    self, Dashboard, DashboardServer, Observation, SourceObservation, StageObservation,
};
use crate::gpu::GpuProbe;
use crate::topology::{Topology, SOURCES};
pub use metrics::{MetricsSnapshot, StageMetrics};
use progress::{DepthProbe, ProgressReporter, Watched, WatchedSource, WatchedStage};
use sources::{SourceHandle, SourceRegistry};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print a progress line this often (to stderr); `None` for silence.
    pub progress_interval: Option<Duration>,
    /// Serve the live dashboard (and `/metrics`) on this address while the pipeline runs.
    pub dashboard: Option<SocketAddr>,
}

/// Why a pipeline could not start.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("stage `{stage}` ({kind}): {error}")]
    Build {
        stage: String,
        kind: String,
        error: StageError,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(transparent)]
    Dashboard(#[from] crate::http::ServeError),
    #[error("source `{source_name}`: {error}")]
    Source { source_name: String, error: String },
}

/// How one source went.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSummary {
    pub name: String,
    pub frames: u64,
    /// Times the source reconnected to its camera (`reconnect_interval`).
    pub reconnects: u64,
    pub error: Option<String>,
}

/// How one stage went.
#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub name: String,
    pub kind: String,
    pub facts: Vec<(String, String)>,
    pub metrics: MetricsSnapshot,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub elapsed_s: f64,
    pub frames: u64,
    pub fps: f64,
    pub sources: Vec<SourceSummary>,
    pub stages: Vec<StageSummary>,
    /// Root causes, one line each; empty when everything succeeded.
    pub errors: Vec<String>,
}

impl RunSummary {
    /// A summary whose frame count and rate come from the sources.
    pub fn new(
        pipeline: &str,
        elapsed_s: f64,
        sources: Vec<SourceSummary>,
        stages: Vec<StageSummary>,
        errors: Vec<String>,
    ) -> Self {
        let frames = sources.iter().map(|s| s.frames).sum();
        RunSummary {
            pipeline: pipeline.to_string(),
            elapsed_s,
            frames,
            fps: frames as f64 / elapsed_s.max(1e-9),
            sources,
            stages,
            errors,
        }
    }

    /// A fact a stage reported, e.g. `fact("track", "tracks")`.
    pub fn fact(&self, stage: &str, key: &str) -> Option<&str> {
        self.stages
            .iter()
            .find(|s| s.name == stage)?
            .facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

struct StageThread {
    name: String,
    kind: String,
    metrics: Arc<StageMetrics>,
    handle: JoinHandle<Result<StageReport, StageError>>,
}

/// Runs `topology` to completion (all sources ended) or until `stop` is set.
pub fn run(
    topology: &Topology,
    options: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vidmesh-io")
        .enable_all()
        .build()?;
    let started = Instant::now();

    // Build every stage before starting anything, so a bad model fails fast and cleanly.
    let mut built: Vec<Box<dyn Stage>> = Vec::new();
    for entry in &topology.stages {
        let stage =
            (entry.kind.build)(&entry.table, &topology.context(&entry.name)).map_err(|error| {
                RunError::Build {
                    stage: entry.name.clone(),
                    kind: entry.kind.name.to_string(),
                    error,
                }
            })?;
        built.push(stage);
    }

    let mut inbox_senders: HashMap<&str, LinkSender> = HashMap::new();
    let mut inboxes: Vec<LinkReceiver> = Vec::new();
    for entry in &topology.stages {
        let (tx, rx) = in_process_link(&entry.name, topology.queue, runtime.handle().clone());
        inbox_senders.insert(entry.name.as_str(), tx);
        inboxes.push(rx);
    }
    // Thumbnails of what the OSD stages emit, for the dashboard.
    let previews = options.dashboard.map(|_| dashboard::preview_board());
    let previewed = dashboard::previewed_stages(topology);
    let outputs_of = |producer: &str| {
        let out = Outputs::new(
            topology
                .links
                .iter()
                .filter(|(from, _)| from == producer)
                .map(|(_, to)| inbox_senders[to.as_str()].clone())
                .collect(),
        );
        match &previews {
            Some(board) if previewed.iter().any(|p| p == producer) => {
                let board = board.clone();
                out.with_tap(Arc::new(move |batch| board.offer(batch)))
            }
            _ => out,
        }
    };

    let mut watched_stages = Vec::new();
    let mut observed_stages = Vec::new();
    let mut stage_threads = Vec::new();
    for ((entry, stage), inbox) in topology.stages.iter().zip(built).zip(inboxes) {
        let metrics = Arc::new(StageMetrics::default());
        observed_stages.push(WatchedStage {
            name: entry.name.clone(),
            metrics: metrics.clone(),
            inbox: DepthProbe::new(&inbox),
        });
        watched_stages.push(WatchedStage {
            name: entry.name.clone(),
            metrics: metrics.clone(),
            inbox: DepthProbe::new(&inbox),
        });
        let out = outputs_of(&entry.name);
        let (m, stop) = (metrics.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("stage-{}", entry.name))
            .spawn(move || {
                let result = stage_loop(stage, inbox, out, &m);
                if result.is_err() {
                    // A failed stage ends the run: stop the sources so the rest drains.
                    stop.store(true, Ordering::Relaxed);
                }
                result
            })?;
        stage_threads.push(StageThread {
            name: entry.name.clone(),
            kind: entry.kind.name.to_string(),
            metrics,
            handle,
        });
    }

    // Sources send into the stages linked from `sources`; the registry keeps those links while
    // sources may still be added, so the pipeline does not end between two sources.
    let source_links = topology
        .links
        .iter()
        .filter(|(from, _)| from == SOURCES)
        .map(|(_, to)| inbox_senders[to.as_str()].clone())
        .collect();
    let registry = Arc::new(SourceRegistry::new(
        source_links,
        topology.max_sources,
        topology.context(SOURCES),
    ));
    let mut watched_sources = Vec::new();
    for entry in &topology.sources {
        let handle = registry
            .add(entry.settings.clone(), entry.uri.clone())
            .map_err(|e| RunError::Source {
                source_name: entry.settings.id.clone(),
                error: e.to_string(),
            })?;
        watched_sources.push(WatchedSource {
            name: handle.name.clone(),
            live: handle.live,
            progress: handle.progress.clone(),
            ended: handle.ended.clone(),
        });
    }
    if !registry.accepts_new() {
        registry.close();
    }
    // Only the threads hold senders now, so inboxes close when their producers finish.
    drop(inbox_senders);

    let dashboard = match options.dashboard {
        Some(addr) => {
            let board = previews.clone();
            let gpus = Arc::new(GpuProbe::open());
            let exposition = Arc::new(RunExposition::new(
                &observed_stages,
                registry.clone(),
                gpus.clone(),
            ));
            let observed_sources = registry.clone();
            let control = registry.clone();
            let server = DashboardServer::start(
                addr,
                Arc::new(Dashboard::new(topology, "run")),
                move || Observation {
                    gpus: gpus
                        .as_ref()
                        .as_ref()
                        .map(GpuProbe::sample)
                        .unwrap_or_default(),
                    ..observe(
                        &observed_stages,
                        &observed_sources.handles(),
                        board.as_deref(),
                    )
                },
                Some(Arc::new(move || exposition.render())),
                Some(Arc::new(move |request: &crate::http::Request| {
                    control.handle(request)
                })),
            )?;
            eprintln!("dashboard: http://{}/", server.local_addr());
            Some(server)
        }
        None => None,
    };

    runtime.spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::warn!("interrupted: stopping sources and draining the pipeline");
                stop.store(true, Ordering::Relaxed);
            }
        }
    });

    let finished = Arc::new(AtomicBool::new(false));
    let reporter = options.progress_interval.map(|interval| {
        let finished = finished.clone();
        let discover: Option<progress::Discover> = registry.accepts_new().then(|| {
            let registry = registry.clone();
            Box::new(move |known: usize| {
                registry
                    .handles()
                    .into_iter()
                    // Source ids count up from 0 without gaps, so the watched ones are 0..known.
                    .filter(|h| h.id as usize >= known)
                    .map(|h| WatchedSource {
                        name: h.name,
                        live: h.live,
                        progress: h.progress,
                        ended: h.ended,
                    })
                    .collect()
            }) as progress::Discover
        });
        let reporter = ProgressReporter::new(Watched {
            sources: watched_sources,
            stages: watched_stages,
            discover,
        });
        std::thread::spawn(move || reporter.run(interval, &finished))
    });

    // Sources stop on their own (their streams end) or when the run is stopped; while sources
    // may be added, only a stop ends the run.
    loop {
        if stop.load(Ordering::Relaxed) {
            registry.stop_all();
        }
        if registry.all_ended() && (stop.load(Ordering::Relaxed) || !registry.accepts_new()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    for finished in registry.join() {
        let (name, report) = (finished.name, finished.report);
        if let Some(e) = &report.error {
            errors.push(format!("source `{name}`: {e}"));
        }
        sources.push(SourceSummary {
            name,
            frames: report.frames,
            reconnects: report.reconnects,
            error: report.error,
        });
    }
    let mut stages = Vec::new();
    for t in stage_threads {
        let result = t
            .handle
            .join()
            .unwrap_or_else(|_| Err(StageError::Runtime("the stage thread panicked".into())));
        let facts = match result {
            Ok(report) => report.facts,
            Err(StageError::Downstream(_)) => Vec::new(),
            Err(e) => {
                errors.push(format!("stage `{}` ({}): {e}", t.name, t.kind));
                Vec::new()
            }
        };
        stages.push(StageSummary {
            name: t.name,
            kind: t.kind,
            facts,
            metrics: t.metrics.snapshot(),
        });
    }
    finished.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    drop(dashboard);
    Ok(RunSummary::new(
        &topology.name,
        started.elapsed().as_secs_f64(),
        sources,
        stages,
        errors,
    ))
}

/// `/metrics` of a pipeline running in this process: the same families a `vidmesh stage`
/// process exports, one `stage` label per stage and per source (`source.<id>`).
struct RunExposition {
    stages: Vec<(String, Arc<StageMetrics>, DepthProbe)>,
    sources: Arc<SourceRegistry>,
    /// Per stage or source: when it was last rendered and its frame count then (for fps).
    last: std::sync::Mutex<HashMap<String, (Instant, u64)>>,
    gpus: Arc<Option<GpuProbe>>,
}

impl RunExposition {
    fn new(
        stages: &[WatchedStage],
        sources: Arc<SourceRegistry>,
        gpus: Arc<Option<GpuProbe>>,
    ) -> Self {
        Self {
            stages: stages
                .iter()
                .map(|s| (s.name.clone(), s.metrics.clone(), s.inbox.clone()))
                .collect(),
            sources,
            last: Default::default(),
            gpus,
        }
    }

    fn render(&self) -> String {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut fps = |name: &str, frames: u64| {
            let now = Instant::now();
            let (at, before) = last
                .insert(name.to_string(), (now, frames))
                .unwrap_or((now, 0));
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 {
                frames.saturating_sub(before) as f64 / dt
            } else {
                0.0
            }
        };
        let mut e = crate::prometheus::Exposition::new();
        for source in self.sources.handles() {
            let name = crate::node::source_instance(&source.name);
            let snapshot = MetricsSnapshot {
                frames: source.progress.frames.load(Ordering::Relaxed),
                ..Default::default()
            };
            e.add_stage(&name, 0, &snapshot, fps(&name, snapshot.frames), &[]);
        }
        for (name, metrics, inbox) in &self.stages {
            let snapshot = metrics.snapshot();
            e.add_stage(name, 0, &snapshot, fps(name, snapshot.frames), &[])
                .add_values(name, 0, &metrics.values())
                .family(
                    &crate::prometheus::INBOX_DEPTH,
                    &[("stage", name.as_str())],
                    inbox.depth() as f64,
                );
        }
        if let Some(probe) = self.gpus.as_ref() {
            crate::gpu::add_to(&mut e, &probe.sample());
        }
        e.render()
    }
}

/// The dashboard's view of a pipeline running in this process.
fn observe(
    stages: &[WatchedStage],
    sources: &[SourceHandle],
    previews: Option<&vidmesh_actors::preview::PreviewBoard>,
) -> Observation {
    Observation {
        stages: stages
            .iter()
            .map(|s| {
                let m = s.metrics.snapshot();
                StageObservation {
                    name: s.name.clone(),
                    up: 1,
                    frames: m.frames,
                    batches: m.batches,
                    busy_s: m.busy_ns as f64 / 1e9,
                    latency_sum_s: m.latency.sum_seconds(),
                    latency_count: m.latency.count(),
                    queue: s.inbox.depth() as u64,
                    ..Default::default()
                }
            })
            .collect(),
        sources: sources
            .iter()
            .map(|s| SourceObservation {
                id: s.id,
                name: s.name.clone(),
                frames: s.progress.frames.load(Ordering::Relaxed),
                state: s.state(),
            })
            .collect(),
        previews: previews.map(dashboard::board_images).unwrap_or_default(),
        gpus: Vec::new(),
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The actor loop of one stage.
fn stage_loop(
    mut stage: Box<dyn Stage>,
    mut inbox: LinkReceiver,
    mut out: Outputs,
    metrics: &StageMetrics,
) -> Result<StageReport, StageError> {
    loop {
        match inbox.recv_blocking(stage.next_deadline()) {
            Received::Message(DataMessage::Batch(batch)) => {
                let frames = batch.frames.len();
                let ingest = batch.frames.iter().map(|f| f.ingest_ns).min();
                let t0 = Instant::now();
                stage.on_batch(batch, &mut out)?;
                let total = t0.elapsed();
                let sending = out.take_send_time();
                metrics.record(
                    frames,
                    total.saturating_sub(sending),
                    sending,
                    ingest.map(|i| now_ns().saturating_sub(i)),
                );
                metrics.set_values(stage.values());
            }
            Received::Message(DataMessage::EndOfStream(end)) => {
                stage.on_end_of_stream(&end, &mut out)?;
            }
            Received::Timeout => stage.on_timer(Instant::now(), &mut out)?,
            Received::Closed => return stage.on_finish(&mut out),
        }
    }
}
