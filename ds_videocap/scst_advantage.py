"""SCST advantages: reward minus baseline, optionally scaled per video (GRPO-style group normalisation).

Why a choice: with raw advantages a video whose K samples differ only in wording (small reward spread)
and a video whose samples differ in content (large spread) pull with very different strength, and late
in training most of the signal is wording. Dividing by each video's reward spread makes every video's
ranking count alike (DeepSeek GRPO); the mean-of-others baseline (RLOO) stays the centring.
"""
from __future__ import annotations

import numpy as np

ADVANTAGE_MODES = ("raw", "group_norm")


def compute_advantages(rewards: np.ndarray, baseline: np.ndarray, mode: str, eps: float = 1e-4) -> np.ndarray:
    """rewards, baseline (B, K) -> advantages (B, K).

    raw: rewards - baseline; group_norm: the same divided by the std of that video's K rewards
    (a video with equal rewards keeps advantage 0: its spread is 0 and so is its difference).
    """
    advantages = rewards - baseline
    if mode == "raw":
        return advantages
    if mode == "group_norm":
        return advantages / (rewards.std(axis=1, keepdims=True) + eps)
    raise ValueError(f"unknown SCST advantage mode {mode!r} (expected one of {ADVANTAGE_MODES})")
