"""`ds-videocap import-lavis`: tiny checkpoints under LAVIS's names -> Hugging Face folders.

The LAVIS names are written here from LAVIS's modules (eva_vit.py, Qformer.py, blip2_t5.py,
blip2_opt.py, blip2_vicuna_instruct.py), independently of ds_videocap/lavis_names.py, and every
tensor is random so that a weight equal to the source can only have come from the checkpoint.
"""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import CAPTIONS, frames, load

from ds_videocap.cli import main

LLM = {"t5": "t5_model", "opt": "opt_model", "llama": "llm_model"}
PROJ = {"t5": "t5_proj", "opt": "opt_proj", "llama": "llm_proj"}
VIT_LAYER = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.qkv": "attn.qkv",
             "self_attn.projection": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def lavis_names(name: str, family: str) -> str:
    """The LAVIS state-dict name of a Hugging Face BLIP-2 / InstructBLIP weight."""
    if name == "vision_model.embeddings.class_embedding":
        return "visual_encoder.cls_token"
    if name == "vision_model.embeddings.position_embedding":
        return "visual_encoder.pos_embed"
    if name.startswith("vision_model.embeddings.patch_embedding."):
        return "visual_encoder.patch_embed.proj." + name.split(".")[-1]
    if name.startswith("vision_model.post_layernorm."):
        return "ln_vision." + name.split(".")[-1]
    match = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match:
        return f"visual_encoder.blocks.{match.group(1)}.{VIT_LAYER[match.group(2)]}.{match.group(3)}"
    if name in ("qformer.layernorm.weight", "qformer.layernorm.bias", "qformer.embeddings.layernorm.weight",
                "qformer.embeddings.layernorm.bias"):
        return "Qformer.bert.embeddings.LayerNorm." + name.split(".")[-1]
    if name.startswith("qformer."):
        return "Qformer.bert." + name[len("qformer."):].replace("attention.attention.", "attention.self.")
    if name.startswith("language_projection."):
        return f"{PROJ[family]}.{name.split('.')[-1]}"
    if name.startswith("language_model."):
        return LLM[family] + name[len("language_model"):]
    assert name == "query_tokens", name
    return name


def make_checkpoint(folder, family: str, *, llm: str, vit: bool, seed: int = 0):
    """(LAVIS state dict, expected HF weights): llm is 'full', 'frozen' (omitted) or 'lora'."""
    base = load_file(str(folder / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    state, expected, lora_pairs = {}, {}, {}
    for name, tensor in base.items():
        fresh = torch.randn(tensor.shape, generator=gen) * 0.02
        is_llm, is_vit = name.startswith("language_model."), name.startswith("vision_model.encoder") or \
            name.startswith("vision_model.embeddings")
        if (is_llm and llm != "full") or (is_vit and not vit):
            expected[name] = tensor  # frozen: the base folder supplies it
            if is_llm and llm == "lora" and re.search(r"SelfAttention\.[qv]\.weight$", name):
                lora_pairs[name] = (torch.randn(4, tensor.shape[1], generator=gen),
                                    torch.randn(tensor.shape[0], 4, generator=gen))
            continue
        expected[name] = fresh
        if name.endswith("self_attn.qkv.bias"):  # EVA keeps q and v biases; k's is always zero
            third = tensor.shape[0] // 3
            expected[name] = torch.cat([fresh[:third], torch.zeros(third), fresh[2 * third:]])
            stem = lavis_names(name.replace(".bias", ".weight"), family).rsplit(".qkv", 1)[0]
            state[stem + ".q_bias"], state[stem + ".v_bias"] = fresh[:third].clone(), fresh[2 * third:].clone()
        else:
            state[lavis_names(name, family)] = fresh
    for name, (a, b) in lora_pairs.items():  # PEFT >= 0.7 names inside LAVIS's t5_model
        stem = "t5_model.base_model.model." + name[len("language_model."):-len(".weight")]
        state[stem + ".lora_A.default.weight"], state[stem + ".lora_B.default.weight"] = a, b
        expected[name] = base[name] + (b @ a) * (32 / 4)  # alpha 32 from the run config, r 4 from the shapes
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)  # a buffer LAVIS saves
    return state, expected


def run_import(tmp_path, folder, state, config=None, extra=()):
    path = tmp_path / "checkpoint_best.pth"
    torch.save({"model": state, "config": config or {}, "iters": 3}, path)
    out = tmp_path / "hf"
    return main(["import-lavis", "--checkpoint", str(path), "--base", str(folder), "--out", str(out), *extra]), out


def check_weights(out, family, expected):
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

    cls = InstructBlipForConditionalGeneration if family == "llama" else Blip2ForConditionalGeneration
    loaded = cls.from_pretrained(out).state_dict()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_opt_full_checkpoint_with_tied_alias(tmp_path, tiny_folders):
    state, expected = make_checkpoint(tiny_folders["opt"], "opt", llm="full", vit=True)
    # LAVIS lists the tied OPT head under its own name too; it must equal the embeddings.
    state["opt_model.lm_head.weight"] = state["opt_model.model.decoder.embed_tokens.weight"]
    rc, out = run_import(tmp_path, tiny_folders["opt"], state)
    assert rc == 0
    check_weights(out, "opt", expected)


def test_t5_lora_merged_frozen_vit_from_base_and_trained_size(tmp_path, tiny_folders):
    state, expected = make_checkpoint(tiny_folders["t5"], "t5", llm="lora", vit=False)
    config = {"model": {"arch": "blip2_t5", "lora": True, "lora_r": 4, "lora_alpha": 32, "prompt": "a video of",
                        "image_size": 48}}
    rc, out = run_import(tmp_path, tiny_folders["t5"], state, config)
    assert rc == 0
    check_weights(out, "t5", expected)
    model = load(out)  # the study's 48 px run on a 32 px ViT: frames at 48, embeddings interpolated
    assert model.image_size == 48 and model.prompt == "a video of" and model.fusion == "concat"
    assert torch.isfinite(model(frames(batch=1, t=2, size=48), **model.encode_text(CAPTIONS[:1])))


def test_vicuna_instruct_frozen_llm_from_base(tmp_path, tiny_folders):
    state, expected = make_checkpoint(tiny_folders["llama"], "llama", llm="frozen", vit=True)
    state["llm_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(12)  # saved by old transformers
    rc, out = run_import(tmp_path, tiny_folders["llama"], state)
    assert rc == 0
    check_weights(out, "llama", expected)
    assert (out / "qformer_tokenizer").is_dir()


def test_vit_trained_at_another_size_is_imported_at_that_size(tmp_path, tiny_folders, capsys):
    """LAVIS interpolates pos_embed when it builds the ViT for another frame size; a run that trained
    the ViT saves the longer one (1 + (48/8)^2 positions here, 1 + 4^2 in the 32 px base)."""
    state, expected = make_checkpoint(tiny_folders["opt"], "opt", llm="frozen", vit=True)
    hidden = state["visual_encoder.pos_embed"].shape[-1]
    state["visual_encoder.pos_embed"] = torch.randn(1, 1 + 6 * 6, hidden)
    expected["vision_model.embeddings.position_embedding"] = state["visual_encoder.pos_embed"]
    rc, out = run_import(tmp_path, tiny_folders["opt"], state)
    assert rc == 0 and "frames: 48 px" in capsys.readouterr().out
    check_weights(out, "opt", expected)
    model = load(out)
    assert model.hf.config.vision_config.image_size == 48 and model.image_size == 48
    assert torch.isfinite(model(frames(batch=1, t=2, size=48), **model.encode_text(CAPTIONS[:1])))
    # a position embedding that is no square grid is a mismatch, refused and named
    state["visual_encoder.pos_embed"] = torch.randn(1, 20, hidden)
    (tmp_path / "again").mkdir()
    rc, _ = run_import(tmp_path / "again", tiny_folders["opt"], state)
    err = capsys.readouterr().err
    assert rc == 2 and "vision_model.embeddings.position_embedding: checkpoint (1, 20," in err


def test_unknown_key_is_refused_and_listed(tmp_path, tiny_folders, capsys):
    state, _ = make_checkpoint(tiny_folders["opt"], "opt", llm="frozen", vit=False)
    state["Qformer.cls.predictions.bias"] = torch.zeros(3)
    state["visual_encoder.blocks.0.gamma_1"] = torch.zeros(3)
    rc, out = run_import(tmp_path, tiny_folders["opt"], state)
    err = capsys.readouterr().err
    assert rc == 2 and "Qformer.cls.predictions.bias" in err and "visual_encoder.blocks.0.gamma_1" in err
    assert "nothing written" in err and not out.exists()


def test_missing_keys_are_listed(tmp_path, tiny_folders, capsys):
    state, _ = make_checkpoint(tiny_folders["opt"], "opt", llm="frozen", vit=True)
    del state["Qformer.bert.encoder.layer.0.crossattention.output.dense.weight"]
    del state["visual_encoder.blocks.1.attn.v_bias"]
    del state["opt_proj.bias"]
    rc, _ = run_import(tmp_path, tiny_folders["opt"], state)
    err = capsys.readouterr().err
    assert rc == 2
    for name in ("qformer.encoder.layer.0.crossattention.output.dense.weight", "visual_encoder.blocks.1.attn.v_bias",
                 "language_projection.bias"):
        assert name in err


def test_wrong_family_and_wrong_lora_rank_are_refused(tmp_path, tiny_folders, capsys):
    state, _ = make_checkpoint(tiny_folders["t5"], "t5", llm="lora", vit=False)
    rc, _ = run_import(tmp_path, tiny_folders["opt"], state)
    assert rc == 2 and "t5" in capsys.readouterr().err
    rc, _ = run_import(tmp_path, tiny_folders["t5"], state, extra=("--lora-r", "8"))
    assert rc == 2 and "rank 4" in capsys.readouterr().err


def test_t5_separate_head_is_imported_untied(tmp_path, tiny_folders):
    """FLAN-T5's head differs from `shared`; the --base folder (transformers 5) ties it in its config and
    holds only `shared`. The checkpoint's head must reach the imported model, not be dropped."""
    from transformers import Blip2ForConditionalGeneration

    state, expected = make_checkpoint(tiny_folders["t5"], "t5", llm="full", vit=False)
    shared = state["t5_model.shared.weight"]
    state["t5_model.encoder.embed_tokens.weight"] = shared  # LAVIS lists every alias of `shared`
    state["t5_model.decoder.embed_tokens.weight"] = shared
    head = torch.randn(shared.shape, generator=torch.Generator().manual_seed(9))
    state["t5_model.lm_head.weight"] = head
    rc, out = run_import(tmp_path, tiny_folders["t5"], state)
    assert rc == 0
    check_weights(out, "t5", expected)
    loaded = Blip2ForConditionalGeneration.from_pretrained(out)
    assert torch.equal(loaded.language_model.get_output_embeddings().weight, head)
    assert torch.equal(loaded.language_model.get_input_embeddings().weight, shared)


def test_a_differing_tied_tensor_that_cannot_be_untied_is_refused(tmp_path, tiny_folders, capsys):
    state, _ = make_checkpoint(tiny_folders["opt"], "opt", llm="full", vit=False)
    state["opt_model.lm_head.weight"] = state["opt_model.model.decoder.embed_tokens.weight"] + 1.0
    rc, out = run_import(tmp_path, tiny_folders["opt"], state)
    err = capsys.readouterr().err
    assert rc == 2 and "opt_model.lm_head.weight" in err and "ties" in err and not out.exists()


def test_base_in_the_older_processor_layout(tmp_path, tiny_folders):
    """A --base saved by transformers 4 (preprocessor_config.json): read, and resized, through transformers."""
    import json
    import shutil

    from transformers import BlipImageProcessor

    base = tmp_path / "base"
    shutil.copytree(tiny_folders["t5"], base)
    (base / "processor_config.json").unlink()
    settings = BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                  image_std=[0.2, 0.2, 0.2])
    older = {**settings.to_dict(), "processor_class": "Blip2Processor"}
    (base / "preprocessor_config.json").write_text(json.dumps(older))
    state, expected = make_checkpoint(base, "t5", llm="frozen", vit=False)
    rc, out = run_import(tmp_path, base, state, {"model": {"image_size": 48}})
    assert rc == 0
    check_weights(out, "t5", expected)
    model = load(out)
    assert model.image_size == 48 and model.image_mean == pytest.approx((0.5, 0.4, 0.3))
