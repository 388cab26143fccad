//! One stage replica, or one source, as its own process (`vidmesh stage`).
//!
//! The process joins the pipeline's zenoh network, receives from every replica of its
//! upstream stages, runs the same [`Stage`] code as `vidmesh run`, and sends to every replica
//! of its downstream stages. Around the stage it keeps a [`Ledger`] so that deliveries are
//! acknowledged only when they are done downstream, de-duplicates re-sends, holds a source's
//! end-of-stream until all of its frames are in, and (for stages that need frame order)
//! reorders frames per source with a bounded wait. Its restart state — the frames done per
//! source and, for stateful stages, the last committed snapshot — lives in `state_dir`.

pub mod ledger;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vidmesh_actors::source::{GstSource, SourceProgress};
use vidmesh_actors::{Outputs, Resume, Stage, StageError};
use vidmesh_protocol::{Batch, DataMessage, StreamEnd};
use vidmesh_transport::net::{
    keys_of, FrameKey, LinkEvent, NetConfig, NetError, NetNode, OutputSettings, PayloadMode,
    PeerTable, RemoteInbox, RemoteOutput, Routing,
};
use vidmesh_transport::LinkSender;

use crate::dashboard;
use crate::http::{self, HttpServer, Request, Response};
use crate::prometheus::{self, LinkSample};
use crate::runner::{MetricsSnapshot, StageMetrics};
use crate::topology::{Payload, Topology, SOURCES};
use ledger::{FrameSet, Ledger};
use vidmesh_actors::preview::PreviewBoard;

/// A replica that has not been heard from for this long is treated as gone.
const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// The longest a stage that needs frame order waits for a missing frame.
const REORDER_WAIT: Duration = Duration::from_secs(10);
/// How long a finished instance keeps announcing itself before it exits.
const LINGER: Duration = Duration::from_millis(400);

/// What to run and where its state lives.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// A stage name, or `source.<id>` for a source.
    pub instance: String,
    pub replica: u32,
    pub net: NetConfig,
    pub state_dir: PathBuf,
    pub shm_dir: PathBuf,
    /// Where to serve `/metrics` and `/healthz`; `None`: 127.0.0.1 on the placement's
    /// `metrics_port` (+ replica), or any free port.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("stage `{stage}` ({kind}): {error}")]
    Stage {
        stage: String,
        kind: String,
        error: StageError,
    },
    #[error("cannot write restart state {path}: {error}")]
    State {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What a finished instance reports (written to `<state_dir>/<instance>-<replica>.summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSummary {
    pub instance: String,
    pub replica: u32,
    pub kind: String,
    pub facts: Vec<(String, String)>,
    pub frames: u64,
    pub duplicates: u64,
    pub resent: u64,
    pub error: Option<String>,
    pub metrics: MetricsSnapshot,
}

/// The name a source's process has on the network.
pub fn source_instance(id: &str) -> String {
    format!("source.{id}")
}

/// Restart state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    frontier: Vec<(u32, u64)>,
    snapshot: Option<Vec<u8>>,
}

fn state_path(dir: &Path, instance: &str, replica: u32) -> PathBuf {
    dir.join(format!("{instance}-{replica}.state"))
}

pub fn summary_path(dir: &Path, instance: &str, replica: u32) -> PathBuf {
    dir.join(format!("{instance}-{replica}.summary.json"))
}

/// Where an instance writes the address of its Prometheus endpoint.
pub fn metrics_address_path(dir: &Path, instance: &str, replica: u32) -> PathBuf {
    dir.join(format!("{instance}-{replica}.metrics"))
}

/// What an instance's `/metrics` shows, read from other threads.
struct Exposed {
    instance: String,
    replica: u32,
    metrics: Arc<StageMetrics>,
    outputs: Vec<Arc<RemoteOutput>>,
    duplicates: Arc<std::sync::atomic::AtomicU64>,
    last: std::sync::Mutex<(Instant, u64)>,
}

impl Exposed {
    fn render(&self) -> String {
        let snapshot = self.metrics.snapshot();
        let fps = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = last.0.elapsed().as_secs_f64();
            let fps = if elapsed > 0.0 {
                snapshot.frames.saturating_sub(last.1) as f64 / elapsed
            } else {
                0.0
            };
            *last = (Instant::now(), snapshot.frames);
            fps
        };
        let duplicates = self.duplicates.load(Ordering::Relaxed);
        let links: Vec<LinkSample> = self
            .outputs
            .iter()
            .map(|o| LinkSample {
                link: o.name().to_string(),
                queue_depth: o.unacked() as u64,
                credits: o.credits(),
                sent: o.stats().sent.load(Ordering::Relaxed),
                acked: o.stats().acked.load(Ordering::Relaxed),
                resent: o.stats().resent.load(Ordering::Relaxed),
                dropped: o.stats().dropped.load(Ordering::Relaxed),
                duplicates,
            })
            .collect();
        prometheus::Exposition::new()
            .add_stage(&self.instance, self.replica, &snapshot, fps, &links)
            .add_values(&self.instance, self.replica, &self.metrics.values())
            .render()
    }
}

/// Serves `/metrics` on the placement's port (+ replica) or any free port, and writes the
/// address where the launcher finds it.
fn serve_metrics(
    topology: &Topology,
    options: &NodeOptions,
    exposed: Exposed,
    previews: Option<Arc<PreviewBoard>>,
) -> Result<HttpServer, NodeError> {
    let port = topology
        .deployment
        .placement
        .get(&options.instance)
        .and_then(|p| p.metrics_port)
        .map_or(0, |base| base + options.replica as u16);
    let addr = options
        .metrics_addr
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let exposed = Arc::new(exposed);
    let render: prometheus::RenderFn = Arc::new(move || exposed.render());
    let handler = move |request: &Request| match request.path.as_str() {
        "/metrics" => prometheus::metrics_response(&render),
        "/healthz" => Response::text(200, "ok"),
        _ => previews
            .as_deref()
            .and_then(|board| dashboard::preview_response(board, request))
            .unwrap_or_else(Response::not_found),
    };
    let server = http::serve("metrics", addr, Arc::new(handler))
        .map_err(|e| NodeError::Setup(format!("{}/{}: {e}", options.instance, options.replica)))?;
    let path = metrics_address_path(&options.state_dir, &options.instance, options.replica);
    std::fs::write(&path, server.local_addr().to_string())
        .map_err(|error| NodeError::State { path, error })?;
    Ok(server)
}

fn save_state(path: &Path, state: &SavedState) -> Result<(), NodeError> {
    let err = |error| NodeError::State {
        path: path.to_path_buf(),
        error,
    };
    let bytes =
        postcard::to_allocvec(state).map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn load_state(path: &Path) -> Result<Option<SavedState>, NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
            NodeError::Setup(format!(
                "restart state {} is damaged ({e}); delete it to start this stage afresh",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(NodeError::State {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// How deliveries reach a stage kind's replicas, and whether it needs frames in order.
fn delivery_of(kind: &vidmesh_actors::StageKind) -> (Routing, bool) {
    let routing = if kind.delivery.per_source {
        Routing::BySource
    } else {
        Routing::Balance
    };
    (routing, kind.delivery.ordered)
}

/// Links out of `producer` (a stage name or [`SOURCES`]).
fn open_outputs(
    topology: &Topology,
    producer: &str,
    net: &NetNode,
    shm_dir: &Path,
    events: &mpsc::Sender<LinkEvent>,
) -> Result<Vec<Arc<RemoteOutput>>, NodeError> {
    // `sources` is also the placement key of every source.
    let producer_host = topology.deployment.host_of(producer);
    let mut outputs = Vec::new();
    for (_, consumer) in topology.links.iter().filter(|(from, _)| from == producer) {
        let entry = topology
            .stages
            .iter()
            .find(|s| &s.name == consumer)
            .ok_or_else(|| NodeError::Setup(format!("no stage `{consumer}`")))?;
        let same_host = topology.deployment.host_of(consumer) == producer_host;
        let payload = match entry.runtime.payload {
            Some(Payload::Shm) => PayloadMode::SharedMemory,
            Some(Payload::Raw) => PayloadMode::Raw,
            Some(Payload::Jpeg { quality }) => PayloadMode::Jpeg { quality },
            None if same_host => PayloadMode::SharedMemory,
            None => PayloadMode::Raw,
        };
        let settings = OutputSettings {
            consumer: consumer.clone(),
            replicas: entry.runtime.replicas,
            window: topology.queue as u32,
            routing: delivery_of(entry.kind).0,
            payload,
            dead_after: DEAD_AFTER,
            shm_dir: shm_dir.to_path_buf(),
            drop_oldest: entry.runtime.drop_oldest,
        };
        outputs.push(Arc::new(RemoteOutput::new(net, settings, events.clone())?));
    }
    Ok(outputs)
}

fn wait_acknowledged(outputs: &[Arc<RemoteOutput>], net: &NetNode) -> Result<(), NodeError> {
    while outputs.iter().any(|o| o.unacked() > 0) {
        if let Some(e) = net.peers().incompatible() {
            return Err(NodeError::Setup(e));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn finish_and_linger(net: &NetNode) {
    net.set_finished(true);
    std::thread::sleep(LINGER);
}

fn write_summary(dir: &Path, summary: &NodeSummary) {
    let path = summary_path(dir, &summary.instance, summary.replica);
    if let Ok(json) = serde_json::to_vec_pretty(summary) {
        if let Err(e) = std::fs::write(&path, json) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// Runs one instance until its inputs are finished and everything it sent is acknowledged.
pub fn run_node(
    topology: &Topology,
    options: &NodeOptions,
    stop: Arc<AtomicBool>,
) -> Result<NodeSummary, NodeError> {
    std::fs::create_dir_all(&options.state_dir).map_err(|error| NodeError::State {
        path: options.state_dir.clone(),
        error,
    })?;
    let result = match options.instance.strip_prefix("source.") {
        Some(id) => run_source(topology, id, options, &stop),
        None => run_stage(topology, options, &stop),
    };
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            write_summary(
                &options.state_dir,
                &NodeSummary {
                    instance: options.instance.clone(),
                    replica: options.replica,
                    kind: String::new(),
                    facts: Vec::new(),
                    frames: 0,
                    duplicates: 0,
                    resent: 0,
                    error: Some(e.to_string()),
                    metrics: MetricsSnapshot::default(),
                },
            );
            return Err(e);
        }
    };
    write_summary(&options.state_dir, &summary);
    Ok(summary)
}

fn run_source(
    topology: &Topology,
    id: &str,
    options: &NodeOptions,
    stop: &AtomicBool,
) -> Result<NodeSummary, NodeError> {
    let (index, entry) = topology
        .sources
        .iter()
        .enumerate()
        .find(|(_, s)| s.settings.id == id)
        .ok_or_else(|| NodeError::Setup(format!("the topology has no source `{id}`")))?;
    let net = NetNode::open(&options.net, &options.instance, options.replica)?;
    // A source has no inbox: it only needs to know when its frames are done.
    let (events, _ignored) = mpsc::channel();
    let outputs = open_outputs(topology, SOURCES, &net, &options.shm_dir, &events)?;
    drop(_ignored);
    let metrics = Arc::new(StageMetrics::default());
    let _server = serve_metrics(
        topology,
        options,
        Exposed {
            instance: options.instance.clone(),
            replica: options.replica,
            metrics: metrics.clone(),
            outputs: outputs.clone(),
            duplicates: Arc::default(),
            last: std::sync::Mutex::new((Instant::now(), 0)),
        },
        None,
    )?;
    let mut out = Outputs::new(outputs.iter().cloned().map(LinkSender::remote).collect());
    let mut source = GstSource::new(entry.settings.clone(), entry.uri.clone(), index as u32);
    let progress = Arc::new(SourceProgress::default());
    let counting = {
        let (progress, metrics) = (progress.clone(), metrics.clone());
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let t = std::thread::spawn(move || {
            let mut seen = 0;
            while !d.load(Ordering::Relaxed) {
                let now = progress.frames.load(Ordering::Relaxed);
                if now > seen {
                    metrics.record((now - seen) as usize, Duration::ZERO, Duration::ZERO, None);
                    seen = now;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        (done, t)
    };
    let report = source.run(&mut out, stop, &progress);
    counting.0.store(true, Ordering::Relaxed);
    let _ = counting.1.join();
    tracing::debug!(
        frames = report.frames,
        "source `{id}` ended; waiting for acknowledgements"
    );
    wait_acknowledged(&outputs, &net)?;
    let resent = outputs
        .iter()
        .map(|o| o.stats().resent.load(Ordering::Relaxed))
        .sum();
    finish_and_linger(&net);
    let summary = NodeSummary {
        instance: options.instance.clone(),
        replica: options.replica,
        kind: "source".into(),
        facts: vec![("reconnects".into(), report.reconnects.to_string())],
        frames: report.frames,
        duplicates: 0,
        resent,
        error: report.error.clone(),
        metrics: metrics.snapshot(),
    };
    match report.error {
        Some(e) => Err(NodeError::Setup(format!("source `{id}`: {e}"))),
        None => Ok(summary),
    }
}

/// A stage process's working state around its [`Stage`].
struct StageNode {
    name: String,
    kind: String,
    stage: Box<dyn Stage>,
    out: Outputs,
    outputs: Vec<Arc<RemoteOutput>>,
    events: Receiver<LinkEvent>,
    ledger: Ledger,
    stateful: bool,
    ordered: bool,
    /// Hold a source's end-of-stream until all its frames were processed here.
    hold_end: bool,
    processed: HashMap<u32, FrameSet>,
    held_batches: Vec<(Instant, Batch)>,
    held_ends: Vec<StreamEnd>,
    state_file: PathBuf,
    metrics: Arc<StageMetrics>,
    duplicates: Arc<std::sync::atomic::AtomicU64>,
    /// Sources of a per-source stage this replica has checked for a newer state elsewhere
    /// since it started or since the source last went to another replica.
    held_sources: std::collections::HashSet<u32>,
}

impl StageNode {
    fn fail(&self, error: StageError) -> NodeError {
        NodeError::Stage {
            stage: self.name.clone(),
            kind: self.kind.clone(),
            error,
        }
    }

    fn drain_events(&mut self) {
        for event in self.events.try_iter() {
            match event {
                LinkEvent::Emitted(keys) => self.ledger.emitted(&keys),
                LinkEvent::Acked(keys) => self.ledger.acked(&keys),
            }
        }
    }

    fn accept(&mut self, message: DataMessage, fresh: Vec<FrameKey>) -> Result<(), NodeError> {
        match message {
            DataMessage::Batch(mut batch) => {
                if fresh.is_empty() {
                    return Ok(());
                }
                // A batch tensor covers every frame of the batch, so a partly repeated batch
                // with tensors is processed whole (downstream drops the repeats).
                if batch.tensors.is_empty() {
                    batch
                        .frames
                        .retain(|f| fresh.contains(&(f.source_id, f.frame_num)));
                }
                self.held_batches.push((Instant::now(), batch));
            }
            DataMessage::EndOfStream(end) => {
                if !fresh.is_empty() {
                    self.held_ends.push(end);
                }
            }
        }
        Ok(())
    }

    fn in_order(&self, batch: &Batch) -> bool {
        let mut next: HashMap<u32, u64> = HashMap::new();
        batch.frames.iter().all(|f| {
            let n = next.entry(f.source_id).or_insert_with(|| {
                self.processed
                    .get(&f.source_id)
                    .map_or(0, |s| s.contiguous())
            });
            let ok = f.frame_num <= *n;
            *n = (*n).max(f.frame_num + 1);
            ok
        })
    }

    /// Processes whatever may go now: batches in order (or after the reorder wait), then the
    /// end-of-stream notices whose frames are all in.
    fn process_ready(&mut self, force: bool) -> Result<(), NodeError> {
        loop {
            let next = (0..self.held_batches.len()).find(|&i| {
                let (since, batch) = &self.held_batches[i];
                force || !self.ordered || self.in_order(batch) || since.elapsed() >= REORDER_WAIT
            });
            let Some(i) = next else { break };
            let (since, batch) = self.held_batches.remove(i);
            if self.ordered && !force && since.elapsed() >= REORDER_WAIT && !self.in_order(&batch) {
                tracing::warn!(
                    "stage `{}`: a frame did not arrive within {REORDER_WAIT:?}; going on without it",
                    self.name
                );
            }
            self.process_batch(batch)?;
        }
        let mut i = 0;
        while i < self.held_ends.len() {
            let end = &self.held_ends[i];
            let have = self
                .processed
                .get(&end.source_id)
                .map_or(0, |s| s.contiguous());
            let waiting_batches = self
                .held_batches
                .iter()
                .any(|(_, b)| b.frames.iter().any(|f| f.source_id == end.source_id));
            if force || !self.hold_end || (have >= end.frames && !waiting_batches) {
                let end = self.held_ends.remove(i);
                self.stage
                    .on_end_of_stream(&end, &mut self.out)
                    .map_err(|e| self.fail(e))?;
                self.drain_events();
                self.ledger
                    .processed(&[(end.source_id, vidmesh_transport::net::END_OF_STREAM)]);
                self.take_snapshot();
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch) -> Result<(), NodeError> {
        let keys = keys_of(&DataMessage::Batch(batch.clone()));
        let frames = batch.frames.len();
        let ingest = batch.frames.iter().map(|f| f.ingest_ns).min();
        let t0 = Instant::now();
        self.stage
            .on_batch(batch, &mut self.out)
            .map_err(|e| self.fail(e))?;
        let total = t0.elapsed();
        let sending = self.out.take_send_time();
        self.metrics.record(
            frames,
            total.saturating_sub(sending),
            sending,
            ingest.map(|i| crate::runner::now_ns().saturating_sub(i)),
        );
        self.metrics.set_values(self.stage.values());
        for (s, n) in &keys {
            self.processed.entry(*s).or_default().insert(*n);
        }
        self.drain_events();
        self.ledger.processed(&keys);
        self.take_snapshot();
        Ok(())
    }

    /// A frame of `source` arrived that this replica has not had since it started or since
    /// the source last went elsewhere. Another replica may have run the stream meanwhile: its
    /// owner was retired and this replica took over, or this replica is that owner, back
    /// after being retired. Either way the stream continues from the most advanced state any
    /// other replica committed for it (its frontier, and its snapshot for stateful stages),
    /// when that is ahead of this replica's own. The producer sends the source here only
    /// after the previous replica acknowledged everything it had, so that state is complete;
    /// frames after it were never acknowledged and are being re-sent here.
    fn take_over_if_moved(
        &mut self,
        source: u32,
        me: u32,
        replicas: u32,
        state_dir: &Path,
    ) -> Result<(), NodeError> {
        if !self.held_sources.insert(source) {
            return Ok(());
        }
        let progress_of = |saved: &SavedState| {
            saved
                .frontier
                .iter()
                .find(|(s, _)| *s == source)
                .map_or(0, |(_, n)| *n)
        };
        let mine = self.processed.get(&source).map_or(0, FrameSet::contiguous);
        let mut best: Option<(u32, SavedState)> = None;
        for r in (0..replicas).filter(|r| *r != me) {
            let Some(saved) = load_state(&state_path(state_dir, &self.name, r))? else {
                continue;
            };
            let progress = progress_of(&saved);
            if progress > mine && best.as_ref().is_none_or(|(_, b)| progress > progress_of(b)) {
                best = Some((r, saved));
            }
        }
        let Some((from, saved)) = best else {
            if source % replicas != me && mine == 0 {
                tracing::warn!(
                    "stage `{}`: source {source} moved here with no state from its earlier replica",
                    self.name
                );
            }
            return Ok(());
        };
        if let Some(snapshot) = &saved.snapshot {
            self.stage
                .adopt(snapshot, &[source])
                .map_err(|e| self.fail(e))?;
        }
        let frontier = progress_of(&saved);
        self.ledger.adopt_frontier(source, frontier);
        let processed = self.processed.entry(source).or_default();
        if processed.contiguous() < frontier {
            *processed = FrameSet::starting_at(frontier);
        }
        tracing::warn!(
            "stage `{}`: took over source {source} from replica {from} at frame {frontier}",
            self.name
        );
        self.take_snapshot();
        Ok(())
    }

    /// Forgets the sources that went to another replica, so that taking one back checks for
    /// the state that replica committed meanwhile.
    fn release_moved_sources(&mut self, peers: &PeerTable, me: u32, replicas: u32) {
        let name = &self.name;
        self.held_sources
            .retain(|s| peers.owner_of(name, replicas, *s) == me);
    }

    /// A stateful stage's state after everything processed so far (a commit candidate).
    fn take_snapshot(&mut self) {
        if self.stateful {
            if let Some(snapshot) = self.stage.snapshot() {
                self.ledger.snapshot_taken(snapshot);
            }
        }
    }

    /// Persists what must be persisted, then acknowledges what is done.
    fn settle(&mut self, inbox: &RemoteInbox) -> Result<(), NodeError> {
        self.drain_events();
        if let Some(commit) = self.ledger.commit_ready() {
            save_state(
                &self.state_file,
                &SavedState {
                    frontier: commit.frontier.clone(),
                    snapshot: Some(commit.snapshot.clone()),
                },
            )?;
            self.ledger.committed(&commit);
        }
        let ready = self.ledger.take_ready();
        if !ready.is_empty() {
            self.stage.flush().map_err(|e| self.fail(e))?;
            self.duplicates
                .store(self.ledger.duplicates, Ordering::Relaxed);
            if !self.stateful {
                save_state(
                    &self.state_file,
                    &SavedState {
                        frontier: self.ledger.frontier(),
                        snapshot: None,
                    },
                )?;
            }
            inbox.ack(&ready);
        }
        Ok(())
    }
}

/// Whether a stage kind's replicas share work by credits, so that any number of them may
/// run (numbered freely, joining and leaving while the pipeline runs).
pub fn is_elastic(kind: &vidmesh_actors::StageKind) -> bool {
    delivery_of(kind).0 == Routing::Balance
}

/// Runs a stage replica. `leave` (SIGTERM) makes a replica of a load-balanced or sharded stage
/// retire at once: the other replicas take over its work (and, when sharded, its sources
/// with their last committed state).
fn run_stage(
    topology: &Topology,
    options: &NodeOptions,
    leave: &AtomicBool,
) -> Result<NodeSummary, NodeError> {
    let entry = topology
        .stages
        .iter()
        .find(|s| s.name == options.instance)
        .ok_or_else(|| {
            let names: Vec<&str> = topology.stages.iter().map(|s| s.name.as_str()).collect();
            NodeError::Setup(format!(
                "the topology has no stage `{}` (stages: {}; sources run as source.<id>)",
                options.instance,
                names.join(", ")
            ))
        })?;
    let elastic = is_elastic(entry.kind);
    if options.replica >= entry.runtime.replicas && !elastic {
        return Err(NodeError::Setup(format!(
            "stage `{}` has {} replica(s); there is no replica {} (only load-balanced stages \
             such as preprocess and infer take more replicas than the topology says)",
            entry.name, entry.runtime.replicas, options.replica
        )));
    }
    let state_file = state_path(&options.state_dir, &entry.name, options.replica);
    let saved = load_state(&state_file)?;
    let mut context = topology.context(&entry.name);
    context.replica = options.replica;
    context.resume = saved.as_ref().map(|s| Resume {
        snapshot: s.snapshot.clone(),
    });
    if saved.is_some() {
        tracing::info!(
            "stage `{}` replica {} resumes from {}",
            entry.name,
            options.replica,
            state_file.display()
        );
    }
    let stage = (entry.kind.build)(&entry.table, &context).map_err(|error| NodeError::Stage {
        stage: entry.name.clone(),
        kind: entry.kind.name.to_string(),
        error,
    })?;

    let mut net = NetNode::open(&options.net, &entry.name, options.replica)?;
    let (events_tx, events) = mpsc::channel();
    let outputs = open_outputs(topology, &entry.name, &net, &options.shm_dir, &events_tx)?;
    drop(events_tx);
    let upstream: Vec<(String, u32)> = topology
        .links
        .iter()
        .filter(|(_, to)| to == &entry.name)
        .flat_map(|(from, _)| {
            if from == SOURCES {
                topology
                    .sources
                    .iter()
                    .map(|s| (source_instance(&s.settings.id), 1))
                    .collect::<Vec<_>>()
            } else {
                let replicas = topology
                    .stages
                    .iter()
                    .find(|s| &s.name == from)
                    .map_or(1, |s| s.runtime.replicas);
                vec![(from.clone(), replicas)]
            }
        })
        .collect();
    let elastic_stages: Vec<&str> = topology
        .stages
        .iter()
        .filter(|s| is_elastic(s.kind))
        .map(|s| s.name.as_str())
        .collect();
    let mut inbox = RemoteInbox::new(
        &net,
        upstream.clone(),
        topology.queue as u32,
        &options.shm_dir,
    )?;

    let (routing, ordered) = delivery_of(entry.kind);
    // Several replicas splitting the sources between them.
    let sharded = routing == Routing::BySource && entry.runtime.replicas > 1;
    let stateful = stage.snapshot().is_some();
    let frontier = saved
        .as_ref()
        .map(|s| s.frontier.clone())
        .unwrap_or_default();
    // The OSD's output is what the dashboard previews.
    let previews = dashboard::previewed_stages(topology)
        .contains(&entry.name)
        .then(dashboard::preview_board);
    let mut out = Outputs::new(outputs.iter().cloned().map(LinkSender::remote).collect());
    if let Some(board) = &previews {
        let board = board.clone();
        out = out.with_tap(Arc::new(move |batch| board.offer(batch)));
    }
    let mut node = StageNode {
        name: entry.name.clone(),
        kind: entry.kind.name.to_string(),
        stage,
        out,
        outputs,
        events,
        ledger: Ledger::new(
            topology.links.iter().all(|(f, _)| f != &entry.name),
            stateful,
            &frontier,
        ),
        stateful,
        ordered,
        // A load-balanced replica sees only some of a source's frames (and more replicas may
        // join), so it forwards the end at once; the per-source stages after it hold it.
        hold_end: routing == Routing::BySource,
        processed: frontier
            .iter()
            .map(|(s, n)| (*s, FrameSet::starting_at(*n)))
            .collect(),
        held_batches: Vec::new(),
        held_ends: Vec::new(),
        state_file,
        metrics: Arc::new(StageMetrics::default()),
        duplicates: Arc::default(),
        held_sources: std::collections::HashSet::new(),
    };
    let _server = serve_metrics(
        topology,
        options,
        Exposed {
            instance: node.name.clone(),
            replica: options.replica,
            metrics: node.metrics.clone(),
            outputs: node.outputs.clone(),
            duplicates: node.duplicates.clone(),
            last: std::sync::Mutex::new((Instant::now(), 0)),
        },
        previews,
    )?;

    let mut next_status = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = net.peers().incompatible() {
            return Err(NodeError::Setup(e));
        }
        if Instant::now() >= next_status {
            next_status += Duration::from_secs(5);
            tracing::debug!(
                in_progress = node.ledger.in_progress(),
                unacked = node.outputs.iter().map(|o| o.unacked()).sum::<usize>(),
                held_batches = node.held_batches.len(),
                held_ends = node.held_ends.len(),
                "stage `{}` waiting for its inputs to finish",
                node.name
            );
        }
        let tick = Instant::now() + Duration::from_millis(50);
        let deadline = node.stage.next_deadline().map_or(tick, |d| d.min(tick));
        match inbox.recv(Some(deadline))? {
            Some(delivery) => {
                let keys = keys_of(&delivery.message);
                if sharded {
                    for (source, _) in &keys {
                        node.take_over_if_moved(
                            *source,
                            options.replica,
                            entry.runtime.replicas,
                            &options.state_dir,
                        )?;
                    }
                }
                let fresh = node.ledger.admit(delivery.tag, &keys);
                node.accept(delivery.message, fresh)?;
            }
            None => {
                if node
                    .stage
                    .next_deadline()
                    .is_some_and(|d| d <= Instant::now())
                {
                    node.stage
                        .on_timer(Instant::now(), &mut node.out)
                        .map_err(|e| node.fail(e))?;
                }
            }
        }
        node.process_ready(false)?;
        node.settle(&inbox)?;
        if sharded {
            node.release_moved_sources(net.peers(), options.replica, entry.runtime.replicas);
        }

        if leave.load(Ordering::Relaxed) && (elastic || sharded) {
            tracing::warn!(
                "stage `{}` replica {} leaves: what it has not finished goes to the other replicas",
                entry.name,
                options.replica
            );
            net.leave()?;
            std::thread::sleep(LINGER);
            let metrics = node.metrics.snapshot();
            return Ok(NodeSummary {
                instance: node.name.clone(),
                replica: options.replica,
                kind: node.kind.clone(),
                facts: vec![("left".into(), "yes".into())],
                frames: metrics.frames,
                duplicates: node.ledger.duplicates,
                resent: 0,
                error: None,
                metrics,
            });
        }
        let upstream_done = upstream.iter().all(|(stage, replicas)| {
            let done = |r: u32| {
                net.peers()
                    .get(stage, r)
                    .is_some_and(|p| p.finished || p.retired)
            };
            if elastic_stages.contains(&stage.as_str()) {
                // Any number of replicas may have run: every one heard of is done.
                let heard = net.peers().replicas_of(stage);
                !heard.is_empty() && heard.into_iter().all(done)
            } else {
                (0..*replicas).all(done)
            }
        });
        if upstream_done {
            break;
        }
    }
    // Everything upstream is finished and acknowledged: flush and end.
    node.process_ready(true)?;
    let report = node
        .stage
        .on_finish(&mut node.out)
        .map_err(|e| node.fail(e))?;
    while node.outputs.iter().any(|o| o.unacked() > 0) || node.ledger.in_progress() > 0 {
        if let Some(e) = net.peers().incompatible() {
            return Err(NodeError::Setup(e));
        }
        std::thread::sleep(Duration::from_millis(10));
        node.settle(&inbox)?;
    }
    node.settle(&inbox)?;
    let resent = node
        .outputs
        .iter()
        .map(|o| o.stats().resent.load(Ordering::Relaxed))
        .sum();
    finish_and_linger(&net);
    let metrics = node.metrics.snapshot();
    Ok(NodeSummary {
        instance: node.name.clone(),
        replica: options.replica,
        kind: node.kind.clone(),
        facts: report.facts,
        frames: metrics.frames,
        duplicates: node.ledger.duplicates,
        resent,
        error: None,
        metrics,
    })
}
