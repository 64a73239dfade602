"""The run check: every rule that crosses the recipe, the DeepSpeed JSON and the files they name,
applied before any rank initialises torch.distributed (recipe-only rules live in recipe_rules.validate).

A user error found here prints one line per rank and no traceback; found later, it would surface
after dist init, from deep inside a library, or hang the other ranks.
"""
from __future__ import annotations

import os
from pathlib import Path

from .annotations import read_annotations
from .build import check_folder, image_settings, read_family_of_folder
from .checkpoints import COMPLETE
from .ds_json import read_ds_config, zero_stage
from .errors import UserError
from .mixing import read_sources
from .paths import absolute_paths, shipped_values, user_file
from .quantize import quant_refusal
from .recipe_io import load_recipe
from .stills import read_image_captions
from .synth import is_ready

HYBRID_ENGINE_FAMILIES = ("opt", "llama")


def check_run(args, default_ds_config: str):
    """-> (validated recipe, DeepSpeed JSON as read); raises UserError naming the file and field."""
    recipe = user_file(args.recipe)  # paths the user gives are relative to where they stand
    cfg = load_recipe(recipe, args.overrides)  # runs recipe_rules.validate
    absolute_paths(cfg, shipped_values(recipe))  # stored absolute: eval/export/report work from anywhere
    ds_config = read_ds_config(user_file(args.deepspeed) or default_ds_config)
    if cfg.synth_dir:
        fill_synth_paths(cfg)
    else:
        _check_data_paths(cfg)
    if cfg.model.path:
        try:  # a folder missing config.json or weights would fail in from_pretrained, after dist init
            check_folder(cfg.model.path)
        except UserError as err:
            raise UserError(f"recipe '{cfg.name}': field 'model.path': {err}") from None
        if cfg.model.image_size is None:  # the ViT's position embedding fixes the frame size
            size = image_settings(cfg.model.path)[0]
            if size != cfg.data.image_size:
                raise UserError(f"recipe '{cfg.name}': field 'data.image_size' is {cfg.data.image_size} but the "
                                f"model folder '{cfg.model.path}' takes {size}px frames: set data.image_size={size}, "
                                "or model.image_size=N to feed N px frames (position embeddings interpolated)")
    check_annotation_files(cfg, ds_config, int(os.environ.get("WORLD_SIZE", "1")))
    _check_vision_data(cfg)
    for field in ("resume", "init_from"):  # else found missing only after the engine is built
        folder = getattr(cfg, field)
        if folder and folder != "auto" and not (Path(folder) / COMPLETE).is_file():
            raise UserError(f"recipe '{cfg.name}': field '{field}': '{folder}' is not a complete checkpoint "
                            "folder (no COMPLETE marker); give <output_dir>/checkpoints/<phase>-<step>")
    check_recipe_with_json(cfg, ds_config)
    return cfg, ds_config


def _check_vision_data(cfg) -> None:
    if not cfg.vision.steps or cfg.init_from:  # init_from's weights replace the ViT: the stage is skipped
        return
    if not cfg.vision.train:
        raise UserError(f"recipe '{cfg.name}': field 'vision.train' is empty but vision.steps is {cfg.vision.steps}: "
                        "give an image-caption annotation file, or vision.steps=0")
    if not _synth_pending(cfg):  # else checked once written
        read_image_captions(cfg.vision.train, cfg.vision.images, f"recipe '{cfg.name}': field 'vision.train'")


def check_recipe_with_json(cfg, ds_config: dict) -> None:
    """Rules between the recipe and the JSON (the planner asks them too, per shipped JSON)."""
    source = ds_config.get("_source", "the DeepSpeed config")
    refusal = quant_refusal(cfg.model.quant, zero_stage(ds_config))
    if refusal:
        raise UserError(f"{source}: {refusal}")
    if ds_config.get("hybrid_engine", {}).get("enabled"):
        family = cfg.model.tiny or read_family_of_folder(cfg.model.path)
        if family not in HYBRID_ENGINE_FAMILIES:
            raise UserError(f"{source}: field 'hybrid_engine.enabled': DeepSpeed's Hybrid Engine serves OPT "
                            f"and Llama decoders only (this model's is {family}); remove it")


def _check_data_paths(cfg) -> None:
    for split in ("train", "val", "test"):
        path = getattr(cfg.data, split)
        if path and not Path(path).is_file():
            raise UserError(f"recipe '{cfg.name}': field 'data.{split}': annotation file '{path}' not found")
    if cfg.data.sources:
        for i, source in enumerate(read_sources(cfg.data.sources, cfg.name)):
            if not Path(source.train).is_file():
                raise UserError(f"recipe '{cfg.name}': field 'data.sources[{i}].train': annotation file "
                                f"'{source.train}' not found")
            if source.videos and not Path(source.videos).is_dir():
                raise UserError(f"recipe '{cfg.name}': field 'data.sources[{i}].videos': folder "
                                f"'{source.videos}' not found")
    elif not cfg.data.train:
        raise UserError(f"recipe '{cfg.name}': field 'data.train' is empty: give a training annotation file")


def check_annotation_files(cfg, ds_config: dict, world: int) -> None:
    """Read every annotation split now (cheap), so a malformed record is reported before any rank
    initialises torch.distributed; files of a synthetic set not generated yet are checked later."""
    pending = _synth_pending(cfg)
    if cfg.data.videos and not pending and not Path(cfg.data.videos).is_dir():
        raise UserError(f"recipe '{cfg.name}': field 'data.videos': folder '{cfg.data.videos}' not found")
    for split in ("train", "val", "test"):
        path = getattr(cfg.data, split)
        if not path or (pending and not Path(path).is_file()):
            continue
        clips = read_annotations(path, cfg.data.videos, fmt=cfg.data.format)
        if split == "train":
            check_global_batch(cfg, ds_config, len(clips), world)


def _synth_pending(cfg) -> bool:
    """Whether train will (re)generate the recipe's synthetic set: its files are not there yet to check."""
    return bool(cfg.synth_dir) and not is_ready(cfg.synth_dir, cfg.synth_videos, cfg.seed)


def check_global_batch(cfg, ds_config: dict, train_clips: int, world: int) -> None:
    """Refuse a training set smaller than one optimizer step's samples: the epoch would hold no
    step, and the loop would spin through empty epochs forever."""
    source = ds_config.get("_source", "the DeepSpeed config")
    accumulation = ds_config.get("gradient_accumulation_steps", 1)
    for phase in ("ce", "scst"):
        phase_cfg = getattr(cfg, phase)
        if not (phase_cfg.steps or getattr(phase_cfg, "epochs", None)):
            continue
        micro, field = phase_cfg.micro_batch, f"recipe '{cfg.name}': field '{phase}.micro_batch'"
        if micro is None:
            micro = ds_config.get("train_micro_batch_size_per_gpu", 1)
            field = f"{source}: field 'train_micro_batch_size_per_gpu'"
        need = micro * world * accumulation
        if train_clips < need:
            raise UserError(f"{field}: {micro} x {world} ranks x gradient_accumulation_steps {accumulation} = "
                            f"{need} clips per optimizer step, but the training set (field 'data.train', "
                            f"{cfg.data.train}) has {train_clips}; lower the micro-batch or add data")


def fill_synth_paths(cfg) -> None:
    """Point empty data paths (and the tiny tokenizer) at the synthetic set's folder."""
    root = Path(cfg.synth_dir)
    defaults = {"videos": root / "videos", "train": root / "annotations" / "cap_train.json",
                "val": root / "annotations" / "cap_val.json", "test": root / "annotations" / "cap_test.json"}
    for key, value in defaults.items():
        if getattr(cfg.data, key) is None:
            setattr(cfg.data, key, str(value))
    if cfg.model.tokenizer is None:
        cfg.model.tokenizer = str(root / "tokenizer")
    if cfg.vision.steps and cfg.vision.train is None:
        cfg.vision.train = str(root / "annotations" / "stills_train.json")
        cfg.vision.images = cfg.vision.images or str(root / "stills")
