//! `track-eval`: runs one of vidmesh's trackers over a file of detections and writes the
//! tracks in MOTChallenge's results format, for scoring with any MOT evaluation tool.
//!
//! ```sh
//! track-eval --algorithm iou --set min_hits=3 --input det.txt --out res.txt --frames 600
//! ```
//!
//! Prints the mean time per frame spent in the tracker (`Track::track_frame` only: reading,
//! copying and writing are outside the clock). With `--repeat N` the sequence is run N times
//! by fresh trackers and the median of the N means is reported.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use vidmesh_track_eval::mot::{self, InputFormat, InputOptions, EMBEDDING_KIND};
use vidmesh_track_eval::timing::{self, median};
use vidmesh_track_eval::tracker::{parse_set, settings_from_table, settings_table};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// JSON lines if the file starts with `{`, else MOTChallenge det.txt.
    Auto,
    /// MOTChallenge det.txt: frame,-1,left,top,width,height,score,...
    Mot,
    /// One JSON frame per line (vidmesh's native event schema).
    Jsonl,
}

#[derive(Debug, Parser)]
#[command(
    name = "track-eval",
    about = "Run a vidmesh tracker over detections; write MOTChallenge results"
)]
struct Args {
    /// Tracker algorithm, as the `track` stage's `algorithm` setting ("iou", ...).
    #[arg(long, default_value = "iou")]
    algorithm: String,
    /// Extra tracker setting, `key=value` with a TOML value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Detections file.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Results file; `-` for standard output.
    #[arg(long, default_value = "-")]
    out: String,
    /// Sequence length in frames (MOTChallenge `seqLength`), when frames after the last
    /// detection must still be seen by the tracker.
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Frame width for inputs that do not carry it.
    #[arg(long, default_value_t = 1920)]
    width: u32,
    /// Frame height for inputs that do not carry it.
    #[arg(long, default_value_t = 1080)]
    height: u32,
    /// User meta kind under which input embeddings are attached to objects (the appearance
    /// tracker's `embedding_kind`).
    #[arg(long, default_value = EMBEDDING_KIND)]
    embedding_kind: String,
    /// Only this `source_id` of a JSON lines input.
    #[arg(long)]
    source: Option<u32>,
    /// Drop detections scoring below this before tracking, as a detector's score threshold
    /// would (for trackers that expect only confident detections; not timed).
    #[arg(long)]
    min_score: Option<f32>,
    /// Runs over the sequence, each with a fresh tracker; the median mean is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    algorithm: String,
    settings: toml::Table,
    min_score: Option<f32>,
    frames: usize,
    /// Detections given to the tracker (after `--min-score`).
    detections: usize,
    tracked_objects: usize,
    track_ids: usize,
    repeat: usize,
    /// Median over the runs of the mean time per frame in `track_frame`.
    mean_us_per_frame: f64,
    /// Each run's mean time per frame.
    runs_mean_us_per_frame: Vec<f64>,
    /// Median over all frames of all runs.
    median_us_per_frame: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let sets = args
        .sets
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<Vec<_>>>()?;
    let table = settings_table(&args.algorithm, &sets);
    let settings = settings_from_table(&table)?;

    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let format = match args.format {
        Format::Auto => InputFormat::detect(&text),
        Format::Mot => InputFormat::Mot,
        Format::Jsonl => InputFormat::JsonLines,
    };
    let options = InputOptions {
        width: args.width,
        height: args.height,
        min_frames: args.frames,
        embedding_kind: args.embedding_kind.clone(),
    };
    let mut sequence = mot::parse(&text, format, &options, args.source)
        .with_context(|| format!("reading {}", args.input.display()))?;
    if let Some(min) = args.min_score {
        for frame in &mut sequence.frames {
            frame.objects.retain(|o| o.confidence >= min);
        }
    }

    let mut runs = Vec::with_capacity(args.repeat);
    let mut all_frame_us = Vec::new();
    let mut first: Option<timing::Pass> = None;
    for _ in 0..args.repeat {
        let pass = timing::run(&settings, &sequence.frames);
        runs.push(pass.mean_us());
        all_frame_us.extend(pass.per_frame.iter().map(|d| d.as_secs_f64() * 1e6));
        match &first {
            None => first = Some(pass),
            Some(f) if f.frames != pass.frames => {
                eprintln!("track-eval: warning: runs gave different tracks; writing the first")
            }
            Some(_) => {}
        }
    }
    let pass = first.expect("at least one run");

    if args.out == "-" {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        mot::write_results(&pass.frames, &mut out)?;
        out.flush()?;
    } else {
        let file = File::create(&args.out).with_context(|| format!("creating {}", args.out))?;
        let mut out = BufWriter::new(file);
        mot::write_results(&pass.frames, &mut out)?;
        out.flush()
            .with_context(|| format!("writing {}", args.out))?;
    }

    let objects = || pass.frames.iter().flat_map(|f| &f.objects);
    let mut ids: Vec<u64> = objects().filter_map(|o| o.track_id).collect();
    let tracked_objects = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let summary = Summary {
        algorithm: args.algorithm.clone(),
        settings: table,
        min_score: args.min_score,
        frames: sequence.frames.len(),
        detections: sequence.detections(),
        tracked_objects,
        track_ids: ids.len(),
        repeat: args.repeat,
        mean_us_per_frame: median(&runs),
        runs_mean_us_per_frame: runs,
        median_us_per_frame: median(&all_frame_us),
    };
    let line = if args.json {
        serde_json::to_string(&summary)?
    } else {
        format!(
            "{}: {} frames, {} detections, {} tracked objects, {} track ids; tracker {:.2} µs/frame mean (median of {} runs), {:.2} µs median frame",
            summary.algorithm,
            summary.frames,
            summary.detections,
            summary.tracked_objects,
            summary.track_ids,
            summary.mean_us_per_frame,
            summary.repeat,
            summary.median_us_per_frame
        )
    };
    // The summary must not mix with results written to standard output.
    if args.out == "-" {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}
