"""VideoCaptioner on tiny models of each family: tokens reaching the LLM, text encoding, the
log-probs SCST trains on against generate()'s own scores, and a few optimizer steps."""
from __future__ import annotations

import pytest
import torch
from tiny_models import CAPTIONS, FAMILIES, frames, load


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", ["concat", "per_frame"])
def test_tokens_reaching_the_llm(tiny_folders, family, fusion):
    model = load(tiny_folders[family], fusion=fusion, frame_embedding=True)
    q, t = model.num_query_tokens, 3
    visual = model.encode_visual(frames(batch=2, t=t))
    hidden = model.language_model.get_input_embeddings().weight.shape[1]
    assert visual.shape == (2, q if fusion == "concat" else t * q, hidden)
    loss = model(frames(batch=2, t=t), **model.encode_text(CAPTIONS[:2]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    model.eval()
    sequences = model.generate(frames(batch=2, t=t), max_new_tokens=6, num_beams=2, min_new_tokens=2,
                               length_penalty=0.8, repetition_penalty=1.2)
    assert sequences.shape[0] == 2 and sequences.shape[1] <= 6
    assert len(model.decode(sequences)) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_text_masks_padding_and_ends_with_the_stop_token(tiny_folders, family):
    model = load(tiny_folders[family])
    batch = model.encode_text(["a red circle", "a blue square moves left"])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    assert (labels[mask == 0] == -100).all() and (labels[mask == 1] == ids[mask == 1]).all()
    lengths = mask.sum(1)
    assert lengths[0] < lengths[1]
    for row, n in zip(ids, lengths):
        assert row[n - 1].item() == model.stop_ids[0]
    expected_stop = model.tokenizer("\n", add_special_tokens=False).input_ids[-1] if family == "opt" \
        else model.tokenizer.eos_token_id
    assert model.stop_ids == [expected_stop]
    assert model.decode(ids) == ["a red circle", "a blue square moves left"]
    assert model.prompt == ("" if family == "opt" else "a video of")


def test_decode_and_mask_stop_at_the_first_stop_token(tiny_folders):
    model = load(tiny_folders["opt"])
    nl, pad = model.stop_ids[0], model.pad_id
    word = model.tokenizer("red", add_special_tokens=False).input_ids[-1]
    sequences = torch.tensor([[word, nl, word, pad], [word, word, word, word]])
    assert model.decode(sequences) == ["red", "red red red red"]
    assert model.caption_mask(sequences).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_logprobs_match_generate_scores(tiny_folders, family):
    torch.manual_seed(0)
    model = load(tiny_folders[family], fusion="per_frame" if family == "t5" else "concat")
    model.eval()
    pixels = frames(batch=2, t=2)
    for options in ({}, {"do_sample": True, "num_return_sequences": 3, "temperature": 1.0}):
        sequences, scores = model.generate(pixels, max_new_tokens=7, return_logprobs=True, **options)
        logprobs, mask = model.sequence_logprobs(pixels, sequences)
        assert logprobs.shape == mask.shape == sequences.shape
        assert logprobs.requires_grad
        torch.testing.assert_close(logprobs, scores, atol=1e-4, rtol=1e-4)
        assert (mask.sum(1) >= 1).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_forward_gives_scst_logprobs_and_ce_loss_as_two_would(tiny_folders, family, dtype):
    """SCST with a CE term encodes the videos once (forward with sequences and caption inputs): the same
    log-probs, caption loss and gradients as the two separate forwards."""
    torch.manual_seed(0)
    model = load(tiny_folders[family]).to(dtype)
    model.eval()  # no dropout: both ways see the same network
    pixels = frames(batch=2, t=2).to(dtype)
    sequences = model.generate(pixels, do_sample=True, num_return_sequences=3, max_new_tokens=6)
    inputs = model.encode_text(CAPTIONS[:2])

    def loss_and_grads(*outputs):
        loss = -(outputs[0] * outputs[1]).sum() + 4 * outputs[2]
        model.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return [outputs[0].detach(), outputs[2].detach()], grads

    one = loss_and_grads(*model(pixels, sequences=sequences, **inputs))
    two = loss_and_grads(*model(pixels, sequences=sequences), model(pixels, **inputs))
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        else:  # bf16 sums the shared visual gradient in another order: equal to its rounding, tensor-wide
            assert (a.float() - b.float()).norm() <= 0.02 * b.float().norm() + 1e-3
    assert len(one[1]) == len(two[1]) > 0


def test_frame_embedding_breaks_concat_order_blindness(tiny_folders):
    # concat fusion alone cannot tell frame order (DESIGN.md); the frame-index embedding can.
    pixels = frames(batch=1, t=3)

    def order_effect(model):
        with torch.no_grad():
            return (model.encode_visual(pixels) - model.encode_visual(pixels.flip(1))).abs().max().item()

    plain = load(tiny_folders["opt"]).eval()
    ordered = load(tiny_folders["opt"], frame_embedding=True).eval()
    assert ordered.frame_embedding.std().item() == pytest.approx(0.5, rel=0.2)  # tiny from-scratch init
    assert order_effect(plain) < 1e-5
    # At init the Q-Former's attention is nearly uniform, so the effect is small but far above noise.
    assert order_effect(ordered) > 100 * max(order_effect(plain), 1e-8)


def test_tiny_vision_tower_sees_the_pixels(tiny_folders):
    # BLIP-2's vision initializer_range default (1e-10) makes every frame look the same from scratch.
    model = load(tiny_folders["opt"]).eval()
    with torch.no_grad():
        tokens = model.hf.vision_model(pixel_values=frames(batch=1, t=2)[0]).last_hidden_state
    assert (tokens[0] - tokens[1]).abs().max() > 0.1
    assert model.hf.query_tokens.std() > 0.01  # distinct queries (transformers zero-initialises them)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_decreases_on_a_fixed_batch(tiny_folders, family):
    torch.manual_seed(0)
    model = load(tiny_folders[family], frame_embedding=True, llm="full")
    pixels, batch = frames(batch=4, t=2), model.encode_text(CAPTIONS[:4])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(pixels, **batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_instruction_reaches_the_qformer_only_when_asked(tiny_folders):
    from ds_videocap.errors import UserError

    pixels = frames(batch=2, t=2)
    plain = load(tiny_folders["llama"]).eval()
    instructed = load(tiny_folders["llama"], qformer_text=True, prompt="a short description:").eval()
    assert instructed.qformer_text and not plain.qformer_text
    with torch.no_grad():
        a, b = plain.encode_visual(pixels), instructed.encode_visual(pixels)
    assert a.shape == b.shape == (2, plain.num_query_tokens, a.shape[-1])
    assert not torch.allclose(a, b, atol=1e-4)  # the instruction changes what the queries extract
    sequences, scores = instructed.generate(pixels, max_new_tokens=5, num_beams=3, return_logprobs=True)
    assert scores.shape == sequences.shape
    with pytest.raises(UserError, match="InstructBLIP"):
        load(tiny_folders["opt"], qformer_text=True)
