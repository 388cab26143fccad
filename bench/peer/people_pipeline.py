#!/usr/bin/env python3
"""The benchmark peer: vidmesh's demo pipeline written by hand in Python.

    .venv/bin/python bench/peer/people_pipeline.py --video data/vtest.avi \
        --topology topologies/demo.toml --out-dir /tmp/peer

The job is the same as `topologies/demo.toml`: detect people with the SSDLite ONNX model,
track them with an IoU tracker, draw boxes and "person <id>" labels, encode the annotated
video to H.264 MP4 and write one DeepStream-minimal-schema JSON line per frame. It is
written the way a competent engineer would write it without a framework: one process,
one loop, one frame at a time through OpenCV decode -> numpy preprocessing ->
onnxruntime (default CPU session options) -> numpy post-processing -> tracker -> OpenCV
drawing -> an x264 `gst-launch-1.0` subprocess fed raw frames over a pipe.

Thresholds come from the topology, and the detections are computed with the same
post-processing as vidmesh (imported from ssdlite_reference.py), so the counts are
comparable; they can still differ slightly because OpenCV's decoder converts YUV to
BGR differently from GStreamer's videoconvert.

Outputs in --out-dir: annotated.mp4, events.jsonl. Progress lines go to stderr every
second; the final summary is one JSON object on stdout:
{"frames", "elapsed_s", "fps", "objects", "tracks"}. Like vidmesh's summary, elapsed_s
starts before the model is loaded and ends when the MP4 is finalised.
"""

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ssdlite_reference import F32, iou_f32, label_of, load_topology, postprocess, preprocess  # noqa: E402

# DeepStream's id for objects no tracker has confirmed (UNTRACKED_OBJECT_ID).
UNTRACKED = 2**64 - 1
# Same palette as vidmesh's osd, as BGR; a track keeps its colour.
PALETTE_RGB = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
               (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]
PALETTE = [(b, g, r) for r, g, b in PALETTE_RGB]


class IouTracker:
    """Greedy IoU tracker, one per stream; the same rules as vidmesh's `track` stage.

    Pairs (track, detection) of one class with IoU >= threshold are matched best overlap
    first; a track is confirmed (its id reported) after `min_hits` matches and dropped after
    more than `max_age` frames without one.
    """

    def __init__(self, iou_threshold, min_hits, max_age, first_id=1):
        self.iou_threshold, self.min_hits, self.max_age = iou_threshold, min_hits, max_age
        self.next_id = first_id
        self.ids, self.classes, self.hits, self.misses = [], [], [], []
        self.boxes = np.zeros((0, 4), dtype=F32)
        self.confirmed = 0  # tracks that ever reached min_hits

    def update(self, classes, boxes):
        """Associates this frame's detections; returns their track ids (None if tentative)."""
        n_tracks, n_dets = len(self.ids), len(classes)
        taken_track = np.zeros(n_tracks, dtype=bool)
        det_track = [-1] * n_dets
        if n_tracks and n_dets:
            iou = iou_f32(self.boxes[:, None, :], boxes[None, :, :])
            iou[np.asarray(self.classes)[:, None] != classes[None, :]] = -1
            t_idx, d_idx = np.nonzero(iou >= self.iou_threshold)
            # Best IoU first; ties by track, then detection index: deterministic matching.
            for k in np.lexsort((d_idx, t_idx, -iou[t_idx, d_idx])):
                t, d = t_idx[k], d_idx[k]
                if not taken_track[t] and det_track[d] < 0:
                    taken_track[t] = True
                    det_track[d] = t
        for t in np.flatnonzero(~taken_track):
            self.misses[t] += 1
        new_boxes = []
        ids = []
        for d in range(n_dets):
            t = det_track[d]
            if t >= 0:
                self.boxes[t] = boxes[d]
                self.hits[t] += 1
                self.misses[t] = 0
                if self.hits[t] == self.min_hits:
                    self.confirmed += 1
            else:
                t = n_tracks + len(new_boxes)
                new_boxes.append(boxes[d])
                self.ids.append(self.next_id)
                self.classes.append(int(classes[d]))
                self.hits.append(1)
                self.misses.append(0)
                self.next_id += 1
                if self.min_hits == 1:
                    self.confirmed += 1
            ids.append(self.ids[t] if self.hits[t] >= self.min_hits else None)
        if new_boxes:
            self.boxes = np.concatenate([self.boxes, np.asarray(new_boxes, dtype=F32)])
        alive = [i for i, m in enumerate(self.misses) if m <= self.max_age]
        if len(alive) != len(self.ids):
            self.ids, self.classes, self.hits, self.misses = (
                [v[i] for i in alive] for v in (self.ids, self.classes, self.hits, self.misses)
            )
            self.boxes = self.boxes[alive]
        return ids


def f32_text(x):
    """A float32 as Rust's Display writes it (shortest round-trip, no exponent, "2" not "2.0")."""
    return np.format_float_positional(F32(x), unique=True, trim="-")


def start_encoder(path, width, height, fps, sink):
    """x264 in an MP4 through gst-launch, reading packed BGR frames from stdin."""
    rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)
    # An argv list, not a shell line: gst-launch escapes each argument itself.
    cmd = [
        "gst-launch-1.0", "-q", "fdsrc", "fd=0", "!",
        "rawvideoparse", f"width={width}", f"height={height}", "format=bgr",
        f"framerate={rate.numerator}/{rate.denominator}",
        # Our rows are packed; GStreamer would otherwise expect them padded to 4 bytes.
        f"plane-strides=<{width * 3}>", "!",
        "videoconvert", "!",
        "x264enc", f"speed-preset={sink['speed_preset']}", f"bitrate={sink['bitrate_kbps']}",
        f"key-int-max={sink['key_int_max']}", "!",
        "video/x-h264,profile=high", "!", "h264parse", "!", "mp4mux", "!", "filesink", f"location={path}",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def draw(frame, boxes, track_ids, labels):
    for (left, top, width, height), tid, label in zip(boxes, track_ids, labels):
        colour = PALETTE[(tid - 1) % len(PALETTE)] if tid is not None else (200, 200, 200)
        p0 = (int(round(left)), int(round(top)))
        p1 = (int(round(left + width)), int(round(top + height)))
        cv2.rectangle(frame, p0, p1, colour, 3)
        text = f"{label} {tid}" if tid is not None else label
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        y = max(p0[1], th + base + 2)
        cv2.rectangle(frame, (p0[0], y - th - base - 2), (p0[0] + tw + 4, y), colour, cv2.FILLED)
        cv2.putText(frame, text, (p0[0] + 2, y - base), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)


def iso_ms(now):
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--topology", default="topologies/demo.toml", help="thresholds, model, encoder settings")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()

    settings = load_topology(args.topology)
    det, trk = settings["detect"], settings["track"]
    if not Path(det["model"]).is_file():
        raise SystemExit(f"model {det['model']} not found: run scripts/setup-model")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    session = ort.InferenceSession(det["model"], providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [det["boxes_output"], det["scores_output"]]
    cap = cv2.VideoCapture(args.video)
    if not cap.isOpened():
        raise SystemExit(f"OpenCV cannot open {args.video}")
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    encoder = start_encoder(out_dir / "annotated.mp4", width, height, cap.get(cv2.CAP_PROP_FPS), settings["sink"])
    tracker = IouTracker(trk["iou_threshold"], trk["min_hits"], trk["max_age"])

    frames = objects = 0
    next_report, last_frames, last_time = started + 1.0, 0, started
    with open(out_dir / "events.jsonl", "w") as events:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            stamp = datetime.now(timezone.utc)
            rgb = bgr[:, :, ::-1]  # a view: preprocess copies to float anyway
            boxes, scores = session.run(outputs, {input_name: preprocess(rgb)[None]})
            classes, _, bboxes = postprocess(boxes[0], scores[0], width, height, det)
            track_ids = tracker.update(classes, bboxes)
            labels = [label_of(det["labels"], int(c)) for c in classes]

            draw(bgr, bboxes, track_ids, labels)
            try:
                encoder.stdin.write(memoryview(np.ascontiguousarray(bgr)).cast("B"))
            except BrokenPipeError:
                raise SystemExit("the x264 encoder (gst-launch-1.0) stopped; see its error above")

            events.write(json.dumps({
                "version": "4.0",
                "id": str(frames),
                "@timestamp": iso_ms(stamp),
                "sensorId": settings["source_id"],
                "objects": [
                    "|".join([str(UNTRACKED if tid is None else tid), f32_text(l), f32_text(t),
                              f32_text(l + w), f32_text(t + h), label])
                    for (l, t, w, h), tid, label in zip(bboxes, track_ids, labels)
                ],
            }, separators=(",", ":")) + "\n")

            frames += 1
            objects += len(classes)
            now = time.perf_counter()
            if now >= next_report:
                fps = (frames - last_frames) / (now - last_time)
                print(f"[{now - started:6.1f}s] frames {frames}, {fps:.1f} fps", file=sys.stderr, flush=True)
                next_report += 1.0
                last_frames, last_time = frames, now
    cap.release()
    encoder.stdin.close()
    if encoder.wait() != 0:
        raise SystemExit(f"the x264 encoder (gst-launch-1.0) failed with exit code {encoder.returncode}")
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "frames": frames,
        "elapsed_s": round(elapsed, 3),
        "fps": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        "objects": objects,
        "tracks": tracker.confirmed,
    }))


if __name__ == "__main__":
    main()
