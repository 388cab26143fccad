#!/usr/bin/env python3
"""Score the demo person detector against data/gt/people.truth.json.

Why: the generated clip is only useful as an accuracy fixture if the real
detector (models/ssdlite_person.onnx) sees the pasted people the way it sees
people in photos.  This runs the model exactly as the pipeline contract says
(full-frame TF1-bilinear resize to 300x300, see scripts/model/ssdlite_preprocess.py),
post-processes like the demo (person score >= 0.5, greedy NMS at IoU 0.45) and
matches detections to truth at IoU >= 0.5.

Scoring rules:
  * a truth box is *required* when visible >= 0.5; only required boxes count
    towards recall;
  * a detection matched to a required box is a TP; one matched to a
    low-visibility box is ignored (neither TP nor FP), since a detector may
    fairly see or miss a person who is mostly hidden or out of frame;
  * any other detection is an FP.
Matching is greedy by descending detection score, each truth box used once,
and a detection prefers a required truth box over an ignorable one.

Exit status is 0 when recall and precision both reach --min (default 0.9).
Usage: check_gt_clip.py [--video data/gt/people.mp4] [--truth ...] [--model ...]
                        [--min 0.9] [--dump-misses DIR]
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "model"))
from ssdlite_preprocess import preprocess  # noqa: E402  (the contract's reference)

SCORE_MIN = 0.5
NMS_IOU = 0.45
MATCH_IOU = 0.5
REQUIRED_VISIBLE = 0.5
PERSON = 1  # column of `scores` that is "person"


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes, scores):
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou(boxes[i], boxes[k]) < NMS_IOU for k in keep):
            keep.append(i)
    return keep


def detect(session, rgb):
    h, w = rgb.shape[:2]
    boxes, scores = session.run(["boxes", "scores"], {"image": preprocess(rgb)[None]})
    s = scores[0, :, PERSON]
    sel = np.nonzero(s >= SCORE_MIN)[0]
    # ymin, xmin, ymax, xmax normalised -> left, top, right, bottom in frame px
    b = boxes[0, sel][:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
    b = np.clip(b, 0, [w, h, w, h])
    keep = nms(b, s[sel])
    return [(b[i].tolist(), float(s[sel][i])) for i in keep]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=os.path.join(ROOT, "data", "gt", "people.mp4"))
    ap.add_argument("--truth", default=os.path.join(ROOT, "data", "gt", "people.truth.json"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "ssdlite_person.onnx"))
    ap.add_argument("--min", type=float, default=0.9)
    ap.add_argument("--dump-misses", help="write annotated PNGs of frames with a miss or an FP here")
    args = ap.parse_args()

    with open(args.truth) as f:
        truth = json.load(f)
    by_frame = {}
    for obj in truth["objects"]:
        for e in obj["track"]:
            by_frame.setdefault(e["frame"], []).append((obj["id"], e["bbox"], e["visible"]))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])

    cap = cv2.VideoCapture(args.video)
    if not cap.isOpened():
        sys.exit(f"cannot open {args.video}")
    tp = fp = ignored = 0
    per_id = {o["id"]: [0, 0] for o in truth["objects"]}  # [hits, required]
    frame_no = 0
    if args.dump_misses:
        os.makedirs(args.dump_misses, exist_ok=True)
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets = detect(session, rgb)
        gts = by_frame.get(frame_no, [])
        used = set()
        bad = False
        for box, score in sorted(dets, key=lambda d: -d[1]):
            best, best_iou = None, MATCH_IOU
            # Prefer a required box; fall back to an ignorable one.
            for want_required in (True, False):
                for k, (tid, gb, vis) in enumerate(gts):
                    if k in used or (vis >= REQUIRED_VISIBLE) != want_required:
                        continue
                    v = iou(box, gb)
                    if v >= best_iou:
                        best, best_iou = k, v
                if best is not None:
                    break
            if best is None:
                fp += 1
                bad = True
            else:
                used.add(best)
                if gts[best][2] >= REQUIRED_VISIBLE:
                    tp += 1
                else:
                    ignored += 1
        for k, (tid, gb, vis) in enumerate(gts):
            if vis >= REQUIRED_VISIBLE:
                per_id[tid][1] += 1
                if k in used:
                    per_id[tid][0] += 1
                else:
                    bad = True
        if bad and args.dump_misses:
            dbg = bgr.copy()
            for tid, gb, vis in gts:
                cv2.rectangle(dbg, (gb[0], gb[1]), (gb[2] - 1, gb[3] - 1), (0, 255, 0), 1)
                cv2.putText(dbg, f"{tid} v{vis:.2f}", (gb[0], gb[3] + 14), 0, 0.45, (0, 255, 0), 1)
            for box, score in dets:
                x0, y0, x1, y1 = map(int, box)
                cv2.rectangle(dbg, (x0, y0), (x1, y1), (0, 0, 255), 1)
                cv2.putText(dbg, f"{score:.2f}", (x0, y0 - 3), 0, 0.45, (0, 0, 255), 1)
            cv2.imwrite(os.path.join(args.dump_misses, f"frame{frame_no:03d}.png"), dbg)
        frame_no += 1

    if frame_no != truth["num_frames"]:
        sys.exit(f"decoded {frame_no} frames, truth says {truth['num_frames']}")
    required = sum(r for _, r in per_id.values())
    recall = tp / required if required else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    print(f"frames {frame_no}  required {required}  TP {tp}  FP {fp}  FN {required - tp}  "
          f"ignored {ignored}")
    print(f"recall {recall:.4f}  precision {precision:.4f}")
    for tid, (hit, req) in sorted(per_id.items()):
        src = next(o["source"] for o in truth["objects"] if o["id"] == tid)
        print(f"  person {tid}: recall {hit / req if req else 0:.4f} ({hit}/{req})  {src}")
    ok = recall >= args.min and precision >= args.min
    print("PASS" if ok else f"FAIL (need >= {args.min})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
