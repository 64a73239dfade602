"""Does a ViT tell both shapes of a two-object frame? (issue 15; benchmarks/README.md, eighteenth round)

    python benchmarks/probe_two_shapes.py MODEL_FOLDER [--frames 3000] [--seed 42]

The captioner names one shape of a two-object clip right and guesses the other (attribute_breakdown.py).
This asks whether the ViT of MODEL_FOLDER (a run's `init_model`: the vision stage's output) already holds
both: it draws fresh clips (render_clip, numbers above any split's, from `--seed`), takes each clip's
middle frame, and fits linear probes on the frozen ViT's output tokens, scored on held-out frames:
  - one object: the shape (top-1), from the mean token and from all tokens;
  - two objects: the set of two shapes (the top-2 of three logits must equal it), the same two ways;
  - both, a third way: one linear head shared by all tokens, each shape's logit its largest over the
    tokens (a shape is there if some patch shows it).
The same ViT architecture with fresh random weights is the floor. The probes read the labels: this is a
diagnostic, not a method.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds_videocap.synth import FRAMES, STILL_START, render_clip  # noqa: E402
from ds_videocap.synth_captions import SHAPES  # noqa: E402
from ds_videocap.video import CLIP_MEAN, CLIP_STD  # noqa: E402

PROBE_START = 3 * STILL_START  # clip numbers no split and no still uses


def draw_frames(count: int, objects: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Middle frames (N, 3, 32, 32), normalised as the processor does, of fresh clips with `objects`
    objects, and their shapes as a multi-hot (N, 3)."""
    frames, targets, index = [], [], PROBE_START
    while len(frames) < count:
        clip, objs = render_clip(index, seed)
        index += 1
        if len(objs) != objects:
            continue
        frames.append(clip[FRAMES // 2])
        targets.append([float(any(o["shape"] == s for o in objs)) for s in SHAPES])
    pixels = torch.tensor(np.stack(frames), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std, torch.tensor(targets)


@torch.no_grad()
def vit_tokens(vit, pixels: torch.Tensor) -> torch.Tensor:
    """The ViT's output patch tokens (N, patches, hidden), the class token left out."""
    return torch.cat([vit(pixel_values=chunk).last_hidden_state[:, 1:] for chunk in pixels.split(256)])


def probe(features: torch.Tensor, targets: torch.Tensor, top: int, steps: int = 400,
          per_token: bool = False) -> float:
    """Held-out (last 20%) share of frames whose top-`top` logits are exactly their shapes. Features (N, D)
    get one linear head; with per_token, features (N, tokens, D) get one head shared by every token and
    each shape's logit is its largest over the tokens (a shape is there if some patch shows it)."""
    x = features if per_token else features.flatten(1)
    flat = x.reshape(-1, x.shape[-1])
    x = (x - flat.mean(0)) / (flat.std(0) + 1e-6)
    split = int(0.8 * len(x))
    linear = nn.Linear(x.shape[-1], targets.shape[1])
    head = (lambda t: linear(t).amax(dim=1)) if per_token else linear
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(head(x[:split]), targets[:split])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        picked = head(x[split:]).topk(top, dim=1).indices
    chosen = torch.zeros_like(targets[split:]).scatter_(1, picked, 1.0)
    return float((chosen == targets[split:]).all(dim=1).float().mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a model folder (a run's init_model)")
    p.add_argument("--frames", type=int, default=3000, help="frames per group (one object, two objects)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(0)
    trained = Blip2ForConditionalGeneration.from_pretrained(args.model, local_files_only=True).vision_model.eval()
    fresh = Blip2ForConditionalGeneration(Blip2ForConditionalGeneration.config_class.from_pretrained(args.model))
    vits = {"the folder's ViT": trained, "a random ViT (same architecture)": fresh.vision_model.eval()}
    groups = {"one object": (1, 1), "two objects": (2, 2)}
    data = {name: draw_frames(args.frames, objects, args.seed) for name, (objects, _) in groups.items()}
    for vit_name, vit in vits.items():
        for name, (_, top) in groups.items():
            pixels, targets = data[name]
            tokens = vit_tokens(vit, pixels)
            print(f"{vit_name}, {name} ({len(pixels)} frames): shapes right from the mean token "
                  f"{probe(tokens.mean(1), targets, top):.3f}, from all {tokens.shape[1]} tokens "
                  f"{probe(tokens, targets, top):.3f}, from the best token per shape "
                  f"{probe(tokens, targets, top, per_token=True):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
