"""Reference preprocessing for models/ssdlite_person.onnx, in plain numpy.

This is what the original frozen graph does in front of the ONNX cut point
(`ToFloat` -> TF1 `ResizeBilinear` to 300x300 -> `x * 2/255 - 1`), written out
so that the pipeline's own scaler (Rust) has an executable spec to be tested
against.  verify_ssdlite.py checks it against TensorFlow's own tensor.

Resize semantics are TF1's legacy ResizeBilinear with align_corners=False and
half_pixel_centers=False, which is *not* what OpenCV, PIL or ONNX Resize do by
default:

* destination pixel (y, x) samples the source at (y * in_h/300, x * in_w/300),
  with no half-pixel offset, so the image is effectively shifted by up to
  half a source pixel towards the top-left compared with "area-correct" resizing;
* the sample is bilinear between floor(src) and floor(src)+1, the latter clamped
  to the last row/column;
* it runs on float values (the uint8 image is cast first), so nothing is
  rounded back to integers before normalisation.

The arithmetic is kept in float32 and in the same order as TF's CPU kernel so
that the result matches to ~1e-6 rather than merely to the tolerance.
"""

import numpy as np

SIZE = 300
# float32(2/255) as stored in the graph's `Preprocessor/mul/x` constant.
SCALE = np.float32(2.0 / 255.0)


def _axis_weights(in_size, out_size):
    """Source indices and interpolation weights along one axis."""
    # TF computes the scale as a float32 division and the source coordinate as
    # a float32 product; doing it in float64 could move a sample across a
    # floor() boundary for some sizes.
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower_f = np.floor(src)
    lower = lower_f.astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    lerp = (src - lower_f).astype(np.float32)
    return lower, upper, lerp


def preprocess(rgb_uint8_hwc):
    """RGB uint8 image [H, W, 3] -> model input float32 [300, 300, 3] in [-1, 1]."""
    img = np.asarray(rgb_uint8_hwc)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 [H,W,3], got {img.dtype} {img.shape}")
    img = img.astype(np.float32)
    in_h, in_w = img.shape[:2]

    y0, y1, ly = _axis_weights(in_h, SIZE)
    x0, x1, lx = _axis_weights(in_w, SIZE)
    ly = ly[:, None, None]
    lx = lx[None, :, None]

    top_left = img[y0][:, x0]
    top_right = img[y0][:, x1]
    bottom_left = img[y1][:, x0]
    bottom_right = img[y1][:, x1]
    top = top_left + (top_right - top_left) * lx
    bottom = bottom_left + (bottom_right - bottom_left) * lx
    resized = top + (bottom - top) * ly

    return (SCALE * resized - np.float32(1.0)).astype(np.float32)
