"""Which words a video's captions use, predicted from the video: an auxiliary term of the CE phase.

Why: the caption loss reaches the vision side only through an LLM that first learns the caption prior
and then ignores a weak visual signal (benchmarks/README.md, "The tiny captioner and shape"), and the
contrastive term (align.py) asks for a word only when the batch holds a clip that differs in just that
word, which for shape is rare. A word head asks, for every token of the vocabulary, whether this
video's references hold it: a direct target for every word the captions name, whatever the batch and
whatever the LLM has learned. Concept detection from captions (Fang et al. 2015, "From captions to
visual concepts and back") and the semantic attributes of video captioners (Gan et al. 2017, SCN) are
its precedents; the labels are the captions' own words, so it runs on any captioned data.

The head (`WordHead`: one linear layer from the visual tokens' width to the LLM's vocabulary) exists
only for training: export writes the captioner without it, and eval loads checkpoints without it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CHOICES

POOLS = CHOICES["ce.words_pool"]
HEAD_KEY = "word_head."  # its parameters' prefix in the captioner's state dict


class WordHead(nn.Linear):
    """visual tokens (B, N, D) -> logits (B, vocab) of "a reference of this video holds the token".

    pool "mean": the logits of the mean visual token. "max": each token's logits, the highest kept
    (multiple-instance learning: a word is present when some token shows it, as with two objects).
    The bias starts at log(1 / vocab): a caption holds a few of the vocabulary's tokens, so a head
    that starts at 0.5 everywhere would spend its first steps learning that most words are absent.
    """

    def __init__(self, width: int, vocab: int, pool: str = "mean"):
        super().__init__(width, vocab)
        if pool not in POOLS:
            raise ValueError(f"word head pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        with torch.no_grad():
            self.weight.normal_(0.0, width ** -0.5)
            self.bias.fill_(-math.log(vocab))

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        x = visual.to(self.weight.dtype)
        if self.pool == "mean":
            return super().forward(x.mean(1))
        return super().forward(x).amax(1)


def word_targets(ref_ids: torch.Tensor, ref_mask: torch.Tensor, owner: torch.Tensor, videos: int,
                 vocab: int) -> torch.Tensor:
    """(videos, vocab) the share of each video's references that hold each token (0 to 1).

    ref_ids / ref_mask (R, L): every reference of every video (VideoCaptioner.encode_references),
    owner (R,) the video of each row. A share rather than 0/1: where the references name a thing with
    different words ("disk", "ball"), each word is the label of the references that use it.
    """
    present = torch.zeros(ref_ids.shape[0], vocab, device=ref_ids.device)
    present.scatter_add_(1, ref_ids * ref_mask.long(), ref_mask.float())  # masked positions add 0 to id 0
    present = (present > 0).float()
    summed = torch.zeros(videos, vocab, device=ref_ids.device).index_add_(0, owner, present)
    counts = torch.zeros(videos, device=ref_ids.device).index_add_(0, owner, torch.ones_like(owner, dtype=torch.float))
    return summed / counts.clamp(min=1).unsqueeze(1)


def word_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per token, summed over the vocabulary and divided by each video's target
    mass (how many tokens its references hold), averaged over videos: each video's words weigh the
    same however large the vocabulary, and the absent words' terms shrink as the head learns them."""
    per_token = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (per_token.sum(1) / targets.sum(1).clamp(min=1)).mean()
