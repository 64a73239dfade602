"""`ds-videocap train`: set up one engine, run the CE phase then the SCST phase, evaluate, summarise.

Runs under the DeepSpeed launcher (launch/train.sh), one process per rank. Everything a user can get
wrong (recipe, JSON, annotations, model folder) is checked before any rank starts heavy work.
"""
from __future__ import annotations

import random
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .ce import ce_step
from .checkpoints import find_resume, load_checkpoint
from .data import SkipTracker, VideoCaptionDataset, build_loader
from .ds_json import adapt_ds_config, compute_dtype
from .engine import init_distributed, initialize
from .loop import Phase, StepContext, TrainState, fit, steps_for
from .metrics import start_meteor
from .mixing import SourceCounter, mixed_epoch_order
from .optim import apply_phase_settings, build_optimizer, describe_settings
from .prepare import attach_text_table, build_reward, prepare_data, prepare_model
from .run_check import check_run
from .run_eval import RunEvaluator
from .run_folder import RunFolder
from .scst import scst_step
from .watchdog import watch_launcher

DEFAULT_DS_CONFIG = "ds_configs/zero3_offload.json"
PHASES = ("ce", "scst")
STEP_FUNCTIONS = {"ce": ce_step, "scst": scst_step}


def train_command(args) -> int:
    cfg, raw_ds_config = check_run(args, DEFAULT_DS_CONFIG)  # every user mistake surfaces here
    if not _as_lone_process():
        watch_launcher()  # kill -9 of the launcher must not leave this rank running as an orphan
    rank, world = init_distributed()
    _seed_everything(cfg.seed + rank)  # per rank: dropout masks and SCST samples differ across ranks
    say = print if rank == 0 else (lambda *_, **__: None)
    clips = prepare_data(cfg, rank, raw_ds_config)
    if rank == 0 and (clips["val"] or clips["test"]):
        start_meteor()  # rank 0 scores; its JVM's ~5-10 s of loading overlap the model's build and training
    ds_config = adapt_ds_config(raw_ds_config, cfg.ce.micro_batch, cfg.output_dir, say=say)
    cfg, model = prepare_model(cfg, ds_config, rank, say)  # cfg now names the model folder and frame size
    attach_text_table(cfg, model, clips["train"], say)
    train_set = VideoCaptionDataset(clips["train"], cfg.data, train=True, seed=cfg.seed)
    reward = build_reward(cfg, clips["train"]) if cfg.scst.steps else None

    phases = [p for p in PHASES if _runs(getattr(cfg, p))]
    first = getattr(cfg, phases[0])
    engine = initialize(model, build_optimizer(model, ds_config, first.lr, first.weight_decay, first.betas,
                                               cfg.model.vit_lr_scale), ds_config)
    dtype = compute_dtype(ds_config)
    say(f"[engine] ZeRO stage {engine.zero_optimization_stage()}, {dtype}, {world} ranks, "
        f"device {engine.device}")
    folder = RunFolder(cfg.output_dir, rank, engine)
    evaluator = RunEvaluator(cfg, engine, clips, engine.device, dtype, rank)
    sources = SourceCounter([s.name for s in clips["sources"][0]], clips["sources"][1]) if clips["sources"] else None
    ctx = StepContext(engine=engine, rank=rank, world=world, device=engine.device, dtype=dtype,
                      frame_shape=(cfg.data.frames, cfg.data.image_size),
                      skips=SkipTracker(cfg.data.max_skipped_fraction), log=folder.log,
                      max_nonfinite=cfg.max_nonfinite_steps, ce=cfg.ce, scst=cfg.scst, reward=reward,
                      sources=sources)
    state = _restore(cfg, engine, rank, say)

    def validate(phase: str, state: TrainState) -> None:
        scores, cider = evaluator.validate()
        if cider is None:
            return
        folder.log({"phase": phase, "step": state.step, "epoch": state.epoch, "split": "val", **scores})
        say(f"[{phase}] step {state.step} val CIDEr {cider:.4f}")
        if cider > state.best_cider:
            state.best_cider = cider
            save(phase, state, best=True)

    def save(phase: str, state: TrainState, best: bool = False) -> None:
        per_source = sources.all_ranks(state.per_source) if sources is not None else None  # a collective
        folder.save_checkpoint(phase, state, getattr(cfg, phase).keep_last, per_source, best=best)

    for index, name in enumerate(PHASES):
        phase_cfg = getattr(cfg, name)
        if index < state.phase_index or name not in phases:
            continue
        entering = state.phase != name
        if state.phase != name:
            state = TrainState(phase=name, phase_index=index, best_checkpoint=state.best_checkpoint)
        # The phase's own weight decay and betas; SCST entered after CE starts from fresh Adam moments
        # unless scst.reset_optimizer=false (a resumed SCST phase keeps the moments it checkpointed).
        reset = entering and name != phases[0] and getattr(phase_cfg, "reset_optimizer", False)
        apply_phase_settings(engine, phase_cfg.weight_decay, phase_cfg.betas, reset_moments=reset)
        loader, sampler = _phase_loader(cfg, name, train_set, ds_config, rank, world, clips["sources"])
        total = steps_for(phase_cfg, len(loader), engine.gradient_accumulation_steps())
        if state.step < total:
            bleu = getattr(phase_cfg, "reward_bleu4", 0)
            say(f"[train] {name}: {total} steps, lr {phase_cfg.lr:g} -> {phase_cfg.min_lr:g}, "
                f"{describe_settings(engine)}" + (", Adam moments reset" if reset else "")
                + (f", reward CIDEr-D + {bleu:g} x BLEU-4" if bleu else ""))
            state = fit(ctx, Phase(name, phase_cfg, STEP_FUNCTIONS[name], loader, sampler, total), state,
                        validate=validate, save=save)
        tested = evaluator.test()
        if tested is not None:
            folder.write_test(name, *tested)
            folder.write_summary(ctx.skips.all_skipped + evaluator.skipped)
        state.phase_index = index + 1
    if rank == 0:
        folder.summary["best_checkpoint"] = state.best_checkpoint
        folder.write_summary(ctx.skips.all_skipped + evaluator.skipped)
        _print_table(folder.summary)
    return 0  # cli.main ends the rank through engine.exit_distributed


def _runs(phase_cfg) -> bool:
    return bool(phase_cfg.steps or getattr(phase_cfg, "epochs", None))


def _restore(cfg, engine, rank: int, say) -> TrainState:
    """The state to start from: a checkpoint to resume (weights, optimizer, counters), or init_from's
    weights, or a fresh start."""
    resume_from = find_resume(Path(cfg.output_dir), cfg.resume)
    if resume_from:
        saved = load_checkpoint(engine, resume_from)
        state = TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})
        if rank != 0:  # the checkpoint holds every rank's draws summed: rank 0 carries them on
            state.per_source = {}
        say(f"[train] resumed from {resume_from} ({state.phase} step {state.step})")
        return state
    if cfg.init_from:
        load_checkpoint(engine, Path(cfg.init_from), with_optimizer=False)
        say(f"[train] weights from {cfg.init_from}")
    return TrainState()


def _as_lone_process() -> bool:
    """`ds-videocap train` started without a launcher runs as rank 0 of 1.

    Without RANK/WORLD_SIZE DeepSpeed's init_distributed falls back to MPI discovery and dies on a
    missing mpi4py after the checks; a lone process needs only these variables (MPI launches, which
    set their own, are left to DeepSpeed). True when this process set them.
    """
    import os

    if any(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        return False
    import socket

    with socket.socket() as s:  # a free port for the one-process gloo/nccl group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    print("[train] no launcher: running as one process (launch/train.sh starts one per GPU)", file=sys.stderr)
    return True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _phase_loader(cfg, phase: str, dataset, ds_config, rank, world, sources=None):
    micro = getattr(cfg, phase).micro_batch or ds_config["train_micro_batch_size_per_gpu"]
    order = None
    if sources:
        specs, sizes = sources
        order = partial(mixed_epoch_order, sizes, [s.ratio for s in specs], cfg.seed)
    return build_loader(dataset, micro, rank, world, cfg.seed, shuffle=True,
                        num_workers=cfg.data.num_workers, drop_last=True, order=order)


def _print_table(summary: dict) -> None:
    keys = ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "color_acc", "shape_acc", "motion_acc", "all_acc"]
    phases = [p for p in PHASES if "test" in summary.get(p, {})]
    if not phases:
        return
    shown = [k for k in keys if any(k in summary[p]["test"] for p in phases)]
    print("\n" + "phase".ljust(8) + "".join(k.rjust(11) for k in shown))
    for p in phases:
        print(p.ljust(8) + "".join(f"{summary[p]['test'].get(k, float('nan')):11.4f}" for k in shown))
    skipped = summary.get("skipped_videos", [])
    print(f"skipped videos: {len(skipped)}", file=sys.stderr if skipped else sys.stdout)
