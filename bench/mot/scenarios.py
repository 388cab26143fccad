"""Synthetic multi-object sequences with ground truth, for tracker evaluation.

Each scenario places moving boxes ("actors") in a 1920x1080 scene at 30 fps, then derives
from the same truth, deterministically from its seed:

* the ground truth (MOTChallenge gt.txt: ``frame,id,left,top,width,height,1,1,visibility``):
  every actor whose box is at least ``GT_MIN_VISIBILITY`` visible, box clipped to the frame;
* the detections (det.txt: ``frame,-1,left,top,width,height,score,-1,-1,-1,e1..e32``) of a
  simulated
  detector: box noise, random misses, occlusion (by static occluders or by actors closer to
  the camera: nearly hidden → no detection, partly hidden → a low score), "dropout" windows
  where a visible actor's detection disappears or drops to a low score for several frames,
  random false positives and persistent ones ("ghosts" on background clutter);
* an appearance embedding per detection (32 values after the tenth column, as DeepSORT's
  detection files carry them), as a re-identification network would give: each actor has a
  "look" (a unit vector; actors come in groups of look-alikes, like people dressed alike),
  each detection its actor's look plus noise, blended with the look of whatever hides part
  of it (the closer actor, or the occluder). False positives look random. Only the
  appearance tracker reads embeddings; supervision's ByteTrack and our others ignore them.

Visibility is the fraction of a box that is inside the frame and not covered by an occluder
or by an actor whose box reaches lower in the image (closer to the camera), sampled on a
12x12 grid of points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WIDTH, HEIGHT, FPS = 1920, 1080, 30
# An actor less visible than this is not in the ground truth: nobody can track what nobody
# can see, and counting it would only add the same misses to every tracker.
GT_MIN_VISIBILITY = 0.2
GRID = 12
EMBEDDING_DIM = 32
LOOK_GROUPS = 5
LOOK_SPREAD = 0.7  # distance of an actor's look from its group's centre (norm)
LOOK_NOISE = 0.25  # norm of the per-detection noise


@dataclass
class Actor:
    """A box moving with constant acceleration, an optional sideways sway and growth."""

    start: int
    x: float  # left at `start`
    y: float  # top at `start`
    vx: float  # px/frame
    vy: float
    w: float
    h: float
    ax: float = 0.0  # px/frame²
    ay: float = 0.0
    sway: float = 0.0  # amplitude (px) of a vertical sinusoid
    sway_period: float = 90.0  # frames
    grow: float = 0.0  # relative size change per frame (approaching: > 0)
    end: int | None = None  # last frame; None: until it leaves the frame

    def box(self, frame: int) -> np.ndarray:
        t = frame - self.start
        scale = (1.0 + self.grow) ** t
        w, h = self.w * scale, self.h * scale
        cx = self.x + self.w / 2 + self.vx * t + 0.5 * self.ax * t * t
        cy = self.y + self.h / 2 + self.vy * t + 0.5 * self.ay * t * t
        cy += self.sway * np.sin(2 * np.pi * t / self.sway_period)
        return np.array([cx - w / 2, cy - h / 2, w, h])


@dataclass
class Detector:
    """How the simulated detector errs."""

    noise: float = 0.03  # std of box noise, as a fraction of width/height
    miss_rate: float = 0.02  # random misses of visible actors
    hide_below: float = 0.35  # visibility below which there is no detection
    low_below: float = 0.65  # visibility below which the score is low
    fp_per_frame: float = 0.2  # random false positives per frame (Poisson mean)
    ghosts: int = 0  # persistent false positives over the sequence
    dropout_rate: float = 0.0  # per actor and frame: chance a dropout window starts
    dropout_frames: tuple[int, int] = (5, 20)
    dropout_vanish: float = 0.5  # fraction of dropouts where the detection vanishes
    high_score: tuple[float, float] = (0.55, 0.95)
    low_score: tuple[float, float] = (0.12, 0.45)
    # False positives score like weak true detections, some as high as confident ones.
    fp_score: tuple[float, float] = (0.1, 0.75)
    ghost_score: tuple[float, float] = (0.3, 0.8)


@dataclass
class Scenario:
    name: str
    description: str
    seed: int
    frames: int
    actors: list[Actor]
    detector: Detector
    occluders: list[tuple[float, float, float, float]] = field(default_factory=list)


@dataclass
class Sequence:
    """What a scenario produces: rows ready for gt.txt and det.txt."""

    scenario: Scenario
    gt: list[tuple[int, int, float, float, float, float, float]]  # frame(1-based), id, box, vis
    # frame (1-based), box, score, embedding
    det: list[tuple[int, float, float, float, float, float, np.ndarray]]

    @property
    def frames(self) -> int:
        return self.scenario.frames


def _spawn_walker(rng, start, from_left, y, speed, w, **kw) -> Actor:
    h = w * rng.uniform(2.2, 2.6)
    x = -w + 1 if from_left else WIDTH - 1
    return Actor(start, x, y, speed if from_left else -speed, 0.0, w, h, **kw)


def crossing(seed: int = 1) -> Scenario:
    """Two lanes of pedestrians walking in opposite directions a few pixels apart in depth,
    so every pass is a crossing with mutual occlusion, plus diagonal walkers cutting through
    both lanes."""
    rng = np.random.default_rng(seed)
    actors = []
    for k in range(22):
        start = int(k * 20 + rng.integers(0, 10))
        from_left = k % 2 == 0
        y = (470 if from_left else 455) + rng.normal(0, 6)
        actors.append(
            _spawn_walker(rng, start, from_left, y, rng.uniform(2.0, 4.5), rng.uniform(55, 75))
        )
    for k in range(5):
        start = int(40 + k * 80)
        w = rng.uniform(55, 75)
        from_top = k % 2 == 0
        x = rng.uniform(500, 1400)
        vy = rng.uniform(1.5, 3.0) * (1 if from_top else -1)
        vx = rng.uniform(-2.0, 2.0)
        y = -2.4 * w + 1 if from_top else HEIGHT - 1
        actors.append(Actor(start, x, y, vx, vy, w, 2.4 * w))
    return Scenario(
        "crossing",
        "two opposite lanes and diagonal walkers; crossings with mutual occlusion",
        seed,
        450,
        actors,
        Detector(noise=0.03, miss_rate=0.02, fp_per_frame=0.2),
    )


def occlusion(seed: int = 2) -> Scenario:
    """Walkers passing behind three pillars (the detection fades to a low score, then
    vanishes, then comes back), plus dropout windows where a fully visible walker's
    detection vanishes or scores low for 5-20 frames."""
    rng = np.random.default_rng(seed)
    occluders = [(480.0, 150.0, 110.0, 900.0), (930.0, 150.0, 80.0, 900.0), (1380.0, 150.0, 140.0, 900.0)]
    actors = []
    for k in range(24):
        start = int(k * 17 + rng.integers(0, 8))
        from_left = rng.random() < 0.5
        y = rng.uniform(250, 650)
        actors.append(
            _spawn_walker(rng, start, from_left, y, rng.uniform(1.5, 5.0), rng.uniform(45, 90))
        )
    return Scenario(
        "occlusion",
        "walkers behind pillars; detections fade to low score, vanish, return; dropouts",
        seed,
        450,
        actors,
        Detector(noise=0.03, miss_rate=0.02, fp_per_frame=0.3, dropout_rate=0.01),
        occluders,
    )


def noisy(seed: int = 3) -> Scenario:
    """A poor detector: large box noise, 15% random misses, two random false positives a
    frame and persistent ghosts; walkers change speed and direction."""
    rng = np.random.default_rng(seed)
    actors = []
    for k in range(26):
        start = int(k * 16 + rng.integers(0, 8))
        from_left = rng.random() < 0.5
        y = rng.uniform(150, 750)
        speed = rng.uniform(1.5, 4.5)
        actors.append(
            _spawn_walker(
                rng,
                start,
                from_left,
                y,
                speed,
                rng.uniform(45, 95),
                ax=rng.normal(0, 0.01) * (1 if from_left else -1),
                sway=rng.uniform(0, 60),
                sway_period=rng.uniform(60, 180),
            )
        )
    return Scenario(
        "noisy",
        "box noise 7%, 15% misses, 2 false positives a frame, 6 persistent ghosts",
        seed,
        450,
        actors,
        Detector(noise=0.07, miss_rate=0.15, fp_per_frame=2.0, ghosts=6, dropout_rate=0.003),
    )


def speed_size(seed: int = 4) -> Scenario:
    """Boxes from 16x32 to 240x560 px moving from 0.5 to 20 px/frame (small fast ones move
    half their width per frame), some accelerating, some approaching the camera."""
    rng = np.random.default_rng(seed)
    actors = []
    for k in range(20):
        start = int(k * 20 + rng.integers(0, 10))
        from_left = k % 2 == 0
        w = float(np.exp(rng.uniform(np.log(16), np.log(240))))
        # Small boxes move fast relative to their size, big ones slowly.
        rel = rng.uniform(0.05, 0.5) if w < 60 else rng.uniform(0.005, 0.06)
        speed = float(np.clip(rel * w, 0.5, 20.0))
        y = rng.uniform(50, max(60, HEIGHT - 2.4 * w - 50))
        kw = {}
        if k % 5 == 1:
            kw["ax"] = 0.02 * (1 if from_left else -1)
        if k % 5 == 3:
            kw["grow"] = 0.002
        actors.append(_spawn_walker(rng, start, from_left, y, speed, w, **kw))
    return Scenario(
        "speed_size",
        "sizes 16-240 px wide, speeds 0.5-20 px/frame, accelerating and approaching actors",
        seed,
        450,
        actors,
        Detector(noise=0.03, miss_rate=0.03, fp_per_frame=0.3),
    )


def crowd(seed: int = 5) -> Scenario:
    """A plaza with 40 to 70 people at a time walking in all directions, sized by depth,
    mutual occlusion, moderate noise, misses, false positives and dropouts."""
    rng = np.random.default_rng(seed)
    actors = []
    for k in range(110):
        start = 0 if k < 40 else int((k - 40) * 6.4)
        # Perspective: lower in the image is closer and bigger.
        y_foot = rng.uniform(350, 1060)
        w = 20 + (y_foot - 350) * 0.09 + rng.normal(0, 4)
        h = w * rng.uniform(2.2, 2.6)
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.6, 2.2) * w / 50
        vx, vy = speed * np.cos(angle), 0.4 * speed * np.sin(angle)
        if start == 0:
            x = rng.uniform(0, WIDTH - w)
        else:
            x = -w + 1 if vx > 0 else WIDTH - 1
        actors.append(Actor(start, x, y_foot - h, vx, vy, w, h))
    return Scenario(
        "crowd",
        "40-70 people at once in all directions, perspective sizes, mutual occlusion",
        seed,
        450,
        actors,
        Detector(noise=0.04, miss_rate=0.05, fp_per_frame=1.0, ghosts=3, dropout_rate=0.005),
    )


SCENARIOS = {f.__name__: f for f in (crossing, occlusion, noisy, speed_size, crowd)}


def _clip(box: np.ndarray) -> np.ndarray:
    l, t = max(box[0], 0.0), max(box[1], 0.0)
    r, b = min(box[0] + box[2], WIDTH), min(box[1] + box[3], HEIGHT)
    return np.array([l, t, max(r - l, 0.0), max(b - t, 0.0)])


def _visibility(boxes: np.ndarray, occluders: np.ndarray):
    """Visible fraction of each box: grid points inside the frame and not inside an occluder
    or a box whose bottom edge is lower (closer to the camera). Also, per box, what hides the
    most of it: the index of a box, -1 for an occluder, -2 for nothing."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=int)
    f = (np.arange(GRID) + 0.5) / GRID
    px = boxes[:, 0, None, None] + boxes[:, 2, None, None] * f[None, None, :]
    py = boxes[:, 1, None, None] + boxes[:, 3, None, None] * f[None, :, None]
    px, py = np.broadcast_arrays(px, py)  # (n, GRID, GRID)
    px, py = px.reshape(n, -1), py.reshape(n, -1)
    visible = (px >= 0) & (px < WIDTH) & (py >= 0) & (py < HEIGHT)

    def inside(cover: np.ndarray):  # (n, points, m)
        return (
            (px[:, :, None] >= cover[None, None, :, 0])
            & (px[:, :, None] < cover[None, None, :, 0] + cover[None, None, :, 2])
            & (py[:, :, None] >= cover[None, None, :, 1])
            & (py[:, :, None] < cover[None, None, :, 1] + cover[None, None, :, 3])
        )

    in_frame = visible.copy()
    by_occluders = np.zeros(n)
    if len(occluders):
        hidden = inside(occluders).any(axis=2)
        by_occluders = (hidden & in_frame).sum(axis=1)
        visible &= ~hidden
    bottoms = boxes[:, 1] + boxes[:, 3]
    closer = bottoms[None, :] > bottoms[:, None]  # closer[i, j]: j is in front of i
    covers = inside(boxes) & closer[:, None, :]  # (n, points, n)
    visible &= ~covers.any(axis=2)
    by_box = (covers & in_frame[:, :, None]).sum(axis=1)  # (n, n)
    best = by_box.argmax(axis=1)
    most = by_box[np.arange(n), best]
    hider = np.full(n, -2)
    hider[most > 0] = best[most > 0]
    hider[by_occluders > most] = -1
    return visible.mean(axis=1), hider


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _looks(rng, n: int) -> np.ndarray:
    """Each actor's look: groups of look-alikes around a few random centres."""
    centres = np.array([_unit(rng.normal(size=EMBEDDING_DIM)) for _ in range(LOOK_GROUPS)])
    group = rng.integers(0, LOOK_GROUPS, n)
    offsets = rng.normal(size=(n, EMBEDDING_DIM)) * LOOK_SPREAD / np.sqrt(EMBEDDING_DIM)
    return np.array([_unit(c) for c in centres[group] + offsets])


def _observe(rng, look: np.ndarray) -> np.ndarray:
    """What a re-identification network outputs for `look`: noisy, unit length."""
    return _unit(look + rng.normal(size=EMBEDDING_DIM) * LOOK_NOISE / np.sqrt(EMBEDDING_DIM))


def generate(scenario: Scenario) -> Sequence:
    """Ground truth and detections of a scenario (deterministic in its seed)."""
    rng = np.random.default_rng(scenario.seed + 1000)
    d = scenario.detector
    looks = _looks(rng, len(scenario.actors))
    occluder_look = _unit(rng.normal(size=EMBEDDING_DIM))
    occluders = np.array(scenario.occluders, dtype=float).reshape(-1, 4)
    # Per actor: frames left in a dropout window and whether it vanishes.
    dropout_left = np.zeros(len(scenario.actors), dtype=int)
    dropout_vanish = np.zeros(len(scenario.actors), dtype=bool)
    ghosts = []
    for _ in range(d.ghosts):
        start = int(rng.integers(0, scenario.frames - 20))
        w = rng.uniform(40, 90)
        ghosts.append((start, start + int(rng.integers(20, 60)), rng.uniform(0, WIDTH - w),
                       rng.uniform(100, HEIGHT - 2.5 * w), w, 2.4 * w,
                       _unit(rng.normal(size=EMBEDDING_DIM))))
    gt, det = [], []
    ended: set[int] = set()
    for frame in range(scenario.frames):
        alive, boxes = [], []
        for i, a in enumerate(scenario.actors):
            if frame < a.start or i in ended or (a.end is not None and frame > a.end):
                continue
            box = a.box(frame)
            inside = _clip(box)
            if inside[2] < 2 or inside[3] < 2:
                # Gone for good once it has left the frame after entering it.
                if frame > a.start + 5:
                    ended.add(i)
                continue
            alive.append(i)
            boxes.append(box)
        boxes = np.array(boxes).reshape(-1, 4)
        vis, hider = _visibility(boxes, occluders)
        for k, i in enumerate(alive):
            clipped = _clip(boxes[k])
            if vis[k] >= GT_MIN_VISIBILITY:
                gt.append((frame + 1, i + 1, *clipped, vis[k]))
            if dropout_left[i] > 0:
                dropout_left[i] -= 1
            elif rng.random() < d.dropout_rate:
                dropout_left[i] = int(rng.integers(d.dropout_frames[0], d.dropout_frames[1] + 1))
                dropout_vanish[i] = rng.random() < d.dropout_vanish
            if vis[k] < d.hide_below or rng.random() < d.miss_rate:
                continue
            dropped = dropout_left[i] > 0
            if dropped and dropout_vanish[i]:
                continue
            low = dropped or vis[k] < d.low_below
            score = rng.uniform(*(d.low_score if low else d.high_score))
            noisy = clipped + rng.normal(0, d.noise, 4) * clipped[[2, 3, 2, 3]]
            noisy = _clip(noisy)
            if noisy[2] >= 2 and noisy[3] >= 2:
                look = looks[i]
                if hider[k] != -2:
                    other = occluder_look if hider[k] == -1 else looks[alive[hider[k]]]
                    look = _unit((1 - 0.6 * (1 - vis[k])) * look + 0.6 * (1 - vis[k]) * other)
                det.append((frame + 1, *noisy, score, _observe(rng, look)))
        for _ in range(rng.poisson(d.fp_per_frame)):
            w = rng.uniform(25, 110)
            h = w * rng.uniform(1.5, 2.8)
            box = _clip(np.array([rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h]))
            det.append((frame + 1, *box, rng.uniform(*d.fp_score),
                        _observe(rng, _unit(rng.normal(size=EMBEDDING_DIM)))))
        for start, end, x, y, w, h, look in ghosts:
            if start <= frame <= end and rng.random() < 0.85:
                box = np.array([x, y, w, h]) + rng.normal(0, 0.03, 4) * np.array([w, h, w, h])
                det.append((frame + 1, *_clip(box), rng.uniform(*d.ghost_score), _observe(rng, look)))
    # A detector reports a frame's boxes best first.
    det.sort(key=lambda r: (r[0], -r[5]))
    return Sequence(scenario, gt, det)


def write(seq: Sequence, directory) -> None:
    """Writes MOTChallenge-style gt/gt.txt, det/det.txt and seqinfo.ini into `directory`."""
    from pathlib import Path

    directory = Path(directory)
    (directory / "gt").mkdir(parents=True, exist_ok=True)
    (directory / "det").mkdir(parents=True, exist_ok=True)
    with open(directory / "gt" / "gt.txt", "w") as f:
        for fr, i, l, t, w, h, v in seq.gt:
            f.write(f"{fr},{i},{l:.2f},{t:.2f},{w:.2f},{h:.2f},1,1,{v:.3f}\n")
    with open(directory / "det" / "det.txt", "w") as f:
        for fr, l, t, w, h, s, e in seq.det:
            emb = ",".join(f"{x:.4f}" for x in e)
            f.write(f"{fr},-1,{l:.2f},{t:.2f},{w:.2f},{h:.2f},{s:.4f},-1,-1,-1,{emb}\n")
    with open(directory / "seqinfo.ini", "w") as f:
        f.write(
            f"[Sequence]\nname={seq.scenario.name}\nframeRate={FPS}\nseqLength={seq.frames}\n"
            f"imWidth={WIDTH}\nimHeight={HEIGHT}\n"
        )
