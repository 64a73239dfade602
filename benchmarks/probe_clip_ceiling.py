"""What a classifier told the labels reaches on the synthetic set: a ceiling for the captioner's attributes.

    python benchmarks/probe_clip_ceiling.py --synth /tmp/synthS --steps 800     # the main job's CE samples
    python benchmarks/probe_clip_ceiling.py --synth /tmp/synthS --steps 4000

Issue 15 asks the captioner to name shape / motion / all three right on 0.90 / 0.90 / 0.80 of the test
clips, where a two-object clip needs both shapes (and every motion) named. This diagnostic asks how far
that is from what the frames allow: a supervised classifier (a small CNN on each of the clip's 4 frames,
drawn as the recipe draws them, the frames' features concatenated in order, then an MLP) trained with the
attribute sets as multi-label targets (BCE), read out as sets (logit > 0) and scored with the same rule
as the captioner (synth_captions.named_set_accuracy, attribute_accuracy's rule: the named set equals the
clip's set). It reads the labels, so it is a bound, not a method. Test split, by object count too. Frames
come from tune_tiny.py's decoded cache.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_tiny import load_split, pick_frames  # noqa: E402

from ds_videocap.synth_captions import COLORS, MOTIONS, SHAPES, named_set_accuracy  # noqa: E402

GROUPS = (("colors", COLORS), ("shapes", SHAPES), ("motions", MOTIONS))


def targets(clips) -> torch.Tensor:
    rows = torch.zeros(len(clips), sum(len(values) for _, values in GROUPS))
    for row, clip in enumerate(clips):
        offset = 0
        for key, values in GROUPS:
            for value in clip.attributes[key]:
                rows[row, offset + values.index(value)] = 1.0
            offset += len(values)
    return rows


class ClipNet(nn.Module):
    def __init__(self, frames: int, size: int, width: int):
        super().__init__()
        self.frame = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, 256), nn.ReLU())
        outputs = sum(len(values) for _, values in GROUPS)
        self.head = nn.Sequential(nn.Linear(256 * frames, 512), nn.ReLU(), nn.Linear(512, outputs))

    def forward(self, pixels):  # (B, T, 3, H, W)
        b, t = pixels.shape[:2]
        return self.head(self.frame(pixels.flatten(0, 1)).view(b, t * 256))


def as_sets(row: torch.Tensor) -> dict[str, set[str]]:
    """A row of bits (targets' layout) -> the {"colors", "shapes", "motions"} sets it names."""
    sets, offset = {}, 0
    for key, values in GROUPS:
        sets[key] = {value for value, bit in zip(values, row[offset:offset + len(values)].tolist()) if bit}
        offset += len(values)
    return sets


def set_accuracy(logits: torch.Tensor, truth: torch.Tensor, rows: np.ndarray) -> dict:
    """The captioner's own rule (synth_captions.named_set_accuracy) on the sets the logits name (> 0)."""
    named = {int(r): as_sets(logits[r] > 0) for r in rows}
    shown = {int(r): as_sets(truth[r].bool()) for r in rows}
    scores = named_set_accuracy(named, shown)
    return {name: round(scores[key], 3) for name, key in (("colors", "color_acc"), ("shapes", "shape_acc"),
                                                          ("motions", "motion_acc"), ("all three", "all_acc"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth", type=Path, required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_clips, train_frames = load_split(args.synth, "train")
    test_clips, test_frames = load_split(args.synth, "test")
    train_y, test_y = targets(train_clips), targets(test_clips)
    net = ClipNet(args.frames, train_frames.shape[2], args.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(train_clips), args.batch)
        logits = net(pick_frames(train_frames, idx, args.frames, rng, train=True))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, train_y[torch.from_numpy(idx)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    net.eval()
    with torch.no_grad():
        all_rows = np.arange(len(test_clips))
        logits = torch.cat([net(pick_frames(test_frames, all_rows[i:i + 100], args.frames, rng, train=False))
                            for i in range(0, len(test_clips), 100)])
    objects = np.array([len(c.attributes["shapes"]) for c in test_clips])
    for name, rows in (("all test clips", all_rows), ("one object", all_rows[objects == 1]),
                       ("two objects", all_rows[objects == 2])):
        print(f"{name} ({len(rows)}): {set_accuracy(logits, test_y, rows) if len(rows) else 'no clips'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
