"""Conv tokens (conv_tokens.py): a small CNN's tokens of each frame as more Q-Former keys, trained by the
captioner's loss, and first by the vision stage, which writes them into the folder it hands the video
stages (read back by the build). The stage through the launcher on 2 ranks: test_e2e_vision_stage.py."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from test_vision_stage import write_stills
from tiny_models import CAPTIONS, frames, load

from ds_videocap.conv_tokens import GRID, ConvTokens, conv_layout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [32, 64])
def test_tokens_are_a_grid_per_frame_whatever_the_frame_size(dtype, size):
    module = ConvTokens(24).to(dtype)
    tokens = module(frames(batch=2, t=3, size=size))
    assert tokens.shape == (2, 3, GRID * GRID, 24) and tokens.dtype == dtype and torch.isfinite(tokens).all()
    assert conv_layout(module.state_dict()) == (16, GRID)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fusion", ["concat", "per_frame"])
def test_captioner_with_conv_tokens_trains_them(tiny_folders, fusion, dtype):
    model = load(tiny_folders["opt"], fusion=fusion, motion_tokens=True, conv_tokens=True).to(dtype)
    pixels = frames(batch=2, t=3).to(dtype)
    visual = model.encode_visual(pixels)
    assert visual.dtype == dtype and visual.shape[1] == (1 if fusion == "concat" else 3) * model.num_query_tokens
    model(pixels, **model.encode_text(CAPTIONS[:2])).backward()
    grads = [p.grad for p in model.conv_tokens.parameters()]
    assert all(g is not None and g.dtype == dtype and g.abs().sum() > 0 for g in grads)
    assert all(p.requires_grad for p in model.conv_tokens.parameters())


def test_side_tensors_are_added_without_writing_through_a_hard_link(tmp_path):
    from safetensors.torch import load_file, save_file

    from ds_videocap.export import EXTRA_WEIGHTS, add_side_tensors

    user, run = tmp_path / "user", tmp_path / "run"
    user.mkdir()
    run.mkdir()
    save_file({"frame_embedding": torch.ones(2, 3)}, str(user / EXTRA_WEIGHTS))
    os.link(user / EXTRA_WEIGHTS, run / EXTRA_WEIGHTS)  # as write_folder_with_vision copies a user's folder
    add_side_tensors(run, {"conv_tokens.position": torch.zeros(4, 3, dtype=torch.bfloat16)})
    assert set(load_file(run / EXTRA_WEIGHTS)) == {"frame_embedding", "conv_tokens.position"}
    assert load_file(run / EXTRA_WEIGHTS)["conv_tokens.position"].dtype == torch.float32
    assert set(load_file(user / EXTRA_WEIGHTS)) == {"frame_embedding"}  # the user's file is untouched


def test_vision_stage_trains_conv_tokens_and_the_build_loads_them(tiny_folders, tmp_path):
    from ds_videocap.recipe_io import load_recipe
    from ds_videocap.vision_stage import MARKER, run_vision_stage

    path = write_stills(tmp_path, [{"image": "a.png", "caption": "a red ball"},
                                   {"image": "b.png", "caption": "a blue box"},
                                   {"image": "c.png", "caption": "a green wedge and a red box"}],
                        images=("a.png", "b.png", "c.png"))
    cfg = load_recipe("synth")
    cfg = replace(cfg, output_dir=str(tmp_path / "run"), model=replace(cfg.model, path=str(tiny_folders["opt"])),
                  data=replace(cfg.data, image_size=32, image_mean=[0.5] * 3, image_std=[0.25] * 3),
                  vision=replace(cfg.vision, steps=3, micro_batch=2, log_every=1, train=str(path),
                                 images=str(tmp_path)))
    assert cfg.model.conv_tokens  # the synth recipe's
    said = []
    staged = run_vision_stage(cfg, {}, 0, said.append)
    assert any("conv tokens" in line for line in said), said
    trained = load(staged.model.path)  # model.conv_tokens off: the folder's trained ones are used anyway
    torch.manual_seed(cfg.seed)  # the stage's own first draw
    initial = ConvTokens(trained.hf.config.vision_config.hidden_size).state_dict()
    assert set(initial) == set(trained.conv_tokens.state_dict())
    for name, value in trained.conv_tokens.state_dict().items():
        assert not torch.equal(value, initial[name]), name  # trained, not left at the stage's first draw
    marker = json.loads((tmp_path / "run" / "init_model" / MARKER).read_text())
    assert marker["settings"]["conv_tokens"] is True and marker["conv_final_loss"] > 0
