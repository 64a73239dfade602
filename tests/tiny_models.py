"""Session-scoped tiny model folders shared by test_model.py and test_build.py.

One caption tokenizer and one Hugging Face folder per family are written once per test session;
every test then loads through build_model, the path a real checkpoint takes.
"""
from __future__ import annotations

import pytest

FAMILIES = ("opt", "t5", "llama")
CAPTIONS = [f"a {c} {s} moves {m}" for c in ("red", "green", "blue", "yellow", "white")
            for s in ("circle", "square", "triangle") for m in ("left", "right", "up", "down")]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from ds_videocap.tokenizer import train_caption_tokenizer
    return train_caption_tokenizer(CAPTIONS, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_folders(tokenizer_dir, tmp_path_factory):
    from ds_videocap.build import build_tiny_folder
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_folder(family, tokenizer_dir, root / family) for family in FAMILIES}


def load(folder, lora=None, **model_fields):
    """build_model on a folder with ModelCfg fields overridden."""
    from ds_videocap.build import build_model
    from ds_videocap.config import LoraCfg, ModelCfg
    return build_model(ModelCfg(path=str(folder), **model_fields), lora or LoraCfg())


def frames(batch=2, t=3, size=32, seed=0):
    import torch
    return torch.randn(batch, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def instructblip_video_folder(source, out, bos: bool = True):
    """The tiny InstructBLIP folder `source` as an InstructBLIP-Video folder (model_type instructblipvideo,
    the same weights), saved by transformers; bos=True: its tokenizer adds bos, as Vicuna's does."""
    import shutil

    from transformers import (
        AutoTokenizer,
        InstructBlipForConditionalGeneration,
        InstructBlipVideoConfig,
        InstructBlipVideoForConditionalGeneration,
    )

    shutil.copytree(source, out)
    (out / "videocap.json").unlink(missing_ok=True)  # a plain hub-style folder: no side files
    image = InstructBlipForConditionalGeneration.from_pretrained(source)
    parts = image.config.to_dict()
    config = InstructBlipVideoConfig(vision_config=parts["vision_config"], qformer_config=parts["qformer_config"],
                                     text_config=parts["text_config"], num_query_tokens=parts["num_query_tokens"],
                                     video_token_index=parts["image_token_index"])
    video = InstructBlipVideoForConditionalGeneration(config)
    video.load_state_dict(image.state_dict())
    video.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(source)
    tok.add_bos_token = bos
    tok.save_pretrained(out)
    return out
