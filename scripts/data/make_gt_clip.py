#!/usr/bin/env python3
"""Make data/gt/people.mp4 and its ground truth, data/gt/people.truth.json.

Why this exists: detector and tracker accuracy tests need a clip whose every
person box is known exactly.  Hand-labelling a real video is not an option
here, so we build one: real photographs of people (shipped in Debian/PyPI
packages) are cut out with OpenCV's GrabCut and pasted onto a real street
photograph, moving along scripted paths.  Because we place every pixel, the
truth is exact: each box is the tight box of the pasted mask, and `visible`
is the share of that mask nobody else hides and the frame does not clip.

Everything is deterministic: no randomness except OpenCV's internal RNG in
GrabCut, which is seeded; the inputs are checked against their SHA-256 (the
hand-placed seeds below only fit those exact pixels); x264 runs on one thread
(with more its bitstream varies between runs); and the muxer's wall-clock
timestamps are zeroed.  Same package versions in, same bytes out.

Usage: make_gt_clip.py --sources DIR --out DIR [--preview DIR]
  DIR for --sources holds the photos named in SOURCES/BACKGROUND (setup-data
  copies them there); --preview writes cutout and frame PNGs for eyeballing.
"""

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys

import cv2
import numpy as np

W, H, FPS, NUM_FRAMES = 1280, 720, 30, 300

# ---------------------------------------------------------------------------
# Inputs.  Seeds are in source-image pixels and were placed by looking at
# gridded renders of each photo; they only need to be roughly right because
# GrabCut refines the boundary.  "bg" shapes are forced background: things
# inside the person's rectangle that are not the person (a ball, a watermark,
# a neighbour, the gap between legs).  "fg" polylines (drawn 5 px wide) are
# forced foreground along the body, so thin limbs and hair that look like the
# background survive.
# ---------------------------------------------------------------------------
SOURCES = [
    {
        "key": "bus_left",
        "file": "bus.jpg",
        "sha256": "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63",
        "source": "pypi:ultralytics==8.4.190:ultralytics/assets/bus.jpg (left man, beige coat)",
        "rect": (46, 393, 250, 908),
        "bg": [
            # the second man, who stands just right of this one
            [(222, 400), (360, 400), (360, 880), (250, 880), (240, 720), (215, 700), (215, 520)],
            # dark bus window either side of the head (same tone as his hair)
            [(48, 393), (97, 393), (97, 445), (75, 470), (55, 480), (48, 480)],
            [(160, 393), (220, 393), (220, 470), (165, 470), (160, 440)],
            # the bollard seen between his legs
            [(108, 740), (138, 730), (148, 765), (158, 810), (168, 848), (100, 848), (95, 810), (102, 770)],
            # the hand of a third, cropped-off person at the photo's left edge
            [(46, 745), (70, 745), (72, 790), (60, 835), (46, 835)],
        ],
        "fg": [
            [(133, 430), (133, 455)],
            [(125, 500), (125, 680)],
            [(92, 730), (75, 847), (75, 880)],
            [(158, 730), (183, 847), (200, 880)],
        ],
        "mirror": False,
    },
    {
        "key": "messi",
        "file": "messi5.jpg",
        "sha256": "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9",
        "source": "opencv-doc:examples/data/messi5.jpg",
        "rect": (65, 58, 460, 337),
        "bg": [
            ("circle", (363, 312), 29),  # the ball is not the person
            [(438, 296), (548, 296), (548, 342), (438, 342)],  # agency watermark
        ],
        "fg": [
            [(235, 75), (242, 110)],
            [(240, 130), (248, 230)],
            [(92, 97), (155, 118)],
            [(305, 140), (358, 162)],
            [(235, 250), (290, 250)],
            [(232, 265), (235, 285), (255, 305), (283, 323)],
            [(300, 255), (360, 245), (415, 265), (440, 278)],
        ],
        "mirror": False,
    },
    {
        # vtest.avi is a real surveillance-style recording; at frame 650 this
        # woman walks alone across the lawn, about 145 px tall.
        "key": "vtest_woman",
        "file": "vtest.avi",
        "frame": 650,
        "sha256": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
        "source": "opencv-doc:examples/data/vtest.avi frame 650 (woman, black coat)",
        "rect": (332, 370, 384, 515),
        "bg": [
            [(322, 450), (336, 452), (338, 466), (322, 468)],  # a yellow bag on the grass
        ],
        "fg": [
            [(352, 385), (352, 395)],
            [(355, 410), (355, 455)],
            [(350, 470), (350, 500)],
            [(365, 470), (368, 505)],
        ],
        # GrabCut keeps the strips of lawn seen between the legs (too thin for
        # its colour model at this resolution); lawn is unmistakably green and
        # nobody here wears green, so drop green pixels afterwards.
        "drop_green": True,
        "mirror": False,
    },
    {
        "key": "vtest_man",
        "file": "vtest.avi",
        "frame": 550,
        "sha256": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
        "source": "opencv-doc:examples/data/vtest.avi frame 550 (man, red and black jacket)",
        "rect": (168, 366, 228, 513),
        "bg": [
            [(232, 360), (300, 360), (300, 530), (232, 530)],  # the woman walking beside him
        ],
        "fg": [
            [(195, 380), (195, 392)],
            [(195, 410), (195, 450)],
            [(190, 460), (195, 500)],
            [(205, 460), (207, 505)],
        ],
        "drop_green": True,
        "mirror": False,
    },
]

# Leuven's Groot Begijnhof: a cobbled lane with no people in it.
BACKGROUND = {
    "file": "leuvenA.jpg",
    "sha256": "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f",
    "source": "opencv-doc:examples/data/leuvenA.jpg",
    # 16:9 window, bottom-aligned: the sky is expendable, the ground is not.
    "crop": (0, 141, 751, 563),
}


def person_height(foot_y):
    """Pasted height (px) for a person standing at frame row foot_y.

    A rough ground-plane perspective for this photo (nearer = lower = taller),
    so paths that change depth also change scale smoothly.  It reaches 350 px
    at the bottom edge, the largest size the tests want.
    """
    return 0.83 * (foot_y - 298.0)


# ---------------------------------------------------------------------------
# Paths: foot point (bottom centre of the person's box) per frame, as
# functions of t in [0, 1] over a frame window; outside its window a person is
# not in the scene.  Height follows from the foot row (person_height).
#
# Depths are chosen for the demo detector (SSDLite, whole 16:9 frame squeezed
# to 300x300), as measured with check_gt_clip.py: upright walkers are found
# reliably at ~240-265 px tall (taller, they become ~35 px wide slivers in the
# model's input and scores sag below 0.5 at some positions; at 170-220 px the
# score dips at some anchor alignments), so walkers keep their feet on rows
# 585-622; the footballer's wide pose is found best at >= 290 px, so he plays
# in front (rows 668-707).  check_gt_clip.py is the judge: rerun it after
# changing anything here.
#
# Lanes keep people apart horizontally so every track can be followed and
# nobody hides anybody: the left-hand lane is used by one walker who leaves
# and, after he is gone, by another who comes in.  The right third of the
# photo is a low wall; only someone near the camera (feet low in the frame)
# can stand in front of it, so that is where the footballer plays.
# ---------------------------------------------------------------------------
def lerp(a, b, t):
    return a + (b - a) * t


def bezier2(p0, p1, p2, t):
    u = 1.0 - t
    return tuple(u * u * a + 2 * u * t * b + t * t * c for a, b, c in zip(p0, p1, p2))


TRACKS = [  # ids in order of first appearance
    # Fastest walker: starts mid-left and leaves by the left edge around
    # frame 105, freeing the lane for person 4.
    {"id": 1, "src": "vtest_man", "frames": (0, 115),
     "foot": lambda t: (lerp(420.0, -70.0, t), lerp(596.0, 606.0, t))},
    # Middle lane, the whole clip: strolls up the street and to the left along
    # a gentle curve that first comes a little towards the camera.
    {"id": 2, "src": "vtest_woman", "frames": (0, 299),
     "foot": lambda t: bezier2((655.0, 588.0), (620.0, 622.0), (530.0, 608.0), t)},
    # In front, on the right (in front of the low wall, feet below its base):
    # the footballer swings towards the camera and back along an arc, growing
    # and shrinking.
    {"id": 3, "src": "messi", "frames": (0, 299),
     "foot": lambda t: bezier2((965.0, 668.0), (1040.0, 735.0), (950.0, 690.0), t)},
    # Enters by the left edge once person 1 has gone, slow and linear,
    # drifting a little away from the camera (so shrinking slightly).
    {"id": 4, "src": "bus_left", "frames": (125, 299),
     "foot": lambda t: (lerp(-60.0, 290.0, t), lerp(608.0, 594.0, t))},
]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_video_frames = {}


def video_frames(path, wanted):
    """Decode frames `wanted` (indices) of an AVI with Debian's libav via GStreamer.

    Not cv2.VideoCapture: each opencv-python wheel bundles its own FFmpeg, and
    their MPEG-4 decoders differ in the last bits (measured: opencv 4.11 and
    5.0 give different frames of vtest.avi), which would shift the GrabCut
    masks and so the truth.  (This decoder has no threading to vary.)
    """
    w, h = 768, 576
    cmd = ["gst-launch-1.0", "-q", "filesrc", f"location={path}", "!", "avidemux", "!",
           "avdec_msmpeg4", "!", "videoconvert", "!",
           f"video/x-raw,format=BGR,width={w},height={h}", "!", "fdsink", "fd=1"]
    out = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as dec:
        for i in range(max(wanted) + 1):
            buf = dec.stdout.read(w * h * 3)
            if len(buf) != w * h * 3:
                sys.exit(f"{path}: cannot decode frame {i}")
            if i in wanted:
                out[i] = np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy()
        dec.kill()
    return out


def load_checked(src_dir, entry):
    """The entry's photo (or video frame) as BGR, after checking the file's hash."""
    path = os.path.join(src_dir, entry["file"])
    got = sha256_of(path)
    if got != entry["sha256"]:
        sys.exit(f"{path}: sha256 {got} != expected {entry['sha256']}; "
                 "the hand-placed GrabCut seeds only fit the known image")
    if "frame" in entry:
        if path not in _video_frames:  # decode once for every frame used from it
            wanted = {s["frame"] for s in SOURCES if s["file"] == entry["file"]}
            _video_frames[path] = video_frames(path, wanted)
        return _video_frames[path][entry["frame"]]
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"cannot decode {path}")
    return img


def cut_out(img, spec):
    """GrabCut the person; returns (bgr, alpha float32 0..1) cropped to the person."""
    x0, y0, x1, y1 = spec["rect"]
    mask = np.full(img.shape[:2], cv2.GC_BGD, np.uint8)
    mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
    for shape in spec["bg"]:
        if shape[0] == "circle":
            cv2.circle(mask, shape[1], shape[2], int(cv2.GC_BGD), -1)
        else:
            cv2.fillPoly(mask, [np.array(shape, np.int32)], int(cv2.GC_BGD))
    for line in spec["fg"]:
        cv2.polylines(mask, [np.array(line, np.int32)], False, int(cv2.GC_FGD), 5)

    # GrabCut initialises its colour models with k-means++ on OpenCV's global
    # RNG; seeding it makes the cut identical on every run.
    cv2.setRNGSeed(20240601)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.grabCut(img, mask, None, bgd, fgd, 8, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    if spec.get("drop_green"):
        c = img.astype(np.int16)
        green = (c[..., 1] > c[..., 2] + 8) & (c[..., 1] > c[..., 0] + 8)
        fg[green] = 0
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))

    # Specks of background that happen to match the person's colours form
    # separate islands; the person is the one big component.
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    fg = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    # Pinholes inside the body (specular spots, logos) would show the street
    # through the person; fill holes that are tiny, keep real gaps (between
    # arm and torso, between legs).
    inv = 1 - fg
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        touches_edge = x == 0 or y == 0 or x + w == fg.shape[1] or y + h == fg.shape[0]
        if not touches_edge and area < 0.002 * fg.sum():
            fg[labels == k] = 1

    x, y, w, h = cv2.boundingRect(fg)
    pad = 4  # room for the soft edge
    xa, ya = max(0, x - pad), max(0, y - pad)
    xb, yb = min(img.shape[1], x + w + pad), min(img.shape[0], y + h + pad)
    bgr = img[ya:yb, xa:xb].copy()
    # A hard 0/1 edge shimmers when scaled; a ~1 px ramp looks like a photo.
    alpha = cv2.GaussianBlur(fg[ya:yb, xa:xb].astype(np.float32), (0, 0), 0.8)
    if spec["mirror"]:
        bgr, alpha = bgr[:, ::-1].copy(), alpha[:, ::-1].copy()
    return bgr, alpha


def scaled_person(bgr, alpha, height):
    """Resize a cutout so its *mask* is `height` px tall.

    Returns (bgr, alpha, mask, (mx0, my0, mx1, my1)) with the mask box in
    patch coordinates; the mask (alpha >= 0.5) is what the truth describes.
    """
    src_mask = alpha >= 0.5
    ys = np.nonzero(src_mask.any(axis=1))[0]
    s = height / float(ys[-1] + 1 - ys[0])
    size = (max(1, round(bgr.shape[1] * s)), max(1, round(bgr.shape[0] * s)))
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    b = cv2.resize(bgr, size, interpolation=interp)
    a = cv2.resize(alpha, size, interpolation=interp)
    m = a >= 0.5
    rows = np.nonzero(m.any(axis=1))[0]
    cols = np.nonzero(m.any(axis=0))[0]
    return b, a, m, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def place(box, foot):
    """Top-left of the patch so the mask box's bottom centre sits on `foot`."""
    mx0, my0, mx1, my1 = box
    fx, fy = foot
    return int(round(fx - (mx0 + mx1) / 2.0)), int(round(fy - my1))


def clip_paste(dst_shape, ox, oy, ph, pw):
    """Intersection of a patch at (ox, oy) with the frame: frame and patch slices."""
    fx0, fy0 = max(0, ox), max(0, oy)
    fx1, fy1 = min(dst_shape[1], ox + pw), min(dst_shape[0], oy + ph)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    return (slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - oy, fy1 - oy), slice(fx0 - ox, fx1 - ox))


def render(background, cutouts, preview_dir=None):
    """Yield (frame_rgb, per-frame truth entries) for every frame."""
    bg = background.astype(np.float32)
    for f in range(NUM_FRAMES):
        people = []
        for tr in TRACKS:
            a, b = tr["frames"]
            if not a <= f <= b:
                continue
            t = (f - a) / float(b - a)
            fx, fy = tr["foot"](t)
            pb, pa, pm, box = scaled_person(*cutouts[tr["src"]], person_height(fy))
            ox, oy = place(box, (fx, fy))
            people.append({"tr": tr, "fy": fy, "bgr": pb, "alpha": pa, "mask": pm, "ox": ox, "oy": oy})

        # Painter's order: the lower a person's feet, the nearer they are.
        people.sort(key=lambda p: p["fy"])
        frame = bg.copy()
        # For visibility: which frame pixels belong to someone nearer than the
        # person being considered.  Walk from nearest to farthest.
        covered = np.zeros((H, W), bool)
        entries = {}
        for p in reversed(people):
            ph, pw = p["mask"].shape
            sl = clip_paste((H, W), p["ox"], p["oy"], ph, pw)
            total = int(p["mask"].sum())
            if sl is None:
                continue
            fs, ps = sl
            m_in = p["mask"][ps]
            if not m_in.any():
                continue  # only the soft fringe is in frame: not "in frame"
            visible = int((m_in & ~covered[fs]).sum())
            rows = np.nonzero(m_in.any(axis=1))[0]
            cols = np.nonzero(m_in.any(axis=0))[0]
            left, top = fs[1].start + int(cols[0]), fs[0].start + int(rows[0])
            right, bottom = fs[1].start + int(cols[-1]) + 1, fs[0].start + int(rows[-1]) + 1
            entries[p["tr"]["id"]] = {"frame": f, "bbox": [left, top, right, bottom],
                                      "visible": round(visible / total, 3)}
            covered[fs] |= m_in
        for p in people:  # far to near
            ph, pw = p["mask"].shape
            sl = clip_paste((H, W), p["ox"], p["oy"], ph, pw)
            if sl is None:
                continue
            fs, ps = sl
            a = p["alpha"][ps][..., None]
            frame[fs] = frame[fs] * (1.0 - a) + p["bgr"][ps].astype(np.float32) * a
        out = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        if preview_dir and f % 30 == 0:
            dbg = out.copy()
            for tid, e in entries.items():
                l, t_, r, b_ = e["bbox"]
                cv2.rectangle(dbg, (l, t_), (r - 1, b_ - 1), (0, 255, 255), 1)
                cv2.putText(dbg, f"{tid} v={e['visible']:.2f}", (l + 2, t_ + 14),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
            cv2.imwrite(os.path.join(preview_dir, f"frame{f:03d}.png"), dbg)
        yield out[:, :, ::-1], entries  # BGR -> RGB for the encoder


def encode_cmd(path):
    # H.264 High 4:2:0 in MP4 with the moov atom up front, as the demo's
    # pipelines expect.  threads=1: with more, this x264enc's output differs
    # from run to run (measured: frame and sliced threads alike), and at 720p
    # veryfast one thread encodes the 300 frames in ~3 s anyway.  A
    # constant-quality rate keeps people crisp (the default 2 Mbit/s CBR
    # smears them on the busy cobbles).
    return [
        "gst-launch-1.0", "-q",
        "fdsrc", "fd=0", "blocksize=%d" % (W * H * 3), "!",
        "rawvideoparse", "format=rgb", "width=%d" % W, "height=%d" % H,
        "framerate=%d/1" % FPS, "!",
        "videoconvert", "!", "video/x-raw,format=I420", "!",
        "x264enc", "speed-preset=veryfast", "threads=1", "pass=qual", "quantizer=20",
        "key-int-max=60", "!",
        "video/x-h264,profile=high", "!", "h264parse", "!",
        "mp4mux", "faststart=true", "!",
        "filesink", "location=%s" % path,
    ]


def pin_mp4_times(path):
    """Zero the creation/modification times mp4mux stamps into the header.

    They are the only bytes that differ between two runs (x264 on one thread
    is otherwise bit-exact), and mp4mux offers no property or tag that sets
    them (a datetime tag is ignored), so patch the mvhd/tkhd/mdhd boxes.
    """
    with open(path, "r+b") as f:
        data = bytearray(f.read())

        def walk(start, end):
            i = start
            while i + 8 <= end:
                size, kind = struct.unpack(">I4s", data[i:i + 8])
                header = 8
                if size == 1:
                    size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
                elif size == 0:
                    size = end - i
                if kind in (b"moov", b"trak", b"mdia"):
                    walk(i + header, i + size)
                elif kind in (b"mvhd", b"tkhd", b"mdhd"):
                    width = 8 if data[i + header] == 1 else 4  # version 1: 64-bit times
                    at = i + header + 4  # after version and flags
                    data[at:at + 2 * width] = bytes(2 * width)
                i += size

        walk(0, len(data))
        f.seek(0)
        f.write(data)


def write_truth(path, objects):
    # One track entry per line: diffable, still valid JSON, and byte-stable.
    lines = ["{",
             '  "video": "people.mp4",',
             f'  "width": {W},', f'  "height": {H},', f'  "fps": {FPS},',
             f'  "num_frames": {NUM_FRAMES},',
             '  "objects": [']
    for i, o in enumerate(objects):
        lines.append("    {")
        lines.append(f'      "id": {o["id"]},')
        lines.append('      "label": "person",')
        lines.append(f'      "source": {json.dumps(o["source"])},')
        lines.append('      "track": [')
        for j, e in enumerate(o["track"]):
            sep = "," if j + 1 < len(o["track"]) else ""
            lines.append("        " + json.dumps(e, separators=(", ", ": ")) + sep)
        lines.append("      ]")
        lines.append("    }" + ("," if i + 1 < len(objects) else ""))
    lines += ["  ]", "}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preview")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.preview:
        os.makedirs(args.preview, exist_ok=True)

    # OpenCV's own threading must not change results; one thread also keeps
    # this predictable on the 2-core dev machines.
    cv2.setNumThreads(1)

    bg_img = load_checked(args.sources, BACKGROUND)
    x0, y0, x1, y1 = BACKGROUND["crop"]
    background = cv2.resize(bg_img[y0:y1, x0:x1], (W, H), interpolation=cv2.INTER_CUBIC)

    cutouts = {}
    for spec in SOURCES:
        bgr, alpha = cut_out(load_checked(args.sources, spec), spec)
        cutouts[spec["key"]] = (bgr, alpha)
        if args.preview:
            checker = ((np.indices(alpha.shape).sum(axis=0) // 8) % 2 * 80 + 90).astype(np.float32)
            a = alpha[..., None]
            vis = bgr * a + checker[..., None] * (1 - a)
            cv2.imwrite(os.path.join(args.preview, f"cutout_{spec['key']}.png"), vis.astype(np.uint8))

    video_tmp = os.path.join(args.out, ".people.mp4.tmp")
    truth_tmp = os.path.join(args.out, ".people.truth.json.tmp")
    enc = subprocess.Popen(encode_cmd(video_tmp), stdin=subprocess.PIPE)
    tracks = {tr["id"]: [] for tr in TRACKS}
    try:
        for rgb, entries in render(background, cutouts, args.preview):
            enc.stdin.write(np.ascontiguousarray(rgb).tobytes())
            for tid, e in entries.items():
                tracks[tid].append(e)
        enc.stdin.close()
    except BrokenPipeError:
        pass
    if enc.wait() != 0:
        sys.exit(f"gst-launch-1.0 failed with {enc.returncode}")
    pin_mp4_times(video_tmp)

    spec_by_key = {s["key"]: s for s in SOURCES}
    objects = [{"id": tr["id"], "source": spec_by_key[tr["src"]]["source"], "track": tracks[tr["id"]]}
               for tr in TRACKS]
    write_truth(truth_tmp, objects)
    # Publish both only once both are complete, truth last: setup-data treats
    # "both exist and are newer than this script" as done.
    os.replace(video_tmp, os.path.join(args.out, "people.mp4"))
    os.replace(truth_tmp, os.path.join(args.out, "people.truth.json"))

    for o in objects:
        vis = [e["visible"] for e in o["track"]]
        hs = [e["bbox"][3] - e["bbox"][1] for e in o["track"]]
        print(f"person {o['id']}: {len(o['track'])} frames, box height {min(hs)}..{max(hs)} px, "
              f"visible min {min(vis):.3f}, frames with visible<0.5: {sum(v < 0.5 for v in vis)}")


if __name__ == "__main__":
    main()
