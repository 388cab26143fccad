//! The live dashboard: a page served by `vidmesh run --dashboard ADDR` and
//! `vidmesh launch --dashboard ADDR` that shows the topology as a graph coloured by each
//! stage's fps, latency and queue, the state of every stream, preview thumbnails of the
//! annotated frames, recent events, and charts of fps and latency over time.
//!
//! Both runtimes feed it the same [`Observation`] once a second (the one-process runner from
//! its counters, the launcher from what it scrapes off every process); [`Dashboard`] turns
//! consecutive observations into rates, stream states, events and history. The page is one
//! self-contained HTML file (no external network, no build step) polling `/api/state`.

mod graph;
mod scraped;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::gpu::GpuSample;
use crate::http::{self, HttpServer, Request, Response, ServeError};
use crate::prometheus::{self, RenderFn};
use crate::topology::Topology;
pub use graph::{layout, Graph};
pub use scraped::{fetch_previews, observe_scraped, InstanceLife, InstanceView, PreviewEntry};
use vidmesh_actors::preview::PreviewBoard;

/// The page, with its script and styles inline.
const PAGE: &str = include_str!("page.html");

/// How often the runtimes observe the pipeline for the dashboard.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A stream with no new frame for this long (and not ended) is reported stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

/// Points of history kept per stage: ten minutes at one a second.
const HISTORY_POINTS: usize = 600;

/// Events kept for the page.
const EVENTS_KEPT: usize = 200;

/// What a runtime saw of one stage (all replicas together), cumulative since the start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageObservation {
    pub name: String,
    /// Replicas serving right now (the launcher's view; 1 in one process).
    pub up: u32,
    pub frames: u64,
    pub batches: u64,
    pub busy_s: f64,
    /// Sum and count of end-to-end latency observations (ingest → leaving this stage).
    pub latency_sum_s: f64,
    pub latency_count: u64,
    /// Deliveries waiting for this stage (queued or unacknowledged).
    pub queue: u64,
    pub dropped: u64,
    pub resent: u64,
    pub restarts: u64,
}

/// Where a source is in its life, as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Its process or thread is running (whether frames flow is judged from the counts).
    Running,
    /// Its process died and is being restarted (the launcher's view).
    Restarting,
    /// Its camera dropped or stalled and the source is reconnecting (`reconnect_interval`).
    Reconnecting,
    Ended,
    Failed(String),
}

impl SourceState {
    /// The state's name in JSON answers.
    pub fn label(&self) -> &'static str {
        match self {
            SourceState::Running => "running",
            SourceState::Restarting => "restarting",
            SourceState::Reconnecting => "reconnecting",
            SourceState::Ended => "ended",
            SourceState::Failed(_) => "failed",
        }
    }
}

/// What a runtime saw of one source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceObservation {
    pub id: u32,
    pub name: String,
    pub frames: u64,
    pub state: SourceState,
}

/// The newest thumbnail of a source, JPEG.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewImage {
    pub source_id: u32,
    pub frame_num: u64,
    pub jpeg: Arc<Vec<u8>>,
}

/// Everything the dashboard learns in one sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub stages: Vec<StageObservation>,
    pub sources: Vec<SourceObservation>,
    pub previews: Vec<PreviewImage>,
    /// The host's GPUs, where NVML is present.
    pub gpus: Vec<GpuSample>,
}

/// One stage as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageView {
    pub name: String,
    pub kind: String,
    pub replicas: u32,
    pub up: u32,
    pub frames: u64,
    pub fps: f64,
    /// Mean end-to-end latency over the last interval, in milliseconds (null before any).
    pub latency_ms: Option<f64>,
    /// Mean processing time per batch over the last interval, in milliseconds.
    pub batch_ms: Option<f64>,
    pub queue: u64,
    pub dropped: u64,
    pub resent: u64,
    pub restarts: u64,
    /// `ok`, `busy` (queue more than half full), `down` (no replica up) or `idle`.
    pub health: &'static str,
}

/// One stream as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamView {
    pub id: u32,
    pub name: String,
    pub frames: u64,
    pub fps: f64,
    /// `starting`, `running`, `stalled`, `reconnecting`, `restarting`, `ended` or `failed`.
    pub status: &'static str,
    pub detail: Option<String>,
    /// Seconds since the last new frame.
    pub idle_s: f64,
    pub preview_frame: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Seconds since the dashboard started.
    pub t_s: f64,
    /// `info`, `warn` or `error`.
    pub level: &'static str,
    pub text: String,
}

/// Per-stage series for the charts, one point per sample.
#[derive(Debug, Clone, Default, Serialize)]
struct History {
    t_s: VecDeque<f64>,
    fps: BTreeMap<String, VecDeque<f64>>,
    /// Mean end-to-end latency in ms; null where a stage saw no frame in the interval.
    latency_ms: BTreeMap<String, VecDeque<Option<f64>>>,
}

/// What the dashboard keeps between samples.
#[derive(Debug, Default)]
struct Live {
    last: Option<(Instant, Observation)>,
    stages: Vec<StageView>,
    streams: Vec<StreamView>,
    /// Per source: when its frame count last grew.
    last_progress: BTreeMap<u32, Instant>,
    events: VecDeque<Event>,
    history: History,
    previews: BTreeMap<u32, PreviewImage>,
    gpus: Vec<GpuSample>,
    samples: u64,
}

/// The dashboard's state: fed observations, asked for JSON and thumbnails.
#[derive(Debug)]
pub struct Dashboard {
    pipeline: String,
    mode: &'static str,
    graph: Graph,
    /// Stage name → (kind, replicas), in topology order.
    stages: Vec<(String, String, u32)>,
    started: Instant,
    live: Mutex<Live>,
}

#[derive(Serialize)]
struct StateJson<'a> {
    pipeline: &'a str,
    mode: &'a str,
    uptime_s: f64,
    samples: u64,
    graph: &'a Graph,
    stages: &'a [StageView],
    streams: &'a [StreamView],
    events: &'a VecDeque<Event>,
    history: &'a History,
    gpus: &'a [GpuSample],
}

impl Dashboard {
    /// A dashboard for `topology`; `mode` is `run` or `launch`.
    pub fn new(topology: &Topology, mode: &'static str) -> Self {
        Self {
            pipeline: topology.name.clone(),
            mode,
            graph: layout(topology),
            stages: topology
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.kind.name.to_string(), s.runtime.replicas))
                .collect(),
            started: Instant::now(),
            live: Mutex::new(Live::default()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one observation made at `now`.
    pub fn update(&self, now: Instant, observation: Observation) {
        let mut live = self.live();
        let t_s = now.duration_since(self.started).as_secs_f64();
        let previous = live.last.take();
        let dt = previous
            .as_ref()
            .map(|(at, _)| now.duration_since(*at).as_secs_f64())
            .filter(|dt| *dt > 1e-3);

        let mut events = Vec::new();
        let mut stages = Vec::with_capacity(self.stages.len());
        for (name, kind, replicas) in &self.stages {
            let now_obs = observation
                .stages
                .iter()
                .find(|s| &s.name == name)
                .cloned()
                .unwrap_or_else(|| StageObservation {
                    name: name.clone(),
                    ..Default::default()
                });
            let before = previous
                .as_ref()
                .and_then(|(_, o)| o.stages.iter().find(|s| &s.name == name));
            let view = stage_view(kind, *replicas, &now_obs, before, dt);
            if let Some(before) = before {
                if now_obs.restarts > before.restarts {
                    events.push((
                        "warn",
                        format!(
                            "stage `{name}` restarted ({} restart(s) so far)",
                            now_obs.restarts
                        ),
                    ));
                }
                if now_obs.up == 0 && before.up > 0 {
                    events.push(("error", format!("stage `{name}`: no replica is up")));
                }
                if now_obs.dropped > before.dropped {
                    events.push((
                        "warn",
                        format!(
                            "stage `{name}`: {} deliveries dropped (drop = \"oldest\")",
                            now_obs.dropped - before.dropped
                        ),
                    ));
                }
            }
            stages.push(view);
        }

        let mut streams = Vec::with_capacity(observation.sources.len());
        for source in &observation.sources {
            let before = previous
                .as_ref()
                .and_then(|(_, o)| o.sources.iter().find(|s| s.id == source.id));
            if before.is_none_or(|b| source.frames > b.frames) {
                live.last_progress.insert(source.id, now);
            }
            let idle = now
                .duration_since(live.last_progress.get(&source.id).copied().unwrap_or(now))
                .as_secs_f64();
            let fps = match (before, dt) {
                (Some(b), Some(dt)) => source.frames.saturating_sub(b.frames) as f64 / dt,
                _ => 0.0,
            };
            let (status, detail) = match &source.state {
                SourceState::Ended => ("ended", None),
                SourceState::Failed(e) => ("failed", Some(e.clone())),
                SourceState::Restarting => ("restarting", None),
                SourceState::Reconnecting => ("reconnecting", None),
                SourceState::Running if idle >= STALL_AFTER.as_secs_f64() => {
                    ("stalled", Some(format!("no new frame for {idle:.0} s")))
                }
                SourceState::Running if source.frames == 0 => ("starting", None),
                SourceState::Running => ("running", None),
            };
            let was = live
                .streams
                .iter()
                .find(|s| s.id == source.id)
                .map(|s| s.status);
            if was != Some(status) && !(was.is_none() && status == "starting") {
                let (level, text) = match status {
                    "stalled" => ("warn", format!("stream `{}` stalled", source.name)),
                    "failed" => (
                        "error",
                        format!(
                            "stream `{}` failed: {}",
                            source.name,
                            detail.as_deref().unwrap_or("")
                        ),
                    ),
                    "restarting" => ("warn", format!("stream `{}` is restarting", source.name)),
                    "reconnecting" => (
                        "warn",
                        format!("stream `{}` lost its camera; reconnecting", source.name),
                    ),
                    "ended" => (
                        "info",
                        format!(
                            "stream `{}` ended after {} frames",
                            source.name, source.frames
                        ),
                    ),
                    _ => ("info", format!("stream `{}` is {status}", source.name)),
                };
                events.push((level, text));
            }
            streams.push(StreamView {
                id: source.id,
                name: source.name.clone(),
                frames: source.frames,
                fps,
                status,
                detail,
                idle_s: idle,
                preview_frame: None,
            });
        }
        for p in &observation.previews {
            live.previews.insert(p.source_id, p.clone());
        }
        for s in &mut streams {
            s.preview_frame = live.previews.get(&s.id).map(|p| p.frame_num);
        }

        for (level, text) in events {
            tracing::info!(target: "vidmesh::dashboard", level, "{text}");
            live.events.push_back(Event { t_s, level, text });
            if live.events.len() > EVENTS_KEPT {
                live.events.pop_front();
            }
        }
        if dt.is_some() {
            let history = &mut live.history;
            history.t_s.push_back(t_s);
            for s in &stages {
                history
                    .fps
                    .entry(s.name.clone())
                    .or_default()
                    .push_back(s.fps);
                history
                    .latency_ms
                    .entry(s.name.clone())
                    .or_default()
                    .push_back(s.latency_ms);
            }
            if history.t_s.len() > HISTORY_POINTS {
                history.t_s.pop_front();
                history.fps.values_mut().for_each(|v| {
                    v.pop_front();
                });
                history.latency_ms.values_mut().for_each(|v| {
                    v.pop_front();
                });
            }
        }
        live.stages = stages;
        live.streams = streams;
        live.gpus = observation.gpus.clone();
        live.samples += 1;
        live.last = Some((now, observation));
    }

    /// The page's `/api/state`.
    pub fn state_json(&self) -> String {
        let live = self.live();
        serde_json::to_string(&StateJson {
            pipeline: &self.pipeline,
            mode: self.mode,
            uptime_s: self.started.elapsed().as_secs_f64(),
            samples: live.samples,
            graph: &self.graph,
            stages: &live.stages,
            streams: &live.streams,
            events: &live.events,
            history: &live.history,
            gpus: &live.gpus,
        })
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The newest thumbnail of a source.
    pub fn preview(&self, source_id: u32) -> Option<Arc<Vec<u8>>> {
        self.live().previews.get(&source_id).map(|p| p.jpeg.clone())
    }

    /// Answers the dashboard's routes; `/metrics` when the runtime has a renderer.
    pub fn handle(&self, request: &Request, metrics: Option<&RenderFn>) -> Response {
        match request.path.as_str() {
            "/" | "/index.html" => {
                Response::bytes(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
            }
            "/api/state" => Response::json(self.state_json()),
            "/healthz" => Response::text(200, "ok"),
            "/metrics" => match metrics {
                Some(render) => prometheus::metrics_response(render),
                None => Response::not_found(),
            },
            path => match preview_id(path).and_then(|id| self.preview(id)) {
                Some(jpeg) => Response::bytes(200, "image/jpeg", jpeg.to_vec()),
                None => Response::not_found(),
            },
        }
    }
}

/// The stages whose output the dashboard previews: the OSD stages, i.e. annotated frames.
pub fn previewed_stages(topology: &Topology) -> Vec<String> {
    topology
        .stages
        .iter()
        .filter(|s| s.kind.name == "osd")
        .map(|s| s.name.clone())
        .collect()
}

/// A board for a previewed stage: two thumbnails a second per source.
pub fn preview_board() -> Arc<PreviewBoard> {
    Arc::new(PreviewBoard::new(Duration::from_millis(500)))
}

/// The preview routes a stage process serves beside `/metrics`: `/previews` (what it has, as
/// JSON [`PreviewEntry`]s) and `/preview/<source id>.jpg`.
pub fn preview_response(board: &PreviewBoard, request: &Request) -> Option<Response> {
    if request.path == "/previews" {
        let entries: Vec<serde_json::Value> = board
            .all()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "source_id": p.source_id,
                    "frame_num": p.frame_num,
                    "taken_ms": p.taken_ms,
                })
            })
            .collect();
        return Some(Response::json(serde_json::Value::from(entries).to_string()));
    }
    let id = preview_id(&request.path)?;
    Some(match board.latest(id) {
        Some(p) => Response::bytes(200, "image/jpeg", p.jpeg.clone()),
        None => Response::not_found(),
    })
}

/// The previews of a board as the dashboard keeps them.
pub fn board_images(board: &PreviewBoard) -> Vec<PreviewImage> {
    board
        .all()
        .iter()
        .map(|p| PreviewImage {
            source_id: p.source_id,
            frame_num: p.frame_num,
            jpeg: Arc::new(p.jpeg.clone()),
        })
        .collect()
}

/// `/preview/3.jpg` → 3.
fn preview_id(path: &str) -> Option<u32> {
    path.strip_prefix("/preview/")?
        .strip_suffix(".jpg")?
        .parse()
        .ok()
}

fn stage_view(
    kind: &str,
    replicas: u32,
    now: &StageObservation,
    before: Option<&StageObservation>,
    dt: Option<f64>,
) -> StageView {
    let (mut fps, mut latency_ms, mut batch_ms) = (0.0, None, None);
    if let (Some(b), Some(dt)) = (before, dt) {
        fps = now.frames.saturating_sub(b.frames) as f64 / dt;
        let count = now.latency_count.saturating_sub(b.latency_count);
        if count > 0 {
            latency_ms = Some((now.latency_sum_s - b.latency_sum_s).max(0.0) * 1e3 / count as f64);
        }
        let batches = now.batches.saturating_sub(b.batches);
        if batches > 0 {
            batch_ms = Some((now.busy_s - b.busy_s).max(0.0) * 1e3 / batches as f64);
        }
    }
    let health = if now.up == 0 {
        "down"
    } else if now.queue > 0 && now.queue * 2 >= queue_capacity_hint(replicas) {
        "busy"
    } else if fps == 0.0 {
        "idle"
    } else {
        "ok"
    };
    StageView {
        name: now.name.clone(),
        kind: kind.to_string(),
        replicas,
        up: now.up,
        frames: now.frames,
        fps,
        latency_ms,
        batch_ms,
        queue: now.queue,
        dropped: now.dropped,
        resent: now.resent,
        restarts: now.restarts,
        health,
    }
}

/// Deliveries that fill a stage's inputs: a link's window of 4 batches per replica is the
/// default `queue`, so 8 or more waiting means producers are being held back.
fn queue_capacity_hint(replicas: u32) -> u64 {
    8 * replicas.max(1) as u64
}

/// Answers the requests it recognises (`None` for the others).
pub type ControlFn = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// A running dashboard: its server and the thread that samples the pipeline.
pub struct DashboardServer {
    server: HttpServer,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl DashboardServer {
    /// Serves `dashboard` on `addr`; whoever owns it feeds it observations. `metrics` adds
    /// `/metrics` to the same port; `control` answers the requests it claims first (the
    /// control API, which also takes `POST` and `DELETE`).
    pub fn serve(
        addr: SocketAddr,
        dashboard: Arc<Dashboard>,
        metrics: Option<RenderFn>,
        control: Option<ControlFn>,
    ) -> Result<Self, ServeError> {
        // Reachable from other hosts only with a token (`VIDMESH_API_TOKEN`).
        let token = http::required_token("dashboard", addr)?;
        let server = match control {
            None => http::serve(
                "dashboard",
                addr,
                http::guarded(
                    token,
                    Arc::new(move |request: &Request| dashboard.handle(request, metrics.as_ref())),
                ),
            )?,
            Some(control) => http::serve_api(
                "dashboard",
                addr,
                http::guarded(
                    token,
                    Arc::new(move |request: &Request| {
                        control(request).unwrap_or_else(|| match request.method.as_str() {
                            "GET" | "HEAD" => dashboard.handle(request, metrics.as_ref()),
                            _ => Response::text(405, "method not allowed\n"),
                        })
                    }),
                ),
            )?,
        };
        Ok(Self {
            server,
            stop: Arc::new(AtomicBool::new(false)),
            sampler: None,
        })
    }

    /// Serves `dashboard` and feeds it `observe()` every [`SAMPLE_INTERVAL`] until dropped.
    pub fn start(
        addr: SocketAddr,
        dashboard: Arc<Dashboard>,
        mut observe: impl FnMut() -> Observation + Send + 'static,
        metrics: Option<RenderFn>,
        control: Option<ControlFn>,
    ) -> Result<Self, ServeError> {
        let mut this = Self::serve(addr, dashboard.clone(), metrics, control)?;
        dashboard.update(Instant::now(), observe());
        let stop = this.stop.clone();
        let sampler = std::thread::Builder::new()
            .name("vidmesh-dashboard".into())
            .spawn(move || {
                let mut next = Instant::now() + SAMPLE_INTERVAL;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() >= next {
                        next += SAMPLE_INTERVAL;
                        dashboard.update(Instant::now(), observe());
                    }
                }
            })
            .map_err(|source| ServeError::Thread {
                what: "dashboard",
                source,
            })?;
        this.sampler = Some(sampler);
        Ok(this)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

impl Drop for DashboardServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
