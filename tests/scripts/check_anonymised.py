"""Checks an anonymised video against its input, independently of vidmesh.

  check_anonymised.py INPUT.mp4 OUTPUT.mp4 EVENTS.jsonl CENTERFACE.onnx

1. Pixels: outside the face boxes vidmesh reported (native-schema events, label "face") the
   output equals the input up to codec noise; inside each box the fine detail is gone (the
   variance of the Laplacian drops to a fraction of the input's).
2. Faces: CenterFace, run here with onnxruntime and its own decoder on whole frames, finds
   faces in the input and (almost) none in the output.

Prints a JSON summary; exits 1 with the reason when a check fails.
"""

import json
import sys

import cv2
import numpy as np
import onnxruntime as ort


def frames(path):
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        sys.exit(f"cannot open {path}")
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        yield bgr
    cap.release()


def faces_of(session, bgr, threshold=0.5):
    """Face boxes (x0, y0, x1, y1) of one frame: CenterFace on the frame padded to sides that
    are multiples of 32, heatmap cells that are 3x3 local maxima above the threshold."""
    h, w = bgr.shape[:2]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    rgb = np.zeros((ph, pw, 3), np.float32)
    rgb[:h, :w] = bgr[:, :, ::-1]
    heat, scale, offset, _ = session.run(None, {session.get_inputs()[0].name: rgb.transpose(2, 0, 1)[None]})
    heat = heat[0, 0]
    pooled = cv2.dilate(heat, np.ones((3, 3), np.uint8))
    ys, xs = np.where((heat >= threshold) & (heat == pooled))
    boxes = []
    for y, x in zip(ys, xs):
        bh = np.exp(scale[0, 0, y, x]) * 4
        bw = np.exp(scale[0, 1, y, x]) * 4
        cy = (y + offset[0, 0, y, x] + 0.5) * 4
        cx = (x + offset[0, 1, y, x] + 0.5) * 4
        boxes.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
    return boxes


def laplacian_variance(gray):
    return float(cv2.Laplacian(gray.astype(np.float64), cv2.CV_64F).var())


def main():
    src, out, events_path, model = sys.argv[1:5]
    reported = {}
    with open(events_path) as f:
        for line in f:
            frame = json.loads(line)
            reported[frame["frame_num"]] = [
                o["bbox"] for o in frame["objects"] if o["label"] == "face"
            ]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    summary = {
        "frames": 0,
        "frames_with_blurred_faces": 0,
        "blurred_faces": 0,
        "faces_in_input": 0,
        "faces_in_output": 0,
        "outside_mean_abs_diff": 0.0,
        "worst_outside_mean_abs_diff": 0.0,
        "detail_kept_inside_faces": [],
    }
    diffs = []
    for n, (a, b) in enumerate(zip(frames(src), frames(out))):
        summary["frames"] += 1
        if a.shape != b.shape:
            sys.exit(f"frame {n}: input {a.shape} vs output {b.shape}")
        boxes = reported.get(n, [])
        outside = np.ones(a.shape[:2], bool)
        for box in boxes:
            # The encoder's blocks smear a blurred edge over a few pixels around the box.
            x0, y0 = int(box["left"]) - 8, int(box["top"]) - 8
            x1 = int(box["left"] + box["width"]) + 8
            y1 = int(box["top"] + box["height"]) + 8
            outside[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = False
            ix0, iy0 = int(box["left"] + 0.999), int(box["top"] + 0.999)
            ix1, iy1 = int(box["left"] + box["width"]), int(box["top"] + box["height"])
            if ix1 - ix0 >= 8 and iy1 - iy0 >= 8:
                ga = cv2.cvtColor(a[iy0:iy1, ix0:ix1], cv2.COLOR_BGR2GRAY)
                gb = cv2.cvtColor(b[iy0:iy1, ix0:ix1], cv2.COLOR_BGR2GRAY)
                before = laplacian_variance(ga)
                if before > 1.0:
                    summary["detail_kept_inside_faces"].append(laplacian_variance(gb) / before)
        if boxes:
            summary["frames_with_blurred_faces"] += 1
            summary["blurred_faces"] += len(boxes)
        d = float(np.abs(a.astype(np.int16) - b.astype(np.int16))[outside].mean())
        diffs.append(d)
        # CenterFace on every 5th frame keeps the check to seconds.
        if n % 5 == 0:
            summary["faces_in_input"] += len(faces_of(session, a))
            summary["faces_in_output"] += len(faces_of(session, b))
    if not diffs:
        sys.exit("no frames decoded")
    summary["outside_mean_abs_diff"] = float(np.mean(diffs))
    summary["worst_outside_mean_abs_diff"] = float(np.max(diffs))
    kept = summary.pop("detail_kept_inside_faces")
    summary["median_detail_kept_inside_faces"] = float(np.median(kept)) if kept else None
    print(json.dumps(summary))
    failures = []
    if summary["blurred_faces"] == 0:
        failures.append("vidmesh reported no faces")
    if summary["worst_outside_mean_abs_diff"] > 6.0:
        failures.append("pixels outside the face boxes changed beyond codec noise")
    if kept and summary["median_detail_kept_inside_faces"] > 0.2:
        failures.append("face regions kept most of their detail (not blurred)")
    if summary["faces_in_input"] < 10:
        failures.append("the independent CenterFace found too few faces in the input to judge")
    elif summary["faces_in_output"] > summary["faces_in_input"] * 0.2:
        failures.append("the independent CenterFace still finds faces in the output")
    if failures:
        sys.exit("; ".join(failures))


if __name__ == "__main__":
    main()
