"""Motion tokens: what changed between consecutive frames, as more Q-Former keys next to the ViT's tokens.

An image ViT sees one frame at a time, so it cannot say which way an object moves. Concat fusion
can only compare where things are in different frames inside the Q-Former, and with two objects it
must also work out which position belongs to which object. On the embedded set that is where the
captioner failed: it named one motion for both objects (benchmarks/README.md, fourteenth round).

The difference of two consecutive frames makes motion local. An object moving right adds its colour
at its leading edge and removes it at its trailing edge, within a patch or two, so one patch of the
difference says what moved, which way and of what colour (the RGB-difference input of TSN, Wang et
al. 2016, and TDN, Wang et al. 2021). MotionTokens embeds each frame's difference to the next frame
with a patch embedding (the ViT's patch size, or model.motion_patch's) and a GELU + linear layer (one
nonlinearity: the linear embedding alone named the motions of two-object clips less often,
benchmarks/README.md), adds a position table of its own and a LayerNorm (the ViT's tokens leave it
through a LayerNorm too), and returns one token per patch. The ViT is left as it is: its tokens and what
a pretrained one knows are unchanged; the Q-Former gets the motion tokens as more keys.

The position table starts as a fixed 2D sine-cosine pattern (MAE's), so the tokens know where they
are from the first step whatever the ViT learned; it trains with the rest. Frames of another size than
the table's grid get it interpolated, as the ViT's position embeddings are.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


def motion_layout(image_size: int, vit_patch: int, motion_patch: int | None) -> tuple[int, int]:
    """(patch size, grid side) of fresh motion tokens: model.motion_patch, else the ViT's patch size.
    The build and the planner both ask here, so that they count the same module."""
    patch = motion_patch or vit_patch
    if image_size % patch:
        raise UserError(f"model.motion_patch {patch} does not divide the ViT's frame size {image_size}")
    return patch, image_size // patch


def frame_differences(pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T, C, H, W): frame t+1 minus frame t; the last frame repeats the one
    before it (the same motion); zeros for a single frame, which shows none."""
    if pixel_values.shape[1] < 2:
        return torch.zeros_like(pixel_values)
    forward = pixel_values[:, 1:] - pixel_values[:, :-1]
    return torch.cat([forward, forward[:, -1:]], 1)


def sincos_table(grid: int, hidden: int) -> torch.Tensor:
    """(grid * grid, hidden): a 2D sine-cosine position table, half the channels for each axis."""
    quarter = hidden // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1)))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for axis in (ys.flatten(), xs.flatten()):
        angles = axis[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, 1)
    return F.pad(table, (0, hidden - table.shape[1])).float()  # hidden not a multiple of 4: zero channels


class MotionTokens(nn.Module):
    def __init__(self, hidden: int, patch_size: int, grid: int):
        super().__init__()
        self.patch = nn.Conv2d(3, hidden, patch_size, patch_size, bias=False)
        self.mix = nn.Linear(hidden, hidden)
        self.position = nn.Parameter(sincos_table(grid, hidden))
        self.norm = nn.LayerNorm(hidden)

    @property
    def grid(self) -> int:
        rows = getattr(self.position, "ds_shape", self.position.shape)[0]  # ZeRO-3 empties partitioned tensors
        return math.isqrt(rows)

    def _positions(self, height: int, width: int) -> torch.Tensor:
        if (height, width) == (self.grid, self.grid):
            return self.position
        table = self.position.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table.float(), size=(height, width), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(height * width, -1).to(self.position.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames -> (B, T, patches, hidden)."""
        batch, frames = pixel_values.shape[:2]
        diffs = frame_differences(pixel_values).flatten(0, 1).to(self.patch.weight.dtype)
        embedded = self.patch(diffs)  # (B*T, hidden, h, w)
        height, width = embedded.shape[-2:]
        tokens = self.mix(F.gelu(embedded.flatten(2).transpose(1, 2))) + self._positions(height, width)
        return self.norm(tokens).unflatten(0, (batch, frames))
