"""Every range and cross-field rule of a recipe, in one place (config.py holds the fields)."""
from __future__ import annotations

from operator import attrgetter

from .config import CHOICES, TINY_SIZES, ConfigError, RecipeCfg, as_dict


def validate(cfg: RecipeCfg) -> None:
    """Raise ConfigError naming the recipe and the field at the first rule broken."""
    def fail(field_name: str, msg: str) -> None:
        raise ConfigError(f"recipe '{cfg.name}': field '{field_name}' {msg}")

    flat = as_dict(cfg)
    for dotted, options in CHOICES.items():
        section, key = dotted.split(".")
        if flat[section][key] not in options:
            fail(dotted, f"must be one of {list(options)}, got {flat[section][key]!r}")
    if cfg.model.path is None and cfg.model.tiny is None:
        fail("model.path", "or 'model.tiny' must be set (a Hugging Face folder, or opt|t5|llama)")
    sizes = cfg.model.tiny_sizes
    for key, value in (sizes.items() if isinstance(sizes, dict) else [("", sizes)]):
        if key not in TINY_SIZES or isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"model.tiny_sizes{'.' if key else ''}{key}",
                 f"takes the sizes {list(TINY_SIZES)}, each a positive integer; got {value!r}")
    if not 0.0 <= cfg.model.tiny_dropout < 1.0:
        fail("model.tiny_dropout", f"must be within [0, 1), got {cfg.model.tiny_dropout!r}")
    if cfg.model.image_size is not None and cfg.model.image_size < 8:
        fail("model.image_size", f"must be >= 8, got {cfg.model.image_size}")
    if not 0.0 <= cfg.data.max_skipped_fraction <= 1.0:
        fail("data.max_skipped_fraction", "must be within [0, 1]")
    for phase in ("ce", "scst"):
        p = getattr(cfg, phase)
        if p.steps < 0:
            fail(f"{phase}.steps", f"must be >= 0, got {p.steps}")
        if p.lr <= 0 or p.min_lr < 0 or p.min_lr > p.lr:
            fail(f"{phase}.lr", f"needs 0 <= min_lr <= lr and lr > 0 (lr={p.lr}, min_lr={p.min_lr})")
        if p.warmup_steps < 0:
            fail(f"{phase}.warmup_steps", "must be >= 0")
        if p.micro_batch is not None and p.micro_batch < 1:
            fail(f"{phase}.micro_batch", "must be >= 1")
        # log_every=0 would divide by zero mid-run; negative intervals or retention mean nothing.
        if p.log_every < 1:
            fail(f"{phase}.log_every", f"must be >= 1, got {p.log_every}")
        for name in ("eval_every", "save_every", "keep_last", "weight_decay"):
            if getattr(p, name) < 0:
                fail(f"{phase}.{name}", f"must be >= 0, got {getattr(p, name)}")
        if len(p.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in p.betas):
            fail(f"{phase}.betas", f"must be two numbers in [0, 1), got {p.betas}")
    if not (cfg.ce.steps or cfg.ce.epochs or cfg.scst.steps):  # else StopIteration after dist init
        fail("ce.steps", "and 'scst.steps' are both 0: nothing to train; give at least one phase steps >= 1")
    if cfg.ce.epochs is not None and cfg.ce.epochs < 1:
        fail("ce.epochs", "must be >= 1")
    if cfg.scst.steps and cfg.scst.samples < 2 and cfg.scst.baseline in ("mean_others", "beam_mean"):
        # both baselines come from the K rollouts themselves: with one, every advantage is 0
        fail("scst.samples", f"must be >= 2 for the {cfg.scst.baseline} baseline")
    if not 0 < cfg.scst.top_p <= 1:
        fail("scst.top_p", "must be within (0, 1]")
    if cfg.scst.temperature <= 0:
        fail("scst.temperature", "must be > 0")
    if cfg.ce.itc_weight < 0 or cfg.ce.itc_temperature <= 0:
        fail("ce.itc_weight", f"needs >= 0 and itc_temperature > 0: {cfg.ce.itc_weight}, {cfg.ce.itc_temperature}")
    if cfg.lora.r < 1:
        fail("lora.r", "must be >= 1")
    if not 0 <= cfg.lora.dropout < 1:
        fail("lora.dropout", f"must be within [0, 1), got {cfg.lora.dropout}")
    for name, low in (("data.frames", 1), ("data.image_size", 8), ("data.num_workers", 0), ("data.max_words", 1),
                      ("data.decode_timeout_s", 0), ("data.cache_mb", 0), ("max_nonfinite_steps", 1),
                      ("eval.batch_size", 1), ("scst.samples", 1), ("scst.max_new_tokens", 1),
                      ("model.max_txt_len", 1), ("ce.words_weight", 0), ("ce.itc_text_rank", 1),
                      ("scst.ce_weight", 0), ("scst.reward_bleu4", 0)):
        if (value := attrgetter(name)(cfg)) < low:
            fail(name, f"must be >= {low}, got {value}")
    if cfg.model.quant and cfg.model.llm == "full":
        fail("model.quant", "cannot train a quantized LLM fully: use model.llm=lora (QLoRA) or frozen")
    if cfg.eval.num_beams < 1 or cfg.eval.max_new_tokens < cfg.eval.min_new_tokens:
        fail("eval", "needs num_beams >= 1 and max_new_tokens >= min_new_tokens")
    _validate_vision(cfg.vision, fail)
    if cfg.model.motion_patch is not None and cfg.model.motion_patch < 1:
        fail("model.motion_patch", f"must be a patch size in pixels >= 1, or null for the ViT's; got "
                                   f"{cfg.model.motion_patch}")
    if cfg.model.vit_lr_scale <= 0:
        fail("model.vit_lr_scale", f"must be > 0 (model.vit=frozen freezes the ViT), got {cfg.model.vit_lr_scale}")


def _validate_vision(vision, fail) -> None:
    for name, low in (("steps", 0), ("micro_batch", 1), ("text_rank", 1), ("log_every", 1), ("weight_decay", 0),
                      ("balance", 0)):
        if (value := getattr(vision, name)) < low:
            fail(f"vision.{name}", f"must be >= {low}, got {value}")
    if vision.num_workers is not None and vision.num_workers < 0:
        fail("vision.num_workers", f"must be >= 0, got {vision.num_workers}")
    if vision.lr <= 0:
        fail("vision.lr", f"must be > 0, got {vision.lr}")
    if not 0 < vision.warmup_fraction < 1:
        fail("vision.warmup_fraction", f"must be within (0, 1), got {vision.warmup_fraction}")
