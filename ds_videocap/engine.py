"""DeepSpeed: the JSON config, the optimizer, initialize, the learning-rate schedule, generation.

The JSON owns the system (ZeRO stage, offload, precision, clipping, micro-batch, accumulation,
monitors); this file reads and checks it, adapts precision to the machine, and builds the engine.
Checkpoints live in checkpoints.py, which is the only other file that touches deepspeed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch

from .errors import UserError

OFFLOAD_DEVICES = ("cpu", "none", "nvme")


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
    return (ds_config or {}).get("zero_optimization", {}).get("stage", 0)


def optimizer_offloaded(ds_config: dict) -> bool:
    return ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"


def adapt_ds_config(ds_config: dict, micro_batch: int | None, output_dir: str | Path, say=print) -> dict:
    """A copy of the JSON adapted to this machine and run: precision, micro-batch, monitor paths."""
    cfg = json.loads(json.dumps({k: v for k, v in ds_config.items() if k != "_source"}))
    source = ds_config.get("_source", "the DeepSpeed config")
    if micro_batch is not None:
        cfg["train_micro_batch_size_per_gpu"] = micro_batch
    if not torch.cuda.is_available():
        # fp16 has no CPU kernels in DeepSpeed; bf16 runs but is slow without AMX and loses precision
        # on tiny models, so a CPU-only machine trains in fp32 and says so.
        for key in ("fp16", "bf16"):
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


def compute_dtype(ds_config: dict) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def init_distributed() -> tuple[int, int]:
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    _unlink_shm_buffers(rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank, world


def exit_distributed(code: int, wait_for_peers: bool = True) -> None:
    """End a rank of a distributed command: wait for every rank (after success), flush, and _exit.

    Neither interpreter exit nor destroy_process_group() is safe with gloo here: about one run in
    forty aborted after a successful run with "terminate called without an active exception" (gloo
    worker threads still joinable, or holding tensors, while C++ statics are torn down), which the
    launcher reports as exit code 250. Once every rank has passed the barrier no collective is left
    to run, so skipping the teardown loses nothing; files are closed by then and stdio is flushed here.
    A rank that stopped on an error does not wait (its peers may be gone or stuck in a collective);
    its exit code still says what happened instead of a teardown abort's.
    """
    import logging

    import torch.distributed as dist

    if wait_for_peers and dist.is_initialized():
        dist.barrier()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _unlink_shm_buffers(rank: int) -> None:
    """Remove the names of DeepSpeed's CPU shared-memory all-reduce buffers once every rank has them open.

    DeepSpeed's CPU backend creates a 66 MB /dev/shm file per rank for tensor-parallel inference
    all-reduce (unused here) and never deletes it: every run left ~130 MB of RAM-backed files behind
    (18 GB after a day of tests). Unlinking keeps the mappings valid until the processes exit.
    """
    import glob

    torch.distributed.barrier()
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{addr}_{port}_{rank}"):
        with contextlib.suppress(OSError):
            os.unlink(path)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only; no weight decay on biases, norms and embeddings of size 1 dim."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        if ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters: check model.llm / model.vit and LoRA settings")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, ds_config: dict, lr: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if optimizer_offloaded(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=tuple(betas), adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to lr over `warmup` steps, then cosine from lr down to min_lr at `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def initialize(model, optimizer, ds_config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


@contextlib.contextmanager
def generation_context(engine, gather: bool = True):
    """Eval mode and no grad for rollouts and decoding; yields (model, synced_gpus).

    Under ZeRO-3 the parameters are gathered once for the whole rollout (one all-gather instead of
    one per layer per generated token); with gather=False each rank fetches layer by layer, and
    generate() must run with synced_gpus so that ranks finishing early keep serving the others.
    """
    was_training = engine.module.training
    engine.module.eval()
    try:
        with torch.no_grad():
            if engine.zero_optimization_stage() == 3 and gather:
                with _gathered(engine), _zero3_hooks_off(engine):
                    yield engine.module, False
            elif engine.zero_optimization_stage() == 3:
                yield _EngineGenerator(engine), torch.distributed.get_world_size() > 1
            else:
                yield engine.module, False
    finally:
        engine.module.train(was_training)


@contextlib.contextmanager
def _gathered(engine):
    """Every ZeRO-3 parameter whole on every rank for the block, then partitioned again.

    DeepSpeed's unwrap_model_for_generation gathers through GatheredParameters, which launches one
    all-gather per parameter (124 for the tiny OPT): on CPU/gloo that latency was two thirds of a whole
    rollout. all_gather_coalesced (ZeRO-3's own fetch path) packs a bucket of partitions into one flat
    all-gather; buckets of stage3_prefetch_bucket_size elements bound the transient flat buffer.
    """
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = [p for p in engine.module.parameters() if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    bucket_size = max(1, int(engine.zero_prefetch_bucket_size()))
    bucket, bucket_numel = [], 0
    for param in params:
        bucket.append(param)
        bucket_numel += param.ds_numel
        if bucket_numel >= bucket_size:
            bucket[0].all_gather_coalesced(bucket).wait()
            bucket, bucket_numel = [], 0
    if bucket:
        bucket[0].all_gather_coalesced(bucket).wait()
    try:
        yield
    finally:
        if params:
            params[0].partition(param_list=params, has_been_updated=False)


@contextlib.contextmanager
def _zero3_hooks_off(engine):
    """ZeRO-3's per-module fetch/release hooks taken out of their modules' hook dicts for the block.

    With every parameter gathered they would only cost time (and release parameters after each module).
    unwrap_model_for_generation removes them and re-registers afresh, which also invalidates the
    prefetch trace so that the next training step runs untraced; putting the same hooks back, in their
    original order, keeps both.
    """
    offload = getattr(engine.optimizer, "parameter_offload", None) or engine.optimizer
    handles = [*offload.forward_hooks, *offload.backward_hooks, offload.fwd_pre_hook]
    saved = {}
    for handle in handles:
        hooks = handle.hooks_dict_ref()
        if hooks is not None and handle.id in hooks:
            saved.setdefault(id(hooks), (hooks, hooks.copy()))
            del hooks[handle.id]
    try:
        yield
    finally:
        for hooks, original in saved.values():
            hooks.clear()
            hooks.update(original)


class _EngineGenerator:
    """generate() through the engine's forward, where ZeRO-3 fetches each layer's parameters
    (including those a module owns directly, like the query tokens) as the layer runs."""

    def __init__(self, engine):
        self.engine, self.module = engine, engine.module

    def generate(self, pixel_values, **kwargs):
        return self.engine(pixel_values, generate_kwargs=kwargs)

    def decode(self, sequences):
        return self.module.decode(sequences)
