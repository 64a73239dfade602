"""The optimizer at the phase change: SCST's weight decay and betas land in the right parameter groups,
and its Adam moments are reset (a fresh AdamW's step follows) or kept, for both AdamW and DeepSpeed's
CPU Adam (the optimizer-offload JSONs)."""
import copy

import pytest
import torch

from ds_videocap.optim import apply_phase_settings, build_optimizer, describe_settings

OFFLOAD = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))


def train_step(model, optimizer, seed):
    torch.manual_seed(seed)
    optimizer.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()


@pytest.mark.parametrize("ds_config", [{}, OFFLOAD], ids=["adamw", "cpu_adam"])
def test_reset_gives_the_step_of_a_fresh_optimizer_with_scst_settings(ds_config):
    model = tiny_model()
    ce = build_optimizer(model, ds_config, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.999))
    for seed in range(3):  # CE moments and step counts build up
        train_step(model, ce, seed)
    fresh_model = copy.deepcopy(model)
    fresh = build_optimizer(fresh_model, ds_config, lr=1e-2, weight_decay=0.3, betas=(0.5, 0.6))

    apply_phase_settings(ce, weight_decay=0.3, betas=(0.5, 0.6), reset_moments=True)
    assert describe_settings(ce) == "weight decay 0.3/0, betas (0.5, 0.6)"  # biases and norms stay at 0
    train_step(model, ce, seed=7)
    train_step(fresh_model, fresh, seed=7)
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("ds_config", [{}, OFFLOAD], ids=["adamw", "cpu_adam"])
def test_kept_moments_differ_from_a_fresh_start(ds_config):
    model = tiny_model()
    ce = build_optimizer(model, ds_config, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.999))
    for seed in range(3):
        train_step(model, ce, seed)
    moments = [s["exp_avg"].clone() for s in ce.state.values()]
    apply_phase_settings(ce, weight_decay=0.3, betas=(0.5, 0.6), reset_moments=False)
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, ce.state.values()))
    assert all(g["betas"] == (0.5, 0.6) for g in ce.param_groups)
