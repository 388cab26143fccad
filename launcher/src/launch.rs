//! `vidmesh launch`: one process per source and per stage replica, supervised.
//!
//! The launcher hosts the zenoh router the stage processes connect to, starts every instance
//! with `vidmesh stage`, prefixes their log lines with `[stage/replica]`, restarts an instance
//! that dies (exponential backoff, at most `max_restarts` times), and announces an instance it
//! gave up on as retired so that the others stop waiting for it. Ctrl-C stops the sources; the
//! pipeline then drains and ends; a second Ctrl-C kills everything.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use vidmesh_transport::net::{NetConfig, NetNode};
use vidmesh_transport::shm::remove_stale_segments;

use crate::dashboard::{
    self, fetch_previews, observe_scraped, Dashboard, DashboardServer, InstanceLife, InstanceView,
};
use crate::gpu::GpuProbe;
use crate::node::{metrics_address_path, source_instance, summary_path, NodeSummary};
use crate::prometheus::{self, Exposition, Sample, RESTARTS_TOTAL};
use crate::runner::{RunSummary, SourceSummary, StageSummary};
use crate::topology::{Topology, SOURCES};

/// How to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The `vidmesh` binary to run stages with.
    pub exe: PathBuf,
    /// Where instances keep restart state, pid files and summaries (emptied first).
    pub state_dir: PathBuf,
    pub shm_dir: PathBuf,
    /// Print a status line (per-instance fps and queue depth, scraped from each process's
    /// Prometheus endpoint) this often.
    pub progress_interval: Option<Duration>,
    /// Serve every process's metrics, merged, on this address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the live dashboard (and the merged metrics) on this address.
    pub dashboard_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Net(#[from] vidmesh_transport::net::NetError),
}

/// One instance under supervision.
struct Supervised {
    name: String,
    replica: u32,
    max_restarts: u32,
    child: Option<Child>,
    started: Instant,
    restarts: u32,
    restart_at: Option<Instant>,
    state: InstanceState,
}

#[derive(Debug, Clone, PartialEq)]
enum InstanceState {
    Running,
    Succeeded,
    GaveUp(String),
}

impl Supervised {
    fn label(&self) -> String {
        format!("{}/{}", self.name, self.replica)
    }
}

/// An instance silent this long is considered hung.
const HUNG_AFTER: Duration = Duration::from_secs(10);

/// Ctrl-C presses seen by the launcher (1 = drain, 2 = kill).
pub type Interrupts = Arc<AtomicU32>;

/// Removes what an earlier launch left in the state directory (restart state must not leak
/// into a fresh run), and nothing else: the directory may be shared with other files.
fn clear_state(dir: &Path) -> Result<(), LaunchError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LaunchError::Setup(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = [".state", ".pid", ".summary.json", ".metrics", ".tmp"]
            .iter()
            .any(|suffix| name.to_string_lossy().ends_with(suffix));
        if ours {
            std::fs::remove_file(entry.path()).map_err(|e| {
                LaunchError::Setup(format!("cannot remove {}: {e}", entry.path().display()))
            })?;
        }
    }
    Ok(())
}

fn free_port() -> Result<u16, LaunchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LaunchError::Setup(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LaunchError::Setup(e.to_string()))
}

fn prefix_lines(label: String, stream: impl std::io::Read + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
        }
    });
}

fn spawn(
    s: &Supervised,
    exe: &Path,
    topology: &Topology,
    router: &str,
    options: &LaunchOptions,
) -> Result<Child, LaunchError> {
    let mut child = Command::new(exe)
        .arg("stage")
        .arg("--topology")
        .arg(&topology.path)
        .arg("--stage")
        .arg(&s.name)
        .arg("--replica")
        .arg(s.replica.to_string())
        .arg("--connect")
        .arg(router)
        .arg("--state-dir")
        .arg(&options.state_dir)
        .arg("--shm-dir")
        .arg(&options.shm_dir)
        .current_dir(&topology.base_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LaunchError::Setup(format!("cannot start {}: {e}", exe.display())))?;
    if let Some(out) = child.stdout.take() {
        prefix_lines(s.label(), out);
    }
    if let Some(err) = child.stderr.take() {
        prefix_lines(s.label(), err);
    }
    let pid_file = options
        .state_dir
        .join(format!("{}-{}.pid", s.name, s.replica));
    let _ = std::fs::write(pid_file, child.id().to_string());
    Ok(child)
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".into(),
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Runs `topology` as one process per source and stage replica until everything finished.
pub fn launch(
    topology: &Topology,
    options: &LaunchOptions,
    interrupts: Interrupts,
) -> Result<RunSummary, LaunchError> {
    let started = Instant::now();
    if topology.max_sources > 0 {
        // Each source is a process of its own here; starting and stopping them at run time is
        // not built for `launch` yet.
        return Err(LaunchError::Setup(format!(
            "{}: sources added at run time (pipeline.max_sources) work with `vidmesh run` only; \
             `vidmesh launch` runs the declared [[source]] entries",
            topology.path.display()
        )));
    }
    std::fs::create_dir_all(&options.state_dir).map_err(|e| {
        LaunchError::Setup(format!(
            "cannot create {}: {e}",
            options.state_dir.display()
        ))
    })?;
    clear_state(&options.state_dir)?;
    // Segments of processes killed in an earlier run of this pipeline.
    let _ = remove_stale_segments(&options.shm_dir, &format!("vidmesh-{}-", topology.name));

    // Every instance, and the host it is placed on (`None`: this one).
    let mut planned: Vec<(String, u32, u32, Option<&str>)> = Vec::new();
    for s in &topology.sources {
        let host = topology.deployment.host_of(SOURCES);
        planned.push((source_instance(&s.settings.id), 0, 5, host));
    }
    for st in &topology.stages {
        let host = topology.deployment.host_of(&st.name);
        for replica in 0..st.runtime.replicas {
            planned.push((st.name.clone(), replica, st.runtime.max_restarts, host));
        }
    }
    let mut other_hosts: Vec<String> = Vec::new();
    for host in planned.iter().filter_map(|p| p.3) {
        let Some(endpoint) = &topology.deployment.hosts[host].zenoh else {
            return Err(LaunchError::Setup(format!(
                "{}: [hosts.{host}] has no `zenoh` endpoint, so `vidmesh launch` cannot reach the \
                 stages placed there (`vidmesh compose` runs a router per host itself)",
                topology.path.display()
            )));
        };
        if !other_hosts.contains(endpoint) {
            other_hosts.push(endpoint.clone());
        }
    }

    let router = format!("tcp/127.0.0.1:{}", free_port()?);
    // The routers of the other hosts, so stages placed there join this pipeline.
    let net = NetNode::open(
        &NetConfig {
            pipeline: topology.name.clone(),
            listen: vec![router.clone()],
            connect: other_hosts,
            mode: Some("router".into()),
        },
        "launcher",
        0,
    )?;
    tracing::info!("zenoh router for `{}` listening on {router}", topology.name);

    let mut instances: Vec<Supervised> = Vec::new();
    for (name, replica, max_restarts, host) in planned {
        if let Some(host) = host {
            let endpoint = topology.deployment.hosts[host]
                .zenoh
                .as_deref()
                .unwrap_or_default();
            eprintln!(
                "launch: `{name}` replica {replica} is placed on host `{host}`; start it there with: \
                 vidmesh stage --topology {} --stage {name} --replica {replica} --listen {endpoint}",
                topology.path.display(),
            );
            continue;
        }
        instances.push(Supervised {
            name,
            replica,
            max_restarts,
            child: None,
            started: Instant::now(),
            restarts: 0,
            restart_at: None,
            state: InstanceState::Running,
        });
    }
    // Consumers first, so that sources find someone to send to.
    for s in instances.iter_mut().rev() {
        s.child = Some(spawn(s, &options.exe, topology, &router, options)?);
        s.started = Instant::now();
    }
    eprintln!(
        "launch: `{}` started as {} processes (state in {})",
        topology.name,
        instances.len(),
        options.state_dir.display()
    );

    let views: Views = Arc::new(std::sync::Mutex::new(
        instances
            .iter()
            .map(|s| InstanceView {
                name: s.name.clone(),
                replica: s.replica,
                restarts: 0,
                life: InstanceLife::Running,
            })
            .collect(),
    ));
    let watcher = MetricsWatcher::start(topology, options, views.clone())?;

    let mut interrupts_seen = 0;
    loop {
        let pressed = interrupts.load(Ordering::Relaxed);
        if pressed > interrupts_seen {
            interrupts_seen = pressed;
            for s in &instances {
                if let Some(child) = &s.child {
                    if pressed >= 2 {
                        signal(child, libc::SIGKILL);
                    } else if s.name.starts_with("source.") {
                        signal(child, libc::SIGINT);
                    }
                }
            }
            eprintln!(
                "launch: {}",
                if pressed >= 2 {
                    "killing every process"
                } else {
                    "stopping the sources; the pipeline drains (Ctrl-C again to kill)"
                }
            );
        }
        for s in instances.iter_mut() {
            if let Some(at) = s.restart_at {
                if Instant::now() >= at && interrupts_seen < 2 {
                    s.restart_at = None;
                    s.child = Some(spawn(s, &options.exe, topology, &router, options)?);
                    s.started = Instant::now();
                    set_life(&views, s, InstanceLife::Running);
                }
                continue;
            }
            let label = s.label();
            let Some(child) = s.child.as_mut() else {
                continue;
            };
            // Health: a process that stopped announcing itself (hung, deadlocked) is killed,
            // and then restarted like any other that died.
            if let Some(peer) = net.peers().get(&s.name, s.replica) {
                let silent = peer.last_seen.elapsed();
                if silent > HUNG_AFTER && s.started.elapsed() > HUNG_AFTER {
                    eprintln!(
                        "launch: {label} sent no heartbeat for {:.0}s; killing it",
                        silent.as_secs_f64()
                    );
                    signal(child, libc::SIGKILL);
                }
            }
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            s.child = None;
            if status.success() {
                s.state = InstanceState::Succeeded;
                set_life(&views, s, InstanceLife::Succeeded);
                continue;
            }
            let why = describe_exit(status);
            if interrupts_seen >= 2 {
                s.state = InstanceState::GaveUp(format!("{why} (the pipeline was stopped)"));
            } else if s.restarts < s.max_restarts {
                s.restarts += 1;
                set_life(&views, s, InstanceLife::Restarting);
                let backoff = Duration::from_millis(200 * (1u64 << (s.restarts - 1).min(5)));
                eprintln!(
                    "launch: {} {why}; restarting in {:.1}s (restart {} of {})",
                    s.label(),
                    backoff.as_secs_f64(),
                    s.restarts,
                    s.max_restarts
                );
                s.restart_at = Some(Instant::now() + backoff);
            } else {
                eprintln!(
                    "launch: {} {why}; giving up after {} restart(s)",
                    s.label(),
                    s.restarts
                );
                set_life(&views, s, InstanceLife::GaveUp(why.clone()));
                s.state = InstanceState::GaveUp(why);
                for _ in 0..3 {
                    net.announce_retired(&s.name, s.replica)?;
                }
            }
        }
        // A stage with no replica left cannot pass anything on: the pipeline cannot finish,
        // so it stops instead of waiting forever.
        if interrupts_seen < 2 {
            // A source given up on just ends its stream (its consumers stop waiting for it).
            let dead_stage = instances.iter().find(|s| {
                !s.name.starts_with("source.")
                    && matches!(s.state, InstanceState::GaveUp(_))
                    && instances
                        .iter()
                        .filter(|o| o.name == s.name)
                        .all(|o| matches!(o.state, InstanceState::GaveUp(_)))
            });
            if let Some(dead) = dead_stage {
                eprintln!(
                    "launch: no replica of `{}` is left; stopping the pipeline",
                    dead.name
                );
                interrupts_seen = 2;
                for s in instances.iter_mut() {
                    s.restart_at = None;
                    if let Some(child) = &s.child {
                        signal(child, libc::SIGKILL);
                    }
                }
            }
        }
        if instances
            .iter()
            .all(|s| s.child.is_none() && s.restart_at.is_none())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(watcher);

    Ok(summarise(topology, options, &instances, started))
}

/// The process table as the metrics and the dashboard see it.
type Views = Arc<std::sync::Mutex<Vec<InstanceView>>>;

fn set_life(views: &Views, s: &Supervised, life: InstanceLife) {
    let mut views = views.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = views
        .iter_mut()
        .find(|v| v.name == s.name && v.replica == s.replica)
    {
        v.restarts = s.restarts;
        v.life = life;
    }
}

fn summarise(
    topology: &Topology,
    options: &LaunchOptions,
    instances: &[Supervised],
    started: Instant,
) -> RunSummary {
    let read = |name: &str, replica: u32| -> Option<NodeSummary> {
        let text = std::fs::read(summary_path(&options.state_dir, name, replica)).ok()?;
        serde_json::from_slice(&text).ok()
    };
    let mut errors = Vec::new();
    for s in instances {
        if let InstanceState::GaveUp(why) = &s.state {
            let last = read(&s.name, s.replica).and_then(|n| n.error);
            errors.push(match last {
                Some(e) => format!("{} {why}: {e}", s.label()),
                None => format!("{} {why}", s.label()),
            });
        }
    }
    let mut sources = Vec::new();
    for s in &topology.sources {
        let node = read(&source_instance(&s.settings.id), 0);
        sources.push(SourceSummary {
            name: s.settings.id.clone(),
            frames: node.as_ref().map_or(0, |n| n.frames),
            reconnects: node
                .as_ref()
                .and_then(|n| n.facts.iter().find(|(k, _)| k == "reconnects"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0),
            error: node.and_then(|n| n.error),
        });
    }
    let mut stages = Vec::new();
    for st in &topology.stages {
        for replica in 0..st.runtime.replicas {
            let Some(node) = read(&st.name, replica) else {
                continue;
            };
            let mut facts = node.facts;
            facts.push(("duplicates dropped".into(), node.duplicates.to_string()));
            facts.push(("re-sent".into(), node.resent.to_string()));
            stages.push(StageSummary {
                name: if st.runtime.replicas == 1 {
                    st.name.clone()
                } else {
                    format!("{}/{replica}", st.name)
                },
                kind: st.kind.name.to_string(),
                facts,
                metrics: node.metrics,
            });
        }
    }
    RunSummary::new(
        &topology.name,
        started.elapsed().as_secs_f64(),
        sources,
        stages,
        errors,
    )
}

/// Scrapes every process's `/metrics` in the background: prints the status line, serves the
/// merged view and feeds the dashboard.
struct MetricsWatcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _servers: Vec<crate::http::HttpServer>,
    _dashboard: Option<DashboardServer>,
}

type Scraped = Arc<std::sync::Mutex<Vec<(String, Vec<Sample>)>>>;

impl MetricsWatcher {
    fn start(
        topology: &Topology,
        options: &LaunchOptions,
        views: Views,
    ) -> Result<Self, LaunchError> {
        let scraped: Scraped = Arc::default();
        let gpus = Arc::new(GpuProbe::open());
        let render: prometheus::RenderFn = {
            let (scraped, views, gpus) = (scraped.clone(), views.clone(), gpus.clone());
            Arc::new(move || merged(&scraped, &views, gpus.as_ref().as_ref()))
        };
        let mut servers = Vec::new();
        if let Some(addr) = options.metrics_addr {
            let server = prometheus::serve(addr, render.clone())
                .map_err(|e| LaunchError::Setup(format!("launcher: {e}")))?;
            eprintln!(
                "launch: metrics of every process on http://{}/metrics",
                server.local_addr()
            );
            servers.push(server);
        }
        let board = match options.dashboard_addr {
            Some(addr) => {
                let board = Arc::new(Dashboard::new(topology, "launch"));
                let server = DashboardServer::serve(addr, board.clone(), Some(render), None)
                    .map_err(|e| LaunchError::Setup(format!("launcher: {e}")))?;
                eprintln!("dashboard: http://{}/", server.local_addr());
                Some((board, server))
            }
            None => None,
        };
        let dashboard = board.as_ref().map(|(b, _)| b.clone());
        let previewed = dashboard::previewed_stages(topology);
        let topology = topology.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let interval = options.progress_interval;
        let state_dir = options.state_dir.clone();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let print_every = interval.unwrap_or(Duration::from_secs(2));
                // The dashboard's rates need a fresh scrape every sample.
                let every = match dashboard {
                    Some(_) => print_every.min(dashboard::SAMPLE_INTERVAL),
                    None => print_every,
                };
                let started = Instant::now();
                let (mut next, mut next_print) = (started + every, started + print_every);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let now = Instant::now();
                    if now < next {
                        continue;
                    }
                    next += every;
                    let table = views.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let samples = scrape_all(&state_dir, &table);
                    if interval.is_some() && now >= next_print {
                        next_print += print_every;
                        eprintln!("{}", status_line(started.elapsed(), &samples, &table));
                    }
                    if let Some(dashboard) = &dashboard {
                        let mut observation = observe_scraped(&topology, &samples, &table);
                        let addrs: Vec<std::net::SocketAddr> = table
                            .iter()
                            .filter(|v| previewed.contains(&v.name))
                            .filter_map(|v| metrics_addr(&state_dir, &v.name, v.replica))
                            .collect();
                        observation.previews = fetch_previews(&addrs);
                        observation.gpus = gpus
                            .as_ref()
                            .as_ref()
                            .map(GpuProbe::sample)
                            .unwrap_or_default();
                        dashboard.update(Instant::now(), observation);
                    }
                    *scraped.lock().unwrap_or_else(|p| p.into_inner()) = samples;
                }
            })
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            _servers: servers,
            _dashboard: board.map(|(_, server)| server),
        })
    }
}

impl Drop for MetricsWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where an instance serves its metrics (and previews), once it has said so.
fn metrics_addr(state_dir: &Path, name: &str, replica: u32) -> Option<std::net::SocketAddr> {
    std::fs::read_to_string(metrics_address_path(state_dir, name, replica))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn scrape_all(state_dir: &Path, instances: &[InstanceView]) -> Vec<(String, Vec<Sample>)> {
    let mut out = Vec::new();
    for v in instances {
        let Some(addr) = metrics_addr(state_dir, &v.name, v.replica) else {
            continue;
        };
        if let Ok(samples) = prometheus::scrape(addr, Duration::from_millis(500)) {
            out.push((format!("{}/{}", v.name, v.replica), samples));
        }
    }
    out
}

fn merged(scraped: &Scraped, views: &Views, gpus: Option<&GpuProbe>) -> String {
    let scraped = scraped.lock().unwrap_or_else(|p| p.into_inner());
    let mut e = Exposition::new();
    for (instance, samples) in scraped.iter() {
        e.add_scraped(instance, samples);
    }
    for v in views.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let replica = v.replica.to_string();
        e.family(
            &RESTARTS_TOTAL,
            &[("stage", v.name.as_str()), ("replica", replica.as_str())],
            v.restarts as f64,
        );
    }
    if let Some(probe) = gpus {
        crate::gpu::add_to(&mut e, &probe.sample());
    }
    e.render()
}

/// `launch 12s | source.cam 300 fps | detect/0 31 fps q2 | ... | 1 restart`.
fn status_line(
    elapsed: Duration,
    scraped: &[(String, Vec<Sample>)],
    instances: &[InstanceView],
) -> String {
    let mut line = format!("launch {:.0}s", elapsed.as_secs_f64());
    for (instance, samples) in scraped {
        let value = |name: &str| {
            samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .sum::<f64>()
        };
        line.push_str(&format!(
            " | {instance} {:.0} fps {:.0} frames",
            value("vidmesh_fps"),
            value("vidmesh_frames_total")
        ));
        let queued = value("vidmesh_link_queue_depth");
        if queued > 0.0 {
            line.push_str(&format!(" ({queued:.0} unacked)"));
        }
    }
    let total: u32 = instances.iter().map(|v| v.restarts).sum();
    line.push_str(&format!(" | {total} restart(s)"));
    line
}
