//! `infer-throughput`: frames per second of the infer stage on the demo model
//! (models/ssdlite_person.onnx, the demo topology's `detect` settings) for several batch sizes,
//! against a plain Python onnxruntime session (`peer.py`) fed the same tensors with the same
//! thread settings, in the same run.
//!
//! Both sides start from the same decoded frames of data/vtest.avi (OpenCV, in `peer.py`). The
//! frames go through vidmesh's `ImagePreprocessor` with the demo's preprocess settings once per
//! batch, which is also where batch preprocessing is timed: all rows of a batch in parallel
//! (what the preprocess stage does) against one image at a time. The tensors made are kept:
//! the infer stage, built through `vidmesh_actors::infer::KIND.build`, gets them in batches as
//! it would from a preprocess stage, and `peer.py` reads the same values from a file.
//!
//! Reported per batch size (medians over `--repeat` runs, the two sides alternating and
//! swapping who goes first):
//! * stage fps: frames / time in the stage's `on_batch` (tensor checks, the model's run,
//!   parsing, post-processing, placement of objects);
//! * session fps inside the stage: frames / time in the ONNX Runtime backend
//!   (`infer_backend_seconds_total`), and the stage's overhead over it;
//! * Python fps: frames / time in `session.run`, and the ratio of the stage's fps to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use vidmesh_actors::preprocess::{ImagePreprocessor, RowRequest};
use vidmesh_actors::stage::{BuildContext, Outputs, Stage};
use vidmesh_protocol::{Batch, FrameMeta, ImageLayout, PayloadRef, PixelFormat};

#[derive(Parser)]
struct Args {
    /// Frames of data/vtest.avi per measurement (a multiple of every batch size).
    #[arg(long, default_value_t = 96)]
    frames: usize,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,4,8")]
    batches: String,
    /// Measurements per side and batch size; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// ONNX Runtime intra-op threads on both sides (0 = ONNX Runtime's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Let idle ONNX Runtime threads spin on both sides (the stage's default is not to).
    #[arg(long)]
    spinning: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A stage table of the demo topology (`topologies/demo.toml`).
fn demo_stage(root: &Path, name: &str) -> Result<toml::Table> {
    let path = root.join("topologies/demo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text)?;
    doc.get("stage")
        .and_then(|s| s.get(name))
        .and_then(|s| s.as_table())
        .cloned()
        .with_context(|| format!("{} has no [stage.{name}]", path.display()))
}

/// Decoded RGB frames of the clip, as the source stage would hand them on.
fn decode(
    python: &Path,
    peer: &Path,
    video: &Path,
    count: usize,
    dir: &Path,
) -> Result<Vec<FrameMeta>> {
    let file = dir.join("frames.rgb");
    let out = Command::new(python)
        .arg(peer)
        .args(["frames", "--video"])
        .arg(video)
        .args(["--count", &count.to_string(), "--out"])
        .arg(&file)
        .output()
        .context("running peer.py frames")?;
    if !out.status.success() {
        bail!(
            "peer.py frames failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (width, height) = (
        info["width"].as_u64().context("width")? as u32,
        info["height"].as_u64().context("height")? as u32,
    );
    let pixels = Bytes::from(std::fs::read(&file)?);
    let per_frame = width as usize * height as usize * 3;
    if pixels.len() != per_frame * count {
        bail!(
            "{} holds {} bytes, {count} frames need {}",
            file.display(),
            pixels.len(),
            per_frame * count
        );
    }
    Ok((0..count)
        .map(|i| FrameMeta {
            source_name: "street".into(),
            frame_num: i as u64,
            width,
            height,
            payload: PayloadRef::Inline {
                layout: ImageLayout {
                    format: PixelFormat::Rgb24,
                    width,
                    height,
                    stride: width * 3,
                },
                data: pixels.slice(i * per_frame..(i + 1) * per_frame),
            },
            ..Default::default()
        })
        .collect())
}

fn whole_frames(n: usize) -> Vec<RowRequest> {
    (0..n as u32)
        .map(|frame| RowRequest {
            frame,
            object: None,
            region: None,
        })
        .collect()
}

/// Preprocessing of one batch size: the tensors (one per batch) and the time per frame with
/// the rows in parallel and one image at a time.
struct Preprocessed {
    batches: Vec<Batch>,
    parallel: Duration,
    serial: Duration,
}

fn preprocess(
    images: &mut ImagePreprocessor,
    frames: &[FrameMeta],
    batch: usize,
) -> Result<Preprocessed> {
    let mut batches = Vec::new();
    let (mut parallel, mut serial) = (Duration::ZERO, Duration::ZERO);
    for (id, chunk) in frames.chunks(batch).enumerate() {
        let started = Instant::now();
        let tensor = images.tensor(chunk, &whole_frames(chunk.len()))?;
        parallel += started.elapsed();
        let started = Instant::now();
        for one in chunk.chunks(1) {
            images.tensor(one, &whole_frames(1))?;
        }
        serial += started.elapsed();
        batches.push(Batch {
            batch_id: id as u64,
            frames: chunk.to_vec(),
            tensors: vec![tensor],
        });
    }
    let n = frames.len() as u32;
    Ok(Preprocessed {
        batches,
        parallel: parallel / n,
        serial: serial / n,
    })
}

/// The tensors' values in frame order, for `peer.py`.
fn write_tensors(batches: &[Batch], path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    for b in batches {
        bytes.extend_from_slice(&b.tensors[0].data);
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// One run of the infer stage over all batches: (stage seconds, backend seconds, objects
/// found in the measured batches).
fn run_stage(
    table: &toml::Table,
    ctx: &BuildContext,
    batches: &[Batch],
) -> Result<(f64, f64, u64)> {
    let mut stage = (vidmesh_actors::infer::KIND.build)(table, ctx)?;
    let objects = Arc::new(AtomicU64::new(0));
    let counter = objects.clone();
    let mut out = Outputs::new(Vec::new()).with_tap(Arc::new(move |b: &Batch| {
        let n: usize = b.frames.iter().map(|f| f.objects.len()).sum();
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }));
    // Warm-up, as the Python side does: ONNX Runtime allocates on the first run of a shape.
    stage.on_batch(batches[0].clone(), &mut out)?;
    objects.store(0, Ordering::Relaxed);
    let backend_before = backend_seconds(stage.as_ref());
    let mut elapsed = Duration::ZERO;
    for batch in batches {
        let batch = batch.clone();
        let started = Instant::now();
        stage.on_batch(batch, &mut out)?;
        elapsed += started.elapsed();
    }
    let backend = backend_seconds(stage.as_ref()) - backend_before;
    stage.on_finish(&mut out)?;
    Ok((
        elapsed.as_secs_f64(),
        backend,
        objects.load(Ordering::Relaxed),
    ))
}

fn backend_seconds(stage: &dyn Stage) -> f64 {
    stage
        .values()
        .iter()
        .find(|v| v.name == "infer_backend_seconds_total")
        .map_or(0.0, |v| v.value)
}

fn run_peer(
    python: &Path,
    peer: &Path,
    model: &Path,
    tensors: &Path,
    args: &Args,
    batch: usize,
) -> Result<f64> {
    let mut cmd = Command::new(python);
    cmd.arg(peer)
        .args(["run", "--model"])
        .arg(model)
        .arg("--tensors")
        .arg(tensors)
        .args(["--count", &args.frames.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--threads", &args.threads.to_string()]);
    if args.spinning {
        cmd.arg("--spinning");
    }
    let out = cmd.output().context("running peer.py run")?;
    if !out.status.success() {
        bail!(
            "peer.py run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["seconds"].as_f64().context("peer.py printed no seconds")
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let batches: Vec<usize> = args
        .batches
        .split(',')
        .map(|b| b.trim().parse::<usize>().context("--batches takes numbers"))
        .collect::<Result<_>>()?;
    if batches
        .iter()
        .any(|&b| b == 0 || !args.frames.is_multiple_of(b))
        || args.repeat == 0
    {
        bail!("--frames must be a multiple of every batch size, --repeat at least 1");
    }
    vidmesh_tests::ensure_onnxruntime();
    let root = vidmesh_tests::repo_root();
    let model = vidmesh_tests::model();
    let python = vidmesh_tests::venv_python();
    let video = vidmesh_tests::prepared("data/vtest.avi");
    let peer = root.join("bench/infer/peer.py");
    let dir = tempfile::tempdir()?;

    let mut detect = demo_stage(&root, "detect")?;
    detect.insert("threads".into(), toml::Value::Integer(args.threads as i64));
    detect.insert("spinning".into(), toml::Value::Boolean(args.spinning));
    let ctx = BuildContext {
        stage_name: "detect".into(),
        replica: 0,
        base_dir: root.clone(),
        sources: vec!["street".into()],
        resume: None,
        peers: Arc::new(Default::default()),
    };
    let pre_settings = vidmesh_actors::settings::parse(&demo_stage(&root, "preprocess")?)?;
    let mut images = ImagePreprocessor::new(pre_settings)?;

    println!(
        "machine: {}; load average before: {}",
        machine(),
        load_average()
    );
    println!(
        "model {}, {} frames of {}, threads {} ({}), spinning {}, median of {}",
        model.display(),
        args.frames,
        video.display(),
        args.threads,
        if args.threads == 0 {
            "ONNX Runtime's default"
        } else {
            "both sides"
        },
        args.spinning,
        args.repeat
    );
    let frames = decode(&python, &peer, &video, args.frames, dir.path())?;
    let tensors = dir.path().join("tensors.f32");
    let mut rows = Vec::new();
    for (i, &batch) in batches.iter().enumerate() {
        let pre = preprocess(&mut images, &frames, batch)?;
        if i == 0 {
            write_tensors(&pre.batches, &tensors)?;
        }
        let (mut stage_s, mut backend_s, mut peer_s) = (Vec::new(), Vec::new(), Vec::new());
        let mut objects = 0;
        for r in 0..args.repeat {
            let ours = |stage_s: &mut Vec<f64>,
                        backend_s: &mut Vec<f64>,
                        objects: &mut u64|
             -> Result<()> {
                let (s, b, o) = run_stage(&detect, &ctx, &pre.batches)?;
                stage_s.push(s);
                backend_s.push(b);
                *objects = o;
                Ok(())
            };
            if r.is_multiple_of(2) {
                ours(&mut stage_s, &mut backend_s, &mut objects)?;
                peer_s.push(run_peer(&python, &peer, &model, &tensors, &args, batch)?);
            } else {
                peer_s.push(run_peer(&python, &peer, &model, &tensors, &args, batch)?);
                ours(&mut stage_s, &mut backend_s, &mut objects)?;
            }
        }
        let n = args.frames as f64;
        let row = serde_json::json!({
            "batch": batch,
            "stage_fps": n / median(stage_s.clone()),
            "stage_session_fps": n / median(backend_s.clone()),
            "stage_overhead_pct": 100.0 * (median(stage_s.clone()) / median(backend_s.clone()) - 1.0),
            "python_fps": n / median(peer_s.clone()),
            "stage_vs_python": median(peer_s.clone()) / median(stage_s.clone()),
            "preprocess_ms_per_frame_parallel": pre.parallel.as_secs_f64() * 1e3,
            "preprocess_ms_per_frame_serial": pre.serial.as_secs_f64() * 1e3,
            "objects": objects,
            "stage_s": stage_s,
            "stage_session_s": backend_s,
            "python_s": peer_s,
        });
        rows.push(row);
    }

    println!(
        "\n{:>5} {:>10} {:>14} {:>9} {:>10} {:>13} {:>16} {:>8}",
        "batch",
        "stage fps",
        "in-stage ORT",
        "overhead",
        "Python fps",
        "stage/Python",
        "preprocess ms/f",
        "objects"
    );
    for r in &rows {
        println!(
            "{:>5} {:>10.1} {:>14.1} {:>8.1}% {:>10.1} {:>13.2} {:>7.2} / {:<6.2} {:>8}",
            r["batch"],
            r["stage_fps"].as_f64().unwrap_or_default(),
            r["stage_session_fps"].as_f64().unwrap_or_default(),
            r["stage_overhead_pct"].as_f64().unwrap_or_default(),
            r["python_fps"].as_f64().unwrap_or_default(),
            r["stage_vs_python"].as_f64().unwrap_or_default(),
            r["preprocess_ms_per_frame_parallel"]
                .as_f64()
                .unwrap_or_default(),
            r["preprocess_ms_per_frame_serial"]
                .as_f64()
                .unwrap_or_default(),
            r["objects"],
        );
    }
    println!(
        "\nstage fps: frames / time in on_batch; in-stage ORT: frames / time in the backend's session runs;\n\
         overhead: stage time over backend time (target < 10%); stage/Python: stage fps / Python session fps;\n\
         preprocess ms/f: batch rows in parallel / one image at a time. Load average after: {}",
        load_average()
    );
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    let file: PathBuf = results.join("infer.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine(),
            "frames": args.frames,
            "threads": args.threads,
            "spinning": args.spinning,
            "repeat": args.repeat,
            "rows": rows,
        }))?,
    )?;
    println!("written: {}", file.display());
    Ok(())
}
