"""The contrastive term's co-occurrence text side (cooccur.py): synonyms agree, different things differ."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ds_videocap import align
from ds_videocap.cooccur import cooccurrence_table

# token ids: 0 "a" (every caption), 1-2 "disk" / "ball" (one shape), 3-4 "box" / "block" (another),
# 5-6 two colours; each clip's references name its shape with either synonym
A, DISK, BALL, BOX, BLOCK, RED, BLUE = range(7)


def _clips(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(n):
        shape = (DISK, BALL) if torch.rand(1, generator=g) < 0.5 else (BOX, BLOCK)
        colour = RED if torch.rand(1, generator=g) < 0.5 else BLUE
        clips.append([[A, colour, shape[int(torch.randint(2, (1,), generator=g))]] for _ in range(4)])
    return clips


def _cos(table, a, b):
    return F.cosine_similarity(table[a], table[b], dim=0).item()


def test_words_used_for_the_same_clips_agree_and_words_for_different_things_differ():
    # rank 2: shape and colour; the next axes would be which synonym a clip's references happen to use
    table, spectrum = cooccurrence_table(_clips(), vocab=10, rank=2)
    assert spectrum[0] >= spectrum[1] > spectrum[2]  # the two content axes stand above the wording's
    assert table.shape == (10, 2) and table.dtype == torch.float32
    assert _cos(table, DISK, BALL) > 0.85 and _cos(table, BOX, BLOCK) > 0.85
    assert _cos(table, DISK, BOX) < -0.5 and _cos(table, BALL, BLOCK) < -0.5
    assert _cos(table, RED, BLUE) < -0.5
    assert abs(_cos(table, DISK, RED)) < 0.3  # shape and colour vary independently
    assert table[A].abs().sum() == 0  # a word of every caption tells no clip from another
    assert table[7:].abs().sum() == 0  # tokens no training caption uses


def test_the_table_is_the_same_on_every_call_and_a_large_rank_is_cut_to_what_the_data_holds():
    clips = _clips()
    first = cooccurrence_table(clips, vocab=10, rank=3)[0]
    torch.manual_seed(123)  # the global stream does not matter: every rank computes the same table
    assert torch.equal(first, cooccurrence_table(clips, vocab=10, rank=3)[0])
    wide = cooccurrence_table(clips, vocab=10, rank=50)[0]
    assert wide.shape == (10, 50) and wide[:, 6:].abs().sum() == 0  # 6 informative tokens, 40 clips
    with pytest.raises(ValueError, match="rank"):
        cooccurrence_table(clips, vocab=10, rank=0)
    with pytest.raises(ValueError, match="two training clips"):
        cooccurrence_table(clips[:1], vocab=10, rank=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cooccur_text_side_pads_the_table_to_the_embedding_width(dtype):
    table = cooccurrence_table(_clips(), vocab=10, rank=2)[0]
    embed = torch.nn.Embedding(10, 8).to(dtype)
    vectors = align.text_token_vectors("cooccur", embed, table)(torch.tensor([[DISK, BALL, BOX]]))
    assert vectors.shape == (1, 3, 8) and not vectors.requires_grad
    assert torch.equal(vectors[0, :, :2], table[[DISK, BALL, BOX]]) and vectors[..., 2:].abs().sum() == 0
    # two clips of one shape named with different synonyms get nearly one text vector
    ids = torch.tensor([[A, RED, DISK], [A, RED, BALL], [A, RED, BOX]])
    t = align.reference_vectors(ids, torch.ones_like(ids), torch.arange(3), 3,
                                align.text_token_vectors("cooccur", embed, table), idf=True)
    assert (t[0] @ t[1]).item() > 0.85 and (t[0] @ t[2]).item() < 0.5
    with pytest.raises(ValueError, match="text_table"):
        align.text_token_vectors("cooccur", embed)
