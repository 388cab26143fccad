#!/usr/bin/env python3
"""A small, real image classifier for the secondary-inference tests: the nearest colour.

    make_colour_classifier.py OUT.onnx --width W --height H --labels a;b;c
        [--colours r:g:b;...] [--bgr] [--output NAME]

The model takes [N, 3, H, W] float input already scaled to 0..1 (nvinfer's
net-scale-factor=1/255), averages each channel over the image (GlobalAveragePool) and scores
every class by how close that mean colour is to the class's prototype colour:

    logit_c = T * (2 x.p_c - |p_c|^2) = T * (|x|^2 - |x - p_c|^2)

so the softmax over classes (output NAME, [N, classes], default `predictions`) ranks classes
by distance. Prototypes are RGB in 0..1: `--colours` gives one per label; otherwise the labels
`dark`, `light`, `red`, `green`, `blue` get their colours and any other label a level of a grey
ramp. `--bgr` makes a model whose input channels are B, G, R (model-color-format=1).

No registry ships a person-attribute classifier we may use; this one is deterministic, checkable
by hand, and has the shape and output of the classifiers DeepStream's secondary gies run.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAMED = {
    "dark": (0.12, 0.12, 0.12),
    "light": (0.85, 0.85, 0.85),
    "red": (0.70, 0.15, 0.15),
    "green": (0.15, 0.55, 0.20),
    "blue": (0.15, 0.25, 0.70),
}
TEMPERATURE = 30.0


def prototypes(labels, colours):
    if colours:
        protos = [tuple(float(v) for v in c.split(":")) for c in colours.split(";")]
        if len(protos) != len(labels) or any(len(p) != 3 for p in protos):
            raise SystemExit("--colours needs one r:g:b per label")
        return np.array(protos, np.float32)
    ramp = iter(np.linspace(0.2, 0.8, len(labels)))
    return np.array(
        [NAMED.get(name, (next(ramp),) * 3) for name in labels], np.float32
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--labels", required=True, help="labels separated by ;")
    ap.add_argument("--colours", default="", help="r:g:b per label, separated by ;")
    ap.add_argument("--bgr", action="store_true")
    ap.add_argument("--output", default="predictions")
    args = ap.parse_args()

    labels = [l.strip() for l in args.labels.split(";") if l.strip()]
    protos = prototypes(labels, args.colours)
    if args.bgr:
        protos = protos[:, ::-1]
    weights = (2.0 * TEMPERATURE * protos.T).astype(np.float32)  # [3, C]
    bias = (-TEMPERATURE * (protos**2).sum(axis=1)).astype(np.float32)  # [C]

    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["mean"]),
        helper.make_node("Flatten", ["mean"], ["colour"], axis=1),
        helper.make_node("Gemm", ["colour", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [args.output], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "colour_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, args.height, args.width])],
        [helper.make_tensor_value_info(args.output, TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    onnx.save(model, args.out)


if __name__ == "__main__":
    main()
