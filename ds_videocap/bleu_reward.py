"""Per-caption BLEU-4 for SCST's reward mix (`scst.reward_bleu4`): pycocoevalcap's own BleuScorer.

The study ranked its models by CIDEr + Bleu_4; `scst.reward_bleu4` lets SCST optimise that mix.
pycocoevalcap's scorer gives each caption its own BLEU-4 ("closest" reference length, its smoothing)
next to the corpus figure; the text is normalised as evaluation sees it (normalize_caption, no
truncation). A rollout batch is at most a few hundred short captions, so the pure-Python scorer
costs a few milliseconds a step: not worth a copy of its arithmetic.
"""
from __future__ import annotations

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer

from .captions import normalize_caption


def bleu4(captions: list[str], references: list[list[str]]) -> np.ndarray:
    """(N,) BLEU-4 of each caption against its own references (pycocoevalcap's per-sentence figures)."""
    if len(captions) != len(references):
        raise ValueError(f"bleu4: {len(captions)} captions but {len(references)} reference sets")
    if not captions:
        return np.zeros(0)
    scorer = BleuScorer(n=4)
    for caption, refs in zip(captions, references):
        scorer += (normalize_caption(caption, max_words=None),
                   [normalize_caption(r, max_words=None) for r in refs])
    _, per_order = scorer.compute_score(option="closest", verbose=0)
    return np.asarray(per_order[3], dtype=np.float64)
