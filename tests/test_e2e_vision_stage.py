"""The vision stage through the launcher, 2 ranks under ZeRO-3 + CPU offload in bf16 (DS_VIDEOCAP_CPU_BF16=1:
the stage's bf16 autocast and the bf16 model built on the folder it wrote): the regression loss falls, the
run's init_model holds the stage's ViT (not the from-scratch one) and its conv tokens, and a resumed run
skips the stage.
Every other end-to-end test runs the stage for 2 steps in fp32 (e2e.FAST); test_e2e_scst_gain.py runs it
in full and checks what it is for (shape named after CE)."""
import json
import re

import pytest
import torch
from e2e import run_train

pytestmark = pytest.mark.slow
STEPS = 30


def test_stage_trains_the_vit_writes_the_folder_and_is_skipped_on_resume(tmp_path, synth40):
    from safetensors.torch import load_file

    from ds_videocap.build import build_tiny_folder

    out = tmp_path / "run"
    args = (f"vision.steps={STEPS}", "vision.micro_batch=16", "vision.log_every=10", "ce.steps=2", "scst.steps=0")
    proc = run_train(out, synth40, "zero3_offload.json", *args, env={"DS_VIDEOCAP_CPU_BF16": "1"})
    assert "torch.bfloat16" in proc.stdout
    losses = [float(x) for x in re.findall(r"\[vision\] step \d+/30: regression loss ([\d.]+)", proc.stdout)]
    assert len(losses) == 3, proc.stdout[-2000:]
    marker = json.loads((out / "init_model" / "vision_stage.json").read_text())
    assert marker["settings"]["steps"] == STEPS and marker["stills"] == 5 * 34
    assert marker["final_loss"] < 0.9 * marker["first_loss"], marker
    scratch = build_tiny_folder("opt", synth40 / "tokenizer", tmp_path / "scratch", image_size=32, seed=42)
    trained, initial = load_file(out / "init_model" / "model.safetensors"), load_file(scratch / "model.safetensors")
    for key, value in initial.items():
        changed = not torch.equal(trained[key], value)
        assert changed == key.startswith("vision_model."), key  # the stage trains the ViT and nothing else there
    side = load_file(out / "init_model" / "videocap_extra.safetensors")  # and the recipe's conv tokens beside it
    assert {k.split(".")[0] for k in side} == {"conv_tokens"} and marker["conv_final_loss"] < marker["conv_first_loss"]

    again = run_train(out, synth40, "zero3_offload.json", *args, "resume=auto", env={"DS_VIDEOCAP_CPU_BF16": "1"})
    assert "stage done before" in again.stdout and "[vision] step" not in again.stdout
    assert load_file(out / "init_model" / "model.safetensors")["vision_model.post_layernorm.weight"].equal(
        trained["vision_model.post_layernorm.weight"])
