"""Motion tokens (motion.py): the frame differences they see, their shapes and positions, and the
captioner with them on, in fp32 and bf16, for both fusions."""
from __future__ import annotations

import pytest
import torch
from tiny_models import CAPTIONS, frames, load

from ds_videocap.motion import MotionTokens, frame_differences, sincos_table


def test_frame_differences_are_next_minus_this_and_the_last_repeats():
    x = torch.arange(4.0).view(1, 4, 1, 1, 1).expand(2, 4, 3, 2, 2) ** 2  # frames 0, 1, 4, 9
    d = frame_differences(x)
    assert d[0, :, 0, 0, 0].tolist() == [1.0, 3.0, 5.0, 5.0]
    assert frame_differences(x[:, :1]).abs().sum() == 0  # one frame shows no motion


def test_sincos_table_tells_every_position_apart():
    table = sincos_table(4, 22)  # 22: not a multiple of 4, the last channels are zero
    assert table.shape == (16, 22) and table[:, 20:].abs().sum() == 0
    assert torch.cdist(table, table).add(torch.eye(16) * 10).min() > 0.1


def test_motion_tokens_see_only_what_moved():
    torch.manual_seed(0)
    module = MotionTokens(hidden=16, patch_size=8, grid=4)
    still = torch.randn(2, 1, 3, 32, 32).expand(2, 3, 3, 32, 32)
    moving = torch.randn(2, 3, 3, 32, 32)
    out = module(moving)
    assert out.shape == (2, 3, 16, 16)
    # a still clip gives position-only tokens: the same for any content
    assert torch.allclose(module(still), module(torch.zeros_like(still)), atol=1e-5)
    assert not torch.allclose(out, module(torch.zeros_like(moving)), atol=1e-3)
    assert module(torch.randn(1, 2, 3, 48, 48)).shape == (1, 2, 36, 16)  # 48 px: the table interpolated


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fusion,motion_patch", [("concat", None), ("per_frame", None), ("concat", 4)])
def test_captioner_with_motion_tokens_trains_them(tiny_folders, fusion, motion_patch, dtype):
    model = load(tiny_folders["opt"], fusion=fusion, frame_embedding=True, motion_tokens=True,
                 motion_patch=motion_patch).to(dtype)
    q, t = model.num_query_tokens, 3
    pixels = frames(batch=2, t=t).to(dtype)
    vision = model.hf.config.vision_config
    patch = motion_patch or vision.patch_size
    assert model.motion_tokens(pixels).shape[2] == (vision.image_size // patch) ** 2  # one key per motion patch
    visual = model.encode_visual(pixels)
    assert visual.dtype == dtype and visual.shape[1] == (q if fusion == "concat" else t * q)
    loss = model(pixels, **model.encode_text(CAPTIONS[:2]))
    loss.backward()
    grads = [p.grad for p in model.motion_tokens.parameters()]
    assert all(g is not None and g.dtype == dtype and g.abs().sum() > 0 for g in grads)
    # the tokens reach the captions: a different motion, the same first frame, another loss
    other = pixels.clone()
    other[:, 1:] = frames(batch=2, t=t - 1, seed=5).to(dtype)
    with torch.no_grad():
        assert not torch.allclose(model.encode_visual(other), visual.detach())


def test_a_motion_patch_that_does_not_tile_the_frame_is_refused(tiny_folders):
    from ds_videocap.errors import UserError

    with pytest.raises(UserError, match=r"model.motion_patch 5 does not divide the ViT's frame size"):
        load(tiny_folders["opt"], motion_tokens=True, motion_patch=5)
