"""The optimizer: parameter groups, AdamW (DeepSpeed's CPU Adam under optimizer offload), the
learning-rate schedule, and the switch of settings between the CE and SCST phases.

One optimizer serves both phases (one engine). At the phase change SCST's own weight decay and betas
are written into the existing parameter groups, and its Adam moments are kept (default) or reset
(scst.reset_optimizer), which is what a separate SCST run from a CE checkpoint gets (init_from loads
weights only). README, "Training on GPUs", has the measurement behind the default.
"""
from __future__ import annotations

import math

import torch

from .ds_json import optimizer_offloaded
from .errors import UserError


def param_groups(model: torch.nn.Module, weight_decay: float, vit_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters only; no weight decay on biases, norms and 1-dim parameters; with
    vit_lr_scale != 1 the ViT's parameters in groups of their own whose lr is that share of the phase's.

    Each group carries "decay" (True/False) so that a later phase can set its own weight decay on the
    right group, and "lr_scale" for set_lr (DeepSpeed's ZeRO optimizers keep extra group keys).
    """
    groups = {}  # (is ViT, decays) -> parameters; the LLM and Q-Former's first: logs read group 0's lr
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        decays = not (ndim < 2 or "norm" in name.lower() or name.endswith(".bias"))
        vit = vit_lr_scale != 1.0 and "vision_model." in name
        groups.setdefault((vit, decays), []).append(p)
    if not groups:
        raise UserError("the model has no trainable parameters: check model.llm / model.vit and LoRA settings")
    order = [(False, True), (False, False), (True, True), (True, False)]
    return [{"params": groups.get(key, []), "weight_decay": weight_decay if key[1] else 0.0, "decay": key[1],
             "lr_scale": vit_lr_scale if key[0] else 1.0}
            for key in order if key in groups or not key[0]]


def build_optimizer(model, ds_config: dict, lr: float, weight_decay: float, betas,
                    vit_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, vit_lr_scale)
    if optimizer_offloaded(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=tuple(betas), adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def base_optimizer(engine_or_optimizer):
    """The torch optimizer holding the parameter groups and Adam state, under any DeepSpeed wrapper
    (ZeRO 1-3 and the bf16 optimizer keep it as `.optimizer`)."""
    optimizer = getattr(engine_or_optimizer, "optimizer", engine_or_optimizer)
    while hasattr(optimizer, "optimizer") and isinstance(optimizer.optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def apply_phase_settings(engine_or_optimizer, weight_decay: float, betas, reset_moments: bool) -> None:
    """Give the optimizer a phase's weight decay and betas; with reset_moments, zero Adam's moments and
    step counts so that bias correction starts over, as a freshly built AdamW would."""
    optimizer = base_optimizer(engine_or_optimizer)
    for group in optimizer.param_groups:
        group["betas"] = tuple(betas)
        group["weight_decay"] = weight_decay if group.get("decay", True) else 0.0
    if not reset_moments:
        return
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            elif key == "step":
                state[key] = 0


def describe_settings(engine_or_optimizer) -> str:
    """The weight decay and betas the optimizer holds now, read back from its parameter groups."""
    groups = base_optimizer(engine_or_optimizer).param_groups
    decays = "/".join(f"{g['weight_decay']:g}" for g in groups)
    return f"weight decay {decays}, betas {tuple(float(b) for b in groups[0]['betas'])}"


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to lr over `warmup` steps, then cosine from lr down to min_lr at `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
