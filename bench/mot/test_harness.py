"""Checks of the harness itself: the metrics on known cases, agreement of motmetrics with
trackeval's own CLEAR and Identity metrics on real tracker output, and deterministic
scenarios. Run: bench/mot/.venv/bin/python -m unittest discover -s bench/mot
"""

import sys
import unittest
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import metrics  # noqa: E402
import scenarios  # noqa: E402


def gt_frames(seq):
    out = {}
    for fr, i, l, t, w, h, _v in seq.gt:
        out.setdefault(fr, []).append((i, l, t, w, h))
    return {fr: (np.array([r[0] for r in rows]), np.array([r[1:] for r in rows], dtype=float))
            for fr, rows in out.items()}


class Metrics(unittest.TestCase):
    def setUp(self):
        self.seq = scenarios.generate(scenarios.crossing())
        self.gt = gt_frames(self.seq)

    def test_perfect_tracker_scores_100(self):
        acc = metrics.mot_accumulator(self.gt, self.gt, self.seq.frames)
        s = metrics.mot_summary({"s": acc})["s"]
        self.assertAlmostEqual(s["mota"], 1.0)
        self.assertAlmostEqual(s["idf1"], 1.0)
        self.assertEqual(s["num_switches"], 0)
        if metrics.hota_available() is None:
            h = metrics.hota({"s": (self.gt, self.gt, self.seq.frames)})
            self.assertAlmostEqual(h["s"]["HOTA"], 1.0)
            self.assertAlmostEqual(h["OVERALL"]["HOTA"], 1.0)

    def test_swapped_ids_count_as_switches(self):
        # Object ids 1 and 2 exchanged from frame 200 on, where both are present.
        res = {}
        for fr, (ids, boxes) in self.gt.items():
            ids = ids.copy()
            if fr >= 200:
                ids = np.where(ids == 1, 2, np.where(ids == 2, 1, ids))
            res[fr] = (ids, boxes)
        both = [fr for fr in range(200, 260) if fr in self.gt and {1, 2} <= set(self.gt[fr][0])]
        self.assertTrue(both, "the test needs ids 1 and 2 together around frame 200")
        s = metrics.mot_summary({"s": metrics.mot_accumulator(self.gt, res, self.seq.frames)})["s"]
        self.assertEqual(s["num_switches"], 2)
        self.assertLess(s["idf1"], 1.0)

    def test_motmetrics_agrees_with_trackeval_clear_and_identity(self):
        if metrics.hota_available() is not None:
            self.skipTest("trackeval not importable")
        from trackeval.metrics import CLEAR, Identity

        # A plausible tracker output: the detections with ids from the nearest ground truth,
        # some ids switched and some boxes dropped.
        rng = np.random.default_rng(0)
        res = {}
        for fr, (ids, boxes) in self.gt.items():
            keep = rng.random(len(ids)) > 0.1
            noisy = boxes + rng.normal(0, 3, boxes.shape)
            ids = ids + 1000 * (fr > 150) * (ids % 3 == 0)
            res[fr] = (ids[keep], noisy[keep])
        s = metrics.mot_summary({"s": metrics.mot_accumulator(self.gt, res, self.seq.frames)})["s"]
        data = metrics._hota_data(self.gt, res, self.seq.frames)
        clear = CLEAR().eval_sequence(data)
        ident = Identity().eval_sequence(data)
        self.assertAlmostEqual(s["mota"], clear["MOTA"], places=6)
        self.assertEqual(s["num_switches"], clear["IDSW"])
        self.assertEqual(s["num_false_positives"], clear["CLR_FP"])
        self.assertEqual(s["num_misses"], clear["CLR_FN"])
        self.assertAlmostEqual(s["idf1"], ident["IDF1"], places=6)


class Scenarios(unittest.TestCase):
    def test_every_scenario_is_deterministic_and_sane(self):
        for name, make in scenarios.SCENARIOS.items():
            a, b = scenarios.generate(make()), scenarios.generate(make())
            self.assertEqual(a.gt, b.gt, name)
            self.assertEqual(len(a.det), len(b.det), name)
            det = np.array([r[:6] for r in a.det])
            self.assertTrue((det == np.array([r[:6] for r in b.det])).all(), name)
            emb = np.array([r[6] for r in a.det])
            self.assertTrue((emb == np.array([r[6] for r in b.det])).all(), name)
            self.assertEqual(emb.shape[1], scenarios.EMBEDDING_DIM)
            self.assertTrue(np.allclose(np.linalg.norm(emb, axis=1), 1.0), name)
            gt = np.array(a.gt)
            self.assertGreater(len(set(gt[:, 1])), 10, name)
            self.assertTrue((gt[:, 4] > 0).all() and (gt[:, 5] > 0).all(), name)
            self.assertTrue((gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= scenarios.WIDTH + 1e-6).all())
            self.assertTrue(((det[:, 5] > 0) & (det[:, 5] < 1)).all(), name)
            self.assertTrue((gt[:, 6] >= scenarios.GT_MIN_VISIBILITY).all(), name)


if __name__ == "__main__":
    unittest.main()
