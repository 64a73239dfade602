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


def batch_idf_weights(token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L) weight log(B / df) of each caption token, df = how many of the batch's B captions hold it.

    A word every caption shares ("a", "is") gets 0 and one caption's own word log(B): the pooled
    caption vector keeps what tells it from the batch's other captions. Masked positions get 0.
    """
    b = token_ids.shape[0]
    present = torch.zeros(b, int(token_ids.max()) + 1, device=token_ids.device)
    present.scatter_add_(1, token_ids * mask.long(), mask.float())  # masked positions add 0 to id 0
    df = (present > 0).sum(0).clamp(min=1)
    return torch.log(b / df)[token_ids] * mask.float()


def contrastive_loss(visual: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                     temperature: float, gather: Callable | None = None,
                     token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: video i should pick caption i among the captions, and caption i video i.

    visual (B, N, D) visual tokens; text_embeds (B, L, D) caption token embeddings; text_mask (B, L)
    1 for caption tokens. Captions of other videos are the negatives (a repeated caption is a false
    negative, as in BLIP-2's ITC; with varied captions they are few). `gather` (engine.gather_rows)
    makes every rank's videos and captions the negatives, as BLIP-2 does: this rank's rows are scored
    against all ranks' columns, so that the mean over ranks is the loss of the whole global batch.

    `token_ids` (B, L): pool the caption with batch_idf_weights instead of a plain mean (a caption
    whose tokens every caption shares falls back to the mean).
    """
    v = F.normalize(visual.float().mean(1), dim=-1)
    m = text_mask.float()
    if token_ids is not None:
        w = batch_idf_weights(token_ids, text_mask)
        m = torch.where(w.sum(1, keepdim=True) > 0, w, m)
    m = m.to(text_embeds.dtype).unsqueeze(-1)
    t = F.normalize(((text_embeds * m).sum(1) / m.sum(1).clamp(min=1)).float(), dim=-1)
    v_all, t_all, offset = v, t, 0
    if gather is not None:
        (v_all, offset), (t_all, _) = gather(v), gather(t)
    target = torch.arange(offset, offset + v.shape[0], device=v.device)
    return 0.5 * (F.cross_entropy(v @ t_all.T / temperature, target)
                  + F.cross_entropy(t @ v_all.T / temperature, target))
