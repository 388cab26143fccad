#!/usr/bin/env python3
"""Multi-object tracking accuracy and cost: vidmesh's trackers vs supervision's ByteTrack on
the same synthetic sequences.

    bench/mot/setup.sh                      # once: bench/mot/.venv + release track-eval
    bench/mot/.venv/bin/python bench/mot/run.py [--repeat 5] [--trackers ...] [--scenarios ...]

For every scenario of scenarios.py (fixed seeds) it writes det.txt, gt.txt and seqinfo.ini
under bench/results/mot/<scenario>/, runs each of vidmesh's trackers on det.txt through
`track-eval` and supervision's ByteTrack in this process, scores every result with motmetrics
(MOTA, IDF1, ID switches, MT/ML, FP/FN) and trackeval's HOTA, prints one table, the time per
frame of each tracker, and a comparison of our ByteTrack with supervision's; writes
everything to bench/results/mot.json.

Time per frame: ours is measured by track-eval around `Track::track_frame` only; supervision's
around `ByteTrack.update_with_detections` only (the `sv.Detections` are built beforehand).
Each is the median over --repeat runs (fresh tracker each) of the mean over the sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import metrics  # noqa: E402
import scenarios  # noqa: E402

SV = "sv.bytetrack"
# Diagnostic, not run by default: supervision's ByteTrack with the detection score left out
# of the first association's cost (`matching.fuse_score` made a no-op), to tell how much of
# a difference from ours comes from that one step.
SV_NO_FUSE = "sv.bytetrack-nofuse"
OURS = ("iou", "sort", "bytetrack", "appearance")


def tracker_configs(args) -> dict[str, dict]:
    """Every tracker's settings, derived from one set of ByteTrack parameters so that both
    ByteTracks get the same ones (supervision names on the left, ours on the right):

    track_activation_threshold T   high_threshold = T
      (new tracks need T + 0.1)    new_track_threshold = T + 0.1
      (low detections: > 0.1)      low_threshold = 0.1
    minimum_matching_threshold     match_threshold (largest 1 - IoU of a first-round match)
      (second round: 0.5, fixed)   low_match_threshold = 0.5
    lost_track_buffer (at 30 fps)  max_age
    (a new track is reported from  min_hits = 2
     its second matched frame)

    The IoU and SORT trackers do not look at scores, so they get only the detections a
    detector threshold of T would keep (track-eval --min-score), and the same max_age and
    min_hits.
    """
    t, buf, match = args.activation_threshold, args.lost_track_buffer, args.matching_threshold
    common = {"max_age": buf, "min_hits": 2}
    byte = {
        **common,
        "high_threshold": t,
        "new_track_threshold": round(t + 0.1, 6),
        "low_threshold": 0.1,
        "match_threshold": match,
        "low_match_threshold": 0.5,
    }
    configs = {
        "iou": {"algorithm": "iou", "sets": dict(common), "min_score": t},
        "sort": {"algorithm": "sort", "sets": dict(common), "min_score": t},
        "bytetrack": {"algorithm": "bytetrack", "sets": byte, "min_score": None},
        "appearance": {"algorithm": "appearance", "sets": dict(common), "min_score": t},
        SV: {
            "track_activation_threshold": t,
            "lost_track_buffer": buf,
            "minimum_matching_threshold": match,
            "frame_rate": scenarios.FPS,
            "minimum_consecutive_frames": 1,
        },
    }
    # The diagnostic shares supervision's settings (the same dict: --set overrides included).
    configs[SV_NO_FUSE] = configs[SV]
    for override in args.set:
        name, _, kv = override.partition(":")
        key, _, value = kv.partition("=")
        if name not in configs or not key or not value:
            raise SystemExit(f"--set {override}: expected TRACKER:key=value")
        target = configs[name] if name.startswith(SV) else configs[name]["sets"]
        try:
            target[key] = json.loads(value)
        except json.JSONDecodeError:
            target[key] = value
    return configs


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def run_ours(track_eval: Path, name: str, cfg: dict, seq_dir: Path, frames: int, repeat: int):
    """Runs track-eval; returns (results path, summary) or (None, error text)."""
    res = seq_dir / "res" / f"{name}.txt"
    res.parent.mkdir(exist_ok=True)
    cmd = [
        str(track_eval),
        "--algorithm", cfg["algorithm"],
        "--input", str(seq_dir / "det" / "det.txt"),
        "--out", str(res),
        "--frames", str(frames),
        "--width", str(scenarios.WIDTH),
        "--height", str(scenarios.HEIGHT),
        "--repeat", str(repeat),
        "--json",
    ]
    for k, v in cfg["sets"].items():
        cmd += ["--set", f"{k}={toml_value(v)}"]
    if cfg["min_score"] is not None:
        cmd += ["--min-score", str(cfg["min_score"])]
    # No backtrace: the error chain alone says what is wrong.
    env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return None, " ".join(p.stderr.split()) or f"exit {p.returncode}"
    return res, json.loads(p.stdout)


def sv_detections(det_path: Path, frames: int):
    import supervision as sv

    rows = np.loadtxt(det_path, delimiter=",", ndmin=2, usecols=range(7))
    out = []
    for frame in range(1, frames + 1):
        r = rows[rows[:, 0] == frame]
        xyxy = np.stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]], axis=1)
        out.append(
            sv.Detections(
                xyxy=xyxy.reshape(-1, 4).astype(np.float32),
                confidence=r[:, 6].astype(np.float32),
                class_id=np.zeros(len(r), dtype=int),
            )
        )
    return out


def _sv_runs(sv, cfg: dict, dets: list, repeat: int):
    runs, all_frames, first = [], [], None
    for _ in range(repeat):
        tracker = sv.ByteTrack(**cfg)
        out, times = [], []
        for d in dets:
            t0 = time.perf_counter()
            tracked = tracker.update_with_detections(d)
            times.append(time.perf_counter() - t0)
            out.append(tracked)
        runs.append(float(np.mean(times)) * 1e6)
        all_frames.extend(t * 1e6 for t in times)
        if first is None:
            first = out
    return runs, all_frames, first


def run_sv(name: str, cfg: dict, seq_dir: Path, frames: int, repeat: int):
    """supervision's ByteTrack over det.txt; the clock is around update_with_detections."""
    import supervision as sv
    import supervision.tracker.byte_tracker.core as byte_core

    dets = sv_detections(seq_dir / "det" / "det.txt", frames)
    fuse_score = byte_core.matching.fuse_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sv.ByteTrack's deprecation notice
        if name == SV_NO_FUSE:
            byte_core.matching.fuse_score = lambda cost, detections: cost
        try:
            runs, all_frames, first = _sv_runs(sv, cfg, dets, repeat)
        finally:
            byte_core.matching.fuse_score = fuse_score
    res = seq_dir / "res" / f"{name}.txt"
    res.parent.mkdir(exist_ok=True)
    n_obj, ids = 0, set()
    with open(res, "w") as f:
        for frame, tracked in enumerate(first, start=1):
            for (x1, y1, x2, y2), tid, c in zip(tracked.xyxy, tracked.tracker_id, tracked.confidence):
                f.write(f"{frame},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{c:.4f},-1,-1,-1\n")
                n_obj += 1
                ids.add(int(tid))
    summary = {
        "frames": frames,
        "detections": int(sum(len(d) for d in dets)),
        "tracked_objects": n_obj,
        "track_ids": len(ids),
        "repeat": repeat,
        "mean_us_per_frame": float(np.median(runs)),
        "runs_mean_us_per_frame": runs,
        "median_us_per_frame": float(np.median(all_frames)),
    }
    return res, summary


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "motmetrics", "supervision", "trackeval"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def fmt_table(headers: list[str], rows: list[list], align: str) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trackers", default=",".join((*OURS, SV)),
                    help=f"comma-separated: our algorithm names, {SV}, and the diagnostic {SV_NO_FUSE}")
    ap.add_argument("--scenarios", default=",".join(scenarios.SCENARIOS))
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per tracker and sequence")
    ap.add_argument("--activation-threshold", type=float, default=0.5,
                    help="ByteTrack high-score threshold T (supervision: track_activation_threshold)")
    ap.add_argument("--lost-track-buffer", type=int, default=30)
    ap.add_argument("--matching-threshold", type=float, default=0.8,
                    help="largest 1-IoU of a first-round match (supervision: minimum_matching_threshold)")
    ap.add_argument("--set", action="append", default=[], metavar="TRACKER:KEY=VALUE",
                    help="override one tracker setting, e.g. bytetrack:max_age=60")
    ap.add_argument("--track-eval", type=Path, default=ROOT / "target" / "release" / "track-eval")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "bench" / "results" / "mot")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "mot.json")
    args = ap.parse_args()

    trackers = [t.strip() for t in args.trackers.split(",") if t.strip()]
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in names:
        if s not in scenarios.SCENARIOS:
            raise SystemExit(f"unknown scenario {s}; known: {', '.join(scenarios.SCENARIOS)}")
    if any(not t.startswith(SV) for t in trackers) and not args.track_eval.exists():
        raise SystemExit(f"{args.track_eval} not found: cargo build --release -p vidmesh-track-eval")
    configs = tracker_configs(args)
    for t in trackers:
        if t not in configs:
            raise SystemExit(f"unknown tracker {t}; known: {', '.join(configs)}")

    load_before = os.getloadavg()
    started = datetime.now(timezone.utc)
    seqs = {}
    for name in names:
        seq = scenarios.generate(scenarios.SCENARIOS[name]())
        scenarios.write(seq, args.work_dir / name)
        seqs[name] = seq
        print(f"{name}: {seq.frames} frames, {len({r[1] for r in seq.gt})} objects, "
              f"{len(seq.gt)} ground-truth boxes, {len(seq.det)} detections — {seq.scenario.description}",
              file=sys.stderr)

    runs: dict[str, dict[str, dict]] = {t: {} for t in trackers}
    unavailable: dict[str, str] = {}
    for t in trackers:
        for name in names:
            seq_dir = args.work_dir / name
            frames = seqs[name].frames
            if t.startswith(SV):
                res, summary = run_sv(t, configs[t], seq_dir, frames, args.repeat)
            else:
                res, summary = run_ours(args.track_eval, t, configs[t], seq_dir, frames, args.repeat)
            if res is None:
                unavailable[t] = summary
                print(f"{t}: not available: {summary}", file=sys.stderr)
                break
            shown = res.relative_to(ROOT) if res.is_relative_to(ROOT) else res
            runs[t][name] = {"results": str(shown), "summary": summary}
            print(f"{t} on {name}: {summary['mean_us_per_frame']:.1f} µs/frame", file=sys.stderr)
    trackers = [t for t in trackers if t not in unavailable]

    hota_missing = metrics.hota_available()
    scores: dict[str, dict] = {}
    for t in trackers:
        accs, hota_in = {}, {}
        for name in names:
            gt = metrics.read_mot(args.work_dir / name / "gt" / "gt.txt", gt=True)
            res = metrics.read_mot(ROOT / runs[t][name]["results"])
            accs[name] = metrics.mot_accumulator(gt, res, seqs[name].frames)
            hota_in[name] = (gt, res, seqs[name].frames)
        mot = metrics.mot_summary(accs)
        hota = metrics.hota(hota_in) if hota_missing is None else {}
        total_frames = sum(seqs[n].frames for n in names)
        overall_us = sum(runs[t][n]["summary"]["mean_us_per_frame"] * seqs[n].frames for n in names) / total_frames
        scores[t] = {}
        for name in [*names, "OVERALL"]:
            us = overall_us if name == "OVERALL" else runs[t][name]["summary"]["mean_us_per_frame"]
            scores[t][name] = {**mot[name], **hota.get(name, {}), "us_per_frame": us}
    load_after = os.getloadavg()

    # The table: one block per scenario, one row per tracker.
    headers = ["scenario", "tracker", "MOTA", "IDF1", "HOTA", "DetA", "AssA", "IDSW", "MT", "ML",
               "FP", "FN", "µs/frame"]
    rows = []
    for name in [*names, "OVERALL"]:
        for t in trackers:
            s = scores[t][name]
            h = (lambda k: f"{100 * s[k]:.1f}" if k in s else "-")
            rows.append([
                name if t == trackers[0] else "", t,
                f"{100 * s['mota']:.1f}", f"{100 * s['idf1']:.1f}", h("HOTA"), h("DetA"), h("AssA"),
                int(s["num_switches"]), int(s["mostly_tracked"]), int(s["mostly_lost"]),
                int(s["num_false_positives"]), int(s["num_misses"]), f"{s['us_per_frame']:.1f}",
            ])
    print()
    print(fmt_table(headers, rows, "llrrrrrrrrrrr"))
    gt_objects = {n: int(scores[trackers[0]][n]["num_unique_objects"]) for n in [*names, "OVERALL"]} if trackers else {}
    print(f"\nground-truth objects: {', '.join(f'{n} {c}' for n, c in gt_objects.items())}")
    if hota_missing:
        print(f"HOTA not computed: {hota_missing}")
    for t, why in unavailable.items():
        print(f"{t}: not available: {why}")

    comparison = None
    if "bytetrack" in trackers and SV in trackers:
        comparison = {}
        rows = []
        for name in [*names, "OVERALL"]:
            o, s = scores["bytetrack"][name], scores[SV][name]
            c = {
                "mota_diff": o["mota"] - s["mota"],
                "idf1_diff": o["idf1"] - s["idf1"],
                "hota_diff": (o["HOTA"] - s["HOTA"]) if "HOTA" in o else None,
                "speedup": s["us_per_frame"] / o["us_per_frame"],
            }
            c["meets_target"] = c["mota_diff"] >= 0 and c["idf1_diff"] >= 0 and c["speedup"] > 1
            comparison[name] = c
            rows.append([
                name, f"{100 * c['mota_diff']:+.2f}", f"{100 * c['idf1_diff']:+.2f}",
                "-" if c["hota_diff"] is None else f"{100 * c['hota_diff']:+.2f}",
                f"{c['speedup']:.1f}x", "yes" if c["meets_target"] else "NO",
            ])
        print("\nour bytetrack vs supervision's (points; speed-up = supervision µs / ours µs)")
        print(fmt_table(["scenario", "ΔMOTA", "ΔIDF1", "ΔHOTA", "speed-up", "MOTA, IDF1 ≥ and faster"],
                        rows, "lrrrrl"))

    m = machine()
    print(f"\nmachine: {m['cpus']} CPUs, {m['cpu_model']}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; --repeat {args.repeat}")
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": m,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "versions": versions(),
        "repeat": args.repeat,
        "settings": {t: configs[t] for t in [*trackers, *unavailable]},
        "scenarios": {
            n: {"description": seqs[n].scenario.description, "seed": seqs[n].scenario.seed,
                "frames": seqs[n].frames, "objects": gt_objects.get(n),
                "gt_boxes": len(seqs[n].gt), "detections": len(seqs[n].det)}
            for n in names
        },
        "unavailable": unavailable,
        "hota": hota_missing or "trackeval HOTA, mean over alpha 0.05..0.95",
        "runs": runs,
        "scores": scores,
        "bytetrack_vs_supervision": comparison,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
