"""DeepSpeed and torch.distributed: process start and end, collectives, initialize (the JSON's facts:
ds_json.py).

Every torch.distributed collective of the package goes through the helpers below (any_rank,
broadcast_float, sum_over_ranks, average_over_ranks, gather_objects, gather_rows, barrier). They put tensors on the
accelerator's current device: NCCL refuses CPU tensors ("No backend type associated with device type
cpu"), gloo takes them, so code that calls dist.* directly passes every CPU test and fails on a GPU.
Outside a distributed run they return this process's own value.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch


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


def average_over_ranks(tensors: list[torch.Tensor]) -> None:
    """In place, each tensor becomes the mean of every rank's copy (same shapes on every rank; one
    all-reduce of them all, in float32 on the collective device)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1 or not tensors:
        return
    device = collective_device()
    flat = torch.cat([t.detach().reshape(-1).to(device, torch.float32) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset: offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


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


