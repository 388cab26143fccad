#!/usr/bin/env python3
"""Python reference for vidmesh's SSDLite person-detection path (equivalence test).

Produces, for every frame of a video, the objects vidmesh's `detect` stage should attach,
as JSON lines in vidmesh's `native` broker schema, so the two can be compared box by box:

    .venv/bin/python bench/peer/ssdlite_reference.py --video data/vtest.avi \
        --topology topologies/demo.toml --out /tmp/reference.jsonl \
        [--compare /tmp/vidmesh-native.jsonl]

Every step is chosen to be the same computation as vidmesh's, not merely a similar one:

* frames: decoded by GStreamer with the same elements vidmesh's source uses
  (decodebin + videoconvert to packed RGB), read raw from `gst-launch-1.0`'s stdout;
  OpenCV's decoder converts YUV to RGB differently and would already move scores;
* preprocessing: `scripts/model/ssdlite_preprocess.py` (the executable spec of the
  TF1 bilinear resize that vidmesh's `bilinear-tf1` preprocess reproduces);
* inference: the same ONNX file through onnxruntime's CPU provider;
* post-processing: vidmesh's SSD parser, frame mapping, clipping, per-class greedy NMS
  and top-k, in float32 with the same operation order, so boxes agree to the bit
  whenever the model outputs do.

The post-processing helpers here (`load_topology`, `postprocess`, `iou_f32`) are also used
by the benchmark peer (`people_pipeline.py`), so both compute the same detections.
"""

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "model"))
from ssdlite_preprocess import SIZE, preprocess  # noqa: E402  (needs the path above)

F32 = np.float32


# --------------------------------------------------------------------------------------------
# Topology: the thresholds and names vidmesh itself would use.
# --------------------------------------------------------------------------------------------

def _stage_of_kind(stages, kind):
    found = [(name, s) for name, s in stages.items() if s.get("kind") == kind]
    if len(found) != 1:
        raise SystemExit(f"the topology must have exactly one stage of kind `{kind}`, found {len(found)}")
    return found[0][1]


def load_topology(path):
    """Reads the settings the reference and the peer need, with vidmesh's defaults.

    Paths (model) are resolved against the working directory, as vidmesh resolves them.
    """
    with open(path, "rb") as f:
        topo = tomllib.load(f)
    stages = topo.get("stage", {})
    pre = _stage_of_kind(stages, "preprocess")
    if pre.get("maintain_aspect_ratio", False):
        # ssdlite_preprocess is a plain stretch; a letterboxed topology needs another reference.
        raise SystemExit("the reference only covers preprocess without maintain_aspect_ratio")
    if (pre.get("width"), pre.get("height")) != (SIZE, SIZE) or pre.get("interpolation") != "bilinear-tf1":
        raise SystemExit(f"the reference covers a {SIZE}x{SIZE} bilinear-tf1 preprocess only")
    infer = _stage_of_kind(stages, "infer")
    parser = infer.get("parser", {})
    if parser.get("type") != "ssd":
        raise SystemExit("the reference implements the `ssd` parser only")
    track = next((s for s in stages.values() if s.get("kind") == "track"), {})
    sink = next((s for s in stages.values() if s.get("kind") == "sink"), {})
    sources = topo.get("source", [])
    return {
        "source_id": sources[0]["id"] if sources else "source",
        "detect": {
            "model": str(Path(infer["model"])),
            "labels": list(infer.get("labels", [])),
            # vidmesh parses these as f32: compare against the same f32 values.
            "score_threshold": F32(infer.get("score_threshold", 0.5)),
            "nms_iou": F32(infer.get("nms_iou", 0.45)),
            "top_k": int(infer.get("top_k", 100)),
            "boxes_output": parser.get("boxes_output", "boxes"),
            "scores_output": parser.get("scores_output", "scores"),
            "box_format": parser.get("box_format", "yxyx"),
            "normalized": bool(parser.get("normalized", True)),
            "background_class": parser.get("background_class"),
        },
        "track": {
            "iou_threshold": F32(track.get("iou_threshold", 0.3)),
            "min_hits": int(track.get("min_hits", 2)),
            "max_age": int(track.get("max_age", 15)),
        },
        "sink": {
            "bitrate_kbps": int(sink.get("bitrate_kbps", 4000)),
            "speed_preset": sink.get("speed_preset", "veryfast"),
            "key_int_max": int(sink.get("key_int_max", 60)),
        },
    }


def label_of(labels, class_id):
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


# --------------------------------------------------------------------------------------------
# Post-processing, float32 throughout (boxes are kept as left, top, width, height like
# vidmesh's BBox, and right/bottom are recomputed as left + width each time it does).
# --------------------------------------------------------------------------------------------

def iou_f32(a, b):
    """IoU of boxes `a` [..., 4] and `b` [..., 4] (ltwh, float32), broadcasting; 0 if disjoint.

    Same operations in the same order as BBox::iou, so the value is bit-identical and a
    comparison against a threshold decides the same way.
    """
    al, at, aw, ah = (a[..., i] for i in range(4))
    bl, bt, bw, bh = (b[..., i] for i in range(4))
    w = np.minimum(al + aw, bl + bw) - np.maximum(al, bl)
    h = np.minimum(at + ah, bt + bh) - np.maximum(at, bt)
    inter = w * h
    area_a = np.maximum(aw, F32(0)) * np.maximum(ah, F32(0))
    area_b = np.maximum(bw, F32(0)) * np.maximum(bh, F32(0))
    union = area_a + area_b - inter
    valid = (w > 0) & (h > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, inter / np.where(valid, union, F32(1)), F32(0)).astype(F32)


def postprocess(boxes, scores, frame_w, frame_h, cfg):
    """One image's model outputs -> its detections in frame pixels, as vidmesh orders them.

    boxes [A, 4] and scores [A, C] float32. Returns (class_ids int [K], confidences f32 [K],
    bboxes f32 [K, 4] as left, top, width, height).
    """
    boxes = np.asarray(boxes, dtype=F32)
    scores = np.asarray(scores, dtype=F32)
    keep = scores >= cfg["score_threshold"]  # also rejects NaN scores
    if cfg["background_class"] is not None and cfg["background_class"] < scores.shape[1]:
        keep[:, cfg["background_class"]] = False
    # Row-major nonzero = vidmesh's anchor-major, class-minor candidate order, which is what
    # the stable sort below falls back on for equal confidences.
    anchor, cls = np.nonzero(keep)
    conf = scores[anchor, cls]
    b = boxes[anchor]
    if cfg["box_format"] == "yxyx":
        x0, y0, x1, y1 = b[:, 1], b[:, 0], b[:, 3], b[:, 2]
    else:
        x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    finite = np.isfinite(b).all(axis=1)
    if not finite.all():
        anchor, cls, conf, x0, y0, x1, y1 = (v[finite] for v in (anchor, cls, conf, x0, y0, x1, y1))

    # Network pixels (BBox::from_corners of the scaled corners).
    net = F32(SIZE)
    sx, sy = (net, net) if cfg["normalized"] else (F32(1), F32(1))
    left, top = x0 * sx, y0 * sy
    width, height = x1 * sx - left, y1 * sy - top
    # Back to frame pixels: vidmesh divides by its net/frame scale (no letterbox offset),
    # which is not always the same float as multiplying by frame/net.
    scale_x, scale_y = net / F32(frame_w), net / F32(frame_h)
    left, top, width, height = left / scale_x, top / scale_y, width / scale_x, height / scale_y
    # Clip to the frame (BBox::clipped) and drop what has no area left.
    fw, fh, zero = F32(frame_w), F32(frame_h), F32(0)
    right = np.clip(left + width, zero, fw)
    bottom = np.clip(top + height, zero, fh)
    left, top = np.clip(left, zero, fw), np.clip(top, zero, fh)
    width, height = right - left, bottom - top
    has_area = (np.maximum(width, zero) * np.maximum(height, zero)) > 0
    bbox = np.stack([left, top, width, height], axis=1)[has_area]
    cls, conf = cls[has_area], conf[has_area]

    # Greedy per-class NMS over the confidence-sorted candidates. Suppressing everything a
    # kept box overlaps keeps the same set as "keep unless overlapping a kept box" (IoU is
    # symmetric), and stopping at top_k kept boxes is the same as truncating afterwards.
    order = np.argsort(-conf, kind="stable")
    bbox, cls, conf = bbox[order], cls[order], conf[order]
    n, top_k = len(conf), cfg["top_k"]
    suppressed = np.zeros(n, dtype=bool)
    kept = []
    for i in range(n):
        if len(kept) >= top_k:
            break
        if suppressed[i]:
            continue
        kept.append(i)
        rest = slice(i + 1, n)
        overlap = iou_f32(bbox[i], bbox[rest]) > cfg["nms_iou"]
        suppressed[rest] |= overlap & (cls[rest] == cls[i])
    kept = np.asarray(kept, dtype=np.int64)
    return cls[kept], conf[kept], bbox[kept]


def f32_json(x):
    """The shortest decimal that reads back as this float32: what vidmesh's serde_json writes."""
    return float(np.format_float_positional(F32(x), unique=True, trim="0"))


# --------------------------------------------------------------------------------------------
# Decoding exactly as vidmesh's source does.
# --------------------------------------------------------------------------------------------

def _gst_decode(video, flag, *sink):
    """gst-launch-1.0 argv decoding `video` to packed RGB as vidmesh's source does, into `sink`.

    An argv list, not a shell line: gst-launch escapes each argument itself, so paths with
    spaces or `!` stay one property value.
    """
    return ["gst-launch-1.0", flag, "filesrc", f"location={video}", "!", "decodebin", "!",
            "videoconvert", "!", "video/x-raw,format=RGB", "!", *sink]


def probe_size(video):
    """Width and height of the RGB frames GStreamer will deliver (caps of the first buffer)."""
    cmd = _gst_decode(video, "-v", "identity", "eos-after=1", "!", "fakesink")
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "GstFakeSink" in line and "caps = video/x-raw" in line:
            w = re.search(r"width=\(int\)(\d+)", line)
            h = re.search(r"height=\(int\)(\d+)", line)
            if w and h:
                return int(w.group(1)), int(h.group(1))
    raise SystemExit(f"cannot read the video size of {video} with GStreamer:\n{out.stderr.strip()}")


def gst_rgb_frames(video):
    """Yields RGB uint8 [H, W, 3] frames decoded by GStreamer, as vidmesh's source gets them."""
    width, height = probe_size(video)
    # GStreamer pads packed RGB rows to a multiple of 4 bytes.
    stride = (width * 3 + 3) & ~3
    frame_bytes = stride * height
    proc = subprocess.Popen(_gst_decode(video, "-q", "fdsink", "fd=1"), stdout=subprocess.PIPE, bufsize=frame_bytes)
    try:
        while True:
            buf = bytearray(frame_bytes)
            view, got = memoryview(buf), 0
            while got < frame_bytes:
                n = proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            if got == 0:
                break
            if got < frame_bytes:
                raise SystemExit(f"GStreamer ended mid-frame ({got} of {frame_bytes} bytes)")
            rows = np.frombuffer(buf, dtype=np.uint8).reshape(height, stride)
            yield rows[:, : width * 3].reshape(height, width, 3)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"gst-launch-1.0 failed decoding {video} (exit {rc})")


# --------------------------------------------------------------------------------------------
# Comparison with vidmesh's native events.
# --------------------------------------------------------------------------------------------

def _read_jsonl(path):
    with open(path) as f:
        return {rec["frame_num"]: rec for rec in map(json.loads, filter(str.strip, f))}


def compare(reference_path, vidmesh_path, box_tol=1.0, score_tol=1e-3):
    """Pairs objects frame by frame in output order and reports how many agree.

    Returns True when every frame has the same objects within the tolerances.
    """
    ref, vm = _read_jsonl(reference_path), _read_jsonl(vidmesh_path)
    frames = sorted(set(ref) | set(vm))
    frames_ok = boxes_ok = boxes_exact = total = 0
    max_box = max_score = 0.0
    problems = []
    for n in frames:
        a, b = ref.get(n), vm.get(n)
        if a is None or b is None:
            problems.append(f"frame {n}: only in {'vidmesh' if a is None else 'reference'}")
            continue
        oa, ob = a["objects"], b["objects"]
        total += max(len(oa), len(ob))
        same_frame = len(oa) == len(ob) and (a["width"], a["height"]) == (b["width"], b["height"])
        for i, (x, y) in enumerate(zip(oa, ob)):
            xb, yb = x["bbox"], y["bbox"]
            # Corners, so a width error is not hidden by a compensating left error.
            cx = [xb["left"], xb["top"], xb["left"] + xb["width"], xb["top"] + xb["height"]]
            cy = [yb["left"], yb["top"], yb["left"] + yb["width"], yb["top"] + yb["height"]]
            d_box = max(abs(p - q) for p, q in zip(cx, cy))
            d_score = abs(x["confidence"] - y["confidence"])
            max_box, max_score = max(max_box, d_box), max(max_score, d_score)
            ok = d_box <= box_tol and d_score <= score_tol and x["class_id"] == y["class_id"]
            boxes_ok += ok
            boxes_exact += xb == yb and x["confidence"] == y["confidence"]
            if not ok:
                same_frame = False
                problems.append(f"frame {n} object {i}: box diff {d_box:.4g} px, score diff {d_score:.3g}")
        if len(oa) != len(ob):
            problems.append(
                f"frame {n}: {len(oa)} reference objects vs {len(ob)} vidmesh objects; scores "
                f"ref {[round(o['confidence'], 4) for o in oa]} vs vidmesh {[round(o['confidence'], 4) for o in ob]}"
            )
        frames_ok += same_frame
    print(f"frames: {frames_ok}/{len(frames)} match; objects: {boxes_ok}/{total} match within "
          f"{box_tol} px and {score_tol} score ({boxes_exact} bit-identical); "
          f"max box diff {max_box:.3g} px, max score diff {max_score:.3g}")
    for p in problems[:50]:
        print("  " + p)
    if len(problems) > 50:
        print(f"  ... and {len(problems) - 50} more")
    return not problems and frames_ok == len(frames)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", required=True, help="the clip to decode")
    ap.add_argument("--topology", default=str(ROOT / "topologies/demo.toml"), help="thresholds, model, labels")
    ap.add_argument("--out", required=True, help="JSON lines in vidmesh's native schema")
    ap.add_argument("--compare", metavar="NATIVE_JSONL", help="vidmesh's native events to check --out against")
    args = ap.parse_args()

    import onnxruntime as ort  # here so that --help works without it

    settings = load_topology(args.topology)
    cfg = settings["detect"]
    if not Path(cfg["model"]).is_file():
        raise SystemExit(f"model {cfg['model']} not found: run scripts/setup-model")
    session = ort.InferenceSession(cfg["model"], providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [cfg["boxes_output"], cfg["scores_output"]]

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out:
        frames = objects = 0
        for frame_num, rgb in enumerate(gst_rgb_frames(args.video)):
            height, width = rgb.shape[:2]
            boxes, scores = session.run(outputs, {input_name: preprocess(rgb)[None]})
            cls, conf, bbox = postprocess(boxes[0], scores[0], width, height, cfg)
            record = {
                "source_id": 0,
                "source_name": settings["source_id"],
                "frame_num": frame_num,
                "pts_ns": None,
                "ntp_ns": None,
                "width": width,
                "height": height,
                "objects": [
                    {
                        "class_id": int(c),
                        "label": label_of(cfg["labels"], int(c)),
                        "confidence": f32_json(s),
                        "bbox": dict(zip(("left", "top", "width", "height"), map(f32_json, b))),
                        "track_id": None,
                    }
                    for c, s, b in zip(cls, conf, bbox)
                ],
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            frames += 1
            objects += len(cls)
    print(f"{frames} frames, {objects} objects -> {args.out}", file=sys.stderr)
    if args.compare:
        sys.exit(0 if compare(args.out, args.compare) else 1)


if __name__ == "__main__":
    main()
