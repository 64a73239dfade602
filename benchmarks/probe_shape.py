"""Is shape in the synthetic frames, and can the tiny ViT learn it when told directly?

    python benchmarks/probe_shape.py --net cnn
    python benchmarks/probe_shape.py --net vit --patch-size 8     # the synth recipe's ViT
    python benchmarks/probe_shape.py --net vit --patch-size 4

A diagnostic for the default run's weak spot (its captioner learns colour but not shape): one middle
frame of every single-object training clip, labelled with the clip's shape from the annotations'
attributes, classified by a small CNN or by the tiny BLIP-2 ViT (the synth recipe's sizes and init:
position embedding std 0.5, fan-in patch embedding) with a mean-pooled linear head. 85/15 split,
AdamW lr 1e-3, batch 64. Prints held-out accuracy every 100 steps (chance is 1/3). Frames come from
benchmarks/tune_tiny.py's decoded cache, so the first run decodes the set once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_tiny import ROOT, load_split, to_pixels  # noqa: E402

SHAPES = ("circle", "square", "triangle")


def shape_frames(synth: Path):
    clips, frames = load_split(synth, "train")
    keep = [i for i, c in enumerate(clips) if len(c.attributes["shapes"]) == 1]
    labels = torch.tensor([SHAPES.index(clips[i].attributes["shapes"][0]) for i in keep])
    middle = frames[keep][:, frames.shape[1] // 2][:, None]  # (N, 1, H, W, 3)
    return to_pixels(middle)[:, 0], labels


def build_net(kind: str, patch_size: int, size: int) -> nn.Module:
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, len(SHAPES)))
    from transformers import Blip2VisionConfig, Blip2VisionModel

    from ds_videocap.build import TINY_INIT_STD

    vit = Blip2VisionModel(Blip2VisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=size, patch_size=patch_size,
                                             initializer_range=0.02))
    with torch.no_grad():  # as build_tiny_folder initialises the tiny ViT
        vit.embeddings.position_embedding.normal_(0.0, TINY_INIT_STD)
        weight = vit.embeddings.patch_embedding.weight
        weight.normal_(0.0, weight[0].numel() ** -0.5)

    class ViTProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit, self.head = vit, nn.Linear(96, len(SHAPES))

        def forward(self, pixels):
            return self.head(self.vit(pixel_values=pixels).last_hidden_state.mean(1))

    return ViTProbe()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth", type=Path, default=ROOT / "data" / "synth")
    parser.add_argument("--net", choices=("cnn", "vit"), default="vit")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pixels, labels = shape_frames(args.synth)
    split = int(0.85 * len(labels))
    net = build_net(args.net, args.patch_size, pixels.shape[-1])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, split, (64,))
        loss = nn.functional.cross_entropy(net(pixels[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():
                accuracy = (net(pixels[split:]).argmax(1) == labels[split:]).float().mean().item()
            print(f"{args.net} patch {args.patch_size} step {step}: loss {loss.item():.3f}, "
                  f"held-out shape accuracy {accuracy:.3f} ({len(labels) - split} frames)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
