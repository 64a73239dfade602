"""fit(): the one outer loop shared by CE and SCST; only the step function differs.

Steps are optimizer steps (micro-batches x gradient accumulation). The loop owns the learning rate
(derived from the step, so nothing to checkpoint), logging, periodic validation, checkpoints and the
resumable position in the data.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .engine import lr_at, set_lr
from .errors import UserError


@dataclass
class TrainState:
    """Resumable counters, saved in every checkpoint's client state."""
    phase: str = "ce"
    phase_index: int = 0
    step: int = 0
    epoch: int = 0
    position: int = 0
    """Samples of the current epoch this rank has consumed (the sampler restarts after them)."""
    best_cider: float = -1.0
    best_checkpoint: str | None = None
    nonfinite_in_a_row: int = 0
    samples_seen: int = 0
    per_source: dict = field(default_factory=dict)
    """Samples this rank drew from each training source; a checkpoint holds the sum over all ranks."""
    skipped_videos: list = field(default_factory=list)
    """Every rank's skipped videos up to the checkpoint, so a resumed run's summary still lists them."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Phase:
    name: str
    cfg: object
    """The recipe section (ce or scst): steps, lr, min_lr, warmup_steps, log/eval/save_every, keep_last."""
    step_fn: object
    loader: object
    sampler: object
    total_steps: int


class NonFiniteError(UserError):
    """Too many non-finite losses in a row (recipe field max_nonfinite_steps): the CLI prints it as one
    line naming the phase, the step and the batch's videos, without a traceback."""


def _log(run, record: dict) -> None:
    if run.rank == 0:
        with open(run.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if getattr(run.engine, "monitor", None) is not None and run.engine.monitor.enabled:
            events = [(f"{record['phase']}/{k}", float(v), record["step"]) for k, v in record.items()
                      if isinstance(v, (int, float)) and k not in ("step", "epoch")]
            run.engine.monitor.write_events(events)


def _drawn(run, state: TrainState) -> dict:
    """Samples drawn from each training source so far, over all ranks (for mixed training sets)."""
    if run.sources is None:
        return {}
    return {f"drawn_{name}": n for name, n in run.sources.all_ranks(state.per_source).items()}


def fit(run, phase: Phase, state: TrainState) -> TrainState:
    """Train `phase` from `state` until phase.total_steps; `run` holds engine, ranks, hooks."""
    from tqdm import tqdm

    cfg, engine = phase.cfg, run.engine
    accumulation = engine.gradient_accumulation_steps()
    bar = tqdm(total=phase.total_steps, initial=state.step, disable=run.rank != 0,
               desc=phase.name, dynamic_ncols=True, mininterval=2.0)
    window, window_start, window_samples = [], time.time(), 0
    micro_in_step, last_batch = 0, None
    # Fail as soon as this rank's epoch can no longer stay under data.max_skipped_fraction (a phase
    # may end before its first epoch does).
    run.skips.epoch_size = len(phase.sampler)
    known = {s["video"] for s in run.skips.all_skipped}
    run.skips.all_skipped += [s for s in state.skipped_videos if s["video"] not in known]
    while state.step < phase.total_steps:
        phase.sampler.load_state_dict({"epoch": state.epoch, "position": state.position})
        for batch in phase.loader:
            state.position = phase.sampler.position
            run.skips.add(batch)
            if run.sources is not None:
                run.sources.count(batch["indices"], state.per_source)
            if batch["pixel_values"] is None:
                # Every sample of this micro-batch was skipped: stand in the last good one with zero
                # weight, so that this rank still joins the collectives the other ranks run.
                # (Skipping instead would put this rank one collective behind the others: a hang.)
                batch = dict(last_batch or _blank_batch(run), zero_weight=True)
            else:
                last_batch = batch
            set_lr(engine, lr_at(state.step, phase.total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr))
            out = phase.step_fn(engine, batch, run)
            if out.get("skipped_nonfinite"):
                # Every rank skips together (the step function all-reduces the flag); the micro-batch
                # does not count towards gradient accumulation, as DeepSpeed did not see it either.
                state.nonfinite_in_a_row += 1
                ids = batch["video_ids"] if not batch.get("zero_weight") else []
                run.say(f"[{phase.name}] step {state.step + 1}: non-finite {out.get('nonfinite', 'loss')}, "
                        f"update skipped (videos {ids[:8]})")
                if state.nonfinite_in_a_row >= run.max_nonfinite:
                    raise NonFiniteError(f"{phase.name}: {state.nonfinite_in_a_row} non-finite losses in a row "
                                         f"(max_nonfinite_steps={run.max_nonfinite}), last at step "
                                         f"{state.step + 1}, epoch {state.epoch}, videos {ids}")
                continue
            micro_in_step += 1
            state.nonfinite_in_a_row = 0
            if not batch.get("zero_weight"):  # a stand-in's loss says nothing about training
                window.append(out)
            window_samples += len(batch["video_ids"]) * run.world
            if micro_in_step < accumulation:
                continue
            micro_in_step = 0
            state.step += 1
            state.samples_seen += window_samples
            bar.update(1)
            if window and (state.step % cfg.log_every == 0 or state.step == phase.total_steps):
                elapsed = max(time.time() - window_start, 1e-9)
                record = {k: sum(o[k] for o in window) / len(window) for k in window[0] if k != "skipped_nonfinite"}
                record.update(phase=phase.name, step=state.step, epoch=state.epoch,
                              lr=engine.optimizer.param_groups[0]["lr"], samples_per_s=window_samples / elapsed,
                              **_drawn(run, state))
                _log(run, record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                                sps=f"{record['samples_per_s']:.0f}")
                window, window_start, window_samples = [], time.time(), 0
            last = state.step == phase.total_steps
            if (cfg.eval_every and state.step % cfg.eval_every == 0) or last:
                run.validate(phase.name, state)
            if (cfg.save_every and state.step % cfg.save_every == 0) or last:
                run.skips.merge_ranks()
                state.skipped_videos = list(run.skips.all_skipped)
                run.save(phase.name, state)
            if last:
                break
        else:
            state.epoch += 1
            state.position = 0
            run.skips.epoch_report()
    bar.close()
    run.skips.merge_ranks()  # rank 0 writes the summary: it needs every rank's skipped videos
    return state


def _blank_batch(run) -> dict:
    """A zero-weight stand-in for a rank whose first micro-batch had no decodable video at all."""
    data = run.cfg.data
    return {"pixel_values": torch.zeros(1, data.frames, 3, data.image_size, data.image_size),
            "video_ids": [], "videos": [], "indices": [], "captions": [""], "references": [[""]], "skipped": []}


def steps_for(cfg, loader_len: int, accumulation: int) -> int:
    """Optimizer steps of a phase: `steps`, or `epochs` x the steps one epoch holds."""
    if getattr(cfg, "epochs", None):
        return cfg.epochs * max(1, math.floor(loader_len / accumulation))
    return cfg.steps
