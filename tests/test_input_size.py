"""Frames of another size than the checkpoint's: the ViT's position embeddings are interpolated.

The tiny folders are 32 px with 8 px patches (a 4x4 grid); 48 px frames give a 6x6 grid.
"""
from __future__ import annotations

import pytest
import torch
from tiny_models import CAPTIONS, FAMILIES, frames, load


def _record_interpolation(model) -> list:
    """Wrap the ViT's forward to record the interpolate_pos_encoding flag of each call."""
    flags, forward = [], model.hf.vision_model.forward

    def recording(*args, **kwargs):
        flags.append(kwargs.get("interpolate_pos_encoding", False))
        return forward(*args, **kwargs)

    model.hf.vision_model.forward = recording
    return flags


@pytest.mark.parametrize("family, size", [(f, 48) for f in FAMILIES] + [("opt", 32)])
def test_forward_and_generate_at_any_size(tiny_folders, family, size):
    model = load(tiny_folders[family], image_size=size)
    assert model.image_size == size  # what evaluation and export hand to the data pipeline
    flags = _record_interpolation(model)
    loss = model(frames(batch=2, t=2, size=size), **model.encode_text(CAPTIONS[:2]))
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    sequences = model.generate(frames(batch=2, t=2, size=size), max_new_tokens=4)
    assert sequences.shape[0] == 2 and len(model.decode(sequences)) == 2
    assert set(flags) == {size != 32}


def test_native_size_output_equals_no_interpolation(tiny_folders):
    model = load(tiny_folders["opt"]).eval()
    pixels = frames(batch=1, t=2, size=32)
    with torch.no_grad():
        ours = model.encode_visual(pixels)
        plain = model.hf.vision_model(pixel_values=pixels.flatten(0, 1), interpolate_pos_encoding=False)
        forced = model.hf.vision_model(pixel_values=pixels.flatten(0, 1), interpolate_pos_encoding=True)
        model.hf.vision_model.forward = lambda **kw: type(model.hf.vision_model).forward(
            model.hf.vision_model, **{**kw, "interpolate_pos_encoding": False})
        reference = model.encode_visual(pixels)
    assert torch.equal(plain.last_hidden_state, forced.last_hidden_state)
    assert torch.equal(ours, reference)


def test_larger_frames_change_the_token_count_not_the_llm_input(tiny_folders):
    model = load(tiny_folders["t5"]).eval()
    with torch.no_grad():
        vit = model.hf.vision_model(pixel_values=frames(batch=1, t=1, size=48)[:, 0], interpolate_pos_encoding=True)
        visual = model.encode_visual(frames(batch=1, t=2, size=48))
    assert vit.last_hidden_state.shape[1] == 6 * 6 + 1
    assert visual.shape[1] == model.num_query_tokens


def test_input_size_follows_the_recipe_key_else_the_folder(tiny_folders):
    from ds_videocap.build import input_size
    from ds_videocap.config import ModelCfg

    folder = tiny_folders["llama"]
    assert input_size(folder, ModelCfg(path=str(folder))) == 32
    assert input_size(folder, ModelCfg(path=str(folder), image_size=48)) == 48
    assert input_size(load(folder, image_size=40), ModelCfg(image_size=None)) == 40


def test_recipe_refuses_a_tiny_image_size():
    from ds_videocap.config import ConfigError
    from ds_videocap.recipe_io import load_recipe
    from ds_videocap.recipe_rules import validate

    assert load_recipe("synth", ["model.image_size=48"]).model.image_size == 48
    with pytest.raises(ConfigError, match="model.image_size"):
        validate(load_recipe("synth", ["model.image_size=4"]))
