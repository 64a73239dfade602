"""benchmarks/probe_clip_ceiling.py (the seventeenth round's labelled bound) stays runnable, and scores sets the
way the captioner is scored: a clip is right for an attribute only when the named set equals its own."""
import re
import subprocess
import sys

import numpy as np
import torch
from e2e import ROOT, child_env

sys.path.insert(0, str(ROOT / "benchmarks"))
from probe_clip_ceiling import GROUPS, set_accuracy, targets  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "probe_clip_ceiling.py"


class Clip:
    def __init__(self, colors, shapes, motions):
        self.attributes = {"colors": colors, "shapes": shapes, "motions": motions}


def test_sets_are_scored_as_the_captioner_is():
    clips = [Clip(["red"], ["circle"], ["left"]), Clip(["blue", "green"], ["square", "triangle"], ["up"])]
    truth = targets(clips)
    assert truth.sum(1).tolist() == [3, 5]  # one bit per value named
    rows = np.arange(2)
    exact = torch.where(truth.bool(), 5.0, -5.0)
    assert set_accuracy(exact, truth, rows) == {"colors": 1.0, "shapes": 1.0, "motions": 1.0, "all three": 1.0}
    shapes_at = sum(len(values) for _, values in GROUPS[:1])
    one_shape_short = exact.clone()
    one_shape_short[1, shapes_at + 2] = -5.0  # the two-object clip names only its square
    extra_motion = exact.clone()
    extra_motion[0, shapes_at + 3 + 1] = 5.0  # the one-object clip hedges: left and right
    assert set_accuracy(one_shape_short, truth, rows) == {"colors": 1.0, "shapes": 0.5, "motions": 1.0,
                                                         "all three": 0.5}
    assert set_accuracy(extra_motion, truth, rows) == {"colors": 1.0, "shapes": 1.0, "motions": 0.5,
                                                      "all three": 0.5}


def test_the_probe_runs(synth40):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--synth", str(synth40), "--steps", "2", "--batch", "4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = re.findall(r"^(all test clips|one object|two objects) \((\d+)\): (.*)$", proc.stdout, re.M)
    assert [name for name, _, _ in figures] == ["all test clips", "one object", "two objects"], proc.stdout
    assert int(figures[0][1]) == int(figures[1][1]) + int(figures[2][1]) > 0
