//! `vidmesh`: run, validate and inspect topology files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vidmesh::launch::{launch, LaunchOptions};
use vidmesh::node::{run_node, NodeOptions};
use vidmesh::{run, RunOptions, RunSummary, Topology};
use vidmesh_transport::net::NetConfig;

#[derive(Parser)]
#[command(
    name = "vidmesh",
    version,
    about = "Video analytics pipelines as actors: DeepStream's job, in Rust"
)]
struct Cli {
    /// Log more (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology in this process until every source ends (Ctrl-C drains and stops).
    Run {
        topology: PathBuf,
        /// How often to print a progress line, e.g. "1s"; "0s" turns it off.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        progress: Duration,
        /// Also write the end-of-run summary as JSON here.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Serve the live dashboard, /metrics and the sources API (GET/POST/DELETE /sources) on
        /// this address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        dashboard: Option<std::net::SocketAddr>,
    },
    /// Run a topology as one process per source and stage replica, supervised (restarts with
    /// backoff; Ctrl-C drains, a second Ctrl-C kills).
    Launch {
        topology: PathBuf,
        /// Restart state, pid files and per-process summaries go here (emptied first).
        #[arg(long, default_value = ".vidmesh/launch")]
        state_dir: PathBuf,
        /// Where frames shared between processes live.
        #[arg(long, default_value = "/dev/shm")]
        shm_dir: PathBuf,
        /// How often to print a status line; "0s" turns it off.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        progress: Duration,
        /// Also write the end-of-run summary as JSON here.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Serve the metrics of every process, merged, on this address (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Serve the live dashboard of every process on this address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        dashboard: Option<std::net::SocketAddr>,
    },
    /// Run one stage replica (or `source.<id>`) of a topology as this process; `vidmesh launch`
    /// starts these, and they can be started by hand on other hosts.
    Stage {
        #[arg(long)]
        topology: PathBuf,
        /// A stage name, or `source.<id>` for a source.
        #[arg(long)]
        stage: String,
        /// The replica number, or "auto" (load-balanced stages only): a number derived from
        /// the host name, for containers that a scaler starts with one command line.
        #[arg(long, default_value = "0")]
        replica: String,
        /// zenoh endpoints to connect to (the launcher's router), e.g. tcp/127.0.0.1:7447.
        #[arg(long)]
        connect: Vec<String>,
        /// zenoh endpoints to listen on (default tcp/127.0.0.1:0).
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long, default_value = ".vidmesh/launch")]
        state_dir: PathBuf,
        #[arg(long, default_value = "/dev/shm")]
        shm_dir: PathBuf,
        /// zenoh mode: "peer" (default; also accepts connections) or "client" (only through
        /// the router it connects to, as in containers).
        #[arg(long, value_parser = ["peer", "client"])]
        mode: Option<String>,
        /// Serve /metrics and /healthz here (default: 127.0.0.1 on the placement's
        /// metrics_port, or any free port).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Run a zenoh router for a pipeline's processes on this host (what `vidmesh launch` runs
    /// inside itself, and what each host of a `vidmesh compose` deployment runs).
    Router {
        /// The pipeline's name (`[pipeline] name`).
        #[arg(long)]
        pipeline: String,
        /// Endpoints to listen on, e.g. tcp/0.0.0.0:7447.
        #[arg(long, required = true)]
        listen: Vec<String>,
        /// Routers of other hosts to connect to, e.g. tcp/10.0.0.7:7447.
        #[arg(long)]
        connect: Vec<String>,
    },
    /// Write the topology as a docker-compose file (or Docker Swarm stack, or Kubernetes
    /// manifests): one container per source and stage replica, a zenoh router per host,
    /// the brokers it names. Relative paths are from the working directory (the project).
    Compose {
        topology: PathBuf,
        /// "compose", "swarm" (a `docker stack deploy` file) or "kubernetes".
        #[arg(long, default_value = "compose", value_parser = ["compose", "swarm", "kubernetes"])]
        format: String,
        /// Write here instead of to standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The image the services run (overridable with VIDMESH_IMAGE in compose files).
        #[arg(long, default_value = vidmesh::deploy::DEFAULT_IMAGE)]
        image: String,
    },
    /// Check a topology without running it.
    Validate { topology: PathBuf },
    /// Print a topology as a Graphviz graph.
    Graph {
        topology: PathBuf,
        /// "dot" (Graphviz source) or "svg" (drawn by Graphviz's `dot -Tsvg`).
        #[arg(long, default_value = "dot", value_parser = ["dot", "svg"])]
        format: String,
        /// Write the graph here instead of to standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Describe a video source (a path, file://, rtsp://, http(s):// URI): container, codec,
    /// resolution, frame rate, duration, bitrate, streams, seekable/live.
    Inspect {
        uri: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// How long a source may take to answer, e.g. "10s" (1s..=1h).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Convert a deepstream-app config (and the nvinfer, tracker, analytics and msgconv files
    /// it names) into a topology; prints what could not be mapped exactly (docs/IMPORT.md).
    ImportDeepstream {
        config: PathBuf,
        /// Write the topology here (and a converted msgconv config next to it) instead of to
        /// standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the stage kinds this build knows.
    Kinds,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // zenoh logs "Received Data for unknown key_expr" at error level when a peer that just
    // finished (and undeclared its keys) still had messages in flight: harmless at the end of
    // every launch, so hidden unless RUST_LOG asks for it.
    let default = format!("{default},zenoh::api::session=off");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn print_summary(summary: &RunSummary) {
    println!(
        "pipeline `{}` finished in {:.1}s: {} frames, {:.1} fps",
        summary.pipeline, summary.elapsed_s, summary.frames, summary.fps
    );
    for s in &summary.sources {
        let mut state = if s.error.is_some() {
            "ended early".to_string()
        } else {
            "complete".to_string()
        };
        if s.reconnects > 0 {
            state.push_str(&format!(", {} reconnect(s)", s.reconnects));
        }
        println!("  source {}: {} frames ({state})", s.name, s.frames);
    }
    for st in &summary.stages {
        let ms = if st.metrics.batches > 0 {
            st.metrics.busy_ns as f64 / st.metrics.batches as f64 / 1e6
        } else {
            0.0
        };
        let mut line = format!(
            "  {} ({}): {} frames, {ms:.2} ms/batch",
            st.name, st.kind, st.metrics.frames
        );
        for (k, v) in &st.facts {
            line.push_str(&format!(", {k} {v}"));
        }
        println!("{line}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::ImportDeepstream { config, output } => {
            match vidmesh::import::import_command(&config, output.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Kinds => {
            for k in vidmesh_actors::STAGE_KINDS {
                println!("{:<11} {}", k.name, k.summary);
            }
            ExitCode::SUCCESS
        }
        Command::Validate { topology } => match Topology::load(&topology) {
            Ok(t) => {
                println!(
                    "{}: ok ({} sources, {} stages, {} links)",
                    topology.display(),
                    t.sources.len(),
                    t.stages.len(),
                    t.links.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Graph {
            topology,
            format,
            output,
        } => {
            let t = match load(&topology) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let text = match format.as_str() {
                "svg" => match t.svg() {
                    Ok(svg) => svg,
                    Err(e) => return fail(&e.to_string()),
                },
                _ => t.graphviz(),
            };
            match output {
                Some(path) => match std::fs::write(&path, text) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&format!("cannot write {}: {e}", path.display())),
                },
                None => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
            }
        }
        Command::Inspect { uri, json, timeout } => match vidmesh::inspect::inspect(&uri, timeout) {
            Ok(info) if json => match serde_json::to_string_pretty(&info) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            },
            Ok(info) => {
                print!("{}", vidmesh::inspect::format_text(&info));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Launch {
            topology,
            state_dir,
            shm_dir,
            progress,
            summary_json,
            metrics,
            dashboard,
        } => {
            let topology = match load(&topology) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => return fail(&format!("cannot find the vidmesh binary: {e}")),
            };
            let interrupts = Arc::new(AtomicU32::new(0));
            count_interrupts(interrupts.clone());
            let options = LaunchOptions {
                exe,
                state_dir: absolute(&state_dir),
                shm_dir,
                progress_interval: (!progress.is_zero()).then_some(progress),
                metrics_addr: metrics,
                dashboard_addr: dashboard,
            };
            match launch(&topology, &options, interrupts) {
                Ok(summary) => finish(&summary, summary_json.as_deref()),
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Stage {
            topology,
            stage,
            replica,
            connect,
            listen,
            state_dir,
            shm_dir,
            mode,
            metrics_addr,
        } => {
            let topology = match load(&topology) {
                Ok(t) => t,
                Err(code) => return code,
            };
            // Sources stop on Ctrl-C and the rest drains; stages keep draining (the launcher
            // kills them on a second Ctrl-C).
            let is_source = stage.starts_with("source.");
            on_interrupt(move || {
                if is_source {
                    stop_flag_set();
                }
            });
            let entry = topology.stages.iter().find(|s| s.name == stage);
            let elastic = entry.is_some_and(|s| vidmesh::node::is_elastic(s.kind));
            let sharded = entry.is_some_and(|s| !elastic && s.runtime.replicas > 1);
            let replica = match (replica.as_str(), elastic) {
                ("auto", true) => auto_replica(),
                ("auto", false) => {
                    return fail(&format!(
                        "--replica auto is for load-balanced stages (preprocess, infer); `{stage}` \
                         keeps per-source state, so each replica needs its number in 0..replicas"
                    ))
                }
                (n, _) => match n.parse() {
                    Ok(n) => n,
                    Err(_) => {
                        return fail(&format!(
                            "--replica must be a number or \"auto\", got {n:?}"
                        ))
                    }
                },
            };
            // A replica of a load-balanced or sharded stage told to stop (a scaler removing
            // it, a rolling update) leaves at once and its work goes to the others; other
            // instances keep SIGTERM's default.
            if elastic || sharded {
                on_terminate(stop_flag_set);
            }
            let options = NodeOptions {
                instance: stage,
                replica,
                net: NetConfig {
                    pipeline: topology.name.clone(),
                    connect,
                    listen,
                    mode,
                },
                state_dir: absolute(&state_dir),
                shm_dir,
                metrics_addr,
            };
            match run_node(&topology, &options, stop_flag()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Router {
            pipeline,
            listen,
            connect,
        } => {
            let config = NetConfig {
                pipeline,
                connect,
                listen,
                mode: Some("router".into()),
            };
            let _session = match vidmesh_transport::net::open_session(&config) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            eprintln!(
                "router: pipeline `{}` listening on {}{}",
                config.pipeline,
                config.listen.join(", "),
                if config.connect.is_empty() {
                    String::new()
                } else {
                    format!(", linked to {}", config.connect.join(", "))
                }
            );
            on_interrupt(stop_flag_set);
            let stop = stop_flag();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            ExitCode::SUCCESS
        }
        Command::Compose {
            topology,
            format,
            output,
            image,
        } => match compose_command(&topology, &format, output.as_deref(), &image) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Run {
            topology,
            progress,
            summary_json,
            dashboard,
        } => {
            let topology = match load(&topology) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let options = RunOptions {
                progress_interval: (!progress.is_zero()).then_some(progress),
                dashboard,
            };
            let summary = match run(&topology, &options, Arc::new(AtomicBool::new(false))) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            finish(&summary, summary_json.as_deref())
        }
    }
}

/// Loads a topology, or prints its error (file:line: what was expected) for the exit.
fn load(path: &std::path::Path) -> Result<Topology, ExitCode> {
    Topology::load(path).map_err(|e| fail(&e.to_string()))
}

fn finish(summary: &RunSummary, summary_json: Option<&std::path::Path>) -> ExitCode {
    print_summary(summary);
    if let Some(path) = summary_json {
        let written = serde_json::to_string_pretty(summary)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(e) = written {
            return fail(&format!("cannot write {}: {e}", path.display()));
        }
    }
    if summary.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        for e in &summary.errors {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    }
}

/// `vidmesh compose`: plans the deployment and writes it.
fn compose_command(
    topology_path: &std::path::Path,
    format: &str,
    output: Option<&std::path::Path>,
    image: &str,
) -> Result<(), String> {
    use vidmesh::deploy::{compose, relative_path, Plan};
    let topology = Topology::load(topology_path).map_err(|e| e.to_string())?;
    let project = std::env::current_dir().map_err(|e| format!("working directory: {e}"))?;
    let file = absolute(topology_path);
    let inside = file.strip_prefix(&project).map_err(|_| {
        format!(
            "{}: the topology must be inside the project directory {} (the working directory), \
             which the containers mount",
            topology_path.display(),
            project.display()
        )
    })?;
    let plan = Plan::new(&topology, &inside.to_string_lossy())
        .map_err(|e| format!("{}: {e}", topology_path.display()))?;
    let generated_by = format!(
        "vidmesh compose {}{}",
        inside.display(),
        if format == "compose" {
            String::new()
        } else {
            format!(" --format {format}")
        }
    );
    let text = match format {
        "kubernetes" => vidmesh::deploy::kubernetes::manifests(&plan, image, &generated_by),
        flavor => {
            let out_dir = output
                .map(absolute)
                .and_then(|o| o.parent().map(|p| p.to_path_buf()))
                .unwrap_or_else(|| project.clone());
            compose::compose_file(
                &plan,
                &compose::ComposeOptions {
                    flavor: if flavor == "swarm" {
                        compose::Flavor::Swarm
                    } else {
                        compose::Flavor::Compose
                    },
                    project: relative_path(&out_dir, &project)
                        .to_string_lossy()
                        .into_owned(),
                    image: image.to_string(),
                    generated_by,
                },
            )
        }
    };
    match output {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "compose: wrote {} ({} hosts, {} instances, {} brokers)",
                path.display(),
                plan.hosts.len(),
                plan.instances.len(),
                plan.brokers.len()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

fn stop_flag_set() {
    stop_flag().store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Calls `handler` on every SIGINT instead of dying.
fn on_interrupt(handler: impl Fn() + Send + 'static) {
    on_signal(tokio::signal::unix::SignalKind::interrupt(), handler);
}

/// Calls `handler` on every SIGTERM instead of dying.
fn on_terminate(handler: impl Fn() + Send + 'static) {
    on_signal(tokio::signal::unix::SignalKind::terminate(), handler);
}

fn on_signal(kind: tokio::signal::unix::SignalKind, handler: impl Fn() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(mut signals) = tokio::signal::unix::signal(kind) else {
                return;
            };
            while signals.recv().await.is_some() {
                handler();
            }
        });
    });
}

/// A replica number for `--replica auto`, stable for one host name (a container keeps its
/// name across restarts, so a restarted replica is recognised) and far above the numbers
/// topologies give (0..replicas).
fn auto_replica() -> u32 {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // FNV-1a: small, stable across builds and platforms.
    let hash = name.trim().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    1000 + hash % 1_000_000_000
}

fn count_interrupts(counter: Arc<AtomicU32>) {
    on_interrupt(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
