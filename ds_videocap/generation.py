"""The generation context: eval mode, no grad, and ZeRO-3 parameters gathered once per rollout.

Used by SCST's rollouts and by validation/test decoding during training. The per-layer synced path
(gather=False) is the fallback for models whose gathered copy does not fit on one device.
"""
from __future__ import annotations

import contextlib

import torch

from .engine import world_size
from .trainable import train_mode


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
                yield _EngineGenerator(engine), world_size() > 1
            else:
                yield engine.module, False
    finally:
        if was_training:
            train_mode(engine.module)  # not .train(True): that would wake a frozen ViT too


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
