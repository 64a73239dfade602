"""fit(): the one outer loop shared by CE and SCST; only the step function differs.

A step function computes one micro-batch's loss: `step_fn(engine, batch, ctx) -> (loss, metrics)`.
fit() does everything else once, for both phases: the zero-weight stand-in for a micro-batch whose
videos were all skipped, the non-finite rule, backward and step, the learning rate (derived from the
step, so nothing to checkpoint), logging, periodic validation and checkpoints (the `validate` and
`save` it is given), and the resumable position in the data.

The non-finite rule: when the loss is NaN/inf on any rank, every rank drops that micro-batch (no
backward, no step); gradients already accumulated from earlier micro-batches of the same optimizer
step are kept, and the step waits for one more good micro-batch (DeepSpeed's own micro-step counter
did not move either). max_nonfinite_steps such micro-batches in a row stop the run.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .data import blank_batch
from .engine import any_rank
from .errors import UserError
from .optim import lr_at, set_lr
from .trainable import train_mode


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
    step_fn: Callable
    loader: object
    sampler: object
    total_steps: int


@dataclass
class StepContext:
    """What the step functions and fit() share: the engine, this rank, and the run's services."""
    engine: object
    rank: int
    world: int
    device: object
    dtype: torch.dtype
    frame_shape: tuple
    """(frames, image_size): the shape of a stand-in batch."""
    skips: object
    """data.SkipTracker: skipped videos, per epoch and for the run."""
    log: Callable[[dict], None]
    """Writes one metrics record (rank 0 writes; every rank may call)."""
    max_nonfinite: int = 5
    ce: object = None
    """The recipe's CE section (its contrastive-term settings), for ce_step."""
    scst: object = None
    reward: object = None
    sources: object = None
    """mixing.SourceCounter when several training sets are mixed, else None."""

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)


class NonFiniteError(UserError):
    """Too many non-finite losses in a row (recipe field max_nonfinite_steps): the CLI prints it as one
    line naming the phase, the step and the batch's videos, without a traceback."""


def _drawn(ctx: StepContext, state: TrainState) -> dict:
    """Samples drawn from each training source so far, over all ranks (for mixed training sets)."""
    if ctx.sources is None:
        return {}
    return {f"drawn_{name}": n for name, n in ctx.sources.all_ranks(state.per_source).items()}


def update(engine, loss: torch.Tensor, zero_weight: bool) -> bool:
    """backward + step for one micro-batch, unless its loss is non-finite on any rank (then nothing).

    Returns whether the update ran. Every rank takes the same branch (the flag is all-reduced), so no
    rank waits in a collective that the others skipped.
    """
    if zero_weight:  # a stand-in batch (all its videos were skipped): joins the collectives, adds nothing
        loss = loss * 0.0
    if any_rank(not bool(torch.isfinite(loss.detach()).all())):
        return False
    engine.backward(loss)
    engine.step()
    return True


def fit(ctx: StepContext, phase: Phase, state: TrainState, validate: Callable, save: Callable) -> TrainState:
    """Train `phase` from `state` until phase.total_steps.

    validate(phase_name, state) runs every cfg.eval_every steps and at the end; save(phase_name, state)
    every cfg.save_every steps and at the end. Both are collectives: every rank calls them.
    """
    from tqdm import tqdm

    cfg, engine = phase.cfg, ctx.engine
    train_mode(engine.module)  # a model fresh from from_pretrained is in eval mode: dropout off, no checkpointing
    accumulation = engine.gradient_accumulation_steps()
    bar = tqdm(total=phase.total_steps, initial=state.step, disable=ctx.rank != 0,
               desc=phase.name, dynamic_ncols=True, mininterval=2.0)
    window, window_start, window_samples = [], time.time(), 0
    micro_in_step, last_batch = 0, None
    # Fail as soon as this rank's epoch can no longer stay under data.max_skipped_fraction (a phase
    # may end before its first epoch does).
    ctx.skips.epoch_size = len(phase.sampler)
    known = {s["video"] for s in ctx.skips.all_skipped}
    ctx.skips.all_skipped += [s for s in state.skipped_videos if s["video"] not in known]
    while state.step < phase.total_steps:
        phase.sampler.load_state_dict({"epoch": state.epoch, "position": state.position})
        for batch in phase.loader:
            state.position = phase.sampler.position
            ctx.skips.add(batch)
            if ctx.sources is not None:
                ctx.sources.count(batch["indices"], state.per_source)
            if batch["pixel_values"] is None:
                # Every sample of this micro-batch was skipped: stand in the last good one with zero
                # weight, so that this rank still joins the collectives the other ranks run.
                # (Skipping instead would put this rank one collective behind the others: a hang.)
                batch = dict(last_batch or blank_batch(*ctx.frame_shape), zero_weight=True)
            else:
                last_batch = batch
            set_lr(engine, lr_at(state.step, phase.total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr))
            loss, metrics = phase.step_fn(engine, batch, ctx)
            if not update(engine, loss, bool(batch.get("zero_weight"))):
                state.nonfinite_in_a_row += 1
                ids = batch["video_ids"] if not batch.get("zero_weight") else []
                ctx.say(f"[{phase.name}] step {state.step + 1}: non-finite {metrics.get('nonfinite', 'loss')}, "
                        f"update skipped (videos {ids[:8]})")
                if state.nonfinite_in_a_row >= ctx.max_nonfinite:
                    raise NonFiniteError(f"{phase.name}: {state.nonfinite_in_a_row} non-finite losses in a row "
                                         f"(max_nonfinite_steps={ctx.max_nonfinite}), last at step "
                                         f"{state.step + 1}, epoch {state.epoch}, videos {ids}")
                continue
            micro_in_step += 1
            state.nonfinite_in_a_row = 0
            if not batch.get("zero_weight"):  # a stand-in's loss says nothing about training
                window.append({"loss": loss.item(), **{k: v for k, v in metrics.items() if k != "nonfinite"}})
            window_samples += len(batch["video_ids"]) * ctx.world
            if micro_in_step < accumulation:
                continue
            micro_in_step = 0
            state.step += 1
            state.samples_seen += window_samples
            bar.update(1)
            if window and (state.step % cfg.log_every == 0 or state.step == phase.total_steps):
                elapsed = max(time.time() - window_start, 1e-9)
                keys = dict.fromkeys(k for o in window for k in o)  # a key some micro-batches lack: their mean
                record = {k: sum(o[k] for o in window if k in o) / sum(k in o for o in window) for k in keys}
                record.update(phase=phase.name, step=state.step, epoch=state.epoch,
                              lr=engine.optimizer.param_groups[0]["lr"], samples_per_s=window_samples / elapsed,
                              **_device_memory(), **_drawn(ctx, state))
                ctx.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                                sps=f"{record['samples_per_s']:.0f}")
                window, window_start, window_samples = [], time.time(), 0
            last = state.step == phase.total_steps
            if (cfg.eval_every and state.step % cfg.eval_every == 0) or last:
                validate(phase.name, state)
            if (cfg.save_every and state.step % cfg.save_every == 0) or last:
                ctx.skips.merge_ranks()
                state.skipped_videos = list(ctx.skips.all_skipped)
                save(phase.name, state)
            if last:
                break
        else:
            state.epoch += 1
            state.position = 0
            ctx.skips.epoch_report()
    bar.close()
    ctx.skips.merge_ranks()  # rank 0 writes the summary: it needs every rank's skipped videos
    return state


def _device_memory() -> dict:
    """Peak GPU memory of this rank so far (GiB), for the log; nothing on a CPU run."""
    if not torch.cuda.is_available():
        return {}
    return {"gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def steps_for(cfg, loader_len: int, accumulation: int) -> int:
    """Optimizer steps of a phase: `steps`, or `epochs` x the steps one epoch holds."""
    if getattr(cfg, "epochs", None):
        return cfg.epochs * max(1, math.floor(loader_len / accumulation))
    return cfg.steps
