"""Write a trained VideoCaptioner back as a Hugging Face folder, and read our side files.

The folder is what transformers' Blip2ForConditionalGeneration / InstructBlipForConditionalGeneration
loads unchanged (config.json, weights, tokenizer, processor_config.json with num_query_tokens, and a
generation_config.json whose end token is the caption's stop token), so the stock recipe
(`Blip2Processor` + `generate`) captions a still video as `ds-videocap caption` does. What BLIP-2 has no
place for (fusion, prompt, frame embedding, a kept LoRA adapter) goes into side files that
build_model reads back when present:
  videocap.json               {"family", "fusion", "prompt", "qformer_text", "frame_embedding", "motion_tokens",
                               "conv_tokens", "lora_adapter", "frames"}
  videocap_extra.safetensors  {"frame_embedding": (max_frames, vision_hidden), "motion_tokens.*": motion.py's,
                               "conv_tokens.*": conv_tokens.py's (also written by the vision stage)}
  llm_adapter/                PEFT adapter folder (merge_lora=False only)
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import EvalCfg
from .errors import UserError
from .processor import save_generation_config, save_processor
from .video import CLIP_MEAN, CLIP_STD

EXTRA_JSON = "videocap.json"
EXTRA_WEIGHTS = "videocap_extra.safetensors"
ADAPTER_DIR = "llm_adapter"


def write_preprocessor_config(out_dir: Path, image_size: int, mean=CLIP_MEAN, std=CLIP_STD) -> None:
    """The older (transformers 4) layout's BlipImageProcessor settings, as JSON; exports write the
    processor through transformers instead (processor.save_processor)."""
    config = {"image_processor_type": "BlipImageProcessor", "do_resize": True, "resample": 3,
              "size": {"height": image_size, "width": image_size}, "do_rescale": True,
              "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
              "image_std": list(std), "do_convert_rgb": True}
    (Path(out_dir) / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def read_extras(folder: str | Path) -> tuple[dict, dict]:
    """(videocap.json contents, side tensors); both empty for a plain Hugging Face folder."""
    folder = Path(folder)
    meta = json.loads((folder / EXTRA_JSON).read_text()) if (folder / EXTRA_JSON).is_file() else {}
    tensors = {}
    if (folder / EXTRA_WEIGHTS).is_file():
        from safetensors.torch import load_file
        tensors = load_file(str(folder / EXTRA_WEIGHTS))
    return meta, tensors


def add_side_tensors(folder: str | Path, tensors: dict) -> None:
    """Add `tensors` to the folder's side tensors (kept as float32), replacing the file rather than writing
    into it: a run folder's copy of a user's folder may hard-link the user's file."""
    from safetensors.torch import save_file

    folder = Path(folder)
    merged = {**read_extras(folder)[1], **{k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}}
    partial = folder / f"{EXTRA_WEIGHTS}.partial"
    save_file(merged, str(partial))
    partial.replace(folder / EXTRA_WEIGHTS)


def _plain_state_dict(hf_model) -> dict:
    """The HF model's state dict with PEFT's wrapping undone (names as transformers expects)."""
    state = {}
    for key, value in hf_model.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace("language_model.base_model.model.", "language_model.").replace(".base_layer.", ".")
        state[key] = value
    return state


def save_hf_folder(model, out_dir: str | Path, merge_lora: bool = True, eval_cfg=None) -> Path:
    """Export `model` (full, unpartitioned parameters) as a Hugging Face folder plus side files.

    merge_lora=True folds LoRA into the LLM weights (merged, then unmerged again, so the live model
    is left as it was); False keeps the base weights and writes the adapter to llm_adapter/.
    eval_cfg (default: EvalCfg()) gives the generation config's decoding settings.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm = model.hf.language_model
    has_lora = hasattr(lm, "get_base_model")
    quantized = getattr(model.hf, "hf_quantizer", None) is not None
    if has_lora and merge_lora and quantized:
        raise UserError(f"export to {out}: cannot merge LoRA into a quantized LLM; use merge_lora=False "
                        "(keeps the adapter in llm_adapter/)")
    merge = has_lora and merge_lora
    if merge:
        lm.merge_adapter()
    try:
        model.hf.save_pretrained(out, state_dict=_plain_state_dict(model.hf))
    finally:
        if merge:
            lm.unmerge_adapter()
    if has_lora and not merge_lora:
        lm.save_pretrained(out / ADAPTER_DIR)
    save_processor(out, model.tokenizer, model.qformer_tokenizer, model.image_size, model.image_mean, model.image_std,
                   model.num_query_tokens)
    save_generation_config(out, model, eval_cfg or EvalCfg())
    meta = {"family": model.family, "fusion": model.fusion, "prompt": model.prompt,
            "qformer_text": model.qformer_text, "frame_embedding": model.frame_embedding is not None,
            "motion_tokens": model.motion_tokens is not None, "conv_tokens": model.conv_tokens is not None,
            "lora_adapter": ADAPTER_DIR if has_lora and not merge_lora else None,
            "frames": getattr(model, "frames", None)}
    (out / EXTRA_JSON).write_text(json.dumps(meta, indent=2))
    extra = {} if model.frame_embedding is None else {"frame_embedding": model.frame_embedding}
    for name in ("motion_tokens", "conv_tokens"):
        if getattr(model, name) is not None:
            extra.update({f"{name}.{k}": v for k, v in getattr(model, name).state_dict().items()})
    if extra:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in extra.items()}, str(out / EXTRA_WEIGHTS))
    return out
