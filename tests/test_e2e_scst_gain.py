"""The default recipe, shortened (a smaller synthetic set, fewer steps, the same engine continuing from
CE to SCST), with a fixed seed: after CE the captions name colour and motion well above chance, and SCST
raises its own reward and the test CIDEr without buying them by dropping content (no attribute accuracy
falls by more than a few clips)."""
import json

import pytest
from e2e import read_metrics, run_train

pytestmark = pytest.mark.slow
SEED = 42
# Chance: colour 0.2, motion 1/7 (a two-shape clip needs both named, so chance is lower still).
COLOR_MIN, MOTION_MIN = 0.85, 0.55
SCST_SLACK = 0.05  # one test clip is 1/84 = 0.012


def test_scst_keeps_the_attributes_ce_learned(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    root = tmp_path_factory.mktemp("scst_gain")
    synth = make_synthetic_set(root / "synth", videos=1200, seed=42)
    out = root / "run"
    run_train(out, synth, "zero0.json", "synth_videos=1200", f"seed={SEED}", "ce.steps=400", "ce.micro_batch=32",
              "ce.log_every=50", "scst.steps=40", "scst.micro_batch=16", "scst.samples=5", "scst.log_every=10",
              "eval.num_beams=3", "eval.batch_size=64", timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    ce, scst = summary["ce"]["test"], summary["scst"]["test"]
    # Measured here (2026-12-04, the recipe's co-occurrence text side and SCST at lr 1e-4): CE colour / shape /
    # motion / all 0.964 / 0.262 / 0.690 / 0.226, CIDEr 1.286; SCST 0.929 / 0.262 / 0.679 / 0.190, CIDEr 1.310,
    # sampled reward 0.676 -> 0.764 (beam 3, 84 clips; the main job's figures: README, "Results").
    assert ce["color_acc"] >= COLOR_MIN and ce["motion_acc"] >= MOTION_MIN, ce
    for key in ("color_acc", "shape_acc", "motion_acc", "all_acc"):
        assert scst[key] >= ce[key] - SCST_SLACK, (key, ce[key], scst[key])
    assert scst["CIDEr"] > ce["CIDEr"], (ce["CIDEr"], scst["CIDEr"])  # measured 1.286 -> 1.310
    rewards = [m["reward"] for m in read_metrics(out) if m.get("phase") == "scst" and "reward" in m]
    assert len(rewards) == 4 and rewards[-1] > rewards[0]  # measured 0.676 -> 0.764
