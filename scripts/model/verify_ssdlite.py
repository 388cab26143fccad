#!/usr/bin/env python3
"""Check models/ssdlite_person.onnx against the original TensorFlow graph.

For a few real images the *full* frozen graph (uint8 in, its own resize, its
own NMS) is run in TensorFlow, fetching its internal tensors at the points the
ONNX model was cut at.  Then:

  (a) ssdlite_preprocess.preprocess() must reproduce TF's preprocessed tensor;
  (b) onnxruntime, fed the *numpy*-preprocessed images, must reproduce TF's
      boxes/scores, both one image at a time and in mixed batches (which also
      proves that the batch dimension is really dynamic);
  (c) a batch of 8 must give each image the outputs it gets alone (batch 1),
      within 1e-4: a Reshape with a baked-in batch size would mix images up.

It also counts person detections (score > 0.5) the way the original graph does
(its own NMS) and the way a downstream runtime would from the ONNX outputs
(clip to [0,1], greedy NMS at the graph's IoU of 0.6), so a broken cut that
still happens to be numerically close cannot pass unnoticed.

Exits non-zero on any mismatch.  Run inside the TF venv of scripts/setup-model.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_ssdlite  # noqa: E402  (shares the graph loading and cut names)
from ssdlite_preprocess import preprocess  # noqa: E402

DEFAULT_DATA = "/usr/share/doc/opencv-doc/examples/data"
# vtest.avi is a street scene with several pedestrians per frame; messi5.jpg
# has players; fruits.jpg has no person at all and guards against a model that
# fires everywhere.
VIDEO = "vtest.avi"
VIDEO_FRAMES = (0, 250, 500, 750)
STILLS = ("messi5.jpg", "fruits.jpg")

TOL_PREPROCESS = 1e-4
TOL_BOXES = 1e-4
TOL_SCORES = 1e-4
TOL_BATCH = 1e-4  # batch 8 vs batch 1, same model, same inputs
BATCH = 8

DETECTION_THRESHOLD = 0.5
NMS_IOU = 0.6  # the graph's non_max_suppression/iou_threshold constant


def load_images(data_dir):
    """[(label, RGB uint8 HWC)] of the test images."""
    import cv2

    images = []
    path = os.path.join(data_dir, VIDEO)
    if not os.path.exists(path):
        sys.exit(f"{path} missing: install the Debian package opencv-doc")
    cap = cv2.VideoCapture(path)
    for index in VIDEO_FRAMES:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = cap.read()
        if not ok:
            sys.exit(f"could not read frame {index} of {path}")
        images.append((f"{VIDEO}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cap.release()
    for name in STILLS:
        path = os.path.join(data_dir, name)
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"could not read {path}: install the Debian package opencv-doc")
        images.append((name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return images


class TfReference:
    """The untouched frozen graph, with access to its cut-point tensors."""

    def __init__(self):
        import tensorflow as tf

        graph_def = convert_ssdlite.load_graph_def(tf)
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=graph)
        self.fetches = [
            graph.get_tensor_by_name(name)
            for name in (
                convert_ssdlite.CUT_INPUT,
                convert_ssdlite.CUT_BOXES,
                convert_ssdlite.CUT_SCORES,
                "num_detections:0",
                "detection_scores:0",
                "detection_classes:0",
            )
        ]
        self.image = graph.get_tensor_by_name("image_tensor:0")

    def run(self, rgb):
        pre, boxes, scores, num, det_scores, det_classes = self.session.run(
            self.fetches, feed_dict={self.image: rgb[None]}
        )
        n = int(num[0])
        keep = det_scores[0, :n] > DETECTION_THRESHOLD
        # Label 1 is the only foreground class; count it explicitly anyway.
        persons = int(np.sum(keep & (det_classes[0, :n] == 1)))
        return pre[0], boxes[0], scores[0], persons


def count_persons(boxes, scores):
    """Person detections above the threshold after clip + greedy NMS, i.e. what
    the original graph's postprocessing yields, from the ONNX outputs alone.

    Thresholding before NMS gives the same survivors above the threshold:
    a box can only be suppressed by a higher-scoring one.
    """
    person = scores[:, 1]
    order = np.argsort(-person, kind="stable")
    order = order[person[order] > DETECTION_THRESHOLD]
    b = np.clip(boxes[order], 0.0, 1.0)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept = []
    for i in range(len(order)):
        if area[i] <= 0:  # the graph drops boxes that clip to nothing
            continue
        suppressed = False
        for j in kept:
            ih = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
            iw = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
            inter = max(ih, 0.0) * max(iw, 0.0)
            if inter / (area[i] + area[j] - inter) > NMS_IOU:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return len(kept)


def check_contract(session):
    """The names and shapes the Rust side relies on."""
    want = {
        "image": ("tensor(float)", ["N", 300, 300, 3]),
        "boxes": ("tensor(float)", ["N", 1917, 4]),
        "scores": ("tensor(float)", ["N", 1917, 2]),
    }
    got = {v.name: (v.type, list(v.shape)) for v in session.get_inputs() + session.get_outputs()}
    if got != want or [v.name for v in session.get_inputs()] != ["image"]:
        sys.exit(f"ONNX interface is {got}, expected {want}")
    print("ONNX interface: image [N,300,300,3] -> boxes [N,1917,4], scores [N,1917,2] (N dynamic)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="ONNX file to check")
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    args = parser.parse_args()

    import onnxruntime as ort

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    check_contract(session)
    tf_ref = TfReference()

    failures = []

    def check(what, diff, tol):
        status = "ok" if diff <= tol else "FAIL"
        if diff > tol:
            failures.append(what)
        return f"{diff:.2e} {status}"

    rows = []
    references = []
    singles = []  # ONNX outputs of each image run alone (batch 1)
    batch = []
    worst = {"pre": 0.0, "boxes": 0.0, "scores": 0.0, "boxes_tfin": 0.0, "scores_tfin": 0.0}
    for label, rgb in load_images(args.data_dir):
        tf_pre, tf_boxes, tf_scores, tf_persons = tf_ref.run(rgb)
        np_pre = preprocess(rgb)
        ort_boxes, ort_scores = session.run(["boxes", "scores"], {"image": np_pre[None]})
        # Declared shapes are only annotations; check what actually comes out
        # before numpy broadcasting could blur a mismatch.
        if ort_boxes.shape != (1,) + tf_boxes.shape or ort_scores.shape != (1,) + tf_scores.shape:
            sys.exit(
                f"ONNX output shapes {ort_boxes.shape}, {ort_scores.shape} differ from TF's "
                f"{tf_boxes.shape}, {tf_scores.shape}"
            )
        # Same model on TF's own preprocessed tensor: isolates the converter's
        # error from the preprocessing's, for diagnosis only.
        tfin_boxes, tfin_scores = session.run(["boxes", "scores"], {"image": tf_pre[None]})

        d_pre = float(np.max(np.abs(np_pre - tf_pre)))
        d_boxes = float(np.max(np.abs(ort_boxes[0] - tf_boxes)))
        d_scores = float(np.max(np.abs(ort_scores[0] - tf_scores)))
        worst["pre"] = max(worst["pre"], d_pre)
        worst["boxes"] = max(worst["boxes"], d_boxes)
        worst["scores"] = max(worst["scores"], d_scores)
        worst["boxes_tfin"] = max(
            worst["boxes_tfin"], float(np.max(np.abs(tfin_boxes[0] - tf_boxes)))
        )
        worst["scores_tfin"] = max(
            worst["scores_tfin"], float(np.max(np.abs(tfin_scores[0] - tf_scores)))
        )

        onnx_persons = count_persons(ort_boxes[0], ort_scores[0])
        if onnx_persons != tf_persons:
            failures.append(f"{label}: person count")
        rows.append(
            (
                label,
                rgb.shape,
                check(f"{label}: preprocess", d_pre, TOL_PREPROCESS),
                check(f"{label}: boxes", d_boxes, TOL_BOXES),
                check(f"{label}: scores", d_scores, TOL_SCORES),
                tf_persons,
                onnx_persons,
            )
        )
        references.append((tf_boxes, tf_scores))
        singles.append((ort_boxes[0], ort_scores[0]))
        batch.append(np_pre)

    print(
        f"{'image':<16} {'HxWxC':<12} {'preprocess':<14} {'boxes':<14} {'scores':<14} "
        "persons>0.5 (TF graph / ONNX+NMS)"
    )
    for label, shape, pre, boxes, scores, tf_persons, onnx_persons in rows:
        dims = "x".join(map(str, shape))
        counts = f"{tf_persons} / {onnx_persons}"
        print(f"{label:<16} {dims:<12} {pre:<14} {boxes:<14} {scores:<14} {counts}")

    # Mixed batches through the model: images of different source sizes
    # share a batch once preprocessed, as in the pipeline.
    for size in (2, len(batch)):
        ort_boxes, ort_scores = session.run(["boxes", "scores"], {"image": np.stack(batch[:size])})
        if ort_boxes.shape != (size, 1917, 4) or ort_scores.shape != (size, 1917, 2):
            sys.exit(f"batch {size}: ONNX output shapes {ort_boxes.shape}, {ort_scores.shape}")
        d_boxes = max(float(np.max(np.abs(ort_boxes[i] - references[i][0]))) for i in range(size))
        d_scores = max(float(np.max(np.abs(ort_scores[i] - references[i][1]))) for i in range(size))
        print(
            f"batch N={size}: boxes {check(f'batch {size}: boxes', d_boxes, TOL_BOXES)}, "
            f"scores {check(f'batch {size}: scores', d_scores, TOL_SCORES)}"
        )

    # Batch 8 vs batch 1: the images repeat to fill the batch, so the same image also sits
    # at two positions.
    order = [i % len(batch) for i in range(BATCH)]
    ort_boxes, ort_scores = session.run(["boxes", "scores"], {"image": np.stack([batch[i] for i in order])})
    if ort_boxes.shape != (BATCH, 1917, 4) or ort_scores.shape != (BATCH, 1917, 2):
        sys.exit(f"batch {BATCH}: ONNX output shapes {ort_boxes.shape}, {ort_scores.shape}")
    d_boxes = max(float(np.max(np.abs(ort_boxes[k] - singles[i][0]))) for k, i in enumerate(order))
    d_scores = max(float(np.max(np.abs(ort_scores[k] - singles[i][1]))) for k, i in enumerate(order))
    print(
        f"batch N={BATCH} vs N=1: boxes {check(f'batch {BATCH} vs 1: boxes', d_boxes, TOL_BATCH)}, "
        f"scores {check(f'batch {BATCH} vs 1: scores', d_scores, TOL_BATCH)}"
    )

    print(
        f"max |diff|: preprocess {worst['pre']:.2e}, boxes {worst['boxes']:.2e}, "
        f"scores {worst['scores']:.2e}; ONNX on TF's own preprocessed tensor: "
        f"boxes {worst['boxes_tfin']:.2e}, scores {worst['scores_tfin']:.2e}"
    )
    if failures:
        sys.exit(f"verification FAILED: {', '.join(failures)}")
    print("verification passed")


if __name__ == "__main__":
    main()
