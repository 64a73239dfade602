"""Config -> VideoCaptioner: a local Hugging Face folder, LoRA, bitsandbytes, ZeRO-3, tiny folders.

Every model, tiny or real, loads through one path (`build_model` on a folder). Tiny models are
written as a folder first (`build_tiny_folder`) so that the path tests exercise is the one a real
Salesforce/blip2-* or instructblip-* checkpoint takes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import TINY_SIZES
from .conv_tokens import ConvTokens, conv_layout
from .ds_json import compute_dtype, zero_stage
from .errors import UserError
from .export import EXTRA_JSON, read_extras
from .model import MAX_FRAMES, VideoCaptioner
from .motion import MotionTokens, motion_layout
from .processor import has_processor_files, read_image_settings, save_processor
from .quantize import disable_cpu_4bit_repacking, quant_device_map, quantization_config
from .trainable import apply_trainable
from .video import CLIP_MEAN, CLIP_STD

DEFAULT_PROMPTS = {"t5": "a video of", "opt": "", "llama": "a video of"}
# (fusion, qformer_text) a folder family expects when the recipe, the options and videocap.json leave them
# unset: the study's concat for BLIP-2 / InstructBLIP; InstructBLIP-Video runs the Q-Former once per frame
# with the instruction as its text (transformers' InstructBlipVideoForConditionalGeneration always does).
FAMILY_DEFAULTS = {"blip-2": ("concat", False), "instructblip": ("concat", False),
                   "instructblipvideo": ("per_frame", True)}
TINY_INIT_STD = 0.5  # DESIGN.md: with std 0.02 a from-scratch ViT never learns shape or motion
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")


# ----- tiny folders ------------------------------------------------------------------------------
def tiny_text_config(family: str, vocab: int, hidden: int, layers: int, tok, dropout: float = 0.0) -> dict:
    ids = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if family == "t5":
        return dict(model_type="t5", d_model=hidden, d_kv=hidden // 4, d_ff=hidden * 4, num_layers=layers,
                    num_decoder_layers=layers, num_heads=4, decoder_start_token_id=tok.pad_token_id,
                    # tied: T5 then scales the decoder output by d_model**-0.5; untied, a from-scratch
                    # head starts with logits of std ~sqrt(d_model) (loss ~46 instead of ~5)
                    tie_word_embeddings=True, dropout_rate=dropout, **ids)
    ids["bos_token_id"] = tok.bos_token_id
    if family == "opt":
        return dict(model_type="opt", hidden_size=hidden, word_embed_proj_dim=hidden, ffn_dim=hidden * 4,
                    num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=256, dropout=dropout,
                    attention_dropout=dropout, activation_dropout=dropout, **ids)
    return dict(model_type="llama", hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, attention_dropout=dropout,
                **ids)


def tiny_tokenizer(family: str, tokenizer_dir: str | Path):
    """The synthetic set's sentencepiece model as the family's tokenizer, with BLIP-2's <image> token."""
    from transformers import LlamaTokenizerFast, T5TokenizerFast

    if family == "t5":
        tok = T5TokenizerFast.from_pretrained(str(tokenizer_dir), extra_ids=0)
    else:
        tok = LlamaTokenizerFast.from_pretrained(str(tokenizer_dir), add_bos_token=False)
        tok.pad_token = "<pad>"
    # transformers 5 BLIP-2 marks the query positions with an <image> token (as the hub folders do).
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


def tiny_config(family: str, vocab: int, tok, image_size: int, sizes: dict | None = None,
                image_token_index: int | None = None, dropout: float = 0.0):
    """-> (config, model class) of the tiny model: TINY_SIZES less what `sizes` changes; `dropout` everywhere."""
    import transformers

    unknown = set(sizes or {}) - set(TINY_SIZES)
    if unknown:
        raise UserError(f"tiny model sizes {sorted(unknown)} unknown; the sizes are {list(TINY_SIZES)}")
    s = {**TINY_SIZES, **(sizes or {})}
    if image_size % s["patch_size"]:
        raise UserError(f"tiny model: patch_size {s['patch_size']} does not divide the frame size {image_size}")
    vision = dict(hidden_size=s["vision_hidden"], intermediate_size=s["vision_hidden"] * 4,
                  num_hidden_layers=s["vision_layers"], num_attention_heads=4, image_size=image_size,
                  patch_size=s["patch_size"], attention_dropout=dropout,
                  initializer_range=0.02)  # the BLIP-2 default, 1e-10, leaves a from-scratch ViT blind
    qformer = dict(hidden_size=s["qformer_hidden"], num_hidden_layers=s["qformer_layers"], num_attention_heads=4,
                   intermediate_size=s["qformer_hidden"] * 4, encoder_hidden_size=s["vision_hidden"],
                   cross_attention_frequency=1, vocab_size=vocab, pad_token_id=tok.pad_token_id,
                   hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    text = tiny_text_config(family, vocab, s["llm_hidden"], s["llm_layers"], tok, dropout)
    config_cls, model_cls = (
        (transformers.InstructBlipConfig, transformers.InstructBlipForConditionalGeneration) if family == "llama"
        else (transformers.Blip2Config, transformers.Blip2ForConditionalGeneration))
    extra = {} if image_token_index is None else {"image_token_index": image_token_index}
    config = config_cls(vision_config=vision, qformer_config=qformer, text_config=text,
                        num_query_tokens=s["num_query_tokens"], **extra)
    return config, model_cls


def build_tiny_folder(family: str, tokenizer_dir: str | Path, out_dir: str | Path, image_size: int = 32,
                      seed: int = 0, dropout: float = 0.0, **sizes) -> Path:
    """Write a from-scratch tiny BLIP-2 (opt, t5) or InstructBLIP (llama) as a Hugging Face folder;
    `sizes` change config.TINY_SIZES (patch_size=4, vision_hidden=64, ...); `dropout` is every dropout's p."""
    import torch
    from transformers import LlamaTokenizerFast

    if family not in DEFAULT_PROMPTS:
        raise UserError(f"tiny model family must be one of {list(DEFAULT_PROMPTS)}, got {family!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(family, tokenizer_dir)
    config, model_cls = tiny_config(family, len(tok), tok, image_size, sizes, dropout=dropout,
                                    image_token_index=tok.convert_tokens_to_ids("<image>"))
    num_query_tokens = config.num_query_tokens
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        model.vision_model.embeddings.position_embedding.normal_(0.0, TINY_INIT_STD)
        # The patch embedding too: at std 0.02 an 8x8x3 patch's features (std ~0.3) sit under the position
        # embedding's 0.5; fan-in init (std 1/sqrt(3*p*p)) makes the pixels count as much as the position
        # (benchmarks/tune_tiny.py: colour learned sooner, lower CE loss at equal steps).
        patch = model.vision_model.embeddings.patch_embedding.weight
        patch.normal_(0.0, patch[0].numel() ** -0.5)
        # transformers zero-initialises the query tokens (fine when loading trained ones); from scratch,
        # identical queries get identical gradients and never diverge. LAVIS draws them with std 0.02.
        model.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # InstructBLIP reads the Q-Former's instruction tokenizer from qformer_tokenizer/ (the processor writes it)
    qformer_tok = LlamaTokenizerFast.from_pretrained(out, add_bos_token=False) if family == "llama" else None
    save_processor(out, tok, qformer_tok, image_size, CLIP_MEAN, CLIP_STD, num_query_tokens)
    (out / EXTRA_JSON).write_text(json.dumps({"family": family, "from_scratch": True}, indent=2))
    return out


# ----- loading -----------------------------------------------------------------------------------
def check_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise UserError(f"model folder {folder}: missing config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"model folder {folder}: missing weights (model.safetensors or pytorch_model.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model folder {folder}: missing tokenizer files (tokenizer.json, tokenizer.model, "
                        "spiece.model or vocab.json)")
    if not has_processor_files(folder):
        raise UserError(f"model folder {folder}: missing processor_config.json or preprocessor_config.json "
                        "(image size, mean, std)")
    return folder


def read_family(config) -> str:
    if not config.use_decoder_only_language_model:
        return "t5"
    return "opt" if config.text_config.model_type == "opt" else "llama"


def read_family_of_folder(folder) -> str | None:
    """The LLM family of a Hugging Face BLIP-2 / InstructBLIP folder (None when unreadable)."""
    try:
        return read_family(_auto_config(Path(folder)))
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _auto_config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def _frame_embedding(model_cfg, meta: dict, tensors: dict, vision_hidden: int):
    import torch
    if "frame_embedding" in tensors:  # a trained one, from an export
        return tensors["frame_embedding"]
    if not model_cfg.frame_embedding:
        return None
    if meta.get("from_scratch"):
        return torch.randn(MAX_FRAMES, vision_hidden) * TINY_INIT_STD
    return torch.zeros(MAX_FRAMES, vision_hidden)  # a pretrained model starts out unchanged


def _side_module(name: str, wanted: bool, tensors: dict, make, dtype):
    """The module the folder's side tensors hold as `name.*` (an export's or a vision stage's: always used,
    in its own layout whatever the recipe says), else a fresh one when `wanted`, else None."""
    trained = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
    if not trained and not wanted:
        return None
    module = make(trained)
    if trained:
        module.load_state_dict(trained)
    return module.to(dtype)  # ZeRO-3 flattens all parameters into one buffer: one dtype for all


def _motion_layout(trained: dict, model_cfg, vision_config) -> tuple[int, int]:
    if trained:
        return trained["patch.weight"].shape[-1], math.isqrt(trained["position"].shape[0])
    return motion_layout(vision_config.image_size, vision_config.patch_size, model_cfg.motion_patch)


def build_model(model_cfg, lora_cfg, ds_config: dict | None = None, frames: int | None = None,
                word_head_pool: str | None = None):
    """Load model_cfg.path (a Hugging Face folder) as a VideoCaptioner with the trainable parts set.

    fusion, prompt and qformer_text: a value set in model_cfg, else the folder's side file from
    save_hf_folder (videocap.json: how the weights were trained), else the folder family's default
    (FAMILY_DEFAULTS, DEFAULT_PROMPTS). A trained frame embedding in the side files is always used.
    frames: the frame count the weights were trained with (a run's), else the side file's.
    word_head_pool: add the training-only word head (words.py; ce.words_weight).
    """
    from transformers import (
        AutoTokenizer,
        Blip2ForConditionalGeneration,
        InstructBlipForConditionalGeneration,
        InstructBlipVideoForConditionalGeneration,
    )

    if not model_cfg.path:
        raise UserError("model.path must name a Hugging Face folder (for model.tiny, build_tiny_folder first)")
    folder = check_folder(model_cfg.path)
    stage, dtype = zero_stage(ds_config), compute_dtype(ds_config)
    qcfg = quantization_config(model_cfg.quant, stage, dtype)
    config = _auto_config(folder)
    classes = {"blip-2": Blip2ForConditionalGeneration, "instructblip": InstructBlipForConditionalGeneration,
               "instructblipvideo": InstructBlipVideoForConditionalGeneration}
    if config.model_type not in classes:
        raise UserError(f"{folder / 'config.json'}: model_type must be one of {list(classes)}, "
                        f"got {config.model_type!r}")
    ds_keepalive = None
    if stage == 3:
        # Must exist before from_pretrained so that the weights are partitioned as they are loaded.
        from transformers.integrations import HfDeepSpeedConfig
        ds_keepalive = HfDeepSpeedConfig(ds_config)
    hf = classes[config.model_type].from_pretrained(
        folder, local_files_only=True, dtype=dtype, quantization_config=qcfg,
        device_map=quant_device_map(qcfg, stage))
    disable_cpu_4bit_repacking(hf)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:  # Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    meta, tensors = read_extras(folder)
    family = read_family(config)
    fusion, qformer_text = FAMILY_DEFAULTS[config.model_type]
    fusion = _first(model_cfg.fusion, meta.get("fusion"), fusion)
    qformer_text = _first(model_cfg.qformer_text, meta.get("qformer_text"), qformer_text)
    if qformer_text and config.model_type == "blip-2":
        raise UserError("model.qformer_text needs an InstructBLIP folder (BLIP-2's Q-Former takes no text)")
    if qformer_text and not (folder / "qformer_tokenizer").is_dir():
        raise UserError(f"model folder {folder}: missing qformer_tokenizer/ (the Q-Former's tokenizer)")
    # Loaded whenever the folder has one: InstructBLIP's processor (written on export) needs it even unused.
    qformer_tokenizer = (AutoTokenizer.from_pretrained(folder / "qformer_tokenizer", local_files_only=True)
                         if (folder / "qformer_tokenizer").is_dir() else None)
    prompt = _first(model_cfg.prompt, meta.get("prompt"), DEFAULT_PROMPTS[family])
    if qformer_text and not prompt:
        raise UserError("model.qformer_text needs a non-empty model.prompt (the instruction)")
    if model_cfg.opt_train_bos and (family != "opt" or prompt or tokenizer.bos_token_id is None):
        raise UserError(f"model.opt_train_bos applies to OPT decoders with an empty prompt (LAVIS masks bos "
                        f"with a prompt); this model is {family} with prompt {prompt!r}")
    image_size, image_mean, image_std = read_image_settings(folder)
    frame_embedding = _frame_embedding(model_cfg, meta, tensors, config.vision_config.hidden_size)
    if frame_embedding is not None:  # ZeRO-3 flattens all parameters into one buffer: one dtype for all
        frame_embedding = frame_embedding.to(dtype)
    vc = config.vision_config
    motion_tokens = _side_module("motion_tokens", model_cfg.motion_tokens, tensors, lambda trained: MotionTokens(
        vc.hidden_size, *_motion_layout(trained, model_cfg, vc)), dtype)
    conv_tokens = _side_module("conv_tokens", model_cfg.conv_tokens, tensors, lambda trained: ConvTokens(
        vc.hidden_size, *(conv_layout(trained) if trained else ())), dtype)
    model = VideoCaptioner(
        hf, tokenizer, family, fusion=fusion, prompt=prompt, frame_embedding=frame_embedding,
        max_txt_len=model_cfg.max_txt_len, qformer_tokenizer=qformer_tokenizer, qformer_text=qformer_text,
        train_bos=model_cfg.opt_train_bos, image_size=model_cfg.image_size or image_size,
        image_mean=image_mean, image_std=image_std, frames=frames or meta.get("frames"),
        word_head_pool=word_head_pool, motion_tokens=motion_tokens, conv_tokens=conv_tokens)
    adapter = folder / meta["lora_adapter"] if meta.get("lora_adapter") else None
    apply_trainable(model, model_cfg, lora_cfg, adapter_dir=adapter)
    model.ds_keepalive = ds_keepalive
    return model


def _first(*values):
    return next(v for v in values if v is not None)


def input_size(model_or_folder, model_cfg) -> int:
    """The frame size the data pipeline must decode to: model.image_size, else the folder's preprocessor size.

    A size other than the ViT's own makes the model interpolate its position embeddings.
    """
    return model_cfg.image_size or image_settings(model_or_folder)[0]


def image_settings(model_or_folder) -> tuple[int, tuple, tuple]:
    """(image_size, mean, std) the data pipeline must resize and normalise frames to.

    Takes a built VideoCaptioner or a model folder (so data can be set up before the model).
    """
    if isinstance(model_or_folder, (str, Path)):
        return read_image_settings(model_or_folder)
    return model_or_folder.image_size, model_or_folder.image_mean, model_or_folder.image_std
