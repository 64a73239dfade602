"""The DeepSpeed JSON's facts: read and check it, adapt it to this machine, and what it says.

The JSON owns the system (ZeRO stage, offload, precision, clipping, micro-batch, accumulation,
monitors). Every fact the package needs from it (zero_stage, optimizer_offloaded, compute_dtype) is
read here and nowhere else.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import UserError

OFFLOAD_DEVICES = ("cpu", "none", "nvme")
CPU_BF16_ENV = "DS_VIDEOCAP_CPU_BF16"


def _walk(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else k)
    else:
        yield path, value


def read_ds_config(path: str | Path) -> dict:
    """Read and check a DeepSpeed JSON; every problem names the file and the field."""
    path = Path(path)
    if not path.is_file():
        shipped = Path(__file__).resolve().parent.parent / "ds_configs" / path.name
        if not path.is_absolute() and shipped.is_file():
            path = shipped
        else:
            raise UserError(f"DeepSpeed config '{path}' not found (the shipped ones are in ds_configs/)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object at the top level")
    for field, value in _walk(cfg):
        if value == "auto":
            raise UserError(f"{path}: field '{field}' is \"auto\"; plain DeepSpeed drops it silently. Give a value.")
    if "train_batch_size" in cfg:
        raise UserError(f"{path}: remove 'train_batch_size'; give train_micro_batch_size_per_gpu and "
                        "gradient_accumulation_steps so that the file works for any number of GPUs")
    for field in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        value = cfg.get(field, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{path}: field '{field}' must be an integer >= 1, got {value!r}")
    zero = cfg.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"{path}: field 'zero_optimization.stage' must be 0, 1, 2 or 3, got {stage!r}")
    for key in ("offload_optimizer", "offload_param"):
        device = zero.get(key, {}).get("device", "none")
        if device not in OFFLOAD_DEVICES:
            raise UserError(f"{path}: field 'zero_optimization.{key}.device' must be one of "
                            f"{list(OFFLOAD_DEVICES)}, got {device!r}")
        if device == "nvme" and not zero[key].get("nvme_path"):
            raise UserError(f"{path}: field 'zero_optimization.{key}.nvme_path' is required for nvme offload")
    if zero.get("offload_param", {}).get("device", "none") != "none" and stage != 3:
        raise UserError(f"{path}: 'zero_optimization.offload_param' needs stage 3, the file has stage {stage}")
    cfg["_source"] = str(path)
    return cfg


def zero_stage(ds_config: dict | None) -> int:
    return int(((ds_config or {}).get("zero_optimization") or {}).get("stage", 0))


def optimizer_offloaded(ds_config: dict | None) -> bool:
    zero = (ds_config or {}).get("zero_optimization") or {}
    return (zero.get("offload_optimizer") or {}).get("device", "none") != "none"


def param_offloaded(ds_config: dict | None) -> bool:
    zero = (ds_config or {}).get("zero_optimization") or {}
    return (zero.get("offload_param") or {}).get("device", "none") != "none"


def adapt_ds_config(ds_config: dict, micro_batch: int | None, output_dir: str | Path, say=print) -> dict:
    """A copy of the JSON adapted to this machine and run: precision, micro-batch, monitor paths."""
    cfg = json.loads(json.dumps({k: v for k, v in ds_config.items() if k != "_source"}))
    source = ds_config.get("_source", "the DeepSpeed config")
    if micro_batch is not None:
        cfg["train_micro_batch_size_per_gpu"] = micro_batch
    if not torch.cuda.is_available():
        # fp16 has no CPU kernels in DeepSpeed; bf16 runs but is slow without AMX and loses precision
        # on tiny models, so a CPU-only machine trains in fp32 and says so. DS_VIDEOCAP_CPU_BF16=1 keeps
        # bf16 on the CPU: the tests use it to catch dtype mismatches before a GPU run does.
        keep_bf16 = os.environ.get(CPU_BF16_ENV) == "1"
        for key in ("fp16", "bf16"):
            if key == "bf16" and keep_bf16:
                continue
            if cfg.get(key, {}).get("enabled"):
                cfg[key]["enabled"] = False
                say(f"[engine] no GPU: {source} asks for {key}; training in fp32 on the CPU instead")
        if cfg.get("hybrid_engine", {}).get("enabled"):
            raise UserError(f"{source}: field 'hybrid_engine.enabled': the Hybrid Engine needs CUDA; "
                            "remove it (rollouts use gathered ZeRO-3 parameters instead)")
        for key in ("offload_optimizer", "offload_param"):
            if cfg.get("zero_optimization", {}).get(key, {}).get("pin_memory"):
                cfg["zero_optimization"][key]["pin_memory"] = False  # pinning needs CUDA
    for monitor in ("tensorboard", "csv_monitor"):
        if cfg.get(monitor, {}).get("enabled") and not cfg[monitor].get("output_path"):
            cfg[monitor]["output_path"] = str(Path(output_dir) / "monitor") + os.sep
    return cfg


def compute_dtype(ds_config: dict | None) -> torch.dtype:
    """The dtype the model's weights and inputs take under this JSON (after adapt_ds_config)."""
    ds = ds_config or {}
    if (ds.get("bf16") or {}).get("enabled"):
        return torch.bfloat16
    if (ds.get("fp16") or {}).get("enabled"):
        return torch.float16
    return torch.float32
