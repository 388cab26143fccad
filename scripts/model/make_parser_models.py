#!/usr/bin/env python3
"""Random-weight ONNX detectors of each output layout the infer stage's parsers read, with
reference results from an independent numpy implementation of each parser.

    make_parser_models.py OUT_DIR

For every case it writes to OUT_DIR:
  NAME.onnx          a small model built with onnx.helper: MatMul with random weights over the
                     flattened input, then Reshape/Transpose/Sigmoid/... to the exact output
                     layout, so every output depends on the input;
  NAME.input.f32     a random input batch, raw little-endian float32, NCHW;
  NAME.json          the input shape, the infer stage settings (TOML text) the case runs with,
                     and per image the expected objects after thresholding and NMS.
and OUT_DIR/manifest.json lists the cases.

The expected objects come from ONNX Runtime (Python) running the model and the numpy code
below, written from the formats' descriptions (ultralytics, DETR, TensorFlow Object Detection
API), not from the Rust parsers. Seeds are searched deterministically until each image has a
realistic number of candidates and no score or overlap sits so close to a threshold that a
float32 rounding difference could change the outcome.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SCORE_THRESHOLD = 0.4
NMS_IOU = 0.45
TOP_K = 100
# Nothing the comparison depends on may be closer than this to a threshold.
MARGIN = 1e-3


# ---------------------------------------------------------------------------------------------
# Graph building


class Graph:
    """Collects nodes and initializers; names are generated."""

    def __init__(self, rng):
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array, prefix="c"):
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def op(self, op_type, inputs, output=None, **attrs):
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def dense(self, x, features, width, scale, bias):
        """x [N, features] @ random [features, width] * scale + bias."""
        w = (self.rng.standard_normal((features, width)) * scale).astype(np.float32)
        b = np.asarray(bias, dtype=np.float32)
        return self.op("Add", [self.op("MatMul", [x, self.const(w, "w")]), self.const(b, "b")])

    def reshape(self, x, shape, output=None):
        shape = self.const(np.array(shape, dtype=np.int64), "shape")
        return self.op("Reshape", [x, shape], output)

    def model(self, input_shape, outputs):
        graph = helper.make_graph(
            self.nodes,
            "parser_test",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def flat(g, channels, height, width):
    """The input image flattened to [N, features], scaled to about unit variance."""
    x = g.reshape("images", [-1, channels * height * width])
    return x, channels * height * width


def weight_scale(features):
    # Inputs are uniform 0..1 (mean square 1/3): this makes MatMul outputs about N(0, 1).
    return 1.0 / np.sqrt(features / 3.0)


# ---------------------------------------------------------------------------------------------
# Reference decoders (numpy), each returning candidates (class, score, x0, y0, x1, y1) in
# network-input pixels, before thresholding.


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def cxcywh_to_corners(b):
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def ref_yolov5(outs, i, net):
    rows = outs["output0"][i]  # [boxes, 5 + C]
    scores = rows[:, 4:5] * rows[:, 5:]
    best = scores.argmax(axis=1)
    score = scores[np.arange(len(rows)), best]
    corners = cxcywh_to_corners(rows[:, :4])
    return [(int(c), float(s), *map(float, b)) for c, s, b in zip(best, score, corners)]


def ref_yolov8(outs, i, net, channels_first):
    out = outs["output0"][i]
    rows = out.T if channels_first else out  # [boxes, 4 + C]
    scores = rows[:, 4:]
    best = scores.argmax(axis=1)
    score = scores[np.arange(len(rows)), best]
    corners = cxcywh_to_corners(rows[:, :4])
    return [(int(c), float(s), *map(float, b)) for c, s, b in zip(best, score, corners)]


def ref_centernet(outs, i, net):
    w, h = net
    rows = outs["output0"][i]  # [K, 6], normalised corners
    scale = np.array([w, h, w, h], dtype=np.float32)
    return [(int(r[5]), float(r[4]), *map(float, r[:4] * scale)) for r in rows]


def ref_detr(outs, i, net):
    w, h = net
    probs = softmax(outs["logits"][i].astype(np.float64))[:, :-1]
    best = probs.argmax(axis=1)
    score = probs[np.arange(len(probs)), best]
    corners = cxcywh_to_corners(outs["pred_boxes"][i].astype(np.float64)) * [w, h, w, h]
    return [(int(c), float(s), *map(float, b)) for c, s, b in zip(best, score, corners)]


def ssd_anchors(feature_maps, aspect_ratios, min_scale, max_scale):
    """TensorFlow-style SSD anchors (ycenter, xcenter, height, width) in 0..1."""
    layers = len(feature_maps)
    scales = [
        min_scale + (max_scale - min_scale) * l / (layers - 1) if layers > 1 else min_scale
        for l in range(layers)
    ] + [1.0]
    anchors = []
    for l, (fh, fw) in enumerate(feature_maps):
        shapes = [(scales[l] / np.sqrt(r), scales[l] * np.sqrt(r)) for r in aspect_ratios]
        side = np.sqrt(scales[l] * scales[l + 1])
        shapes.append((side, side))
        for y in range(fh):
            for x in range(fw):
                for ah, aw in shapes:
                    anchors.append(((y + 0.5) / fh, (x + 0.5) / fw, ah, aw))
    return np.array(anchors, dtype=np.float64)


def ssd_decode(encodings, anchors, factors=(10.0, 10.0, 5.0, 5.0)):
    t = encodings.astype(np.float64)
    ya, xa, ha, wa = anchors.T
    yc = t[:, 0] / factors[0] * ha + ya
    xc = t[:, 1] / factors[1] * wa + xa
    h = np.exp(t[:, 2] / factors[2]) * ha
    w = np.exp(t[:, 3] / factors[3]) * wa
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=-1)


def ref_ssd(outs, i, net, anchors, activation, background=0):
    w, h = net
    corners = ssd_decode(outs["boxes"][i], anchors) * [w, h, w, h]
    logits = outs["scores"][i].astype(np.float64)
    probs = sigmoid(logits) if activation == "sigmoid" else softmax(logits)
    found = []
    for a in range(len(probs)):
        for c in range(probs.shape[1]):
            if c != background:
                found.append((c, float(probs[a, c]), *map(float, corners[a])))
    return found


# ---------------------------------------------------------------------------------------------
# The stage's post-processing, independently: clip to the frame (= network input here, the
# transform is the identity), threshold, drop empty boxes, greedy NMS by descending score
# (per class, across classes, or none), top-k.


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def postprocess(candidates, net, nms):
    """The kept objects, and whether every decision was clear of its threshold."""
    w, h = net
    clear = True
    kept = []
    for c, s, x0, y0, x1, y1 in candidates:
        if not np.isfinite([s, x0, y0, x1, y1]).all():
            continue
        if abs(s - SCORE_THRESHOLD) < MARGIN:
            clear = False
        if s < SCORE_THRESHOLD:
            continue
        box = (min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h))
        bw, bh = box[2] - box[0], box[3] - box[1]
        if abs(bw) < MARGIN or abs(bh) < MARGIN:
            clear = False  # nearly empty after clipping: float32 rounding could decide
        if bw <= 0 or bh <= 0:
            continue
        kept.append((c, s, box))
    kept.sort(key=lambda d: -d[1])
    scores = [d[1] for d in kept]
    if any(abs(a - b) < 1e-5 for a, b in zip(scores, scores[1:])):
        clear = False  # equal scores: which one NMS keeps would depend on rounding
    result = []
    for d in kept:
        suppressed = False
        if nms != "none":
            for k in result:
                if nms == "class" and k[0] != d[0]:
                    continue
                o = iou(k[2], d[2])
                if abs(o - NMS_IOU) < MARGIN:
                    clear = False
                if o > NMS_IOU:
                    suppressed = True
                    break
        if not suppressed:
            result.append(d)
    return result[:TOP_K], len(kept), clear


# ---------------------------------------------------------------------------------------------
# Cases


def yolov5_case(g, n, net):
    w, h = net
    boxes, classes = 60, 3
    x, features = flat(g, 3, h, w)
    row = 5 + classes
    bias = np.tile([0, 0, -1, -1, -1.2] + [0.5] * classes, boxes)
    y = g.dense(x, features, boxes * row, weight_scale(features), bias)
    y = g.op("Sigmoid", [g.reshape(y, [-1, boxes, row])])
    scale = np.array([w, h, w / 2, h / 2, 1] + [1] * classes, dtype=np.float32)
    g.op("Mul", [y, g.const(scale)], "output0")
    return [("output0", ["N", boxes, row])]


def yolov8_case(channels_first):
    def build(g, n, net):
        w, h = net
        boxes, classes = 80, 3
        x, features = flat(g, 3, h, w)
        row = 4 + classes
        bias = np.tile([0, 0, -1, -1] + [-1.3] * classes, boxes)
        y = g.dense(x, features, boxes * row, weight_scale(features), bias)
        y = g.op("Sigmoid", [g.reshape(y, [-1, boxes, row])])
        scale = np.array([w, h, w / 2, h / 2] + [1] * classes, dtype=np.float32)
        y = g.op("Mul", [y, g.const(scale)], None if channels_first else "output0")
        if channels_first:
            g.op("Transpose", [y], "output0", perm=[0, 2, 1])
            return [("output0", ["N", row, boxes])]
        return [("output0", ["N", boxes, row])]

    return build


def centernet_case(g, n, net):
    w, h = net
    k, classes = 40, 4
    x, features = flat(g, 3, h, w)
    s = weight_scale(features)
    # Corners x0, y0 in 0..0.7 and sizes in 0..0.5, then x1 = x0 + width, y1 = y0 + height.
    geometry = g.op("Sigmoid", [g.reshape(g.dense(x, features, k * 4, s, np.zeros(k * 4)), [-1, k, 4])])
    geometry = g.op("Mul", [geometry, g.const(np.array([0.7, 0.7, 0.5, 0.5], dtype=np.float32))])
    to_corners = np.array(
        [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32
    )
    corners = g.op("MatMul", [geometry, g.const(to_corners)])
    score = g.op("Sigmoid", [g.reshape(g.dense(x, features, k, s, np.full(k, -0.8)), [-1, k, 1])])
    logits = g.reshape(g.dense(x, features, k * classes, s, np.zeros(k * classes)), [-1, k, classes])
    cls = g.op("Cast", [g.op("ArgMax", [logits], axis=2, keepdims=1)], to=TensorProto.FLOAT)
    g.op("Concat", [corners, score, cls], "output0", axis=2)
    return [("output0", ["N", k, 6])]


def detr_case(g, n, net):
    w, h = net
    queries, classes = 30, 4
    x, features = flat(g, 3, h, w)
    s = weight_scale(features) * 2.5
    bias = np.tile([0.0] * classes + [1.5], queries)
    logits = g.dense(x, features, queries * (classes + 1), s, bias)
    g.reshape(logits, [-1, queries, classes + 1], "logits")
    boxes = g.dense(x, features, queries * 4, weight_scale(features), np.tile([0, 0, -1, -1], queries))
    g.op("Sigmoid", [g.reshape(boxes, [-1, queries, 4])], "pred_boxes")
    return [("logits", ["N", queries, classes + 1]), ("pred_boxes", ["N", queries, 4])]


SSD_GRID = {
    "feature_maps": [[4, 4], [2, 2], [1, 1]],
    "aspect_ratios": [1.0, 2.0, 0.5],
    "min_scale": 0.2,
    "max_scale": 0.9,
}


def ssd_case(anchor_output):
    def build(g, n, net):
        w, h = net
        classes = 3
        anchors = ssd_anchors(**SSD_GRID)
        count = len(anchors)
        x, features = flat(g, 3, h, w)
        s = weight_scale(features)
        enc = g.dense(x, features, count * 4, s, np.zeros(count * 4))
        g.reshape(enc, [-1, count, 4], "boxes")
        bias = np.tile([1.0] + [-1.5] * (classes - 1), count)
        scores = g.dense(x, features, count * classes, s * 1.5, bias)
        g.reshape(scores, [-1, count, classes], "scores")
        outputs = [("boxes", [n, count, 4]), ("scores", [n, count, classes])]
        if anchor_output:
            g.op("Identity", [g.const(anchors.astype(np.float32), "priors")], "anchors")
            outputs.append(("anchors", [count, 4]))
        return outputs

    return build


CASES = [
    # name, builder, reference, stage settings (TOML), batch size, fixed model batch
    (
        "yolov5",
        yolov5_case,
        ref_yolov5,
        'parser = { type = "yolov5", class_count = 3 }\nnms = "class"',
        3,
        None,
    ),
    (
        "yolov8_84xN",
        yolov8_case(True),
        lambda o, i, net: ref_yolov8(o, i, net, True),
        'parser = { type = "yolov8" }\nnms = "class"',
        2,
        None,
    ),
    (
        "yolov8_Nx84",
        yolov8_case(False),
        lambda o, i, net: ref_yolov8(o, i, net, False),
        'parser = { type = "yolov8", layout = "channels-last" }\nnms = "class"',
        2,
        None,
    ),
    (
        "centernet",
        centernet_case,
        ref_centernet,
        'parser = { type = "centernet", normalized = true }\nnms = "none"',
        2,
        None,
    ),
    (
        "detr",
        detr_case,
        ref_detr,
        'parser = { type = "detr" }\nnms = "none"',
        2,
        None,
    ),
    (
        "ssd_anchor_output",
        ssd_case(True),
        lambda o, i, net: ref_ssd(o, i, net, o["anchors"].astype(np.float64), "sigmoid"),
        'parser = { type = "ssd", background_class = 0, score_activation = "sigmoid", '
        'anchors = { output = "anchors" } }\nnms = "class"',
        # A model fixed to batch 1 fed 2 images: the stage runs it twice.
        2,
        1,
    ),
    (
        "ssd_generated_anchors",
        ssd_case(False),
        lambda o, i, net: ref_ssd(o, i, net, ssd_anchors(**SSD_GRID), "softmax"),
        'parser = { type = "ssd", background_class = 0, score_activation = "softmax", '
        "anchors = { feature_maps = [[4, 4], [2, 2], [1, 1]], aspect_ratios = [1.0, 2.0, 0.5], "
        'min_scale = 0.2, max_scale = 0.9 } }\nnms = "agnostic"',
        2,
        None,
    ),
]

NET = (64, 48)  # width, height: not square, so swapped axes would show


def make_case(out_dir, name, builder, reference, stage, batch, fixed_batch):
    w, h = NET
    for seed in range(200):
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        g = Graph(rng)
        n = fixed_batch or "N"
        outputs = builder(g, n, NET)
        outputs = [(o, [fixed_batch if d == "N" and fixed_batch else d for d in s]) for o, s in outputs]
        model = g.model([n, 3, h, w], outputs)
        images = rng.random((batch, 3, h, w), dtype=np.float32)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        if fixed_batch:
            runs = [session.run(None, {"images": images[i : i + 1]}) for i in range(batch)]
            outs = {}
            for k, nm in enumerate(names):
                parts = [r[k] for r in runs]
                batched = parts[0].shape[0] == fixed_batch and parts[0].ndim == 3
                outs[nm] = np.concatenate(parts) if batched else parts[0]
        else:
            outs = dict(zip(names, session.run(None, {"images": images})))
        nms = stage.split('nms = "')[1].split('"')[0]
        expected, fine = [], True
        for i in range(batch):
            kept, candidates, clear = postprocess(reference(outs, i, NET), NET, nms)
            fine = fine and clear and 5 <= candidates <= 60 and len(kept) >= 3
            expected.append(
                [{"class_id": c, "confidence": s, "box": list(b)} for c, s, b in kept]
            )
        if fine:
            break
    else:
        raise SystemExit(f"{name}: no seed gives a usable model; adjust the biases")
    onnx.save(model, out_dir / f"{name}.onnx")
    (out_dir / f"{name}.input.f32").write_bytes(images.astype("<f4").tobytes())
    settings = (
        f"score_threshold = {SCORE_THRESHOLD}\nnms_iou = {NMS_IOU}\ntop_k = {TOP_K}\n{stage}\n"
    )
    (out_dir / f"{name}.json").write_text(
        json.dumps(
            {
                "model": f"{name}.onnx",
                "input": f"{name}.input.f32",
                "input_shape": list(images.shape),
                "stage": settings,
                "expected": expected,
            },
            indent=1,
        )
    )
    counts = [len(e) for e in expected]
    print(f"{name}: seed {seed}, objects per image {counts}", file=sys.stderr)
    return name


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [make_case(out_dir, *case) for case in CASES]
    (out_dir / "manifest.json").write_text(json.dumps({"cases": names}))


if __name__ == "__main__":
    main()
