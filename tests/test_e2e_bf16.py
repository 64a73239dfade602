"""bf16 end to end through the launcher: one CE step and one SCST step under ZeRO-2 and ZeRO-3.

The shipped JSONs ask for bf16; a CPU run normally trains in fp32, and DS_VIDEOCAP_CPU_BF16=1 keeps
bf16 so that a dtype mismatch between the frames, the frame embedding, the Q-Former, the projection and
the LLM (or in the SCST loss) fails here rather than on a user's GPU, where fp32 hides nothing.
"""
import json
import math

import pytest
from e2e import read_metrics, run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    folder = tmp_path_factory.mktemp("synth_bf16")
    make_synthetic_set(folder, videos=40, seed=42)
    return folder


@pytest.mark.parametrize("ds_json", ["zero2.json", "zero3.json"])
def test_one_ce_and_one_scst_step_in_bf16(tmp_path, synth, ds_json):
    out = tmp_path / "run"
    proc = run_train(out, synth, ds_json, "ce.steps=1", "scst.steps=1", "scst.max_new_tokens=8",
                     "model.frame_embedding=true", "scst.weight_decay=0.2", "scst.betas=[0.5,0.6]",
                     "scst.reset_optimizer=true", "ce.itc_across_ranks=true", "scst.reward_bleu4=1",
                     env={"DS_VIDEOCAP_CPU_BF16": "1"})
    assert "torch.bfloat16" in proc.stdout and "training in fp32" not in proc.stdout
    # SCST's optimizer settings, read back from the ZeRO optimizer's own parameter groups.
    assert "[train] ce: 1 steps, lr 0.001 -> 1e-05, weight decay 0.05/0, betas (0.9, 0.999)" in proc.stdout
    assert "weight decay 0.2/0, betas (0.5, 0.6), Adam moments reset, reward CIDEr-D + 1 x BLEU-4" in proc.stdout
    metrics = [m for m in read_metrics(out) if "loss" in m]
    assert [m["phase"] for m in metrics] == ["ce", "scst"]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert math.isfinite(metrics[1]["reward"])
    summary = json.loads((out / "summary.json").read_text())
    assert "CIDEr" in summary["ce"]["test"] and "CIDEr" in summary["scst"]["test"]
    assert summary["skipped_videos"] == [] and (out / "config.yaml").is_file()
    assert list((out / "checkpoints").glob("scst-*/COMPLETE"))
    assert list((out / "monitor").rglob("*.csv")), "DeepSpeed's CSV monitor wrote nothing"
