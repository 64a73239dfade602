"""End to end through launch/train.sh: the DeepSpeed launcher, 2 ranks, gloo, on the CPU."""
import json
from pathlib import Path

import pytest

from e2e import ROOT, losses_by_step, read_metrics, run_train

pytestmark = pytest.mark.slow
CONFIGS = sorted(p.name for p in (ROOT / "ds_configs").glob("*.json"))


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    folder = tmp_path_factory.mktemp("synth")
    make_synthetic_set(folder, videos=40, seed=42)  # the recipe's seed: train.sh finds it complete
    return folder


@pytest.mark.parametrize("ds_json", CONFIGS)
def test_a_few_ce_steps_under_every_json(tmp_path, synth, ds_json):
    out = tmp_path / "run"
    run_train(out, synth, ds_json, "ce.steps=3", "scst.steps=0")
    losses = losses_by_step(out, "ce")
    assert sorted(losses) == [1, 2, 3]
    assert all(v == v and v > 0 for v in losses.values())  # finite, positive
    summary = json.loads((out / "summary.json").read_text())
    assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(summary["ce"]["test"])
    assert summary["skipped_videos"] == []
    assert (out / "config.yaml").is_file()
    assert list((out / "checkpoints").glob("ce-*/COMPLETE"))
    assert list((out / "monitor").rglob("*.csv")), "DeepSpeed's CSV monitor wrote nothing"


def test_scst_two_ranks_zero3_offload_gathered_and_synced(tmp_path, synth):
    """Sampled captions differ in length across ranks; neither generation path may hang."""
    for gather in ("true", "false"):
        out = tmp_path / f"run_{gather}"
        run_train(out, synth, "zero3_offload.json", "ce.steps=2", "scst.steps=2",
                  f"scst.gather_for_generation={gather}", "scst.max_new_tokens=12", timeout=600)
        scst = [m for m in read_metrics(out) if m.get("phase") == "scst" and "reward" in m]
        assert [m["step"] for m in scst] == [1, 2]
        for m in scst:
            assert {"reward", "baseline", "advantage_std", "sample_len", "entropy", "lr"} <= set(m)
            assert m["loss"] == m["loss"]
        summary = json.loads((out / "summary.json").read_text())
        assert "CIDEr" in summary["scst"]["test"]
