"""What trains: Q-Former, query tokens, projection (and frame embedding) always; ViT and LLM by flag.

model_cfg.llm: frozen | lora | full; model_cfg.vit: frozen | full. LoRA goes through PEFT on the
language model only (QLoRA when the LLM was loaded in 4/8-bit); gradient checkpointing is
switched on per part.
"""
from __future__ import annotations

from pathlib import Path

LORA_TARGETS = {"t5": ["q", "v"], "opt": ["q_proj", "v_proj"], "llama": ["q_proj", "v_proj"]}
"""The study's LoRA targets per decoder family (lora.targets overrides them)."""


def _lora_config(model, lora_cfg):
    from peft import LoraConfig

    targets = lora_cfg.targets or LORA_TARGETS[model.family]
    return LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=list(targets), bias="none")


def apply_trainable(model, model_cfg, lora_cfg, adapter_dir: Path | None = None) -> None:
    # peft is imported only where used: importing it costs each rank 3-8 s of start-up
    hf = model.hf
    quantized = getattr(hf, "hf_quantizer", None) is not None  # model.quant with llm=full: recipe_rules.validate
    hf.requires_grad_(False)
    checkpoint_kwargs = {"use_reentrant": False}  # reentrant checkpoints drop grads when inputs are frozen
    lm = hf.language_model
    if quantized:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and freezes the LLM; its own checkpointing switch is the LLM flag.
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=model_cfg.grad_checkpointing_llm,
                                             gradient_checkpointing_kwargs=checkpoint_kwargs)
    if adapter_dir is not None:  # an exported adapter: keep training it, or fold it in
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(adapter_dir), is_trainable=model_cfg.llm == "lora")
        if model_cfg.llm != "lora" and not quantized:
            lm = lm.merge_and_unload()
    elif model_cfg.llm == "lora":
        from peft import get_peft_model

        lm = get_peft_model(lm, _lora_config(model, lora_cfg))
    hf.language_model = lm
    if model_cfg.llm == "full":
        lm.requires_grad_(True)
    if model_cfg.vit == "full":
        hf.vision_model.requires_grad_(True)
    for part in (hf.qformer, hf.language_projection):
        part.requires_grad_(True)
    hf.query_tokens.requires_grad_(True)
    if model.frame_embedding is not None:
        model.frame_embedding.requires_grad_(True)
    if model.motion_tokens is not None:
        model.motion_tokens.requires_grad_(True)
    if model.conv_tokens is not None:
        model.conv_tokens.requires_grad_(True)
    if model_cfg.grad_checkpointing_llm:
        _enable_checkpointing(model.language_model, checkpoint_kwargs)
    if model_cfg.grad_checkpointing_vit:
        _enable_checkpointing(hf.vision_model, checkpoint_kwargs)


def train_mode(model) -> None:
    """Put the captioner in training mode for its updates, a frozen ViT left in eval mode.

    from_pretrained hands models over in eval mode, and DeepSpeed's engine does not change that: without
    this call every dropout stays off during training and transformers' gradient checkpointing (which
    runs only in training mode) never engages, so a 7B recipe would need the memory the planner said it
    saves. A frozen ViT stays in eval mode, as LAVIS keeps it (`disabled_train`): its features are the
    pretrained model's, unchanged by training. A frozen LLM trains its LoRA or feeds gradients through with
    its dropout on, as LAVIS's BLIP-2 does.
    """
    model.train()
    vit = model.hf.vision_model if hasattr(model, "hf") else None
    if vit is not None and not any(p.requires_grad for p in vit.parameters()):
        vit.eval()


def _enable_checkpointing(part, kwargs: dict) -> None:
    # transformers 5.24 renamed gradient_checkpointing_enable (deprecated, removed in v6).
    if hasattr(part, "activation_checkpointing_enable"):
        part.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        part.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; under ZeRO-3 a partitioned parameter reports ds_numel."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        # bitsandbytes packs two 4-bit weights per uint8 element
        if p.__class__.__name__ == "Params4bit":
            n = p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else n * 2
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
