"""The CE phase's word head (words.py): targets, loss, pooling, the forward term, and what stays out of
saved models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import CAPTIONS, frames

from ds_videocap.words import WordHead, word_loss, word_targets


def _build(folder, pool="mean", **model_fields):
    from ds_videocap.build import build_model
    from ds_videocap.config import LoraCfg, ModelCfg
    return build_model(ModelCfg(path=str(folder), **model_fields), LoraCfg(), word_head_pool=pool)


def test_word_targets_are_the_share_of_a_videos_references_holding_each_token():
    ids = torch.tensor([[3, 4, 0, 0], [3, 5, 5, 0], [0, 6, 2, 2]])  # id 0 is a real token only in the last row
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    owner = torch.tensor([0, 0, 1])  # video 0 owns two references, video 1 one
    got = word_targets(ids, mask, owner, videos=2, vocab=8)
    expected = torch.zeros(2, 8)
    for row, video in enumerate(owner.tolist()):
        for token in set(ids[row][mask[row].bool()].tolist()):  # a repeated token counts once per reference
            expected[video, token] += 1.0 / int((owner == video).sum())
    assert torch.equal(got, expected)
    assert got[0, 3] == 1.0 and got[0, 4] == 0.5 and got[0, 0] == 0.0  # padding is no token
    assert got[1, 0] == 1.0


def test_word_loss_is_bce_per_token_over_each_videos_target_mass():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 10, generator=g), torch.rand(3, 10, generator=g).round()
    targets[2] = 0  # a video with no targets: its mass is clamped, not a division by zero
    expected = sum(F.binary_cross_entropy_with_logits(logits[b], targets[b], reduction="sum")
                   / max(float(targets[b].sum()), 1.0) for b in range(3)) / 3
    assert word_loss(logits, targets).item() == pytest.approx(float(expected), rel=1e-6)
    # confident and right costs ~0; the head's starting bias already makes absent words cheap
    assert word_loss(torch.where(targets > 0, 20.0, -20.0), targets).item() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_word_head_pools_the_mean_token_or_each_tokens_best(dtype):
    torch.manual_seed(0)
    visual = torch.randn(2, 5, 8).to(dtype)
    mean_head = WordHead(8, 30, "mean").to(dtype)
    assert mean_head.bias.float().mean().item() == pytest.approx(-math.log(30), rel=1e-2)
    per_token = F.linear(visual, mean_head.weight, mean_head.bias)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert torch.allclose(mean_head(visual).float(), per_token.float().mean(1), **tol)
    max_head = WordHead(8, 30, "max").to(dtype)
    max_head.load_state_dict(mean_head.state_dict())
    assert torch.equal(max_head(visual), F.linear(visual, max_head.weight, max_head.bias).amax(1))
    with pytest.raises(ValueError, match="pool"):
        WordHead(8, 30, "sum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pool", ["mean", "max"])
def test_forward_adds_the_weighted_word_term_and_trains_the_video_side(tiny_folders, pool, dtype):
    model = _build(tiny_folders["opt"], pool, frame_embedding=True, vit="full", llm="full").to(dtype)
    model.eval()
    assert model.word_head.weight.dtype == dtype
    assert model.word_head.out_features == model.language_model.get_input_embeddings().num_embeddings
    pixels, inputs = frames(batch=3, t=2).to(dtype), model.encode_text(CAPTIONS[:3])
    refs = model.encode_references([CAPTIONS[0:2], CAPTIONS[2:4], CAPTIONS[4:6]])
    ce = model(pixels, **inputs)
    loss = model(pixels, **inputs, words_weight=0.5, word_references=refs)
    targets = word_targets(refs["input_ids"], refs["attention_mask"], refs["owner"], 3, model.word_head.out_features)
    words = word_loss(model.word_head(model.encode_visual(pixels)), targets)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert loss.float().item() == pytest.approx(ce.float().item() + 0.5 * words.item(), rel=tol)
    assert model.last_loss_parts["words_loss"].item() == pytest.approx(words.item(), rel=tol)
    # the term reaches the ViT, and the head learns; the LLM's embedding gets only the caption loss
    patch = model.hf.vision_model.embeddings.patch_embedding.weight
    embed = model.language_model.get_input_embeddings().weight
    with_term = torch.autograd.grad(loss, [patch, embed, model.word_head.weight])
    caption_only = torch.autograd.grad(ce, [patch, embed])
    assert not torch.allclose(with_term[0].float(), caption_only[0].float())
    assert torch.allclose(with_term[1].float(), caption_only[1].float(), atol=1e-6 if dtype == torch.float32 else 1e-3)
    assert with_term[2].abs().sum() > 0


def test_words_weight_without_a_head_is_a_clear_error(tiny_folders):
    from tiny_models import load
    model = load(tiny_folders["opt"])
    assert model.word_head is None
    inputs = model.encode_text(CAPTIONS[:2])
    with pytest.raises(ValueError, match="word head"):
        model(frames(batch=2, t=2), **inputs, words_weight=1.0,
              word_references=model.encode_references([CAPTIONS[:1], CAPTIONS[1:2]]))


def test_export_leaves_the_word_head_out(tiny_folders, tmp_path):
    from safetensors.torch import load_file

    from ds_videocap.export import save_hf_folder
    model = _build(tiny_folders["opt"], frame_embedding=True)
    out = save_hf_folder(model, tmp_path / "export")
    keys = [k for f in out.glob("*.safetensors") for k in load_file(f)]
    assert keys and not any("word_head" in k for k in keys)


@pytest.mark.parametrize("override, field", [("ce.words_weight=-1", "ce.words_weight"),
                                             ("ce.words_pool=sum", "ce.words_pool")])
def test_recipe_rejects_bad_word_head_keys(override, field):
    from ds_videocap.config import ConfigError
    from ds_videocap.recipe_io import load_recipe
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_recipe("synth", [override])
