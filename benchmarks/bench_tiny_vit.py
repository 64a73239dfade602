"""What the tiny ViT costs per CE step on one rank: forward + backward over 32 clips x 4 frames of 32 px.

    python benchmarks/bench_tiny_vit.py

One thread (a rank's share of the 2-core machine). Prints ms per step for the synth recipe's ViT
(patch 8, hidden 96, 2 layers) and the patch-4 variants of benchmarks/README.md, "Shape: the ViT is the
limit".
"""
from __future__ import annotations

import time

import torch
from transformers import Blip2VisionConfig, Blip2VisionModel

VARIANTS = [(8, 96, 2), (4, 96, 2), (4, 64, 2), (4, 96, 1), (4, 64, 1)]  # (patch, hidden, layers)
FRAMES_PER_STEP = 32 * 4


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pixels = torch.randn(FRAMES_PER_STEP, 3, 32, 32)
    for patch, hidden, layers in VARIANTS:
        vit = Blip2VisionModel(Blip2VisionConfig(hidden_size=hidden, intermediate_size=4 * hidden,
                                                 num_hidden_layers=layers, num_attention_heads=4, image_size=32,
                                                 patch_size=patch))
        for _ in range(2):  # warm-up
            vit(pixel_values=pixels).last_hidden_state.sum().backward()
        start, repeats = time.perf_counter(), 5
        for _ in range(repeats):
            vit(pixel_values=pixels).last_hidden_state.sum().backward()
        ms = (time.perf_counter() - start) / repeats * 1000
        print(f"patch {patch}, hidden {hidden}, {layers} layer(s): {ms:.0f} ms per rank step", flush=True)


if __name__ == "__main__":
    main()
