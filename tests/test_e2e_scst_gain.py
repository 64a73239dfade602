"""SCST works: with a fixed seed, test CIDEr after SCST is higher than after CE (the default recipe,
shortened: a smaller synthetic set, fewer steps, the same engine continuing from CE to SCST)."""
import json

import pytest

from e2e import read_metrics, run_train

pytestmark = pytest.mark.slow
SEED = 42


def test_scst_raises_test_cider_over_ce(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    root = tmp_path_factory.mktemp("scst_gain")
    synth = make_synthetic_set(root / "synth", videos=600, seed=42)
    out = root / "run"
    run_train(out, synth, "zero0.json", "synth_videos=600", f"seed={SEED}", "ce.steps=250", "ce.micro_batch=32",
              "ce.log_every=50", "scst.steps=40", "scst.micro_batch=16", "scst.samples=5", "scst.log_every=10",
              "eval.num_beams=3", "eval.batch_size=64", timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    ce, scst = summary["ce"]["test"]["CIDEr"], summary["scst"]["test"]["CIDEr"]
    assert scst > ce + 0.03, (ce, scst)  # measured here: 0.852 -> 0.975 (seed 7: 0.888 -> 0.971)
    rewards = [m["reward"] for m in read_metrics(out) if m.get("phase") == "scst" and "reward" in m]
    assert len(rewards) == 4 and rewards[-1] > rewards[0]
