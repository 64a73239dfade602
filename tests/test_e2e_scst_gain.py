"""The default recipe, shortened (a smaller synthetic set, fewer steps of the vision stage and of CE, the
same engine continuing from CE to SCST), with a fixed seed: after CE the captions name colour, shape and
motion well above chance (shape only since the vision stage: 0.24-0.26 without it, 0.50-0.58 with it, 0.87
with the conv tokens beside the ViT), and SCST raises its own
reward without buying it by dropping content (no attribute accuracy falls by more than a few clips) or
lowering the test CIDEr beyond this run's noise.

Why a band and not "SCST CIDEr > CE CIDEr" here: the 2-rank run is not bit-reproducible (the same code and
seed measured CE CIDEr 1.286 on 2026-12-04 and 1.301 on 2026-12-07), and 40 SCST steps move the beam-3
CIDEr of 84 clips by about as much as that (+0.024 then -0.029). What 40 steps do move reliably is the
reward SCST optimises (sampled captions' +0.088, +0.081; with the recipe's beam rollouts since, +0.134).
The strict CIDEr gain is the main job's, measured on three
seeds in README "Results"."""
import json

import pytest
from e2e import read_metrics, run_train

pytestmark = pytest.mark.slow
SEED = 42
# Chance: colour 0.2, shape 1/3, motion 1/7 (a two-shape clip needs both named, so chance is lower still).
# Shape 0.50-0.58 before conv tokens, 0.87 with them; motion 0.50 before motion tokens, 0.76-0.83 with them.
COLOR_MIN, SHAPE_MIN, MOTION_MIN = 0.70, 0.70, 0.60
SCST_SLACK = 0.05  # one test clip is 1/84 = 0.012
CIDER_NOISE = 0.05  # twice the run-to-run change of SCST's test CIDEr measured here (+0.024, -0.029)
REWARD_GAIN_MIN = 0.03  # the reward's rise over 40 steps: measured +0.088 and +0.081 (samples), +0.134 (beams)


def test_scst_keeps_the_attributes_ce_learned(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    root = tmp_path_factory.mktemp("scst_gain")
    synth = make_synthetic_set(root / "synth", videos=1200, seed=42)
    out = root / "run"
    run_train(out, synth, "zero0.json", "synth_videos=1200", f"seed={SEED}", "vision.steps=800",
              "vision.micro_batch=64", "vision.log_every=200", "ce.steps=400", "ce.micro_batch=32", "ce.log_every=50",
              "scst.steps=40",
              "scst.micro_batch=16", "scst.samples=5", "scst.log_every=10", "eval.num_beams=3", "eval.batch_size=64",
              timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    ce, scst = summary["ce"]["test"], summary["scst"]["test"]
    # Measured here (the recipe's co-occurrence text side and SCST at lr 1e-4; beam 3, 84 clips; the main job's
    # figures: README, "Results"), colour / shape / motion / all, CIDEr, sampled reward first -> last log:
    #   2026-12-04: CE 0.964 / 0.262 / 0.690 / 0.226, 1.286; SCST 0.929 / 0.262 / 0.679 / 0.190, 1.310; 0.676 -> 0.764
    #   2026-12-07: CE 0.905 / 0.238 / 0.714 / 0.179, 1.301; SCST 0.869 / 0.310 / 0.690 / 0.238, 1.272; 0.631 -> 0.712
    # with the vision stage (800 steps; the run takes about 2 min):
    #   2026-12-07: CE 0.833 / 0.583 / 0.500 / 0.298, 1.268; SCST 0.857 / 0.583 / 0.488 / 0.333, 1.362; 0.773 -> 0.895
    # with the study's SCST (scst.baseline=beam_mean: the logged reward is the 5 beams' mean, hence its scale),
    # lr 5e-5, and each rank's own random stream after the stage:
    #   2026-12-07: CE 0.869 / 0.536 / 0.512 / 0.357, 1.267; SCST 0.893 / 0.512 / 0.619 / 0.393, 1.343; 1.215 -> 1.349
    # with motion tokens (model.motion_tokens):
    #   2026-12-07: CE 0.881 / 0.500 / 0.833 / 0.488, 1.504; SCST 0.893 / 0.560 / 0.821 / 0.548, 1.668; 1.498 -> 1.601
    # with SCST's CE term on the reference the loader drew (not always the first):
    #   2026-12-07: CE 0.881 / 0.500 / 0.833 / 0.488, 1.504; SCST 0.869 / 0.512 / 0.821 / 0.500, 1.565; 1.488 -> 1.587
    # with conv tokens (model.conv_tokens, trained in the vision stage too):
    #   2026-12-08: CE 0.881 / 0.869 / 0.762 / 0.679, 1.597; SCST 0.917 / 0.857 / 0.786 / 0.714, 1.729; 1.560 -> 1.682
    assert ce["color_acc"] >= COLOR_MIN and ce["shape_acc"] >= SHAPE_MIN and ce["motion_acc"] >= MOTION_MIN, ce
    for key in ("color_acc", "shape_acc", "motion_acc", "all_acc"):
        assert scst[key] >= ce[key] - SCST_SLACK, (key, ce[key], scst[key])
    assert scst["CIDEr"] >= ce["CIDEr"] - CIDER_NOISE, (ce["CIDEr"], scst["CIDEr"])
    rewards = [m["reward"] for m in read_metrics(out) if m.get("phase") == "scst" and "reward" in m]
    assert len(rewards) == 4 and rewards[-1] >= rewards[0] + REWARD_GAIN_MIN, rewards
