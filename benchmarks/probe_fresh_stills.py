"""Does the tiny ViT learn shape from enough distinct frames? The shape classifier of probe_shape.py,
trained on fresh stills instead of the 2,700 middle frames it overfits.

    python benchmarks/probe_fresh_stills.py 8 2000 128        # patch 8 (the recipe's), 2000 steps, batch 128
    python benchmarks/probe_fresh_stills.py 4 2000 128 64     # patch 4, hidden 64

Each step draws new single-object clips (ds_videocap.synth.render_clip under a seed no split uses) and
one random frame of each, rendered without the H.264 round trip; every 250 steps it prints the accuracy
on the middle frame of the val split's single-object clips (decoded from the set's videos). AdamW lr 1e-3
one-cycle, weight decay 0.05, one thread. benchmarks/README.md, "Still frames before video".
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn as nn
from probe_shape import SHAPES, build_net
from tiny_stills import STILLS_SEED
from tune_tiny import ROOT, load_split, to_pixels

from ds_videocap.synth import render_clip


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    patch, steps, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    hidden = int(sys.argv[4]) if len(sys.argv) > 4 else 96
    net = build_net("vit", patch, 32, hidden=hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    clips, frames = load_split(ROOT / "data" / "synth", "val")
    keep = [i for i, c in enumerate(clips) if len(c.attributes["shapes"]) == 1]
    val_x = to_pixels(frames[keep][:, 8][:, None])[:, 0]
    val_y = torch.tensor([SHAPES.index(clips[i].attributes["shapes"][0]) for i in keep])
    rng, index, start = np.random.default_rng(1), 10**6, time.time()
    for step in range(1, steps + 1):
        xs, ys = [], []
        while len(xs) < batch:
            index += 1
            clip, objects = render_clip(index, STILLS_SEED)
            if len(objects) == 1:
                xs.append(clip[rng.integers(16)])
                ys.append(SHAPES.index(objects[0]["shape"]))
        loss = nn.functional.cross_entropy(net(to_pixels(np.stack(xs)[:, None])[:, 0]), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            with torch.no_grad():
                accuracy = (net(val_x).argmax(1) == val_y).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} val_acc {accuracy:.3f} {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
