"""`ds-videocap train`: set up one engine, run the CE phase then the SCST phase, evaluate, summarise.

Runs under the DeepSpeed launcher (launch/train.sh), one process per rank. Everything a user can get
wrong (recipe, JSON, annotations, model folder) is checked before any rank starts heavy work.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from .loop import Phase, TrainState, fit, steps_for

DEFAULT_DS_CONFIG = "ds_configs/zero3_offload.json"
PHASES = ("ce", "scst")


class Run:
    """What the loop and the step functions share: the engine, this rank, and the run's services."""

    def __init__(self, cfg, engine, ds_config, rank, world, clips, reward):
        from .data import SkipTracker
        from .engine import compute_dtype

        self.cfg, self.engine, self.rank, self.world = cfg, engine, rank, world
        self.output_dir = Path(cfg.output_dir)
        self.device, self.dtype = engine.device, compute_dtype(ds_config)
        self.clips, self.reward, self.scst = clips, reward, cfg.scst
        self.skips = SkipTracker(cfg.data.max_skipped_fraction)
        self.eval_skipped: list = []
        self.sources = None
        if clips.get("sources"):
            from .mixing import SourceCounter

            specs, sizes = clips["sources"]
            self.sources = SourceCounter([s.name for s in specs], sizes)
        self.max_nonfinite = cfg.max_nonfinite_steps
        self.summary = _read_json(self.output_dir / "summary.json") if rank == 0 else {}

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def check_finite(self, value: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0])
        dist.all_reduce(bad)
        return bad.item() == 0

    def decode(self, clips, greedy: bool):
        from .engine import generation_context
        from .evaluate import decode_clips, decode_kwargs

        data_cfg = replace(self.cfg.data, num_workers=min(self.cfg.data.num_workers, 1))
        return decode_clips(generation_context(self.engine, self.cfg.scst.gather_for_generation), clips,
                            data_cfg, decode_kwargs(self.cfg.eval, greedy=greedy), self.cfg.eval.batch_size,
                            self.device, self.dtype)

    def validate(self, phase: str, state: TrainState) -> None:
        from .evaluate import score_split

        if not self.clips["val"]:
            return
        captions, skipped = self.decode(self.clips["val"], greedy=self.cfg.eval.val_num_beams == 1)
        self.eval_skipped.extend(skipped)
        scores = score_split(captions, self.clips["val"]) if self.rank == 0 else {}
        cider = torch.tensor([scores.get("CIDEr", 0.0)], dtype=torch.float64)
        dist.broadcast(cider, 0)
        if self.rank == 0:
            from .loop import _log
            _log(self, {"phase": phase, "step": state.step, "epoch": state.epoch, "split": "val", **scores})
            self.say(f"[{phase}] step {state.step} val CIDEr {scores['CIDEr']:.4f}")
        if cider.item() > state.best_cider:
            state.best_cider = cider.item()
            self.save(phase, state, best=True)

    def save(self, phase: str, state: TrainState, best: bool = False) -> None:
        from .checkpoints import COMPLETE, save_checkpoint, tag_for

        tag = tag_for(phase, state.step)
        folder = self.output_dir / "checkpoints" / tag
        if best:
            state.best_checkpoint = str(folder)
        if (folder / COMPLETE).is_file() and not best:
            return
        keep = getattr(self.cfg, phase).keep_last
        protect = (Path(state.best_checkpoint).name,) if state.best_checkpoint else ()
        saved = state.to_dict()
        if self.sources is not None:  # a collective: every rank saves
            saved["per_source"] = self.sources.all_ranks(state.per_source)
        save_checkpoint(self.engine, self.output_dir / "checkpoints", tag,
                        dict(saved, config=str(self.output_dir / "config.yaml")), keep, protect)

    def test(self, phase: str) -> None:
        from .evaluate import score_split
        from .metrics import write_results

        if not self.clips["test"]:
            return
        captions, skipped = self.decode(self.clips["test"], greedy=False)
        self.eval_skipped.extend(skipped)
        if self.rank == 0:
            (self.output_dir / "results").mkdir(exist_ok=True)
            write_results(captions, self.output_dir / "results" / f"{phase}_test.json")
            self.summary.setdefault(phase, {})["test"] = score_split(captions, self.clips["test"])
            self.write_summary()

    def write_summary(self) -> None:
        if self.rank == 0:
            unique = {s["video"]: s for s in self.skips.all_skipped + self.eval_skipped}
            self.summary["skipped_videos"] = list(unique.values())
            (self.output_dir / "summary.json").write_text(json.dumps(self.summary, indent=1))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _phase_loader(cfg, phase: str, dataset, ds_config, rank, world, sources=None):
    from functools import partial

    from .data import build_loader
    from .mixing import mixed_epoch_order

    micro = getattr(cfg, phase).micro_batch or ds_config["train_micro_batch_size_per_gpu"]
    order = None
    if sources:
        specs, sizes = sources
        order = partial(mixed_epoch_order, sizes, [s.ratio for s in specs], cfg.seed)
    return build_loader(dataset, micro, rank, world, cfg.seed, shuffle=True,
                        num_workers=cfg.data.num_workers, drop_last=True, order=order)


def train_command(args) -> int:
    from .checkpoints import find_resume, load_checkpoint
    from .engine import adapt_ds_config, build_optimizer, init_distributed, initialize
    from .setup import build_reward, check_run, prepare_data, prepare_model
    from .watchdog import watch_launcher

    cfg, raw_ds_config = check_run(args, DEFAULT_DS_CONFIG)  # every user mistake surfaces here
    watch_launcher()  # kill -9 of the launcher must not leave this rank running as an orphan
    rank, world = init_distributed()
    _seed_everything(cfg.seed + rank)  # per rank: dropout masks and SCST samples differ across ranks
    say = print if rank == 0 else (lambda *_, **__: None)
    clips, train_set = prepare_data(cfg, rank, raw_ds_config)
    ds_config = adapt_ds_config(raw_ds_config, cfg.ce.micro_batch, cfg.output_dir, say=say)
    model = prepare_model(cfg, ds_config, rank, say)
    reward = build_reward(cfg, clips["train"]) if cfg.scst.steps else None

    first = next(getattr(cfg, p) for p in PHASES if getattr(cfg, p).steps or getattr(getattr(cfg, p), "epochs", None))
    engine = initialize(model, build_optimizer(model, ds_config, first.lr, first.weight_decay, first.betas),
                        ds_config)
    run = Run(cfg, engine, ds_config, rank, world, clips, reward)

    state = TrainState()
    resume_from = find_resume(Path(cfg.output_dir), cfg.resume)
    if resume_from:
        saved = load_checkpoint(engine, resume_from)
        state = TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})
        if rank != 0:  # the checkpoint holds every rank's draws summed: rank 0 carries them on
            state.per_source = {}
        say(f"[train] resumed from {resume_from} ({state.phase} step {state.step})")
    elif cfg.init_from:
        load_checkpoint(engine, Path(cfg.init_from), with_optimizer=False)
        say(f"[train] weights from {cfg.init_from}")

    for index, name in enumerate(PHASES):
        phase_cfg = getattr(cfg, name)
        if index < state.phase_index or not (phase_cfg.steps or getattr(phase_cfg, "epochs", None)):
            continue
        if state.phase != name:
            state = TrainState(phase=name, phase_index=index, best_checkpoint=state.best_checkpoint)
        # The contrastive term (align.py) belongs to the CE phase only; SCST's ce_weight mixes plain CE.
        engine.module.itc_weight = getattr(phase_cfg, "itc_weight", 0.0)
        engine.module.itc_temperature = getattr(phase_cfg, "itc_temperature", 0.1)
        loader, sampler = _phase_loader(cfg, name, train_set, ds_config, rank, world, clips["sources"])
        total = steps_for(phase_cfg, len(loader), engine.gradient_accumulation_steps())
        if state.step < total:
            say(f"[train] {name}: {total} steps, lr {phase_cfg.lr:g} -> {phase_cfg.min_lr:g}")
            state = fit(run, Phase(name, phase_cfg, _step_function(name), loader, sampler, total), state)
        run.test(name)
        state.phase_index = index + 1
    if rank == 0:
        run.summary["best_checkpoint"] = state.best_checkpoint
        run.write_summary()
        _print_table(run.summary)
    return 0  # cli.main ends the rank through engine.exit_distributed


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _step_function(name: str):
    if name == "ce":
        from .ce import ce_step
        return ce_step
    from .scst import scst_step
    return scst_step


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
