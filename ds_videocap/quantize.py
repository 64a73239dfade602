"""bitsandbytes for the LLM: the quantisation config, where a quantised model loads, and the ZeRO-3 rule.

8-bit weights cannot be partitioned by ZeRO-3 (refused: quant_refusal, which the run check and the
planner ask too); 4-bit under ZeRO-3 stores its packed weights as the compute dtype.
"""
from __future__ import annotations

from .errors import UserError


def quant_refusal(quant: str | None, stage: int) -> str | None:
    """Why model.quant cannot run at this ZeRO stage, or None (the run check and the planner ask)."""
    if quant == "8bit" and stage == 3:
        return ("model.quant=8bit does not work with ZeRO-3 (int8 weights cannot be partitioned): use "
                "model.quant=4bit (QLoRA) with ZeRO-3, or a ZeRO stage 0-2 DeepSpeed JSON")
    return None


def quantization_config(quant: str | None, stage: int, dtype, quant_storage=None):
    """BitsAndBytesConfig for the LLM only; refuses what does not work with ZeRO-3."""
    if quant is None:
        return None
    from transformers import BitsAndBytesConfig

    skip = ["vision_model", "qformer", "query_tokens", "language_projection", "language_model.lm_head"]
    refusal = quant_refusal(quant, stage)
    if refusal:
        raise UserError(refusal)
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if quant != "4bit":
        raise UserError(f"model.quant must be 8bit, 4bit or empty, got {quant!r}")
    if stage == 3:
        quant_storage = quant_storage or dtype  # ZeRO-3 partitions the packed 4-bit storage as this dtype
        if quant_storage != dtype:
            raise UserError(f"model.quant=4bit with ZeRO-3 needs bnb_4bit_quant_storage equal to the compute "
                            f"dtype ({dtype}), got {quant_storage}: leave it unset, or use ZeRO stage 0-2")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=True, bnb_4bit_quant_storage=quant_storage or "uint8",
                              llm_int8_skip_modules=skip)


def quant_device_map(qcfg, stage: int):
    """bitsandbytes quantizes as weights land on the GPU: load straight onto this rank's GPU.

    Not under ZeRO-3, where deepspeed.initialize places (and partitions) the 4-bit model itself,
    and not without CUDA (bitsandbytes' CPU backend quantizes in place).
    """
    import os

    import torch
    if qcfg is None or stage == 3 or not torch.cuda.is_available():
        return None
    return {"": torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))}


def disable_cpu_4bit_repacking(hf) -> None:
    """Keep bitsandbytes 0.50's 4-bit layers on the autograd-capable path on CPU.

    On an AVX512-BF16 CPU, a Linear4bit run in eval mode without grad (generation) repacks its
    weight in place for a faster kernel. That kernel has no backward (the next forward with grad,
    e.g. SCST's log-probs, fails with "a view of a leaf Variable ... in-place operation") and its
    repacking needs in_features divisible by 64 (a 96-wide tiny LLM fails with "shape '[96, 1]' is
    invalid"). CUDA never takes this path.
    """
    for module in hf.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
