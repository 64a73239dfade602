"""Which vision net tells both shapes of a two-object frame when it is told the labels? (issue 15)

    python benchmarks/probe_stills_bound.py SET --net vit                      # the tiny ViT (patch 8)
    python benchmarks/probe_stills_bound.py SET --net vit --patch-size 4 --hidden 64
    python benchmarks/probe_stills_bound.py SET --net vit --stem 16            # a 3x3 conv before the patches
    python benchmarks/probe_stills_bound.py SET --net cnn                      # three 3x3 convs, max-pooled

The captioner names one shape of a two-object clip right and guesses the other, and the vision stage's
ViT already tells both shapes of a two-object frame little better than chance (probe_two_shapes.py).
This asks whether that is the stage's target or the ViT: each net trains on the set's stills (the
vision stage's data, `data synth` writes them; SET/annotations/stills_train.json and SET/stills/)
told the shapes its first caption names (read_attributes), three logits under BCE, batch 128, AdamW
at 1e-3 with the stage's one-cycle schedule, and is scored on fresh middle frames
(probe_two_shapes.draw_frames): one object, top-1; two objects, the top two logits exactly the frame's
two shapes (chance 0.33). The ViT is built and initialised as the tiny model is (probe_shape.build_net)
and reads its mean token. The labels are read: a bound on what each architecture learns from stills
at the stage's budget, not a method.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_shape import build_net  # noqa: E402
from probe_two_shapes import ROOT, draw_frames  # noqa: E402

sys.path.insert(0, str(ROOT))
from ds_videocap.stills import StillDataset, read_image_captions  # noqa: E402
from ds_videocap.synth_captions import SHAPES, read_attributes  # noqa: E402
from ds_videocap.video import CLIP_MEAN, CLIP_STD  # noqa: E402


def small_cnn(width: int = 32) -> nn.Module:
    """Three 3x3 convs (the second with stride 2) and a max over positions: a shape anywhere in the frame."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
                         nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GELU(),
                         nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2 * width, len(SHAPES)))


def read_stills(set_dir: Path, limit: int | None) -> tuple[torch.Tensor, list[list[str]]]:
    """(N, 3, 32, 32) stills normalised as the stage reads them, and each still's captions."""
    images = read_image_captions(set_dir / "annotations" / "stills_train.json", set_dir / "stills")[:limit]
    stills = StillDataset([image for image, _ in images], 32, CLIP_MEAN, CLIP_STD)
    return torch.stack([stills[i][0] for i in range(len(stills))]), [captions for _, captions in images]


def labelled_stills(set_dir: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """read_stills' pixels, and each still's shapes (its first caption's) as a multi-hot (N, 3)."""
    pixels, captions = read_stills(set_dir, limit)
    named = [read_attributes(still[0])["shapes"] for still in captions]
    return pixels, torch.tensor([[float(s in shapes) for s in SHAPES] for shapes in named])


def train(net: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 128) -> float:
    """Trains in place; -> the final loss (mean of the last 50 steps)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.1)
    draws, losses, start = torch.Generator().manual_seed(0), [], time.perf_counter()
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(pixels), (batch,), generator=draws)
        loss = nn.functional.binary_cross_entropy_with_logits(net(pixels[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 400 == 0 or step == steps:
            print(f"step {step}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"({(time.perf_counter() - start) / step * 1000:.0f} ms/step)", flush=True)
    return sum(losses[-50:]) / len(losses[-50:])


@torch.no_grad()
def shapes_right(net: nn.Module, objects: int, frames: int, seed: int) -> float:
    """Share of fresh frames with `objects` objects whose top-`objects` logits are exactly their shapes."""
    pixels, targets = draw_frames(frames, objects, seed)
    picked = torch.cat([net(chunk) for chunk in pixels.split(256)]).topk(objects, dim=1).indices
    return float((torch.zeros_like(targets).scatter_(1, picked, 1.0) == targets).all(dim=1).float().mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", type=Path, help="a `data synth` folder (its stills and stills_train.json)")
    p.add_argument("--net", choices=("vit", "cnn"), default="vit")
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--stem", type=int, default=0, help="channels of a 3x3 conv before the ViT's patches (0: none)")
    p.add_argument("--steps", type=int, default=1600, help="the vision stage's 1600 by default")
    p.add_argument("--stills", type=int, default=None, help="the first N stills only")
    p.add_argument("--frames", type=int, default=2000, help="fresh frames scored per group")
    p.add_argument("--seed", type=int, default=42, help="of the fresh frames")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pixels, labels = labelled_stills(args.set, args.stills)
    net = small_cnn() if args.net == "cnn" else build_net(
        "vit", args.patch_size, 32, hidden=args.hidden, layers=args.layers, stem=args.stem)
    loss = train(net, pixels, labels, args.steps)
    net.eval()
    one, two = (shapes_right(net, n, args.frames, args.seed) for n in (1, 2))
    name = "cnn" if args.net == "cnn" else (f"vit (patch {args.patch_size}, hidden {args.hidden}, "
                                            f"layers {args.layers}, stem {args.stem})")
    print(f"{name}, {len(pixels)} stills, {args.steps} steps: final loss {loss:.4f}; fresh frames, one object: shape "
          f"{one:.3f}; two objects: both shapes {two:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
