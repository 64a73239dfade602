"""Checkpoints: DeepSpeed's save/load with our client state, resume, retention, consolidation.

A checkpoint is complete only once every rank has written its shards and rank 0 has written the
COMPLETE marker with the client state; `resume=auto` never picks a half-written folder.
Layout: <output_dir>/checkpoints/<phase>-<step:07d>/ (DeepSpeed files, COMPLETE, rng_rank<r>.pt).
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .engine import barrier, rank_and_world
from .errors import UserError

COMPLETE = "COMPLETE"


def tag_for(phase: str, step: int) -> str:
    return f"{phase}-{step:07d}"


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(engine, ckpt_root: Path, tag: str, client_state: dict, keep_last: int,
                    protect: tuple[str, ...] = ()) -> Path:
    """All ranks call this. Writes shards, per-rank RNG, then the COMPLETE marker, then prunes."""
    ckpt_root = Path(ckpt_root)
    rank = rank_and_world()[0]
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state={"client": client_state})
    folder = ckpt_root / tag
    torch.save(_rng_state(), folder / f"rng_rank{rank}.pt")
    barrier()
    if rank == 0:
        # Written last, atomically: its presence means every rank finished writing.
        tmp = folder / (COMPLETE + ".tmp")
        tmp.write_text(json.dumps(client_state, indent=1, default=str))
        tmp.replace(folder / COMPLETE)
        prune_checkpoints(ckpt_root, keep_last, protect=protect + (tag,))
    barrier()
    return folder


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (ordered by the step in the client state)."""
    found = []
    for marker in Path(ckpt_root).glob(f"*/{COMPLETE}"):
        try:
            state = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found.append((state.get("phase_index", 0), state.get("step", 0), marker.parent))
    return [p for _, _, p in sorted(found)]


def prune_checkpoints(ckpt_root: Path, keep_last: int, protect: tuple[str, ...] = ()) -> None:
    folders = complete_checkpoints(ckpt_root)
    stale = folders[:-keep_last] if keep_last > 0 else folders
    for folder in stale:
        if folder.name not in protect:
            shutil.rmtree(folder, ignore_errors=True)
    # Folders without the marker are leftovers of a killed write; they are never resumed from.
    complete = {p.name for p in complete_checkpoints(ckpt_root)}
    for folder in Path(ckpt_root).iterdir():
        if folder.is_dir() and folder.name not in complete and folder.name not in protect:
            shutil.rmtree(folder, ignore_errors=True)


def find_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        folders = complete_checkpoints(Path(output_dir) / "checkpoints")
        return folders[-1] if folders else None
    folder = Path(resume)
    if not (folder / COMPLETE).is_file():
        raise UserError(f"resume: '{folder}' is not a complete checkpoint folder (no {COMPLETE} marker)")
    return folder


def load_checkpoint(engine, folder: Path, with_optimizer: bool = True) -> dict:
    """Restore weights (and optimizer) from a checkpoint folder; returns our client state."""
    folder = Path(folder)
    _, client = engine.load_checkpoint(str(folder.parent), tag=folder.name,
                                       load_optimizer_states=with_optimizer,
                                       load_lr_scheduler_states=False,
                                       load_module_only=not with_optimizer)
    state = json.loads((folder / COMPLETE).read_text())
    rng = folder / f"rng_rank{rank_and_world()[0]}.pt"
    if with_optimizer and rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return state


def read_full_state_dict(folder: Path) -> dict:
    """Consolidate a checkpoint (any ZeRO stage) into one fp32 state dict on the CPU."""
    folder = Path(folder)
    if list(folder.glob("zero_pp_rank_*optim_states.pt")):  # ZeRO 1-3: merge the ranks' fp32 shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
