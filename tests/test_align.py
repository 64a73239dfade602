"""The CE phase's contrastive term (align.py) and SCST's advantage modes (scst_advantage.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import CAPTIONS, frames, load

from ds_videocap import align
from ds_videocap.align import batch_idf_weights, contrastive_loss
from ds_videocap.scst_advantage import compute_advantages


def test_contrastive_loss_is_infonce_in_both_directions():
    g = torch.Generator().manual_seed(0)
    visual, text = torch.randn(4, 3, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0  # padding must not count in the caption's mean
    v = F.normalize(visual.mean(1), dim=-1)
    t = F.normalize(torch.stack([text[i, : int(mask[i].sum())].mean(0) for i in range(4)]), dim=-1)
    logits = v @ t.T / 0.2
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert contrastive_loss(visual, text, mask, 0.2).item() == pytest.approx(expected.item(), rel=1e-5)
    # matched pairs score low, one shared vector scores chance (log B)
    assert contrastive_loss(text, text, torch.ones(4, 5), 0.05).item() < 0.01
    same = torch.ones(4, 2, 8)
    assert contrastive_loss(same, same, torch.ones(4, 2), 0.1).item() == pytest.approx(math.log(4), rel=1e-5)


def test_forward_adds_the_weighted_contrastive_term(tiny_folders):
    model = load(tiny_folders["opt"], frame_embedding=True, vit="full")
    model.eval()  # no dropout: the two forwards see the same network
    pixels, inputs = frames(batch=3, t=2), model.encode_text(CAPTIONS[:3])
    ce = model(pixels, **inputs)
    both = model(pixels, **inputs, itc_weight=0.5, itc_temperature=0.1)
    text = model.language_model.get_input_embeddings()(inputs["input_ids"])
    itc = contrastive_loss(model.encode_visual(pixels), text, inputs["labels"] != -100, 0.1)
    assert both.item() == pytest.approx(ce.item() + 0.5 * itc.item(), rel=1e-5)
    both.backward()  # the term reaches the vision side
    assert model.hf.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    idf = model(pixels, **inputs, itc_weight=0.5, itc_temperature=0.1, itc_text_pool="idf")
    itc_idf = contrastive_loss(model.encode_visual(pixels), text, inputs["labels"] != -100, 0.1, idf=True,
                               token_ids=inputs["input_ids"])
    assert idf.item() == pytest.approx(ce.item() + 0.5 * itc_idf.item(), rel=1e-5)
    assert itc_idf.item() != pytest.approx(itc.item(), rel=1e-3)  # the pooling did change the term
    torch.manual_seed(3)  # the swapped words are drawn from torch's generator: the same draws twice
    swap = model(pixels, **inputs, itc_weight=0.5, itc_temperature=0.1, itc_swap_negatives=True)
    torch.manual_seed(3)
    itc_swap = contrastive_loss(model.encode_visual(pixels), text, inputs["labels"] != -100, 0.1,
                                token_ids=inputs["input_ids"], swap_negatives=True)
    assert swap.item() == pytest.approx(ce.item() + 0.5 * itc_swap.item(), rel=1e-5)
    assert itc_swap.item() > itc.item()  # one more negative per video can only raise the loss


def test_batch_idf_weights_count_words_that_tell_captions_apart():
    ids = torch.tensor([[5, 7, 9, 0], [5, 8, 9, 0], [5, 7, 6, 6]])  # 5 in all three, 7 in two, 8 and 6 in one
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    w = batch_idf_weights(ids, mask)
    log = math.log
    expected = torch.tensor([[0, log(3 / 2), log(3 / 2), 0], [0, log(3), log(3 / 2), 0],
                             [0, log(3 / 2), log(3), log(3)]])  # a repeated word counts once in df
    assert torch.allclose(w, expected, atol=1e-6)
    # padding holds id 0 here, a real word elsewhere: masked positions must not add to its count
    assert batch_idf_weights(torch.tensor([[0, 1], [2, 0]]), torch.tensor([[1, 1], [1, 0]]).bool())[0, 0] \
        == pytest.approx(log(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_idf_pooling_matches_captions_by_the_words_that_differ(dtype):
    """Two captions share every word but one: the plain mean hardly tells them apart, IDF pooling does."""
    g = torch.Generator().manual_seed(1)
    vocab = torch.randn(10, 16, generator=g)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    text = vocab[ids].to(dtype)
    visual = vocab[torch.tensor([6, 7])].unsqueeze(1).to(dtype)  # each video looks like its caption's own word
    mean_loss = contrastive_loss(visual, text, mask, 0.1)
    idf_loss = contrastive_loss(visual, text, mask, 0.1, idf=True, token_ids=ids)
    assert idf_loss.dtype == torch.float32 and torch.isfinite(idf_loss)
    assert idf_loss.item() < 0.05 < mean_loss.item()
    # the IDF-pooled caption vector is its distinct word alone (the shared ones weigh 0)
    same = contrastive_loss(visual, vocab[torch.tensor([[6], [7]])].to(dtype), torch.ones(2, 1, dtype=torch.bool), 0.1)
    assert idf_loss.item() == pytest.approx(same.item(), rel=2e-2 if dtype == torch.bfloat16 else 1e-5)
    # captions that share every token fall back to the plain mean instead of a 0/0
    twins, both = torch.tensor([[1, 2], [1, 2]]), torch.ones(2, 2, dtype=torch.bool)
    fallback = contrastive_loss(visual, vocab[twins].to(dtype), both, 0.1, idf=True, token_ids=twins)
    assert fallback.item() == pytest.approx(contrastive_loss(visual, vocab[twins].to(dtype), both, 0.1).item())


def test_group_norm_advantages_scale_each_video_by_its_spread():
    rewards = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [0.0, 0.0, 3.0]])
    baseline = rewards.mean(axis=1, keepdims=True).repeat(3, axis=1)
    assert np.array_equal(compute_advantages(rewards, baseline, "raw"), rewards - baseline)
    adv = compute_advantages(rewards, baseline, "group_norm")
    assert np.allclose(adv.std(axis=1)[[0, 2]], 1.0, atol=1e-3)  # both informative videos pull alike
    assert np.array_equal(adv[1], np.zeros(3))  # equal rewards: no signal, no NaN
    with pytest.raises(ValueError, match="advantage"):
        compute_advantages(rewards, baseline, "other")


@pytest.mark.parametrize("override, field", [("ce.itc_weight=-1", "ce.itc_weight"),
                                             ("ce.itc_temperature=0", "ce.itc_weight"),
                                             ("ce.itc_text_pool=max", "ce.itc_text_pool"),
                                             ("ce.itc_text_side=frozen", "ce.itc_text_side"),
                                             ("scst.advantage=grpo", "scst.advantage")])
def test_recipe_rejects_bad_alignment_and_advantage_keys(override, field):
    from ds_videocap.config import ConfigError
    from ds_videocap.recipe_io import load_recipe
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_recipe("synth", [override])  # validates


def _gathered_rank(rank: int, world: int, port: int, dtype: torch.dtype, results) -> None:
    """One gloo rank: its rows of a global batch of 5 (3 on rank 0, 2 on rank 1: unequal counts)."""
    import torch.distributed as dist

    from ds_videocap.engine import gather_rows

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    visual, text, mask = _global_batch(dtype)
    rows = slice(0, 3) if rank == 0 else slice(3, 5)
    local = visual[rows].clone().requires_grad_(True)
    text_local = text[rows].clone().requires_grad_(True)
    loss = contrastive_loss(local, text_local, mask[rows], 0.1, gather_rows)
    (loss * local.shape[0] / 5).backward()  # this rank's share of the whole batch's mean
    results[rank] = (loss.item(), local.shape[0], local.grad.float(), text_local.grad.float(), local.grad.dtype)
    dist.destroy_process_group()


def _global_batch(dtype: torch.dtype):
    g = torch.Generator().manual_seed(3)
    visual, text = torch.randn(5, 3, 8, generator=g), torch.randn(5, 4, 8, generator=g)
    return visual.to(dtype), text.to(dtype), torch.ones(5, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_contrastive_loss_is_the_global_batch_loss(dtype):
    """Across ranks (ce.itc_across_ranks, engine.gather_rows), each rank scores its rows against every
    rank's columns: the row-weighted mean over ranks is the loss of the whole batch on one process,
    unequal row counts included, and so is the gradient each rank's rows receive (in their own dtype)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_gathered_rank, args=(2, port, dtype, results), nprocs=2, join=True)
    visual, text, mask = _global_batch(dtype)
    visual.requires_grad_(True)
    text.requires_grad_(True)
    whole = contrastive_loss(visual, text, mask, 0.1)
    whole.backward()
    (loss0, n0, v_grad0, t_grad0, dtype0), (loss1, n1, v_grad1, t_grad1, dtype1) = results[0], results[1]
    assert (n0 * loss0 + n1 * loss1) / (n0 + n1) == pytest.approx(whole.item(), rel=1e-5)
    assert loss0 != pytest.approx(contrastive_loss(visual[:3], text[:3], mask[:3], 0.1).item(), rel=1e-3)
    # the gradient of every rank's loss reaches each rank's rows: the whole batch's gradient, exactly
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(torch.cat([v_grad0, v_grad1]), visual.grad.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(torch.cat([t_grad0, t_grad1]), text.grad.float(), rtol=tol, atol=tol)
    assert dtype0 == dtype1 == dtype


def test_swapped_word_captions_change_one_foreign_word_of_each_caption():
    """Each negative is its caption's pooled vector with one word (never one every caption holds)
    replaced by a word of another caption that this caption lacks, at the same weight."""
    torch.manual_seed(0)
    vocab = torch.eye(12)  # one-hot embeddings: a pooled vector is the caption's bag of words
    ids = torch.tensor([[1, 2, 3, 0], [1, 4, 5, 9], [1, 2, 6, 0], [1, 1, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    weights = mask.float()
    for _ in range(20):
        swapped, valid = align.swapped_word_captions(ids, mask, vocab[ids], weights)
        assert valid.tolist() == [True, True, True, False]  # caption 3 holds only the shared word 1
        for i in range(3):
            bag = (vocab[ids[i]] * weights[i, :, None]).sum(0)
            diff = swapped[i] - bag
            assert diff.sum().item() == pytest.approx(0.0) and diff.abs().sum().item() == pytest.approx(2.0)
            removed, added = int(diff.argmin()), int(diff.argmax())
            assert removed in ids[i][mask[i]].tolist() and removed != 1  # a caption word, not the shared one
            assert added not in ids[i][mask[i]].tolist() and added in ids[mask].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swap_negatives_ask_for_every_word_not_just_the_easiest(dtype):
    """Videos that show only their colour are told apart by colour alone; with swapped-word negatives
    (same colour, another shape) the term also asks for the shape, and a video showing both passes."""
    torch.manual_seed(0)
    vocab = torch.randn(12, 32)
    ids = torch.tensor([[1, 2, 6], [1, 3, 7], [1, 4, 8], [1, 5, 9]])  # "a <colour i> <shape i>"
    mask, text = torch.ones(4, 3, dtype=torch.bool), vocab[ids].to(dtype)
    colour_only = (vocab[ids[:, 1]] * 3).unsqueeze(1).to(dtype)
    both = (vocab[ids[:, 1]] + vocab[ids[:, 2]]).mul(3).unsqueeze(1).to(dtype)
    easy = contrastive_loss(colour_only, text, mask, 0.1, idf=True, token_ids=ids)
    # half the swaps hit the shape word, whose negative then ties with the true caption (log 2 for that row)
    hard = torch.stack([contrastive_loss(colour_only, text, mask, 0.1, idf=True, token_ids=ids,
                                         swap_negatives=True) for _ in range(40)])
    seen = torch.stack([contrastive_loss(both, text, mask, 0.1, idf=True, token_ids=ids,
                                         swap_negatives=True) for _ in range(40)])
    assert hard.dtype == torch.float32 and torch.isfinite(hard).all()
    assert easy.item() < 0.01 and hard.mean().item() > 0.1 and seen.max().item() < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_references_give_one_shape_one_text_vector_whatever_its_name(dtype):
    """Two clips of one content, each described once by each of two synonyms: one sampled reference can
    give them different text vectors; the mean over all their references gives them the same one."""
    g = torch.Generator().manual_seed(2)
    table = torch.nn.Embedding(10, 16).to(dtype)
    with torch.no_grad():
        table.weight.copy_(torch.randn(10, 16, generator=g).to(dtype))
    # ids: 1 = "a", 2 = "red", 3 / 4 = "disk" / "ball", 5 = "box"; clip 0 and 1 are red circles, clip 2 a box
    ids = torch.tensor([[1, 2, 3, 0], [1, 2, 4, 0], [1, 2, 4, 0], [1, 2, 3, 0], [1, 2, 5, 5], [1, 2, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    t = align.reference_vectors(ids, mask, owner, 3, table)
    assert t.dtype == torch.float32 and t.shape == (3, 16)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert F.cosine_similarity(t[0], t[1], dim=0) > 0.999  # the same words, in another order of references
    # each row is the normalised mean of the normalised weighted-mean token embeddings of its references
    e = table.weight.float()
    per_ref = F.normalize(torch.stack([e[r[m]].mean(0) for r, m in zip(ids, mask)]), dim=-1)
    expected = F.normalize(torch.stack([per_ref[owner == i].mean(0) for i in range(3)]), dim=-1)
    assert torch.allclose(t, expected, atol=1e-5)
    # the contrastive term uses them as its text side (the sampled captions then only feed the swap)
    visual = expected.unsqueeze(1).to(dtype)
    sampled = table(ids[[0, 2, 4]])
    refs = {"input_ids": ids, "attention_mask": mask, "owner": owner}
    loss = contrastive_loss(visual, sampled, mask[[0, 2, 4]], 0.1, references=refs, embed=table)
    direct = F.cross_entropy(visual.float().squeeze(1) @ expected.T / 0.1, torch.arange(3))
    assert loss.item() == pytest.approx(direct.item(), rel=2e-2 if dtype == torch.bfloat16 else 1e-5)
    # IDF over all references: "a" and "red" (in every reference) weigh nothing
    idf = align.reference_vectors(ids, mask, owner, 3, table, idf=True)
    assert F.cosine_similarity(idf[0], idf[2], dim=0) < F.cosine_similarity(t[0], t[2], dim=0)


def test_forward_with_all_references_backpropagates_to_the_embeddings(tiny_folders):
    model = load(tiny_folders["opt"], frame_embedding=True, vit="full", llm="full")
    model.eval()
    pixels, inputs = frames(batch=2, t=2), model.encode_text(CAPTIONS[:2])
    refs = model.encode_references([CAPTIONS[0:3], CAPTIONS[3:5]])
    assert refs["owner"].tolist() == [0, 0, 0, 1, 1] and refs["input_ids"].shape[0] == 5
    ce = model(pixels, **inputs)
    loss = model(pixels, **inputs, itc_weight=0.5, itc_temperature=0.1, itc_references=refs)
    embed = model.language_model.get_input_embeddings()
    t = align.reference_vectors(refs["input_ids"], refs["attention_mask"].bool(), refs["owner"], 2, embed)
    v = F.normalize(model.encode_visual(pixels).float().mean(1), dim=-1)
    itc = 0.5 * (F.cross_entropy(v @ t.T / 0.1, torch.arange(2)) + F.cross_entropy(t @ v.T / 0.1, torch.arange(2)))
    assert loss.item() == pytest.approx(ce.item() + 0.5 * itc.item(), rel=1e-5)
    loss.backward()
    row = refs["input_ids"][4, 2]  # a token of the last reference only: the term reached its embedding
    assert embed.weight.grad[row].abs().sum() > 0


def test_random_text_side_is_one_fixed_table_whatever_the_embedding():
    embed = torch.nn.Embedding(50, 16)
    first = align.text_token_vectors("random", embed)(torch.arange(50))
    with torch.no_grad():
        embed.weight.mul_(3.0)  # the LLM's embedding moves; the random table does not
    again = align.text_token_vectors("random", torch.nn.Embedding(50, 16))(torch.arange(50))
    assert torch.equal(first, again) and not first.requires_grad
    unit = F.normalize(first, dim=-1)
    off_diagonal = (unit @ unit.T - torch.eye(50)).abs()
    assert off_diagonal.max() < 0.9 and off_diagonal.mean() < 0.3  # distinct words, distinct directions
    detached = align.text_token_vectors("detached", embed)(torch.arange(5))
    assert torch.equal(detached, embed(torch.arange(5))) and not detached.requires_grad
    with pytest.raises(ValueError, match="text side"):
        align.text_token_vectors("frozen", embed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", ["detached", "random", "cooccur"])
def test_a_text_side_the_term_cannot_move_trains_only_the_video_side(tiny_folders, side, dtype):
    from ds_videocap.cooccur import cooccurrence_table
    model = load(tiny_folders["opt"], frame_embedding=True, vit="full", llm="full").to(dtype)
    model.eval()
    pixels, inputs = frames(batch=3, t=2).to(dtype), model.encode_text(CAPTIONS[:3])
    refs = model.encode_references([CAPTIONS[0:2], CAPTIONS[2:4], CAPTIONS[4:6]])
    embed = model.language_model.get_input_embeddings()
    if side == "cooccur":  # as prepare.attach_text_table does, from these videos' references
        ids = [[model.tokenizer(c, add_special_tokens=False).input_ids for c in CAPTIONS[i: i + 2]] for i in (0, 2, 4)]
        model.text_table = cooccurrence_table(ids, embed.num_embeddings, rank=2)[0]
    kw = dict(itc_weight=1.0, itc_temperature=0.1, itc_references=refs, itc_text_pool="idf")
    # the term's value: the same formula over the chosen token vectors
    loss = model(pixels, **inputs, **kw, itc_text_side=side)
    ce = model(pixels, **inputs)
    tokens = align.text_token_vectors(side, embed, model.text_table)
    t = align.reference_vectors(refs["input_ids"], refs["attention_mask"].bool(), refs["owner"], 3, tokens, idf=True)
    v = F.normalize(model.encode_visual(pixels).float().mean(1), dim=-1)
    itc = 0.5 * (F.cross_entropy(v @ t.T / 0.1, torch.arange(3)) + F.cross_entropy(t @ v.T / 0.1, torch.arange(3)))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert loss.float().item() == pytest.approx(ce.float().item() + itc.item(), rel=tol)
    # the gradient: the term moves the vision side and leaves the LLM's embedding to the caption loss
    patch = model.hf.vision_model.embeddings.patch_embedding.weight
    with_term = torch.autograd.grad(loss, [embed.weight, patch])
    caption_only = torch.autograd.grad(ce, [embed.weight, patch])
    assert not torch.allclose(with_term[1].float(), caption_only[1].float())
    assert torch.allclose(with_term[0].float(), caption_only[0].float(), atol=1e-6 if dtype == torch.float32 else 1e-3)
    # the control: the trainable text side does get the term's gradient
    trained = torch.autograd.grad(model(pixels, **inputs, **kw, itc_text_side="embedding"), embed.weight)[0]
    assert not torch.allclose(trained.float(), caption_only[0].float(), atol=1e-3)
