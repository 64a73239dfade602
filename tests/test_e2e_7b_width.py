"""The 7B recipes' graphs at full width (real hidden sizes, heads and vocab; 1-2 layers per tower)
through launch/train.sh under ZeRO-3 + CPU offload on 2 ranks: one CE and one SCST step.

One model (Vicuna-7B InstructBLIP + LoRA: ~2.3 min on 2 cores) keeps the file under ~3 minutes; the
OPT-6.7B one takes ~2 min more, so it runs only with DS_VIDEOCAP_7B_ALL=1. Both are measured by
benchmarks/seven_b_smoke.py (benchmarks/README.md, "7B graphs at full width").
"""
import json
import math
import os
import sys

import pytest
from e2e import ROOT, read_metrics

sys.path.insert(0, str(ROOT / "benchmarks"))
import seven_b_smoke  # noqa: E402

pytestmark = pytest.mark.slow
FAMILIES = ["llama"] + (["opt"] if os.environ.get("DS_VIDEOCAP_7B_ALL") else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_full_width_ce_and_scst_under_zero3(tmp_path, family):
    from ds_videocap.synth import make_synthetic_set

    synth = make_synthetic_set(tmp_path / "synth", videos=12, seed=42)
    folder = seven_b_smoke.write_wide_folder(family, synth / "tokenizer", tmp_path / "model", image_size=56)
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 4096
    assert config["text_config"]["vocab_size"] == seven_b_smoke.TEXT[family]["vocab_size"]
    assert config["vision_config"]["hidden_size"] == 1408 and config["qformer_config"]["hidden_size"] == 768

    out = tmp_path / "run"
    res = seven_b_smoke.run_recipe(family, folder, synth, out, "data.image_size=56", timeout=600)
    assert res["returncode"] == 0, res["log_tail"]

    metrics = read_metrics(out)
    ce = [m for m in metrics if m.get("phase") == "ce" and "loss" in m]
    scst = [m for m in metrics if m.get("phase") == "scst" and "reward" in m]
    assert [m["step"] for m in ce] == [1] and [m["step"] for m in scst] == [1]  # both phases ran
    # a random model over the full vocabulary: CE near ln(vocab)
    assert math.isfinite(ce[0]["loss"]) and 5 < ce[0]["loss"] < 20
    assert math.isfinite(scst[0]["reward"]) and math.isfinite(scst[0]["loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert "CIDEr" in summary["ce"]["test"] and "CIDEr" in summary["scst"]["test"]

    # Partitioned: each rank's checkpoint holds its half of the frozen weights, not the whole model.
    params = res["params"]
    assert params > 4e8  # full-width embeddings and layers, not a tiny model
    shards = sorted((out / "checkpoints").glob("*/zero_pp_rank_*_mp_rank_00_model_states.pt"))
    assert len(shards) == 2
    for shard in shards:
        assert shard.stat().st_size < 0.55 * params * 4, f"{shard.name}: more than half the fp32 model"
    # Memory: every rank stays far below what the full 7B needs in fp32 (~29 GiB), and, though
    # parameters are gathered for generation, within 3x the fp32 size of the graph it trains.
    assert sorted(res["peak_rss_mib"]) == [0, 1]
    for rank, mib in res["peak_rss_mib"].items():
        assert mib * 2**20 < seven_b_smoke.FULL_PARAMS[family] * 4, (rank, mib)
        assert mib * 2**20 < 3 * params * 4, (rank, mib)
