#!/usr/bin/env python3
"""1080p decode + encode: vidmesh (source → sink) vs gst-launch doing the same work.

    .venv/bin/python bench/codec_vs_gst.py [--frames 600] [--repeat 3]

Every side reads the same 1080p H.264 MP4, decode it, convert it to RGB (vidmesh's frame
format), convert it back to I420, encode it with x264 at the same settings (4000 kbit/s,
`veryfast`, key-int-max 60) and write an MP4. The difference is vidmesh's frame handling: the
source's appsink, the frame metadata and batch, the in-process link, the sink's appsrc. The
peers are one gst-launch line as written naively (one streaming thread) and with `queue`s
(decode, conversion and encoding on their own threads). Runs alternate, `--repeat` times each;
the script prints the median frames per second of each, vidmesh's ratio to the faster peer, and writes bench/results/codec_vs_gst.json.

Every output is decoded again to check that it holds every frame.

Needs the release binary (`cargo build --release -p vidmesh`) and gst-launch-1.0 with x264.
"""

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDMESH = ROOT / "target" / "release" / "vidmesh"
RESULTS = ROOT / "bench" / "results"
ENCODE = "bitrate=4000 speed-preset=veryfast key-int-max=60"


def make_clip(path: Path, frames: int) -> None:
    """A 1080p30 H.264 clip with motion and detail (so the encoder has real work)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"making {path.name}: {frames} frames of 1920x1080 …", flush=True)
    subprocess.run(
        f"gst-launch-1.0 -q videotestsrc pattern=ball num-buffers={frames} ! "
        "video/x-raw,width=1920,height=1080,framerate=30/1 ! videoconvert ! "
        f"x264enc {ENCODE} ! h264parse ! mp4mux ! filesink location={path}.part",
        shell=True,
        check=True,
    )
    Path(f"{path}.part").rename(path)


def count_frames(path: Path) -> int:
    """Samples in the MP4's video track (one coded frame each), as fakesink reports them."""
    out = subprocess.run(
        ["gst-launch-1.0", "-v", "filesrc", f"location={path}", "!", "qtdemux", "!",
         "fakesink", "sync=false", "silent=false"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.count("last-message = chain")


def run_gst(clip: Path, out: Path, queues: bool) -> float:
    """The same work as one gst-launch pipeline; with `queues`, decoding, conversion and
    encoding run on their own threads, as a GStreamer user tuning for throughput writes it."""
    q = " queue ! " if queues else " "
    start = time.perf_counter()
    subprocess.run(
        f"gst-launch-1.0 -q filesrc location={clip} ! qtdemux ! h264parse ! avdec_h264 !{q}"
        "videoconvert ! video/x-raw,format=RGB ! videoconvert ! video/x-raw,format=I420 !"
        f"{q}x264enc {ENCODE} ! video/x-h264,profile=high ! h264parse ! mp4mux ! "
        f"filesink location={out}",
        shell=True,
        check=True,
    )
    return time.perf_counter() - start


def run_vidmesh(clip: Path, out: Path, scratch: Path) -> float:
    topology = scratch / "codec.toml"
    topology.write_text(
        f"""
[pipeline]
name = "codec-bench"
links = [["sources", "out"]]

[[source]]
id = "clip"
uri = "file://{clip}"

[stage]
out = {{ kind = "sink", uri = "file://{out}", bitrate_kbps = 4000, speed_preset = "veryfast", key_int_max = 60 }}
"""
    )
    start = time.perf_counter()
    subprocess.run(
        [str(VIDMESH), "run", "--progress", "0s", str(topology)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not VIDMESH.exists():
        print(f"{VIDMESH} is missing: cargo build --release -p vidmesh", file=sys.stderr)
        return 1
    if shutil.which("gst-launch-1.0") is None:
        print("gst-launch-1.0 is missing: apt-get install gstreamer1.0-tools", file=sys.stderr)
        return 1
    clip = RESULTS / f"bench-1080p-{args.frames}.mp4"
    make_clip(clip, args.frames)
    times = {"gst-launch": [], "gst+queues": [], "vidmesh": []}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for i in range(args.repeat):
            for name in times:
                out = scratch / f"{name}-{i}.mp4"
                if name == "vidmesh":
                    seconds = run_vidmesh(clip, out, scratch)
                else:
                    seconds = run_gst(clip, out, queues=name == "gst+queues")
                frames = count_frames(out)
                if frames != args.frames:
                    print(f"{name} wrote {frames} frames, expected {args.frames}", file=sys.stderr)
                    return 1
                times[name].append(seconds)
                print(f"  {name:10} run {i + 1}: {args.frames / seconds:6.1f} fps", flush=True)
    fps = {name: args.frames / statistics.median(t) for name, t in times.items()}
    # Against the faster of the two plain pipelines: the overhead is what vidmesh costs over
    # the best a gst-launch line does with the same elements.
    peer = max(("gst-launch", "gst+queues"), key=lambda n: fps[n])
    ratio = fps["vidmesh"] / fps[peer]
    print(f"1080p decode+encode, {args.frames} frames, median of {args.repeat}:")
    for name in times:
        print(f"  {name:10} {fps[name]:6.1f} fps")
    print(f"  ratio vidmesh/{peer} {ratio:.3f} (overhead {100 * (1 - ratio):+.1f}%)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "codec_vs_gst.json").write_text(
        json.dumps(
            {
                "machine": platform.node(),
                "cpus": __import__("os").cpu_count(),
                "frames": args.frames,
                "seconds": times,
                "fps": fps,
                "peer": peer,
                "ratio": ratio,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
