#!/usr/bin/env python3
"""The Python side of bench/infer: the same model, tensors and thread settings in a plain
onnxruntime InferenceSession.

  peer.py frames --video data/vtest.avi --count N --out FILE
      decodes the first N frames with OpenCV and writes them as packed RGB bytes
      (N x H x W x 3); prints {"width", "height", "count"}.

  peer.py run --model M --tensors FILE --count N --batch B --threads T [--spinning]
      reads the N preprocessed images (float32, N x 300 x 300 x 3, the order the Rust side
      made them in), runs them through the session B at a time after one warm-up run, and
      prints {"batch", "frames", "seconds", "fps"}: wall time of the session.run calls only.
"""

import argparse
import json
import sys
import time

import numpy as np


def frames(args):
    import cv2

    cap = cv2.VideoCapture(args.video)
    if not cap.isOpened():
        sys.exit(f"cannot open {args.video}: run scripts/setup (scripts/setup-data)")
    shape = None
    with open(args.out, "wb") as out:
        for index in range(args.count):
            ok, bgr = cap.read()
            if not ok:
                sys.exit(f"{args.video} has only {index} frames, {args.count} asked for")
            rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            shape = rgb.shape
            out.write(rgb.tobytes())
    print(json.dumps({"width": shape[1], "height": shape[0], "count": args.count}))


def run(args):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The infer stage's settings: graph optimisation "all", sequential execution, the same
    # intra-op thread count (0 = ONNX Runtime's default) and spinning policy.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spinning else "0")
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = np.fromfile(args.tensors, dtype="<f4")
    per_image = 300 * 300 * 3
    if images.size != args.count * per_image:
        sys.exit(f"{args.tensors} holds {images.size} values, {args.count} images need {args.count * per_image}")
    images = images.reshape(args.count, 300, 300, 3)
    batches = [images[i : i + args.batch] for i in range(0, args.count, args.batch)]
    session.run(None, {name: batches[0]})  # warm-up: first-run allocations
    seconds = 0.0
    for batch in batches:
        started = time.perf_counter()
        session.run(None, {name: batch})
        seconds += time.perf_counter() - started
    print(json.dumps({"batch": args.batch, "frames": args.count, "seconds": seconds, "fps": args.count / seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("frames")
    f.add_argument("--video", required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--tensors", required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--batch", type=int, required=True)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--spinning", action="store_true")
    args = parser.parse_args()
    frames(args) if args.command == "frames" else run(args)


if __name__ == "__main__":
    main()
