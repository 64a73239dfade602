"""LAVIS BLIP-2 / InstructBLIP parameter names -> Hugging Face Blip2 / InstructBlip names.

The table follows transformers' own conversion scripts (blip_2/convert_blip_2_original_to_pytorch.py,
instructblip/convert_instructblip_original_to_pytorch.py) and LAVIS's modules: the EVA ViT
(lavis/models/eva_vit.py), ln_vision and the Q-Former (blip2.py, Qformer.py), the projection and
the LLM of blip2_t5.py (t5_proj, t5_model), blip2_opt.py (opt_proj, opt_model) and
blip2_vicuna_instruct.py (llm_proj, llm_model), with PEFT's LoRA names inside the LLM.

rename(key, instruct) answers one of:
  ("weight", hf_name)            a tensor copied as it is
  ("qkv_bias", layer, "q"|"v")   EVA keeps q and v biases apart; HF holds cat(q, zeros for k, v)
  ("lora", hf_name, "A"|"B")     a LoRA factor of the LLM weight hf_name
  ("ignored",)                   a buffer Hugging Face recomputes
  None                           no rule: the caller refuses the checkpoint and lists the key
"""
from __future__ import annotations

import re

# LLM attribute and projection per LAVIS model, and the family build.read_family gives its HF folder.
LLM_PREFIXES = {"t5_model.": "t5", "opt_model.": "opt", "llm_model.": "llama"}
PROJECTIONS = {"t5_proj.": "t5", "opt_proj.": "opt", "llm_proj.": "llama"}

# Buffers in LAVIS's state dicts: the Q-Former's position ids, and the rotary frequencies that the
# transformers versions LAVIS pinned (4.28-4.33) still saved. Hugging Face rebuilds both.
_IGNORED = re.compile(r"^(Qformer\.bert\.embeddings\.position_ids"
                      r"|llm_model\.(base_model\.model\.)?model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq)$")

_VIT = [  # (LAVIS name after "visual_encoder.", HF name after "vision_model.")
    (r"cls_token", r"embeddings.class_embedding"),
    (r"pos_embed", r"embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"encoder.layers.\1.self_attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
]
_QKV_BIAS = re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.([qv])_bias$")
_QFORMER_LAYER = re.compile(
    r"^Qformer\.bert\.encoder\.layer\.(\d+)\.("
    r"(?:attention|crossattention)\.(?:self\.(?:query|key|value)|output\.(?:dense|LayerNorm))"
    r"|(?:intermediate|intermediate_query)\.dense"
    r"|(?:output|output_query)\.(?:dense|LayerNorm))\.(weight|bias)$")
_LORA = re.compile(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$")  # ".default" is PEFT's adapter name


def qkv_bias_name(layer: int) -> str:
    return f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"


def rename(key: str, instruct: bool):
    if _IGNORED.match(key):
        return ("ignored",)
    if key.startswith("visual_encoder."):
        match = _QKV_BIAS.match(key)
        if match:
            return ("qkv_bias", int(match.group(1)), match.group(2))
        rest = key[len("visual_encoder."):]
        for pattern, target in _VIT:
            if re.fullmatch(pattern, rest):
                return ("weight", "vision_model." + re.sub(f"^{pattern}$", target, rest))
        return None
    if key in ("ln_vision.weight", "ln_vision.bias"):
        return ("weight", "vision_model.post_layernorm." + key.split(".")[-1])
    if key == "query_tokens":
        return ("weight", "query_tokens")
    if key.startswith("Qformer."):
        return _rename_qformer(key, instruct)
    for prefix in PROJECTIONS:
        if key in (prefix + "weight", prefix + "bias"):
            return ("weight", "language_projection." + key[len(prefix):])
    for prefix in LLM_PREFIXES:
        if key.startswith(prefix):
            return _rename_llm(key[len(prefix):])
    return None


def _rename_qformer(key: str, instruct: bool):
    if key in ("Qformer.bert.embeddings.LayerNorm.weight", "Qformer.bert.embeddings.LayerNorm.bias"):
        # BLIP-2's HF Q-Former has no embeddings module; InstructBLIP's keeps the text embeddings.
        where = "qformer.embeddings.layernorm." if instruct else "qformer.layernorm."
        return ("weight", where + key.split(".")[-1])
    match = re.fullmatch(r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight", key)
    if match:
        return ("weight", f"qformer.embeddings.{match.group(1)}_embeddings.weight")
    match = _QFORMER_LAYER.match(key)
    if match:
        layer, module, kind = match.groups()
        # LAVIS's BertAttention calls its attention "self"; HF calls it "attention".
        module = module.replace(".self.", ".attention.")
        return ("weight", f"qformer.encoder.layer.{layer}.{module}.{kind}")
    return None


def _rename_llm(rest: str):
    """t5_model / opt_model / llm_model internals are transformers' own names, maybe PEFT-wrapped."""
    if rest.startswith("base_model.model."):
        rest = rest[len("base_model.model."):]
    rest = rest.replace(".base_layer.", ".")  # PEFT >= 0.7 moves the wrapped weight one level down
    match = _LORA.match(rest)
    if match:
        return ("lora", f"language_model.{match.group(1)}.weight", match.group(2))
    if ".lora_" in rest or ".modules_to_save." in rest or ".original_module." in rest:
        return None  # DoRA magnitudes, LoRA embeddings, PEFT's trained copies: not handled, refused
    return ("weight", "language_model." + rest)


def checkpoint_family(keys) -> str | None:
    """t5, opt or llama from the LLM / projection names a LAVIS state dict holds; None if neither."""
    for key in keys:
        for prefix, family in {**LLM_PREFIXES, **PROJECTIONS}.items():
            if key.startswith(prefix):
                return family
    return None


def may_come_from_base(name: str, instruct: bool) -> bool:
    """Weights a LAVIS checkpoint may omit because they were frozen: the base folder supplies them.

    LAVIS saves only parameters with requires_grad: the LLM (frozen, or LoRA on a frozen base), the
    ViT with freeze_vit (but never ln_vision, which trains), and InstructBLIP's Q-Former text path
    when qformer_text_input was off. The Q-Former, query tokens and projection must come from the
    checkpoint: without them the import would be the base model, not the trained one.
    """
    if name.startswith("language_model."):
        return True
    if name.startswith("vision_model.") and not name.startswith("vision_model.post_layernorm."):
        return True
    return instruct and bool(re.match(r"qformer\.(embeddings\.(word|position)_embeddings\."
                                      r"|encoder\.layer\.\d+\.(intermediate|output)\.)", name))
