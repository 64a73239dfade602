"""Video-text contrastive alignment (BLIP-2's stage-1 ITC idea), an auxiliary term for the CE phase.

Why: a from-scratch captioner's LLM learns the caption prior from text alone and ignores a weak visual
signal, so the caption loss sends almost no gradient back to make that signal stronger (benchmarks/
README.md, "The tiny captioner and shape"). A contrastive term asks the visual tokens directly to tell
a batch's captions apart, whatever the LLM does with them.

No new parameters: the video side is the mean of the visual tokens the LLM receives, the text side the
mean of the caption's own LLM input embeddings (so the term lives in the LLM's embedding space, and a
saved or exported model is the same model). With a frozen LLM only the visual side moves.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def contrastive_loss(visual: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                     temperature: float, gather: Callable | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: video i should pick caption i among the captions, and caption i video i.

    visual (B, N, D) visual tokens; text_embeds (B, L, D) caption token embeddings; text_mask (B, L)
    1 for caption tokens. Captions of other videos are the negatives (a repeated caption is a false
    negative, as in BLIP-2's ITC; with varied captions they are few). `gather` (engine.gather_rows)
    makes every rank's videos and captions the negatives, as BLIP-2 does: this rank's rows are scored
    against all ranks' columns, so that the mean over ranks is the loss of the whole global batch.
    """
    v = F.normalize(visual.float().mean(1), dim=-1)
    m = text_mask.to(text_embeds.dtype).unsqueeze(-1)
    t = F.normalize(((text_embeds * m).sum(1) / m.sum(1).clamp(min=1)).float(), dim=-1)
    v_all, t_all, offset = v, t, 0
    if gather is not None:
        (v_all, offset), (t_all, _) = gather(v), gather(t)
    target = torch.arange(offset, offset + v.shape[0], device=v.device)
    return 0.5 * (F.cross_entropy(v @ t_all.T / temperature, target)
                  + F.cross_entropy(t @ v_all.T / temperature, target))
