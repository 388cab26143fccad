#!/usr/bin/env python3
"""Models, inputs and reference results for the classifier, segmentation and CenterFace parsers.

Writes into OUT (tests/infer_parsers_2.rs runs this into a temporary directory):

  cases.json            the list of cases, each:
    name, model (path), input (raw little-endian float32 file), input_shape (NCHW),
    stage (the infer stage's TOML, without `model`), kind ("classes" | "segmentation" |
    "detections") and expected: one entry per image of the batch.
  NAME.onnx, NAME.f32   the random-weight models and their inputs.

The models are built with the onnx helper API from random Conv/Gemm weights plus the
Reshape/Slice/Sigmoid/Softmax/ArgMax needed to reach each layout, so every output depends on the
input. ONNX Runtime (Python) runs them; the expected results come from numpy code written
from the layouts' definitions (models/README.md, docs/TOPOLOGY.md), independently of the Rust
parsers. CenterFace uses the real model (models/centerface.onnx) on a real photograph.
"""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
RNG = np.random.default_rng(20240604)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def conv(nodes, inits, x, out, cin, cout, k, stride=1, pad=0, gain=1.0):
    """A Conv with random weights: std gain / sqrt(fan-in) keeps activations of order 1."""
    w = RNG.normal(0, gain / np.sqrt(cin * k * k), (cout, cin, k, k)).astype(np.float32)
    b = RNG.normal(0, 0.1, cout).astype(np.float32)
    inits += [const(out + "_w", w), const(out + "_b", b)]
    nodes.append(helper.make_node(
        "Conv", [x, out + "_w", out + "_b"], [out],
        kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
    ))


def save(path, nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    onnx.save(model, path)


def image_input(c, h, w):
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"image": x})))


def write_input(out, name, x):
    x = np.ascontiguousarray(x, dtype="<f4")
    (out / f"{name}.f32").write_bytes(x.tobytes())
    return {"input": str(out / f"{name}.f32"), "input_shape": list(x.shape)}


def random_images(n, h, w):
    """Smooth random images (0..1): blobs of colour, so convolutions see structure."""
    coarse = RNG.uniform(0, 1, (n, 3, h // 8 + 1, w // 8 + 1)).astype(np.float32)
    return np.stack([
        np.stack([cv2.resize(ch, (w, h), interpolation=cv2.INTER_CUBIC) for ch in img])
        for img in coarse
    ]).astype(np.float32)


def pick_threshold(scores, low, high):
    """The threshold in [low, high] nearest its middle that no score lies within 1e-4 of, so
    that float32 differences between runtimes (~1e-6 here) cannot flip a candidate."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    middle = (low + high) / 2
    for t in sorted(np.linspace(low, high, 401), key=lambda t: abs(t - middle)):
        t = round(float(t), 4)
        if flat.size == 0 or np.min(np.abs(flat - t)) > 1e-4:
            return t
    raise SystemExit(f"no clean threshold in [{low}, {high}]")


# ---------------------------------------------------------------- classifiers

def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def classes_reference(probs, labels, top_k, threshold):
    """Best top_k classes of each image, most probable first, then those at or above the
    threshold (the stage's filter)."""
    expected = []
    for p in probs:
        order = sorted(range(len(p)), key=lambda c: (-p[c], c))[:top_k]
        expected.append([
            {"class_id": c, "label": labels[c], "probability": float(p[c])}
            for c in order if p[c] >= threshold
        ])
    return expected


def classifier_logits(out):
    """[N, 10] logits; the parser applies the softmax."""
    name, classes, top_k = "classifier_logits", 10, 3
    nodes, inits = [], []
    conv(nodes, inits, "image", "c1", 3, 16, 3, pad=1, gain=2.0)
    nodes += [helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("GlobalAveragePool", ["r1"], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"])]
    inits += [const("fc_w", RNG.normal(0, 1.5, (16, classes)).astype(np.float32)),
              const("fc_b", RNG.normal(0, 0.5, classes).astype(np.float32))]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]))
    path = out / f"{name}.onnx"
    save(path, nodes, inits, [image_input(3, 32, 32)],
         [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])])
    x = random_images(3, 32, 32)
    logits = run(path, x)["logits"]
    # Independent numpy: softmax in float64.
    probs = softmax(logits.astype(np.float64), axis=1)
    top = np.sort(probs, axis=1)[:, ::-1][:, :top_k]
    threshold = pick_threshold(top, 0.05, 0.2)
    labels = [f"class-{c}" for c in range(classes)]
    stage = "\n".join([
        'parser = { type = "classifier", output = "logits", softmax = true, top_k = 3 }',
        f"score_threshold = {threshold}",
        f"labels = {json.dumps(labels)}",
    ])
    return {"name": name, "model": str(path), "kind": "classes", "stage": stage,
            "expected": classes_reference(probs, labels, top_k, threshold),
            **write_input(out, name, x)}


def classifier_probabilities(out):
    """[N, 5, 1, 1] probabilities (a Softmax inside the model), the model's only output."""
    name, classes, top_k = "classifier_probabilities", 5, 2
    nodes, inits = [], []
    conv(nodes, inits, "image", "c1", 3, 8, 3, stride=2, pad=1, gain=2.0)
    nodes += [helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("GlobalAveragePool", ["r1"], ["pool"])]
    conv(nodes, inits, "pool", "head", 8, classes, 1, gain=6.0)
    nodes.append(helper.make_node("Softmax", ["head"], ["prob"], axis=1))
    path = out / f"{name}.onnx"
    save(path, nodes, inits, [image_input(3, 48, 64)],
         [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", classes, 1, 1])])
    x = random_images(4, 48, 64)
    probs = run(path, x)["prob"].reshape(4, classes).astype(np.float64)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    top = np.sort(probs, axis=1)[:, ::-1][:, :top_k]
    threshold = pick_threshold(top, 0.2, 0.3)
    labels = ["cat", "dog", "bird", "car", "tree"]
    stage = "\n".join([
        'parser = { type = "classifier", top_k = 2 }',
        f"score_threshold = {threshold}",
        f"labels = {json.dumps(labels)}",
    ])
    return {"name": name, "model": str(path), "kind": "classes", "stage": stage,
            "expected": classes_reference(probs, labels, top_k, threshold),
            **write_input(out, name, x)}


# ---------------------------------------------------------------- segmentation

def segmentation_net(nodes, inits, classes):
    """image [N,3,64,48] -> scores [N, classes, 32, 24]."""
    conv(nodes, inits, "image", "c1", 3, 12, 3, pad=1, gain=2.0)
    nodes += [helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[2, 2],
                               strides=[2, 2])]
    conv(nodes, inits, "p1", "scores", 12, classes, 1, gain=4.0)


def segmentation_reference(scores, threshold=None):
    """argmax per pixel (float64), -1 where the softmax probability of the best class is below
    the threshold; pixels whose top two scores are within 1e-5 (or whose probability is within
    1e-5 of the threshold) are ambiguous and listed, not compared."""
    s = scores.astype(np.float64)
    classes = s.shape[0]
    best = s.argmax(axis=0)
    ordered = np.sort(s, axis=0)
    ambiguous = (ordered[-1] - ordered[-2] < 1e-5) if classes > 1 else np.zeros(best.shape, bool)
    class_map = best.astype(np.int64)
    if threshold is not None:
        p = softmax(s, axis=0).max(axis=0)
        class_map = np.where(p >= threshold, class_map, -1)
        ambiguous |= np.abs(p - threshold) < 1e-5
    return class_map, ambiguous


def segmentation_expected(class_map, ambiguous, net_w, net_h):
    h, w = class_map.shape
    return {
        "width": w, "height": h,
        # frame -> map: identity rows, so just network -> map.
        "transform": [w / net_w, h / net_h, 0.0, 0.0],
        # The stage writes one byte per pixel, 255 for "no class".
        "class_map": [int(c) if c >= 0 else 255 for c in class_map.ravel()],
        "ambiguous": [int(i) for i in np.flatnonzero(ambiguous.ravel())],
    }


def semantic_scores(out):
    """[N, 5, 32, 24] logits, argmax + a softmax probability threshold in the parser."""
    name, classes = "semantic_scores", 5
    nodes, inits = [], []
    segmentation_net(nodes, inits, classes)
    path = out / f"{name}.onnx"
    save(path, nodes, inits, [image_input(3, 64, 48)],
         [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, 32, 24])])
    x = random_images(2, 64, 48)
    scores = run(path, x)["scores"]
    # About a quarter of the pixels below the threshold (pixels within 1e-5 of it are
    # ambiguous and not compared).
    best = softmax(scores.astype(np.float64), axis=1).max(axis=1)
    threshold = round(float(np.quantile(best, 0.25)), 3)
    expected = []
    for s in scores:
        class_map, ambiguous = segmentation_reference(s, threshold)
        expected.append(segmentation_expected(class_map, ambiguous, 48, 64))
    none = sum(e["class_map"].count(255) for e in expected)
    assert 0 < none < scores.shape[0] * 32 * 24 // 2, f"{none} pixels below the threshold"
    stage = ('parser = { type = "semantic-segmentation", output = "scores", softmax = true, '
             f'threshold = {threshold} }}\nlabels = ["a", "b", "c", "d", "e"]')
    return {"name": name, "model": str(path), "kind": "segmentation", "stage": stage,
            "expected": expected, **write_input(out, name, x)}


def semantic_class_ids(out):
    """[N, 32, 24] int64 class ids from an ArgMax inside the model (which also outputs the
    scores, for the reference's tie check)."""
    name, classes = "semantic_class_ids", 4
    nodes, inits = [], []
    segmentation_net(nodes, inits, classes)
    nodes.append(helper.make_node("ArgMax", ["scores"], ["classes"], axis=1, keepdims=0))
    path = out / f"{name}.onnx"
    save(path, nodes, inits, [image_input(3, 64, 48)], [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, 32, 24]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["N", 32, 24]),
    ])
    x = random_images(3, 64, 48)
    outputs = run(path, x)
    expected = []
    for s, ids in zip(outputs["scores"], outputs["classes"]):
        class_map, ambiguous = segmentation_reference(s)
        mismatch = (class_map != ids) & ~ambiguous
        assert not mismatch.any(), "onnxruntime's ArgMax disagrees with numpy's"
        expected.append(segmentation_expected(class_map, ambiguous, 48, 64))
    stage = 'parser = { type = "semantic-segmentation", output = "classes" }'
    return {"name": name, "model": str(path), "kind": "segmentation", "stage": stage,
            "expected": expected, **write_input(out, name, x)}


# ---------------------------------------------------------------- instance segmentation

def bilinear(plane, x, y):
    """plane sampled at continuous pixel coordinates (centres at +0.5), edges clamped."""
    h, w = plane.shape[-2:]
    x = min(max(x - 0.5, 0.0), w - 1.0)
    y = min(max(y - 0.5, 0.0), h - 1.0)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    return ((plane[..., y0, x0] * (1 - fx) + plane[..., y0, x1] * fx) * (1 - fy)
            + (plane[..., y1, x0] * (1 - fx) + plane[..., y1, x1] * fx) * fy)


def instance_reference(dets, protos, net_w, net_h, threshold):
    """YOLOv8-seg: best class per box; box clipped to the input; mask = sigmoid(coeffs ·
    protos), sampled at the centres of a grid of round(box size in prototype pixels) cells."""
    rows, boxes = dets.shape
    masks, ph, pw = protos.shape
    classes = rows - 4 - masks
    d = dets.astype(np.float64)
    linear = np.tensordot(d[4 + classes:].T, protos.astype(np.float64), axes=1)  # [boxes, ph, pw]
    sx, sy = pw / net_w, ph / net_h
    found = []
    for b in range(boxes):
        scores = d[4:4 + classes, b]
        c = int(np.argmax(scores))
        if scores[c] < threshold:
            continue
        cx, cy, w, h = d[:4, b]
        x0, x1 = np.clip([cx - w / 2, cx + w / 2], 0, net_w)
        y0, y1 = np.clip([cy - h / 2, cy + h / 2], 0, net_h)
        if x1 <= x0 or y1 <= y0:
            continue
        bw, bh = (x1 - x0) * sx, (y1 - y0) * sy
        mw, mh = min(max(int(np.floor(bw + 0.5)), 1), pw), min(max(int(np.floor(bh + 0.5)), 1), ph)
        values = [
            1 / (1 + np.exp(-bilinear(linear[b], x0 * sx + (i + 0.5) * bw / mw,
                                      y0 * sy + (j + 0.5) * bh / mh)))
            for j in range(mh) for i in range(mw)
        ]
        found.append({"class_id": c, "confidence": float(scores[c]),
                      "bbox": [float(x0), float(y0), float(x1), float(y1)], "landmarks": None,
                      "mask": {"width": mw, "height": mh, "threshold": 0.5,
                               "data": [float(v) for v in values]}})
    found.sort(key=lambda f: -f["confidence"])
    return found


def instance_segmentation(out):
    """detections [N, 4+3+4, 256] (boxes from a 16x16 grid), prototypes [N, 4, 16, 16]."""
    name, classes, masks, size = "instance_segmentation", 3, 4, 64
    rows = 4 + classes + masks
    nodes, inits = [], []
    conv(nodes, inits, "image", "head", 3, rows, 4, stride=4, gain=3.0)  # [N, rows, 16, 16]
    inits += [const("flat_shape", np.array([0, rows, -1], np.int64))]
    nodes.append(helper.make_node("Reshape", ["head", "flat_shape"], ["raw"]))

    def slice_rows(src, dst, start, end):
        inits.extend([const(dst + "_s", np.array([start], np.int64)),
                      const(dst + "_e", np.array([end], np.int64)),
                      const(dst + "_a", np.array([1], np.int64))])
        nodes.append(helper.make_node("Slice", [src, dst + "_s", dst + "_e", dst + "_a"], [dst]))

    slice_rows("raw", "raw_box", 0, 4)
    slice_rows("raw", "raw_cls", 4, 4 + classes)
    slice_rows("raw", "coeffs", 4 + classes, rows)
    # Boxes: centres anywhere in the 64x64 input, sizes 4..36 px, from sigmoids.
    inits += [const("box_scale", np.array([[[size], [size], [32.0], [32.0]]], np.float32)),
              const("box_bias", np.array([[[0.0], [0.0], [4.0], [4.0]]], np.float32)),
              const("cls_temper", np.array(0.4, np.float32))]
    nodes += [helper.make_node("Sigmoid", ["raw_box"], ["sig_box"]),
              helper.make_node("Mul", ["sig_box", "box_scale"], ["scaled_box"]),
              helper.make_node("Add", ["scaled_box", "box_bias"], ["box"]),
              # Tempered so that scores spread over 0..1 instead of piling up near 1.
              helper.make_node("Mul", ["raw_cls", "cls_temper"], ["tempered_cls"]),
              helper.make_node("Sigmoid", ["tempered_cls"], ["cls"]),
              helper.make_node("Concat", ["box", "cls", "coeffs"], ["output0"], axis=1)]
    conv(nodes, inits, "image", "output1", 3, masks, 4, stride=4, gain=3.0)
    path = out / f"{name}.onnx"
    save(path, nodes, inits, [image_input(3, size, size)], [
        helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", rows, 256]),
        helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["N", masks, 16, 16]),
    ])
    x = random_images(2, size, size)
    outputs = run(path, x)
    best = outputs["output0"][:, 4:4 + classes, :].max(axis=1)
    # About 15 candidates per image: near the 30th best score of the batch.
    target = float(np.sort(best.ravel())[-30])
    threshold = pick_threshold(best, target - 0.1, target + 0.1)
    expected = [instance_reference(d, p, size, size, threshold)
                for d, p in zip(outputs["output0"], outputs["output1"])]
    counts = [len(e) for e in expected]
    assert all(5 <= c <= 50 for c in counts), f"candidates per image {counts}"
    stage = "\n".join([
        'parser = { type = "instance-segmentation" }',
        f"score_threshold = {threshold}",
        'nms = "none"',
        "top_k = 1000",
        'labels = ["a", "b", "c"]',
    ])
    return {"name": name, "model": str(path), "kind": "detections", "stage": stage,
            "expected": expected, **write_input(out, name, x)}


# ---------------------------------------------------------------- CenterFace

def centerface_decode(heatmap, scale, offset, landmarks, threshold, net_w, net_h, stride=4):
    """Every heatmap cell >= threshold is a face: centre (cell + offset + 0.5) * stride, size
    exp(scale) * stride (channel 0 height, 1 width), landmarks (y, x) pairs in box units from
    the top-left corner; boxes then clipped to the input as the stage clips them."""
    ys, xs = np.nonzero(heatmap[0] >= threshold)
    faces = []
    for y, x in zip(ys, xs):
        bh, bw = np.exp(scale[0, y, x].astype(np.float64)) * stride, np.exp(
            scale[1, y, x].astype(np.float64)) * stride
        cy = (y + offset[0, y, x] + 0.5) * stride
        cx = (x + offset[1, y, x] + 0.5) * stride
        x0, y0 = cx - bw / 2, cy - bh / 2
        lms = [[float(x0 + landmarks[2 * j + 1, y, x] * bw), float(y0 + landmarks[2 * j, y, x] * bh)]
               for j in range(5)]
        box = [float(np.clip(x0, 0, net_w)), float(np.clip(y0, 0, net_h)),
               float(np.clip(x0 + bw, 0, net_w)), float(np.clip(y0 + bh, 0, net_h))]
        faces.append({"class_id": 0, "confidence": float(heatmap[0, y, x]), "bbox": box,
                      "landmarks": lms, "mask": None})
    faces.sort(key=lambda f: -f["confidence"])
    return faces


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(found, iou_threshold):
    """Highest confidence first; a box overlapping a kept one by more than the threshold goes."""
    kept = []
    for f in found:
        if all(iou(f["bbox"], k["bbox"]) <= iou_threshold for k in kept):
            kept.append(f)
    return kept


def centerface(out, model, image_path):
    bgr = cv2.imread(str(image_path))
    if bgr is None:
        raise SystemExit(f"cannot read {image_path}: apt-get install opencv-doc")
    rgb = bgr[:, :, ::-1]
    full = cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_LINEAR)
    mosaic = np.concatenate(
        [np.concatenate([small, small[:, ::-1]], 1), np.concatenate([small[:, ::-1], small], 1)], 0
    )
    # The model takes RGB 0..255 as is.
    x = np.stack([full, mosaic]).astype(np.float32).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    heatmap, scale, offset, landmarks = sess.run(["537", "538", "539", "540"], {"input.1": x})
    threshold = pick_threshold(heatmap, 0.5, 0.6)
    raw = [centerface_decode(*maps, threshold, 640, 480)
           for maps in zip(heatmap, scale, offset, landmarks)]
    faces = [greedy_nms(r, 0.3) for r in raw]
    counts = [len(f) for f in faces]
    assert counts == [1, 4], f"faces found {counts}, expected 1 on messi5 and 4 on the mosaic"
    cases = []
    for name, nms, expected in (("centerface_candidates", 'nms = "none"', raw),
                                ("centerface_faces", "nms_iou = 0.3", faces)):
        stage = "\n".join([
            'parser = { type = "centerface" }',
            f"score_threshold = {threshold}",
            nms,
            "top_k = 1000",
            'labels = ["face"]',
        ])
        cases.append({"name": name, "model": str(model), "kind": "detections", "stage": stage,
                      "expected": expected, **write_input(out, "centerface", x)})
    return cases


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--centerface", type=Path, required=True, help="models/centerface.onnx")
    p.add_argument("--image", type=Path, required=True, help="a photograph with one face")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    cases = [classifier_logits(out), classifier_probabilities(out), semantic_scores(out),
             semantic_class_ids(out), instance_segmentation(out),
             *centerface(out, args.centerface.resolve(), args.image)]
    (out / "cases.json").write_text(json.dumps(cases))
    for c in cases:
        e = c["expected"]
        summary = {"classes": lambda: [len(x) for x in e],
                   "segmentation": lambda: [f"{x['width']}x{x['height']}" for x in e],
                   "detections": lambda: [len(x) for x in e]}[c["kind"]]()
        print(f"{c['name']}: input {c['input_shape']}, expected per image {summary}")


if __name__ == "__main__":
    main()
