//! `vidmesh`: run, validate and inspect topology files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vidmesh::{run, RunOptions, RunSummary, Topology};

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
    },
    /// Check a topology without running it.
    Validate { topology: PathBuf },
    /// Print a topology as a Graphviz graph.
    Graph { topology: PathBuf },
    /// List the stage kinds this build knows.
    Kinds,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
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
        let state = if s.error.is_some() {
            "ended early"
        } else {
            "complete"
        };
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
        Command::Graph { topology } => match Topology::load(&topology) {
            Ok(t) => {
                print!("{}", t.to_dot());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Run {
            topology,
            progress,
            summary_json,
        } => {
            let topology = match Topology::load(&topology) {
                Ok(t) => t,
                Err(e) => return fail(&e.to_string()),
            };
            let options = RunOptions {
                progress_interval: (!progress.is_zero()).then_some(progress),
            };
            let summary = match run(&topology, &options, Arc::new(AtomicBool::new(false))) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            print_summary(&summary);
            if let Some(path) = summary_json {
                let written = serde_json::to_string_pretty(&summary)
                    .map_err(|e| e.to_string())
                    .and_then(|json| std::fs::write(&path, json).map_err(|e| e.to_string()));
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
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
