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

With model.conv_tokens the stage trains the conv tokens (conv_tokens.py) beside the ViT, on the same
stills and target, with a head of their own, and writes them into the folder's side tensors.

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
from .conv_tokens import ConvTokens
from .cooccur import cooccurrence_table
from .ds_json import compute_dtype
from .engine import average_over_ranks, barrier, collective_device
from .errors import UserError
from .export import add_side_tensors
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
                "conv_tokens": cfg.model.conv_tokens,
                **{k: v for k, v in asdict(cfg.vision).items() if k not in ("log_every", "num_workers")}}
    done = _read_marker(target)
    if done is not None and done.get("settings") != settings and source.resolve() == target.resolve():
        raise UserError(f"{target / MARKER}: this folder's ViT was trained by a vision stage with other settings; "
                        f"delete {target} (it is rebuilt) or give another output_dir")
    if done is None or done.get("settings") != settings:
        result = _train(cfg, ds_config, rank, say)
        if rank == 0:
            write_folder_with_vision(source, target, result.pop("state"))
            conv = result.pop("conv_state", None)
            if conv is not None:
                add_side_tensors(target, {f"conv_tokens.{k}": v for k, v in conv.items()})
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
    native = vit.config.image_size
    learners = {"vit": (vit, lambda pixels: vit(pixel_values=pixels, interpolate_pos_encoding=cfg.data.image_size
                                                 != native).last_hidden_state)}
    # The heads (and conv tokens) start the same on every rank; forked, so that the ranks' own streams
    # (train.py seeds each with seed + rank: dropout masks, SCST samples) are not reset to one shared state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.model.conv_tokens:
            conv = ConvTokens(vit.config.hidden_size).to(device).train()
            learners["conv tokens"] = (conv, conv.frame_tokens)
        heads = {name: torch.nn.Linear(vit.config.hidden_size, vision.text_rank).to(device) for name in learners}
    params = [p for name, (net, _) in learners.items() for p in [*net.parameters(), *heads[name].parameters()]]
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
    targets, rates, start, first = targets.to(device), {name: {} for name in learners}, time.perf_counter(), {}
    for step, (pixels, rows) in enumerate(loader, 1):
        pixels, wanted, per_axis = pixels.to(device), targets[rows.to(device)], {}
        for name, (_, tokens_of) in learners.items():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                tokens = tokens_of(pixels)
            per_axis[name] = ((heads[name](tokens.float().mean(1)) - wanted) ** 2).mean(0)
        shared = {name: axes.detach().clone() for name, axes in per_axis.items()}
        average_over_ranks(list(shared.values()))  # every rank weighs the axes alike (one all-reduce for all)
        loss = sum(balanced_loss(axes + (shared[name] - axes.detach()), rates[name], vision.balance)
                   for name, axes in per_axis.items())
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        average_over_ranks([p.grad for p in params])
        optimizer.step()
        schedule.step()
        first = first or {name: axes.mean().item() for name, axes in shared.items()}
        if step % vision.log_every == 0 or step == vision.steps:
            others = "".join(f", {name} {axes.mean().item():.4f}" for name, axes in shared.items() if name != "vit")
            say(f"[vision] step {step}/{vision.steps}: regression loss {shared['vit'].mean().item():.4f}{others} "
                f"({(time.perf_counter() - start) / step * 1000:.0f} ms/step)")
    if not all(torch.isfinite(axes).all() for axes in shared.values()):
        raise UserError(f"vision stage: the loss is {[a.tolist() for a in shared.values()]} at the last step; "
                        f"lower vision.lr")
    result = {"state": vit.state_dict(), "first_loss": round(first["vit"], 4),
              "final_loss": round(shared["vit"].mean().item(), 4),
              "final_axis_losses": [round(x, 4) for x in shared["vit"].tolist()], "stills": len(images),
              "seconds": round(time.perf_counter() - start, 1)}
    if "conv tokens" in learners:
        result.update(conv_state=learners["conv tokens"][0].state_dict(),
                      conv_first_loss=round(first["conv tokens"], 4),
                      conv_final_loss=round(shared["conv tokens"].mean().item(), 4))
    return result
