"""build_model on tiny folders: what trains per flag, bad folders, bitsandbytes on CPU, ZeRO-3
refusals, gradient checkpointing, and the export round trip through transformers' own classes."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_models import CAPTIONS, frames, load

from ds_videocap.build import image_settings
from ds_videocap.errors import UserError
from ds_videocap.quantize import quantization_config
from ds_videocap.trainable import count_parameters


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_trainable_parameters_per_flag(tiny_folders, family):
    folder = tiny_folders[family]
    frozen = load(folder, frame_embedding=True)
    hf = frozen.hf
    always = _numel(hf.qformer) + hf.query_tokens.numel() + _numel(hf.language_projection) \
        + frozen.frame_embedding.numel()
    trainable, total = count_parameters(frozen)
    assert trainable == always and total == _numel(frozen)

    lora = load(folder, frame_embedding=True, llm="lora")
    lora_names = {n for n in _trainable_names(lora) if "lora_" in n}
    targets = (".q.", ".v.") if family == "t5" else (".q_proj.", ".v_proj.")
    assert lora_names and all(any(t in n for t in targets) for n in lora_names)
    assert all("language_model" in n for n in lora_names)  # LoRA on the LLM only
    lora_count = sum(p.numel() for n, p in lora.named_parameters() if n in lora_names)
    assert count_parameters(lora)[0] == always + lora_count

    full = load(folder, frame_embedding=True, llm="full", vit="full")
    assert count_parameters(full)[0] == always + _numel(full.hf.language_model) + _numel(full.hf.vision_model)
    assert count_parameters(full)[0] == count_parameters(full)[1]


def test_missing_files_name_the_file(tiny_folders, tmp_path):
    for missing, named in (("config.json", "config.json"), ("tokenizer.json", "tokenizer"),
                           ("processor_config.json", "processor_config.json or preprocessor_config.json"),
                           ("model.safetensors", "model.safetensors")):
        broken = tmp_path / missing
        shutil.copytree(tiny_folders["opt"], broken)
        (broken / missing).unlink()
        for spare in ("tokenizer.model", "spiece.model"):  # any tokenizer file would do
            if missing == "tokenizer.json" and (broken / spare).exists():
                (broken / spare).unlink()
        with pytest.raises(UserError, match=named.replace(".", r"\.")):
            load(broken)
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_image_settings_come_from_the_folder(tiny_folders):
    size, mean, std = image_settings(load(tiny_folders["t5"]))
    assert image_settings(tiny_folders["t5"]) == (size, mean, std)
    assert size == 32 and mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert std == pytest.approx((0.26862954, 0.26130258, 0.27577711))


def test_zero3_refusals_and_quant_storage():
    with pytest.raises(UserError, match="4bit"):
        quantization_config("8bit", 3, torch.bfloat16)
    assert quantization_config("4bit", 3, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16
    with pytest.raises(UserError, match="quant_storage"):
        quantization_config("4bit", 3, torch.bfloat16, quant_storage=torch.uint8)
    assert quantization_config("8bit", 2, torch.bfloat16).load_in_8bit


def test_zero3_with_8bit_is_refused_before_loading(tiny_folders):
    with pytest.raises(UserError, match="ZeRO-3"):
        from ds_videocap.build import build_model
        from ds_videocap.config import LoraCfg, ModelCfg
        build_model(ModelCfg(path=str(tiny_folders["opt"]), quant="8bit", llm="lora"), LoraCfg(),
                    ds_config={"zero_optimization": {"stage": 3}})


@pytest.mark.parametrize("quant,family", [("8bit", "opt"), ("4bit", "opt"), ("4bit", "llama")])
def test_quantized_llm_on_cpu(tiny_folders, quant, family):
    """bitsandbytes 0.50 runs 8-bit and 4-bit layers on CPU: QLoRA trains and generates."""
    import bitsandbytes as bnb

    model = load(tiny_folders[family], quant=quant, llm="lora")
    layer = bnb.nn.Linear8bitLt if quant == "8bit" else bnb.nn.Linear4bit
    lm_layers = [m for m in model.language_model.modules() if isinstance(m, layer)]
    assert lm_layers, "the LLM's linear layers are quantized"
    for part in (model.hf.vision_model, model.hf.qformer, model.hf.language_projection):
        assert not any(isinstance(m, layer) for m in part.modules())  # only the LLM is
    loss = model(frames(batch=2, t=2), **model.encode_text(CAPTIONS[:2]))
    loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert model.hf.qformer.encoder.layer[0].attention.attention.query.weight.grad is not None
    model.eval()
    pixels = frames(batch=2, t=2)
    sequences, scores = model.generate(pixels, max_new_tokens=5, return_logprobs=True)
    logprobs, _ = model.sequence_logprobs(pixels, sequences)  # with grad, after a no-grad rollout
    # 8-bit casts activations to fp16 inside its matmul: the cached and full passes round differently.
    torch.testing.assert_close(logprobs, scores, atol=5e-2 if quant == "8bit" else 1e-4, rtol=1e-3)


def test_gradient_checkpointing_switches(tiny_folders):
    model = load(tiny_folders["llama"], grad_checkpointing_llm=True, grad_checkpointing_vit=True)
    assert model.language_model.is_activation_checkpointing and model.hf.vision_model.is_activation_checkpointing
    model.train()
    model(frames(batch=2, t=2), **model.encode_text(CAPTIONS[:2])).backward()
    assert model.hf.query_tokens.grad is not None  # gradients cross the checkpointed frozen LLM


def test_train_mode_leaves_a_frozen_vit_in_eval_mode(tiny_folders):
    from ds_videocap.evaluate import plain_context
    from ds_videocap.trainable import train_mode

    model = load(tiny_folders["opt"], grad_checkpointing_llm=True)  # model.vit: frozen
    assert not model.hf.training and not model.language_model.training  # from_pretrained's eval mode
    train_mode(model)
    assert model.training and model.hf.qformer.training and model.language_model.training
    assert not model.hf.vision_model.training  # frozen: the pretrained ViT's features, as LAVIS keeps them
    with plain_context(model):  # decoding, then back to training without waking the frozen ViT
        assert not model.training and not model.language_model.training
    assert model.language_model.training and not model.hf.vision_model.training
    full = load(tiny_folders["opt"], vit="full")
    train_mode(full)
    assert full.hf.vision_model.training


def _perturb_lora(model):
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; make the merge matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)


def test_export_is_an_ordinary_blip2_for_one_frame(tiny_folders, tmp_path):
    from transformers import Blip2ForConditionalGeneration

    model = load(tiny_folders["opt"], llm="lora").eval()
    _perturb_lora(model)
    pixels = frames(batch=2, t=1)
    ours = model.generate(pixels, max_new_tokens=6)
    out = tmp_path / "export"
    from ds_videocap.export import save_hf_folder
    save_hf_folder(model, out, merge_lora=True)
    assert torch.equal(model.generate(pixels, max_new_tokens=6), ours)  # the live model is unchanged
    hf = Blip2ForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    theirs = hf.generate(pixel_values=pixels[:, 0], max_new_tokens=6, eos_token_id=model.stop_ids,
                         pad_token_id=model.pad_id, do_sample=False, num_beams=1)
    theirs = theirs[:, model.num_query_tokens + 1:]  # [<image> x Q, bos] prefix
    assert model.decode(theirs) == model.decode(ours)
    assert torch.equal(load(out).generate(pixels, max_new_tokens=6), ours)


def test_export_round_trip_keeps_fusion_frame_embedding_motion_tokens_and_adapter(tiny_folders, tmp_path):
    from ds_videocap.export import save_hf_folder

    model = load(tiny_folders["llama"], llm="lora", fusion="per_frame", frame_embedding=True, motion_tokens=True,
                 motion_patch=4, conv_tokens=True).eval()  # the export's own patch size wins over the loader's default
    with torch.no_grad():  # trained-looking motion and conv tokens: the export must carry these, not a fresh draw
        model.motion_tokens.position.add_(torch.randn_like(model.motion_tokens.position))
        model.conv_tokens.body[0].weight.add_(torch.randn_like(model.conv_tokens.body[0].weight))
    _perturb_lora(model)
    pixels = frames(batch=2, t=3)
    ours = model.decode(model.generate(pixels, max_new_tokens=6, num_beams=2))
    save_hf_folder(model, tmp_path / "adapter", merge_lora=False)
    assert (tmp_path / "adapter" / "llm_adapter" / "adapter_config.json").is_file()
    for llm in ("lora", "frozen"):  # keep training the adapter, or fold it in
        again = load(tmp_path / "adapter", llm=llm).eval()
        assert again.fusion == "per_frame" and again.frame_embedding is not None
        assert torch.equal(again.motion_tokens.position, model.motion_tokens.position)
        assert torch.equal(again.conv_tokens.body[0].weight, model.conv_tokens.body[0].weight)
        assert again.decode(again.generate(pixels, max_new_tokens=6, num_beams=2)) == ours


def test_tiny_sizes_reach_the_folder_and_the_planner(tokenizer_dir, tmp_path):
    import json

    from ds_videocap.build import build_tiny_folder
    from ds_videocap.plan import build_tiny_config

    sizes = {"patch_size": 4, "vision_hidden": 64, "num_query_tokens": 8, "llm_layers": 1}
    folder = build_tiny_folder("opt", tokenizer_dir, tmp_path / "opt", **sizes)
    config = json.loads((folder / "config.json").read_text())
    vision, qformer = config["vision_config"], config["qformer_config"]
    assert (vision["patch_size"], vision["hidden_size"], vision["intermediate_size"]) == (4, 64, 256)
    assert qformer["encoder_hidden_size"] == 64 and config["num_query_tokens"] == 8
    assert config["text_config"]["num_hidden_layers"] == 1
    model = load(folder, frame_embedding=True, vit="full", llm="full")
    assert model.encode_visual(frames(batch=2, t=3)).shape[:2] == (2, 8)  # concat: Q tokens whatever T
    planned = build_tiny_config("opt", 32, sizes)  # what `plan` estimates from
    assert (planned.vision_config.patch_size, planned.vision_config.hidden_size) == (4, 64)
    assert planned.num_query_tokens == 8 and planned.qformer_config.encoder_hidden_size == 64
    with pytest.raises(UserError, match="patch_size 5 does not divide"):
        build_tiny_folder("opt", tokenizer_dir, tmp_path / "bad", patch_size=5)
    with pytest.raises(UserError, match="unknown"):
        build_tiny_folder("opt", tokenizer_dir, tmp_path / "bad", patch=4)


def _dropouts(model) -> list:
    """Every dropout probability the model's forward uses: nn.Dropout modules and the float `dropout`
    attributes OPT's and Llama's layers pass to F.dropout."""
    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            found.append(module.p)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if isinstance(getattr(module, name, None), float):
                found.append(getattr(module, name))
    return found


@pytest.mark.parametrize("family", ["opt", "t5", "llama"])
def test_tiny_dropout_reaches_every_dropout(tokenizer_dir, tmp_path, family):
    from ds_videocap.build import build_tiny_folder

    # the default: none (transformers' configs would give the Q-Former and the LLM 0.1)
    plain = load(build_tiny_folder(family, tokenizer_dir, tmp_path / "plain"), vit="full", llm="full")
    assert _dropouts(plain) and set(_dropouts(plain)) == {0.0}
    plain.train()
    pixels = frames(batch=2, t=2)
    inputs = plain.encode_text(CAPTIONS[:2])
    assert torch.equal(plain(pixels, **inputs), plain(pixels, **inputs))  # train mode, yet deterministic
    # a recipe's model.tiny_dropout reaches the ViT's attention, the Q-Former and the LLM
    folder = build_tiny_folder(family, tokenizer_dir, tmp_path / "some", dropout=0.2)
    some = load(folder, vit="full", llm="full")
    assert set(_dropouts(some)) == {0.2}
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["attention_dropout"] == 0.2
    qformer = config["qformer_config"]
    assert qformer["hidden_dropout_prob"] == qformer["attention_probs_dropout_prob"] == 0.2
