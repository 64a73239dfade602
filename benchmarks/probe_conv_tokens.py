"""Do conv tokens trained on the vision stage's target tell both shapes of a two-object frame? (issue 15)

    python benchmarks/probe_conv_tokens.py SET [--steps 1600] [--save /tmp/conv_tokens.pt]
    python benchmarks/tune_tiny.py ... --motion-tokens --conv-tokens /tmp/conv_tokens.pt

ds_videocap/conv_tokens.py's module (a small CNN beside the ViT) trained single-process as the vision
stage trains it: each still's captions as a vector in their co-occurrence space
(vision_stage.caption_vectors: no labels), regressed from the mean token through a linear head thrown
away, axes weighted by vision_stage.balanced_loss, AdamW at 1e-3 with a one-cycle schedule, 128 stills
a step. Then the probes of probe_two_shapes.py on its tokens of fresh frames (one object: shape; two
objects: both shapes, chance 0.33), and the state dict saved for tune_tiny.py --conv-tokens.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_stills_bound import read_stills  # noqa: E402
from probe_two_shapes import ROOT, draw_frames, probe  # noqa: E402

sys.path.insert(0, str(ROOT))
from ds_videocap.conv_tokens import WIDTH, ConvTokens  # noqa: E402
from ds_videocap.vision_stage import balanced_loss, caption_vectors  # noqa: E402


def train_on_stills(net: ConvTokens, pixels: torch.Tensor, captions: list[list[str]], steps: int,
                    rank: int = 8, balance: float = 2.0, batch: int = 128) -> float:
    """The vision stage's target and schedule on `net`'s mean token; -> the final regression loss."""
    targets, _ = caption_vectors(captions, rank, 30)
    head = nn.Linear(net.proj.out_features, rank)
    params = list(net.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.1)
    draws, rates, start = torch.Generator().manual_seed(0), {}, time.perf_counter()
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(pixels), (batch,), generator=draws)
        per_axis = ((head(net.frame_tokens(pixels[rows]).mean(1)) - targets[rows]) ** 2).mean(0)
        loss = balanced_loss(per_axis, rates, balance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 400 == 0 or step == steps:
            print(f"step {step}: regression loss {per_axis.mean().item():.4f} "
                  f"({(time.perf_counter() - start) / step * 1000:.0f} ms/step)", flush=True)
    return per_axis.mean().item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", type=Path, help="a `data synth` folder (its stills and stills_train.json)")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--width", type=int, default=WIDTH)
    p.add_argument("--frames", type=int, default=3000, help="fresh frames per probe group")
    p.add_argument("--stills", type=int, default=None, help="the first N stills only")
    p.add_argument("--save", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pixels, captions = read_stills(args.set, args.stills)  # no labels: the captions are the target
    net = ConvTokens(96, width=args.width)  # the tiny ViT's width
    loss = train_on_stills(net, pixels, captions, args.steps)
    net.eval()
    for name, objects in (("one object", 1), ("two objects", 2)):
        frames, shapes = draw_frames(args.frames, objects, 42)
        with torch.no_grad():
            tokens = torch.cat([net.frame_tokens(chunk) for chunk in frames.split(256)])
        print(f"conv tokens (width {args.width}), {len(pixels)} stills, {args.steps} steps, loss {loss:.4f}; "
              f"{name}: shapes right from the mean token {probe(tokens.mean(1), shapes, objects):.3f}, "
              f"from the best token per shape {probe(tokens, shapes, objects, per_token=True):.3f}")
    if args.save:
        torch.save(net.state_dict(), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
