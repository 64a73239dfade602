"""Token vectors from which clips' references use each token: the contrastive term's "cooccur" text side.

Why: the term needs a text side in which captions of the same content agree and captions of different
content differ. The LLM's own embedding does not give one while the LLM cannot yet see (the shape nouns'
embeddings sit together, benchmarks/README.md, eighth round), and fixed random vectors per token
separate synonyms as much as different things. Which words name the same thing is in the training
captions themselves: the references of one clip use "disk", "ball" and "circle" for the same object,
so those words are used for the same clips, and "square" for others. Latent semantic analysis of the
clip-by-token matrix (each clip a document made of its references) puts such words together and
different things apart, from the training text alone, so it works on any captioned set (MSR-VTT has 20
references a clip, VATEX 10).

The table: A[clip, token] = share of the clip's references holding the token; each token's column
scaled to unit norm (a rare word counts as much as a frequent one; a token of every clip carries no
information and is dropped), the columns centred, and the top `rank` principal axes kept, each divided
by its singular value (whitened), so that a caption's pooled vector approximates its clip's coordinates
with every kept direction weighing the same (align.text_token_vectors pads it with zeros to the LLM's
embedding width). It is computed once per run on every rank from the same data (deterministic), neither
trained nor saved.
"""
from __future__ import annotations

import torch

TABLE_SEED = 0  # torch.pca_lowrank's random start, fixed: every rank must compute the same table


def cooccurrence_table(clip_token_ids: list[list[list[int]]], vocab: int, rank: int) -> tuple[torch.Tensor, list]:
    """-> (vocab, rank) float32 token vectors, and the leading singular values (the kept axes and up to 8
    more: where they flatten, the axes stop being content and become wording). `clip_token_ids[c]`
    holds each reference of clip c as token ids."""
    if rank < 1:
        raise ValueError(f"the co-occurrence text side's rank must be at least 1, got {rank}")
    rows, cols, vals = [], [], []
    for clip, refs in enumerate(clip_token_ids):
        share = {}
        for ids in refs:
            for token in set(ids):
                share[token] = share.get(token, 0.0) + 1.0 / len(refs)
        rows += [clip] * len(share)
        cols += list(share)
        vals += list(share.values())
    clips = len(clip_token_ids)
    used = sorted(set(cols))
    if clips < 2 or not used:
        raise ValueError("the co-occurrence text side needs the references of at least two training clips")
    column = {token: j for j, token in enumerate(used)}
    col = torch.tensor([column[t] for t in cols])
    val = torch.tensor(vals)
    norm = torch.zeros(len(used)).index_add_(0, col, val * val).sqrt()
    clips_using = torch.zeros(len(used)).index_add_(0, col, torch.ones_like(val))
    informative = clips_using < clips  # a token of every clip tells no clip from another
    val = val / norm[col] * informative[col]
    # sparse clips x tokens, centred inside pca_lowrank: MSR-VTT's or VATEX's matrix never goes dense
    with torch.random.fork_rng(devices=[]), torch.sparse.check_sparse_tensor_invariants():
        matrix = torch.sparse_coo_tensor(torch.stack([torch.tensor(rows), col]), val, (clips, len(used))).coalesce()
        torch.manual_seed(TABLE_SEED)
        k = min(rank, clips - 1, len(used))
        _, s, v = torch.pca_lowrank(matrix, q=min(k + 8, clips - 1, len(used)), center=True, niter=6)
    k = int((s[:k] > s[0] * 1e-4).sum())  # axes the data does not have (rank above its own) stay zero
    table = torch.zeros(vocab, rank)
    table[torch.tensor(used), :k] = v[:, :k] / s[:k]
    return table, [round(float(x), 2) for x in s]
