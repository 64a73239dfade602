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
from functools import lru_cache

import torch
import torch.nn.functional as F

from .config import CHOICES

TEXT_SIDES = CHOICES["ce.itc_text_side"]
RANDOM_TEXT_SEED = 0  # the "random" text side's table: the same on every rank, run and resume


@lru_cache(maxsize=4)
def _random_token_table(vocab: int, dim: int, device: torch.device) -> torch.Tensor:
    """Drawn on the CPU (the same numbers on any device), moved to `device` once, not in every step."""
    g = torch.Generator().manual_seed(RANDOM_TEXT_SEED)
    return (torch.randn(vocab, dim, generator=g) * dim ** -0.5).to(device)


def text_token_vectors(side: str, embed: torch.nn.Embedding, table: torch.Tensor | None = None) -> Callable:
    """ids -> the token vectors the text side pools, for `side` in TEXT_SIDES.

    embedding: the LLM's input embedding, which the term trains as well. detached: the same vectors
    with no gradient from the term. random: a fixed random vector per token id (not trained, not saved).
    Why the last two: the term is minimised as much by making the captions of two contents the videos
    cannot yet tell apart alike (their words' embeddings pulled together) as by making the videos
    differ; a text side the term cannot move leaves only the second. With random vectors, words that
    differ always give different captions (96-d random vectors are nearly orthogonal), synonyms included,
    so the text side does not wait for the LLM to learn which words name different things
    (benchmarks/README.md, eighth round). cooccur: `table` (cooccur.cooccurrence_table, from the training
    references), where words used for the same clips (synonyms) agree and words for different things differ.
    """
    if side == "embedding":
        return embed
    if side == "detached":
        return lambda ids: embed(ids).detach()
    if side == "cooccur":
        if table is None:
            raise ValueError("the cooccur text side needs the captioner's text_table (cooccur.cooccurrence_table)")
        # (vocab, rank) -> the embedding's width: the zero dimensions change no cosine
        return lambda ids: F.pad(F.embedding(ids, table), (0, embed.embedding_dim - table.shape[1]))
    if side != "random":
        raise ValueError(f"text side must be one of {TEXT_SIDES}, got {side!r}")
    return lambda ids: F.embedding(ids, _random_token_table(embed.num_embeddings, embed.embedding_dim, ids.device))


def _presence(token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, V) bool: caption b holds token v (masked positions count for nothing)."""
    present = torch.zeros(token_ids.shape[0], int(token_ids.max()) + 1, device=token_ids.device)
    present.scatter_add_(1, token_ids * mask.long(), mask.float())  # masked positions add 0 to id 0
    return present > 0


def batch_idf_weights(token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L) weight log(B / df) of each caption token, df = how many of the batch's B captions hold it.

    A word every caption shares ("a", "is") gets 0 and one caption's own word log(B): the pooled
    caption vector keeps what tells it from the batch's other captions. Masked positions get 0.
    """
    b = token_ids.shape[0]
    df = _presence(token_ids, mask).sum(0).clamp(min=1)
    return torch.log(b / df)[token_ids] * mask.float()


def swapped_word_captions(token_ids: torch.Tensor, mask: torch.Tensor, text_embeds: torch.Tensor,
                          weights: torch.Tensor, tries: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives in the manner of NegCLIP: each caption's pooled vector with one of its words
    swapped for a word of another caption that it does not hold -> ((B, D) unnormalised, (B,) valid).

    Why: within a batch, captions usually differ in several words at once, so the visual side can tell
    them apart by the easiest attribute (colour) and never needs the others. A caption that differs from
    the true one in a single word asks for that word, whichever attribute it names. Only words that not
    every caption holds are swapped (not "a", "is"); the swapped word keeps the weight of the one it
    replaces. A caption with nothing to swap (or no foreign word found in `tries` draws) is not valid.
    """
    b, length = token_ids.shape
    present = _presence(token_ids, mask)
    content = mask.bool() & (present.sum(0) < b)[token_ids]  # (B, L): a word not every caption holds
    flat = content.flatten().nonzero().squeeze(1)
    embeds = (text_embeds * weights.unsqueeze(-1)).sum(1)
    if flat.numel() == 0:
        return embeds, torch.zeros(b, dtype=torch.bool, device=token_ids.device)
    # the word to replace: one of the caption's content positions, uniformly
    scores = torch.rand(b, length, device=token_ids.device).masked_fill(~content, -1.0)
    pos = scores.argmax(1)
    has_word = content.any(1)
    # its replacement: the first of `tries` random content positions of the batch holding a foreign token
    draws = flat[torch.randint(flat.numel(), (b, tries), device=token_ids.device)]
    draw_tokens = token_ids.flatten()[draws]
    foreign = ~present.gather(1, draw_tokens)
    pick = draws.gather(1, foreign.float().argmax(1, keepdim=True)).squeeze(1)
    rows = torch.arange(b, device=token_ids.device)
    w = weights[rows, pos].unsqueeze(-1)
    swapped = embeds - w * text_embeds[rows, pos] + w * text_embeds.flatten(0, 1)[pick]
    return swapped, has_word & foreign.any(1)


def reference_vectors(ref_ids: torch.Tensor, ref_mask: torch.Tensor, owner: torch.Tensor, videos: int,
                      embed: Callable, idf: bool = False) -> torch.Tensor:
    """(videos, D) unit text vectors, each the mean of its video's reference captions' unit vectors.

    Why: where a clip's references name one thing with different words ("a disk", "a ball", "a circle"),
    one sampled reference per clip gives two clips of one shape unrelated text vectors, and the term
    then asks the videos to differ where they do not. The mean over all references holds each word's
    share of the set's wording, the same for every clip of that content. `owner` (R,) is the video
    index of each reference row (every video owns at least one); `embed` the LLM's input embedding.
    Each caption vector is its token weights times the embeddings of the distinct tokens, so the
    embedding runs once per distinct token rather than once per position of every reference.
    """
    m = ref_mask.float()
    if idf:
        w = batch_idf_weights(ref_ids, ref_mask)
        m = torch.where(w.sum(1, keepdim=True) > 0, w, m)
    distinct, inverse = torch.unique(ref_ids, return_inverse=True)
    weights = torch.zeros(ref_ids.shape[0], distinct.numel(), device=m.device).scatter_add_(1, inverse, m)
    per_ref = F.normalize(weights @ embed(distinct).float(), dim=-1)
    summed = torch.zeros(videos, per_ref.shape[1], device=per_ref.device).index_add_(0, owner, per_ref)
    return F.normalize(summed, dim=-1)


def contrastive_loss(visual: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                     temperature: float, gather: Callable | None = None, idf: bool = False,
                     token_ids: torch.Tensor | None = None, swap_negatives: bool = False,
                     references: dict | None = None, embed: Callable | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: video i should pick caption i among the captions, and caption i video i.

    visual (B, N, D) visual tokens; text_embeds (B, L, D) caption token embeddings; text_mask (B, L)
    1 for caption tokens. Captions of other videos are the negatives (a repeated caption is a false
    negative, as in BLIP-2's ITC; with varied captions they are few). `gather` (engine.gather_rows)
    makes every rank's videos and captions the negatives, as BLIP-2 does: this rank's rows are scored
    against all ranks' columns, so that the mean over ranks is the loss of the whole global batch.

    `token_ids` (B, L): the caption tokens, needed by the two options. `idf`: pool the caption with
    batch_idf_weights instead of a plain mean (a caption whose tokens every caption shares falls back to
    the mean). `swap_negatives`: each video's own caption with one word swapped (swapped_word_captions)
    is one more negative for that video. `references` {"input_ids" (R, L'), "attention_mask", "owner"
    (R,)} with `embed` (the LLM's input embedding): every reference caption of each video, the text side
    then their mean (reference_vectors); the swapped-word negative still comes from the sampled caption.
    """
    v = F.normalize(visual.float().mean(1), dim=-1)
    m = text_mask.float()
    if idf:
        w = batch_idf_weights(token_ids, text_mask)
        m = torch.where(w.sum(1, keepdim=True) > 0, w, m)
    m = m.to(text_embeds.dtype)
    if references is None:
        t = F.normalize(((text_embeds * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)).float(),
                        dim=-1)
    else:
        t = reference_vectors(references["input_ids"], references["attention_mask"], references["owner"],
                              v.shape[0], embed, idf=idf)
    v_all, t_all, offset = v, t, 0
    if gather is not None:
        (v_all, offset), (t_all, _) = gather(v), gather(t)
    target = torch.arange(offset, offset + v.shape[0], device=v.device)
    video_to_text = v @ t_all.T
    if swap_negatives:
        swapped, valid = swapped_word_captions(token_ids, text_mask, text_embeds, m)
        own_swapped = (v * F.normalize(swapped.float(), dim=-1)).sum(1, keepdim=True)
        video_to_text = torch.cat([video_to_text, own_swapped.masked_fill(~valid.unsqueeze(1), float("-inf"))], 1)
    return 0.5 * (F.cross_entropy(video_to_text / temperature, target)
                  + F.cross_entropy(t @ v_all.T / temperature, target))
