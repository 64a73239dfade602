import json
from pathlib import Path

import pytest
import torch

from ds_videocap.ds_json import adapt_ds_config, read_ds_config
from ds_videocap.errors import UserError
from ds_videocap.optim import lr_at, param_groups

CONFIGS = sorted((Path(__file__).parent.parent / "ds_configs").glob("*.json"))


def test_the_six_shipped_configs():
    names = {p.stem for p in CONFIGS}
    assert names == {"zero0", "zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"}
    for path in CONFIGS:
        cfg = read_ds_config(path)
        assert "train_batch_size" not in cfg
        assert "auto" not in path.read_text()
        assert cfg["bf16"]["enabled"] is True


def test_cpu_fallback_and_micro_batch(tmp_path):
    cfg = read_ds_config(Path("ds_configs/zero3_offload.json"))
    said = []
    adapted = adapt_ds_config(cfg, micro_batch=5, output_dir=tmp_path, say=said.append)
    if not torch.cuda.is_available():
        assert adapted["bf16"]["enabled"] is False
        assert any("fp32" in s for s in said)
        assert adapted["zero_optimization"]["offload_param"]["pin_memory"] is False
    assert adapted["train_micro_batch_size_per_gpu"] == 5
    assert adapted["tensorboard"]["output_path"].startswith(str(tmp_path))
    assert "_source" not in adapted


@pytest.mark.parametrize("content, field", [
    ({"train_batch_size": 64}, "train_batch_size"),
    ({"zero_optimization": {"stage": "auto"}}, "zero_optimization.stage"),
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}}, "offload_param.device"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "offload_param"),
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu"),
])
def test_bad_json_names_file_and_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError) as err:
        read_ds_config(path)
    assert "bad.json" in str(err.value) and field in str(err.value)


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"a": 1,,}')
    with pytest.raises(UserError, match="broken.json.*line 1"):
        read_ds_config(path)
    with pytest.raises(UserError, match="not found"):
        read_ds_config(tmp_path / "nope.json")


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, total=100, warmup=10, lr=1.0, min_lr=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.55, abs=1e-6)


def test_param_groups_skip_frozen_and_exempt_bias_and_norm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)}
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(UserError, match="no trainable"):
        param_groups(model, 0.05)


def test_vit_lr_scale_puts_the_vit_in_groups_of_its_own():
    """model.vit_lr_scale: the ViT's weights and biases get that share of the phase's lr from set_lr; the
    other groups come first (logs read group 0's lr) and keep theirs; at 1.0 the groups are as before."""
    from types import SimpleNamespace

    from ds_videocap.optim import set_lr

    model = torch.nn.Module()
    model.vision_model = torch.nn.Linear(4, 4)
    model.qformer = torch.nn.Linear(4, 4)
    groups = param_groups(model, 0.05, vit_lr_scale=0.3)
    assert [(g["decay"], g["lr_scale"], len(g["params"])) for g in groups] == [
        (True, 1.0, 1), (False, 1.0, 1), (True, 0.3, 1), (False, 0.3, 1)]
    assert groups[2]["params"][0] is model.vision_model.weight
    engine = SimpleNamespace(optimizer=torch.optim.AdamW(groups, lr=1.0))
    set_lr(engine, 2e-3)
    assert [g["lr"] for g in engine.optimizer.param_groups] == pytest.approx([2e-3, 2e-3, 6e-4, 6e-4])
    assert len(param_groups(model, 0.05)) == 2
