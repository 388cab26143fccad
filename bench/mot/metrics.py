"""Scoring tracker output against ground truth: CLEAR MOT and identity metrics with
motmetrics, HOTA with trackeval's HOTA metric (if trackeval imports).

Both take the same per-frame data: ground-truth and tracker ids with boxes
(left, top, width, height). A ground-truth box and a tracker box can be matched when their
IoU is at least 0.5 (the MOTChallenge convention for both CLEAR MOT and identity metrics;
HOTA integrates over thresholds 0.05..0.95 itself).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

MOT_METRICS = [
    "num_frames",
    "mota",
    "motp",
    "idf1",
    "idp",
    "idr",
    "recall",
    "precision",
    "num_switches",
    "num_fragmentations",
    "mostly_tracked",
    "partially_tracked",
    "mostly_lost",
    "num_unique_objects",
    "num_false_positives",
    "num_misses",
]


def read_mot(path, gt: bool = False) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frame → (ids, boxes) from a gt.txt or results file. In gt.txt rows whose 7th column
    (the "consider" flag) is 0 are ignored."""
    rows = defaultdict(list)
    with open(path) as f:
        for line in f:
            p = line.strip().split(",")
            if len(p) < 6:
                continue
            if gt and len(p) > 6 and float(p[6]) == 0:
                continue
            rows[int(float(p[0]))].append((int(float(p[1])), *map(float, p[2:6])))
    out = {}
    for frame, r in rows.items():
        a = np.array(r, dtype=float)
        out[frame] = (a[:, 0].astype(int), a[:, 1:5])
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` with every box of `b` (left, top, width, height)."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mot_accumulator(gt, res, frames: int):
    """A motmetrics accumulator over frames 1..frames. The distance matrix is built here
    (1 - IoU, no match above 0.5) rather than with motmetrics' iou_matrix, which calls a
    function NumPy 2 removed."""
    import motmetrics as mm

    empty = (np.zeros(0, dtype=int), np.zeros((0, 4)))
    acc = mm.MOTAccumulator(auto_id=True)
    for frame in range(1, frames + 1):
        g_ids, g_boxes = gt.get(frame, empty)
        t_ids, t_boxes = res.get(frame, empty)
        dist = 1.0 - iou(g_boxes, t_boxes)
        dist[dist > 0.5] = np.nan
        acc.update(g_ids.tolist(), t_ids.tolist(), dist)
    return acc


def mot_summary(accumulators: dict[str, object]) -> dict[str, dict[str, float]]:
    """name → {metric: value} for each accumulator, plus "OVERALL" (all sequences as one)."""
    import motmetrics as mm

    mh = mm.metrics.create()
    names = list(accumulators)
    df = mh.compute_many(
        [accumulators[n] for n in names],
        metrics=MOT_METRICS,
        names=names,
        generate_overall=len(names) > 1,
    )
    out = {}
    for name, row in df.iterrows():
        out[str(name)] = {m: float(row[m]) for m in MOT_METRICS}
    if len(names) == 1:
        out["OVERALL"] = out[names[0]]
    return out


def hota_available() -> str | None:
    """None if HOTA can be computed, else why not."""
    try:
        import trackeval.metrics  # noqa: F401
    except Exception as e:  # an import failure of any kind means no HOTA, said plainly
        return f"trackeval does not import: {e}"
    return None


def _hota_data(gt, res, frames: int) -> dict:
    """trackeval's per-sequence data: ids renumbered 0..n-1, IoU similarity per frame."""
    gt_map, tr_map = {}, {}
    empty = (np.zeros(0, dtype=int), np.zeros((0, 4)))
    data = {"gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    n_gt = n_tr = 0
    for frame in range(1, frames + 1):
        g_ids, g_boxes = gt.get(frame, empty)
        t_ids, t_boxes = res.get(frame, empty)
        g = np.array([gt_map.setdefault(int(i), len(gt_map)) for i in g_ids], dtype=int)
        t = np.array([tr_map.setdefault(int(i), len(tr_map)) for i in t_ids], dtype=int)
        data["gt_ids"].append(g)
        data["tracker_ids"].append(t)
        data["similarity_scores"].append(iou(g_boxes, t_boxes))
        n_gt += len(g)
        n_tr += len(t)
    data.update(
        num_timesteps=frames,
        num_gt_ids=len(gt_map),
        num_tracker_ids=len(tr_map),
        num_gt_dets=n_gt,
        num_tracker_dets=n_tr,
    )
    return data


def hota(sequences: dict[str, tuple[dict, dict, int]]) -> dict[str, dict[str, float]]:
    """name → {HOTA, DetA, AssA, LocA} (each the mean over trackeval's 19 IoU thresholds),
    plus "OVERALL" combined the way trackeval combines sequences."""
    from trackeval.metrics import HOTA

    metric = HOTA()
    per_seq = {name: metric.eval_sequence(_hota_data(*args)) for name, args in sequences.items()}
    out = {name: _hota_fields(r) for name, r in per_seq.items()}
    out["OVERALL"] = _hota_fields(metric.combine_sequences(per_seq))
    return out


def _hota_fields(r: dict) -> dict[str, float]:
    return {k: float(np.mean(r[k])) for k in ("HOTA", "DetA", "AssA", "LocA")}
