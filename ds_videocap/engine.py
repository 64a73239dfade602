"""DeepSpeed and torch.distributed: the JSON's facts, process start and end, collectives, initialize.

The JSON owns the system (ZeRO stage, offload, precision, clipping, micro-batch, accumulation,
monitors); this file reads and checks it, adapts precision to the machine, and builds the engine.
Every fact the package needs from the JSON (zero_stage, optimizer_offloaded, compute_dtype) is read
here and nowhere else.

Every torch.distributed collective of the package goes through the helpers below (any_rank,
broadcast_float, sum_over_ranks, gather_objects, gather_rows, barrier). They put tensors on the
accelerator's current device: NCCL refuses CPU tensors ("No backend type associated with device type
cpu"), gloo takes them, so code that calls dist.* directly passes every CPU test and fails on a GPU.
Outside a distributed run they return this process's own value.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
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


def init_distributed() -> tuple[int, int]:
    import deepspeed

    if torch.cuda.is_available():
        # Before the first collective: NCCL runs each rank's collectives on its current device.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank, world = rank_and_world()
    if not torch.cuda.is_available():
        _unlink_shm_buffers(rank)
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

    if wait_for_peers:
        barrier()
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

    barrier()
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{addr}_{port}_{rank}"):
        with contextlib.suppress(OSError):
            os.unlink(path)


# ----- collectives ---------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def world_size() -> int:
    return rank_and_world()[1]


def collective_device() -> torch.device:
    """Where collective tensors live: the accelerator's current device (cuda:LOCAL_RANK under NCCL)."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (every rank must call it)."""
    dist = _dist()
    if dist is None:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item() > 0


def broadcast_float(value: float, src: int = 0) -> float:
    """Rank `src`'s value on every rank."""
    dist = _dist()
    if dist is None:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.broadcast(tensor, src)
    return tensor.item()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of every rank's list (same length on every rank)."""
    dist = _dist()
    if dist is None or not values:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    dist = _dist()
    if dist is None:
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)  # pickles through tensors on the current device (set at init)
    return parts


def gather_rows(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's rows in rank order, where this rank's start); ranks may hold different counts.

    Differentiable: the backward all-reduces the gathered rows' gradient and keeps this rank's slice,
    so each rank's rows get the gradient of every rank's loss (a no-grad gather drops it: measured
    worse, benchmarks/README.md). Every rank must call it and run backward through it.
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return local, 0
    device, world, rank = collective_device(), dist.get_world_size(), dist.get_rank()
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.long, device=device))
    counts = [int(c.item()) for c in counts]
    return _GatherRows.apply(local, counts, rank), sum(counts[:rank])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local, counts, rank):
        dist, device = _dist(), collective_device()
        ctx.rows = (sum(counts[:rank]), sum(counts[:rank + 1]))
        padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
        padded[:local.shape[0]] = local.detach().to(device)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(local.device)

    @staticmethod
    def backward(ctx, grad):
        summed = grad.contiguous().to(collective_device())
        _dist().all_reduce(summed)  # d(sum over ranks' losses)/d(gathered rows)
        start, stop = ctx.rows
        return summed[start:stop].to(grad.device), None, None


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def initialize(model, optimizer, ds_config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


