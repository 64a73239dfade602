"""The vision stage: the model folder's ViT trained alone on captioned stills, before the video stages.

Why (benchmarks/README.md, eleventh round): a ViT that starts from scratch (the tiny default model) does
not learn shape through the caption loss of a video captioner, nor from any target that mixes shape with
colour, motion and wording; it learns it when shape is most of what it is asked. A still's captions say
what one frame shows ("a red ball and a blue box"): their co-occurrence vector (cooccur.py: words used
for the same images lie together, synonyms included) is the target, regressed from the ViT's mean token
through a linear head (thrown away after), each axis's loss weighted by its training rate (GradNorm's
balancing), so that shape is not left behind by colour. The target comes from the captions alone, so
the stage runs on any image-caption set (COCO Karpathy's LAVIS file as it is); the synthetic set ships
its own stills. This mirrors the real workflow: BLIP-2 folders start from an image-text pretrained ViT.

Every rank trains the same ViT on its own draws and the gradients are averaged over ranks; rank 0
writes the folder (vision_weights.py) and vision_stage.json, which makes a rerun or a resume skip the
stage. The video stages then load that folder like any other.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .captions import training_references
from .cooccur import cooccurrence_table
from .ds_json import compute_dtype
from .engine import average_over_ranks, barrier, collective_device
from .errors import UserError
from .stills import StillDataset, read_image_captions
from .vision_weights import load_vision_model, write_folder_with_vision

MARKER = "vision_stage.json"
RATE_EMA = 0.95  # the axes' loss rates: an exponential mean over about 20 steps


def caption_vectors(captions: list[list[str]], rank: int, max_words: int) -> tuple[torch.Tensor, list]:
    """(images, rank): each image's captions pooled in the co-occurrence space of these captions (words split
    on whitespace after normalisation, so the target does not depend on the LLM's tokenizer), axes
    standardised; and the leading singular values."""
    vocab: dict[str, int] = {}
    ids = [[[vocab.setdefault(w, len(vocab)) for w in ref.split()] for ref in training_references(caps, max_words)]
           for caps in captions]
    table, spectrum = cooccurrence_table(ids, max(len(vocab), 1), rank)
    pooled = torch.zeros(len(ids), rank)
    for row, refs in enumerate(ids):
        refs = [r for r in refs if r]
        if refs:
            pooled[row] = torch.stack([table[torch.tensor(r)].mean(0) for r in refs]).mean(0)
    return (pooled - pooled.mean(0)) / pooled.std(0).clamp_min(1e-6), spectrum


def balanced_loss(per_axis: torch.Tensor, state: dict, exponent: float) -> torch.Tensor:
    """Mean of the per-axis losses, axis k weighted by (its loss rate now / its first) ** exponent,
    normalised to mean 1 (`state` keeps the rates; per_axis should be the mean over ranks' batches so
    that every rank weighs alike)."""
    if not exponent:
        return per_axis.mean()
    with torch.no_grad():
        now = per_axis.detach()
        state["rate"] = now if "rate" not in state else RATE_EMA * state["rate"] + (1 - RATE_EMA) * now
        state.setdefault("first", state["rate"].clone())
        weight = (state["rate"] / state["first"].clamp_min(1e-12)) ** exponent
    return (weight / weight.mean() * per_axis).mean()


def run_vision_stage(cfg, ds_config: dict, rank: int, say):
    """-> cfg, with model.path naming the folder whose ViT the stage trained (cfg itself when vision.steps
    is 0 or init_from is set). Every rank calls it after the model folder is resolved, before the model is
    built."""
    if not cfg.vision.steps:
        return cfg
    if cfg.init_from:
        say(f"[vision] skipped: init_from ({cfg.init_from}) loads a checkpoint's weights over the ViT")
        return cfg
    source = Path(cfg.model.path)
    target = Path(cfg.output_dir) / "init_model"
    settings = {"source": str(source.resolve()), "seed": cfg.seed, "image_size": cfg.data.image_size,
                **{k: v for k, v in asdict(cfg.vision).items() if k not in ("log_every", "num_workers")}}
    done = _read_marker(target)
    if done is not None and done.get("settings") != settings and source.resolve() == target.resolve():
        raise UserError(f"{target / MARKER}: this folder's ViT was trained by a vision stage with other settings; "
                        f"delete {target} (it is rebuilt) or give another output_dir")
    if done is None or done.get("settings") != settings:
        result = _train(cfg, ds_config, rank, say)
        if rank == 0:
            write_folder_with_vision(source, target, result.pop("state"))
            (target / MARKER).write_text(json.dumps({"settings": settings, **result}, indent=2))
        barrier()
    else:
        say(f"[vision] {target / MARKER}: stage done before (final loss {done.get('final_loss')}), skipped")
    return replace(cfg, model=replace(cfg.model, path=str(target)))


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _train(cfg, ds_config: dict, rank: int, say) -> dict:
    vision, device = cfg.vision, collective_device()
    images = read_image_captions(vision.train, vision.images, f"recipe '{cfg.name}': field 'vision.train'")
    targets, spectrum = caption_vectors([caps for _, caps in images], vision.text_rank, cfg.data.max_words)
    say(f"[vision] {len(images)} stills, {vision.text_rank} caption axes (singular values {spectrum}); "
        f"{vision.steps} steps of {vision.micro_batch} stills per rank")
    vit = load_vision_model(cfg.model.path).to(device).train()
    # The head starts the same on every rank; forked, so that the ranks' own streams (train.py seeds each
    # with seed + rank: dropout masks, SCST samples) are not reset to one shared state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = torch.nn.Linear(vit.config.hidden_size, vision.text_rank).to(device)
    params = list(vit.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=vision.lr, weight_decay=vision.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, vision.lr, total_steps=vision.steps,
                                                   pct_start=vision.warmup_fraction)
    draws = torch.utils.data.RandomSampler(range(len(images)), replacement=True,
                                           num_samples=vision.steps * vision.micro_batch,
                                           generator=torch.Generator().manual_seed(cfg.seed * 1000 + rank))
    loader = torch.utils.data.DataLoader(
        StillDataset([image for image, _ in images], cfg.data.image_size, cfg.data.image_mean, cfg.data.image_std),
        batch_size=vision.micro_batch, sampler=draws, drop_last=True,
        num_workers=cfg.data.num_workers if vision.num_workers is None else vision.num_workers)
    # bf16 runs train the stage under bf16 autocast too (fp16 stays fp32: no loss scaler here)
    amp = compute_dtype(ds_config) == torch.bfloat16
    native = vit.config.image_size
    targets, rates, start, first_loss = targets.to(device), {}, time.perf_counter(), None
    for step, (pixels, rows) in enumerate(loader, 1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            tokens = vit(pixel_values=pixels.to(device), interpolate_pos_encoding=cfg.data.image_size != native)
        predicted = head(tokens.last_hidden_state.float().mean(1))
        per_axis = ((predicted - targets[rows.to(device)]) ** 2).mean(0)
        shared = per_axis.detach().clone()
        average_over_ranks([shared])  # every rank weighs the axes alike
        loss = balanced_loss(per_axis + (shared - per_axis.detach()), rates, vision.balance)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        average_over_ranks([p.grad for p in params])
        optimizer.step()
        schedule.step()
        first_loss = first_loss if first_loss is not None else shared.mean().item()
        if step % vision.log_every == 0 or step == vision.steps:
            say(f"[vision] step {step}/{vision.steps}: regression loss {shared.mean().item():.4f} "
                f"({(time.perf_counter() - start) / step * 1000:.0f} ms/step)")
    if not torch.isfinite(shared).all():
        raise UserError(f"vision stage: the loss is {shared.tolist()} at the last step; lower vision.lr")
    return {"state": vit.state_dict(), "first_loss": round(first_loss, 4), "final_loss": round(shared.mean().item(), 4),
            "final_axis_losses": [round(x, 4) for x in shared.tolist()], "stills": len(images),
            "seconds": round(time.perf_counter() - start, 1)}
