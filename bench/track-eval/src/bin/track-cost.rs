//! `track-cost`: what each tracker costs per frame at 10, 100 and 1000 objects per frame.
//!
//! ```sh
//! track-cost                       # every algorithm the track stage accepts
//! track-cost --algorithms iou,sort --objects 10,100 --runs 9 --json
//! ```
//!
//! The detections are synthetic (see `vidmesh_track_eval::synthetic`): the same scene for
//! every algorithm, generated before timing starts. Each cell is the median over `--runs`
//! runs of the mean time per frame in `Track::track_frame`, each run a fresh tracker over
//! the whole scene (so track creation at the start is included, as in a real stream).

use anyhow::{bail, Result};
use clap::Parser;
use serde::Serialize;
use vidmesh_track_eval::synthetic::{scene, SceneSpec};
use vidmesh_track_eval::timing::{self, median};
use vidmesh_track_eval::tracker::{parse_set, settings_for};

/// Algorithm names tried by default; those the `track` stage does not (yet) accept are listed
/// as unavailable rather than failing the run.
const CANDIDATES: &str = "iou,sort,bytetrack,appearance";

#[derive(Debug, Parser)]
#[command(
    name = "track-cost",
    about = "Per-frame cost of vidmesh's trackers on synthetic scenes"
)]
struct Args {
    /// Comma-separated algorithm names.
    #[arg(long, default_value = CANDIDATES)]
    algorithms: String,
    /// Comma-separated objects per frame.
    #[arg(long, default_value = "10,100,1000")]
    objects: String,
    /// Frames per run.
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Runs per cell; the cell is their median.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Seed of the synthetic scenes.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Extra setting for every algorithm, `key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Cell {
    objects: usize,
    /// Median over the runs of the mean µs per frame.
    us_per_frame: f64,
    runs_us_per_frame: Vec<f64>,
}

#[derive(Serialize)]
struct Row {
    algorithm: String,
    /// Why the algorithm was not measured, if it was not.
    unavailable: Option<String>,
    cells: Vec<Cell>,
}

#[derive(Serialize)]
struct Report {
    frames: usize,
    runs: usize,
    seed: u64,
    detections_per_frame: Vec<(usize, f64)>,
    rows: Vec<Row>,
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<T>()
                .map_err(|_| anyhow::anyhow!("bad {what} `{x}`"))
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 || args.frames == 0 {
        bail!("--runs and --frames must be at least 1");
    }
    let algorithms: Vec<String> = list(&args.algorithms, "algorithm")?;
    let counts: Vec<usize> = list(&args.objects, "object count")?;
    let sets = args
        .sets
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<Vec<_>>>()?;

    let scenes: Vec<_> = counts
        .iter()
        .map(|&n| scene(&SceneSpec::new(n, args.frames, args.seed ^ n as u64)))
        .collect();
    let detections_per_frame = counts
        .iter()
        .zip(&scenes)
        .map(|(&n, frames)| {
            let total: usize = frames.iter().map(|f| f.objects.len()).sum();
            (n, total as f64 / frames.len() as f64)
        })
        .collect();

    let mut rows = Vec::new();
    for algorithm in &algorithms {
        let settings = match settings_for(algorithm, &sets) {
            Ok(s) => s,
            Err(e) => {
                rows.push(Row {
                    algorithm: algorithm.clone(),
                    unavailable: Some(format!("{e:#}")),
                    cells: Vec::new(),
                });
                continue;
            }
        };
        let mut cells = Vec::new();
        for (&n, frames) in counts.iter().zip(&scenes) {
            let runs: Vec<f64> = (0..args.runs)
                .map(|_| timing::run(&settings, frames).mean_us())
                .collect();
            cells.push(Cell {
                objects: n,
                us_per_frame: median(&runs),
                runs_us_per_frame: runs,
            });
        }
        rows.push(Row {
            algorithm: algorithm.clone(),
            unavailable: None,
            cells,
        });
    }
    let report = Report {
        frames: args.frames,
        runs: args.runs,
        seed: args.seed,
        detections_per_frame,
        rows,
    };

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "tracker cost, µs/frame (median of {} runs of {} frames; mean time in track_frame)",
        report.runs, report.frames
    );
    let mut header = format!("{:<12}", "algorithm");
    for n in &counts {
        header.push_str(&format!("{:>14}", format!("{n} objects")));
    }
    println!("{header}");
    for row in &report.rows {
        let mut line = format!("{:<12}", row.algorithm);
        match &row.unavailable {
            Some(why) => line.push_str(&format!("  unavailable: {why}")),
            None => {
                for c in &row.cells {
                    line.push_str(&format!("{:>14.1}", c.us_per_frame));
                }
            }
        }
        println!("{line}");
    }
    let dets: Vec<String> = report
        .detections_per_frame
        .iter()
        .map(|(n, d)| format!("{n}: {d:.1}"))
        .collect();
    println!("detections per frame (objects: mean): {}", dets.join(", "));
    Ok(())
}
