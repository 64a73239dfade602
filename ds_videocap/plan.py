"""`ds-videocap plan`: estimate per-GPU and CPU memory of a recipe under every shipped DeepSpeed JSON.

The model is never loaded: its configuration (the folder's config.json, the study checkpoints'
known configurations, or the tiny one) is instantiated on the meta device, which gives exact
parameter counts per part, the LoRA count and the largest module; plan_memory.py turns those and
the recipe's shapes into bytes. The arithmetic is checked against measured CPU memory by
benchmarks/bench_plan_accuracy.py.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from .build import DEFAULT_PROMPTS, read_family, tiny_config
from .conv_tokens import ConvTokens
from .ds_json import read_ds_config
from .errors import UserError
from .model import MAX_FRAMES
from .motion import MotionTokens, motion_layout
from .output import print_json
from .plan_memory import GIB, ModelSpec, Shape, estimate_config, speed_rank
from .quantize import quant_refusal
from .recipe_io import load_recipe
from .trainable import LORA_TARGETS

DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"
NO_FOLDER = "<no folder>"  # stands in for model.path while the recipe validates (study recipes leave it empty)

# The Salesforce checkpoints' configurations (EVA ViT-g, the BLIP-2 Q-Former, and each decoder).
EVA_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                 image_size=224, patch_size=14, qkv_bias=True)
QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               cross_attention_frequency=2, encoder_hidden_size=1408, vocab_size=30522)
STUDY_MODELS = {
    "flant5xl": ("blip-2", dict(model_type="t5", d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24,
                                num_decoder_layers=24, vocab_size=32128, feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False, dropout_rate=0.1)),
    "opt2.7b": ("blip-2", dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                               num_attention_heads=32, vocab_size=50272, word_embed_proj_dim=2560,
                               max_position_embeddings=2048, dropout=0.1)),
    "opt6.7b": ("blip-2", dict(model_type="opt", hidden_size=4096, ffn_dim=16384, num_hidden_layers=32,
                               num_attention_heads=32, vocab_size=50272, word_embed_proj_dim=4096,
                               max_position_embeddings=2048, dropout=0.1)),
    "vicuna7b": ("instructblip", dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                      vocab_size=32001, max_position_embeddings=2048, tie_word_embeddings=False)),
}
TINY_VOCAB = 600  # the synthetic tokenizer's size is only known once written; a few hundred pieces


# ----- recipe -> Hugging Face config -------------------------------------------------------------
def load_plan_recipe(name: str, overrides: list[str] = ()):
    """load_recipe, but a study recipe without model.path plans from its known configuration."""
    cfg = load_recipe(name, [f"model.path={NO_FOLDER}", *overrides])
    if cfg.model.path == NO_FOLDER:
        cfg.model.path = None
    return cfg


def read_hf_config(cfg):
    """The Blip2Config / InstructBlipConfig the recipe's model is built from (no weights read)."""
    from transformers import AutoConfig, Blip2Config, InstructBlipConfig

    if cfg.model.path:
        folder = Path(cfg.model.path)
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path {folder}: no config.json there (the planner reads only that file)")
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    if cfg.model.tiny:
        return build_tiny_config(cfg.model.tiny, cfg.data.image_size, cfg.model.tiny_sizes)
    key = next((k for k in STUDY_MODELS if k in cfg.name.replace("-", "").lower()), None)
    if key is None:
        raise UserError(f"recipe '{cfg.name}': set model.path=FOLDER (its config.json is read) or model.tiny; "
                        f"built-in configurations exist for recipe names containing {list(STUDY_MODELS)}")
    kind, text = STUDY_MODELS[key]
    cls = InstructBlipConfig if kind == "instructblip" else Blip2Config
    qformer = dict(QFORMER, vocab_size=30523) if kind == "instructblip" else QFORMER  # + InstructBLIP's [DEC]
    return cls(vision_config=EVA_VIT_G, qformer_config=qformer, text_config=text, num_query_tokens=32)


def build_tiny_config(family: str, image_size: int, sizes: dict | None = None):
    """The configuration build_tiny_folder writes, with an assumed vocabulary size."""
    from types import SimpleNamespace

    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return tiny_config(family, TINY_VOCAB, tok, image_size, sizes)[0]


# ----- meta model -> ModelSpec -------------------------------------------------------------------
def _lora_matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # PEFT's rule for a list of names


def build_spec(config, model_cfg, lora_cfg) -> ModelSpec:
    """Instantiate the model on the meta device and count what trains, per apply_trainable's rules."""
    import torch
    from torch import nn
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

    cls = InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    with torch.device("meta"):
        hf = cls(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731 (shared weights once)
    family, lm = read_family(config), hf.language_model
    frame_emb = MAX_FRAMES * config.vision_config.hidden_size if model_cfg.frame_embedding else 0
    if model_cfg.motion_tokens:  # the module the build makes, on the meta device
        vc = config.vision_config
        with torch.device("meta"):
            frame_emb += count(MotionTokens(vc.hidden_size, *motion_layout(vc.image_size, vc.patch_size,
                                                                           model_cfg.motion_patch)))
    if model_cfg.conv_tokens:
        with torch.device("meta"):
            frame_emb += count(ConvTokens(config.vision_config.hidden_size))
    params = {"vision": count(hf.vision_model), "llm": count(lm),
              "qformer": count(hf.qformer) + hf.query_tokens.numel() + count(hf.language_projection) + frame_emb}
    targets = lora_cfg.targets or LORA_TARGETS[family]
    lora = lora_in = quantizable = 0
    for name, module in lm.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if "lm_head" not in name:  # build.quantization_config keeps lm_head in the compute dtype
            quantizable += module.weight.numel()
        if model_cfg.llm == "lora" and _lora_matches(name, targets):
            lora += lora_cfg.r * (module.in_features + module.out_features)
            lora_in += module.in_features
    trainable = params["qformer"] + lora
    trainable += params["vision"] if model_cfg.vit == "full" else 0
    trainable += params["llm"] if model_cfg.llm == "full" else 0
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in hf.modules())
    sizes = sorted(p.numel() for p in hf.parameters())
    return ModelSpec(family=family, params=params, trainable=trainable, lora=lora, quantizable=quantizable,
                     largest_layer=largest, param_sizes=sizes,
                     dims=dict(_dims(config, family), lora_in_total=lora_in))


def _dims(config, family: str) -> dict:
    v, q, t = config.vision_config, config.qformer_config, config.text_config
    dims = dict(vision_tokens=(v.image_size // v.patch_size) ** 2 + 1, vision_hidden=v.hidden_size,
                vision_ffn=v.intermediate_size, vision_heads=v.num_attention_heads, vision_layers=v.num_hidden_layers,
                query_tokens=config.num_query_tokens, qformer_hidden=q.hidden_size, qformer_ffn=q.intermediate_size,
                qformer_heads=q.num_attention_heads, qformer_layers=q.num_hidden_layers,
                qformer_cross_freq=q.cross_attention_frequency, vocab=t.vocab_size)
    if family == "t5":
        dims.update(llm_hidden=t.d_model, llm_ffn=t.d_ff, llm_heads=t.num_heads, llm_layers=t.num_layers,
                    llm_decoder_layers=t.num_decoder_layers, llm_gated="gated" in t.feed_forward_proj,
                    llm_dropout=t.dropout_rate > 0)
    elif family == "opt":
        dims.update(llm_hidden=t.hidden_size, llm_ffn=t.ffn_dim, llm_heads=t.num_attention_heads,
                    llm_layers=t.num_hidden_layers, llm_gated=False, llm_dropout=t.dropout > 0)
    else:
        dims.update(llm_hidden=t.hidden_size, llm_ffn=t.intermediate_size, llm_heads=t.num_attention_heads,
                    llm_layers=t.num_hidden_layers, llm_gated=True, llm_dropout=t.attention_dropout > 0)
    return dims


def build_shape(cfg, spec: ModelSpec, micro_batch: int) -> Shape:
    prompt = cfg.model.prompt if cfg.model.prompt is not None else DEFAULT_PROMPTS[spec.family]
    # ~1.3 sentencepiece/BPE pieces per English word, plus </s> (T5 encoder) or <bos> (decoders)
    prompt_tokens = math.ceil(1.3 * len(prompt.split())) + 1
    layers = spec.dims["llm_layers"] + spec.dims.get("llm_decoder_layers", 0)
    return Shape(micro_batch=micro_batch, frames=cfg.data.frames, fusion=cfg.model.fusion or "concat",
                 prompt_tokens=prompt_tokens, caption_tokens=cfg.model.max_txt_len,
                 train_vit=cfg.model.vit == "full", train_llm=cfg.model.llm, ckpt_llm=cfg.model.grad_checkpointing_llm,
                 ckpt_vit=cfg.model.grad_checkpointing_vit, quant=cfg.model.quant, lora_r=cfg.lora.r,
                 lora_in_per_layer=spec.dims["lora_in_total"] / layers)


# ----- the plan ----------------------------------------------------------------------------------
def list_ds_configs() -> list[Path]:
    return sorted(DS_CONFIGS.glob("*.json"))


def plan_recipe(cfg, gpus: int = 1, gpu_mem: float = 80.0, cpu_mem: float = 256.0, device: str = "cuda",
                configs: list | None = None, spec: ModelSpec | None = None) -> dict:
    """Estimate every DeepSpeed JSON for a loaded recipe; the dict `--json` prints.

    device="cpu" plans one plain-torch fp32 process on the CPU (the accuracy benchmark's case): its
    memory is reported as gpu_gib (the compute device), with cpu_gib the offloaded extra (none).
    """

    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")
    if gpu_mem <= 0 or cpu_mem <= 0:
        raise UserError("--gpu-mem and --cpu-mem must be positive (GiB)")
    spec = spec or build_spec(read_hf_config(cfg), cfg.model, cfg.lora)
    rows = []
    runs_ce = bool(cfg.ce.steps or cfg.ce.epochs) or not cfg.scst.steps
    for path in configs or list_ds_configs():
        ds = read_ds_config(path)
        micro = cfg.ce.micro_batch or ds.get("train_micro_batch_size_per_gpu", 1)
        scst_micro = cfg.scst.micro_batch or ds.get("train_micro_batch_size_per_gpu", 1)
        scst = (replace(build_shape(cfg, spec, scst_micro), caption_tokens=cfg.scst.max_new_tokens)
                if cfg.scst.steps else None)
        est = estimate_config(spec, build_shape(cfg, spec, micro), ds, gpus, device, scst=scst,
                              samples=cfg.scst.samples, ce=runs_ce)
        phase = est["activations"].pop("phase")
        refused = quant_refusal(cfg.model.quant, est["stage"])
        gpu_gib, cpu_gib = est["gpu_bytes"] / GIB, est["cpu_bytes"] / GIB
        rows.append({"config": _display(path), "gpu_gib": round(gpu_gib, 2), "cpu_gib": round(cpu_gib, 2),
                     "gpu_bytes": int(est["gpu_bytes"]), "cpu_bytes": int(est["cpu_bytes"]),
                     "fits": refused is None and gpu_gib <= gpu_mem and cpu_gib <= cpu_mem,
                     "stage": est["stage"], "offload_optimizer": est["offload_optimizer"],
                     "offload_param": est["offload_param"], "micro_batch": micro, "refused": refused,
                     "peak_phase": phase, "scst_micro_batch": scst_micro if scst is not None else None,
                     "gpu_breakdown_gib": _gib(est["gpu_breakdown"]), "cpu_breakdown_gib": _gib(est["cpu_breakdown"]),
                     "activations_gib": _gib(est["activations"])})
    fitting = sorted((r for r in rows if r["fits"]), key=speed_rank)
    return {"recipe": cfg.name, "model": _model_source(cfg), "device": device, "params_total": spec.total,
            "params_trainable": spec.trainable, "params_lora": spec.lora, "params": spec.params,
            "gpus": gpus, "gpu_mem_gib": gpu_mem, "cpu_mem_gib": cpu_mem, "configs": rows,
            "recommended": fitting[0]["config"] if fitting else None}


def _display(path) -> str:
    path = Path(path)
    return f"ds_configs/{path.name}" if path.resolve().parent == DS_CONFIGS else str(path)


def _gib(parts: dict) -> dict:
    return {k: round(v / GIB, 3) for k, v in parts.items()}


def _model_source(cfg) -> str:
    if cfg.model.path:
        return str(cfg.model.path)
    if cfg.model.tiny:
        return f"tiny {cfg.model.tiny} (built-in configuration)"
    return "built-in Salesforce configuration (no model.path)"


def format_plan(plan: dict) -> str:
    b = 1e9
    lines = [f"recipe {plan['recipe']}: {plan['model']}",
             f"parameters {plan['params_total'] / b:.3f} B (vision {plan['params']['vision'] / b:.3f}, "
             f"Q-Former+proj {plan['params']['qformer'] / b:.3f}, LLM {plan['params']['llm'] / b:.3f}); "
             f"trainable {plan['params_trainable'] / 1e6:.1f} M (LoRA {plan['params_lora'] / 1e6:.2f} M)",
             f"{plan['gpus']} GPU(s) x {plan['gpu_mem_gib']:g} GiB, CPU {plan['cpu_mem_gib']:g} GiB",
             "",
             f"{'config':<28}{'stage':>6}{'offload':>10}{'micro':>6}{'GPU GiB':>9}{'states':>8}{'activ.':>8}"
             f"{'CPU GiB':>9}  fits (peak phase)"]
    for r in plan["configs"]:
        off = "+".join(k for k, on in (("opt", r["offload_optimizer"]), ("param", r["offload_param"])) if on) or "-"
        g = r["gpu_breakdown_gib"]
        states = g["params"] + g["grads"] + g["optimizer"] + g["buffers"]
        fits = "yes" if r["fits"] else ("refused: " + r["refused"] if r["refused"] else "no")
        micro = r["scst_micro_batch"] if r["peak_phase"] == "scst" else r["micro_batch"]  # the peak phase's
        lines.append(f"{r['config']:<28}{r['stage']:>6}{off:>10}{micro:>6}{r['gpu_gib']:>9.1f}"
                     f"{states:>8.1f}{g['activations']:>8.1f}{r['cpu_gib']:>9.1f}  {fits} ({r['peak_phase']})")
    none = ("nothing fits (lower ce.micro_batch or scst.micro_batch / scst.samples, set "
            "model.grad_checkpointing_llm=true, or add GPUs)")
    lines += ["", f"recommended: {plan['recommended'] or none}"]
    return "\n".join(lines)


def plan_command(args) -> int:
    cfg = load_plan_recipe(args.recipe, list(args.overrides or []))
    plan = plan_recipe(cfg, gpus=args.gpus, gpu_mem=args.gpu_mem, cpu_mem=getattr(args, "cpu_mem", 256.0))
    if args.json:
        print_json(args, plan, indent=2)
    else:
        print(format_plan(plan))
    return 0
