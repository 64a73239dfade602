"""Conv tokens: a small CNN's view of each frame, as more Q-Former keys next to the ViT's tokens.

A from-scratch ViT with 8-pixel patches embeds each patch linearly, and an object 4-6 pixels wide lies
across patch borders, so each patch sees a piece of it. On the embedded set that is where the captioner
failed: it named one shape of a two-object clip and guessed the other. Told the shapes outright, the
tiny ViT trained on stills at the vision stage's budget names both shapes of a two-object frame 0.47 of
the time, a small CNN 0.96; trained on the stage's own caption target (no labels) the CNN's tokens tell
both 0.75, the ViT's 0.43 (benchmarks/README.md, nineteenth round). Early convolutions are the known cure
for a ViT's patchify stem (Xiao et al. 2021), but put inside the ViT they would leave transformers'
vision model, and an export that stock transformers loads could not hold them. So the CNN sits beside
the ViT, as motion.py's frame differences do: four 3x3 convolutions (two of stride 2) with GELU, a max
over each cell of a GRID x GRID layout (a shape anywhere in its cell), a linear map to the ViT's width, a
2D sine-cosine position table (motion.sincos_table) and a LayerNorm. The ViT is left as it is.

With a vision stage (vision_stage.py) the module trains there first, beside the ViT and on the same
target; the stage writes it into the folder's side tensors (export.EXTRA_WEIGHTS), and the build loads
it from there, as it loads an export's.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .motion import sincos_table

WIDTH = 16  # channels of the first convolution (then 2x, 2x, 4x)
GRID = 4  # tokens per frame: GRID x GRID cells


class ConvTokens(nn.Module):
    def __init__(self, hidden: int, width: int = WIDTH, grid: int = GRID):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, stride=2), nn.GELU(),
            nn.AdaptiveMaxPool2d(grid))
        self.proj = nn.Linear(4 * width, hidden)
        self.position = nn.Parameter(sincos_table(grid, hidden))
        self.norm = nn.LayerNorm(hidden)

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised frames -> (N, grid * grid, hidden)."""
        cells = self.body(pixels.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)
        return self.norm(self.proj(cells) + self.position)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T, grid * grid, hidden), as motion.MotionTokens returns."""
        return self.frame_tokens(pixel_values.flatten(0, 1)).unflatten(0, tuple(pixel_values.shape[:2]))


def conv_layout(trained: dict) -> tuple[int, int]:
    """(width, grid) of a trained module's state dict (an export's or a vision stage's)."""
    return trained["body.0.weight"].shape[0], math.isqrt(trained["position"].shape[0])
