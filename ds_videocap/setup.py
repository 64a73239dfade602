"""Run set-up: check every input before heavy work, then the data, the model and the reward.

check_run() is pure validation (recipe, DeepSpeed JSON, files named by the recipe); the other
functions run after torch.distributed is up, with rank 0 doing one-off writes behind a barrier.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from .errors import UserError


def check_run(args, default_ds_config: str):
    from .config import load_recipe, validate
    from .engine import read_ds_config
    from .paths import absolute_paths, shipped_values, user_file

    recipe = user_file(args.recipe)  # paths the user gives are relative to where they stand
    cfg = load_recipe(recipe, args.overrides)
    absolute_paths(cfg, shipped_values(recipe))  # stored absolute: eval/export/report work from anywhere
    if not (cfg.ce.steps or cfg.ce.epochs or cfg.scst.steps):  # else StopIteration after dist init
        raise UserError(f"recipe '{cfg.name}': fields 'ce.steps' and 'scst.steps' are both 0: nothing to "
                        "train; give at least one phase steps >= 1")
    ds_config = read_ds_config(user_file(args.deepspeed) or default_ds_config)
    if cfg.synth_dir:
        fill_synth_paths(cfg)
    else:
        for split in ("train", "val", "test"):
            path = getattr(cfg.data, split)
            if path and not Path(path).is_file():
                raise UserError(f"recipe '{cfg.name}': field 'data.{split}': annotation file '{path}' not found")
        if cfg.data.sources:
            from .mixing import read_sources

            for i, source in enumerate(read_sources(cfg.data.sources, cfg.name)):
                if not Path(source.train).is_file():
                    raise UserError(f"recipe '{cfg.name}': field 'data.sources[{i}].train': annotation file "
                                    f"'{source.train}' not found")
                if source.videos and not Path(source.videos).is_dir():
                    raise UserError(f"recipe '{cfg.name}': field 'data.sources[{i}].videos': folder "
                                    f"'{source.videos}' not found")
        elif not cfg.data.train:
            raise UserError(f"recipe '{cfg.name}': field 'data.train' is empty: give a training annotation file")
        if cfg.data.videos and not Path(cfg.data.videos).is_dir():
            raise UserError(f"recipe '{cfg.name}': field 'data.videos': folder '{cfg.data.videos}' not found")
    if cfg.model.path:
        from .build import check_folder
        try:  # a folder missing config.json or weights would fail in from_pretrained, after dist init
            check_folder(cfg.model.path)
        except UserError as err:
            raise UserError(f"recipe '{cfg.name}': field 'model.path': {err}") from None
    if cfg.model.path and cfg.model.image_size is None and (Path(cfg.model.path) / "preprocessor_config.json").is_file():
        from .build import image_settings  # the ViT's position embedding fixes the frame size
        size = image_settings(cfg.model.path)[0]
        if size != cfg.data.image_size:
            raise UserError(f"recipe '{cfg.name}': field 'data.image_size' is {cfg.data.image_size} but the model "
                            f"folder '{cfg.model.path}' takes {size}px frames: set data.image_size={size}, or "
                            f"model.image_size=N to feed N px frames (position embeddings interpolated)")
    check_annotation_files(cfg, ds_config, int(os.environ.get("WORLD_SIZE", "1")))
    from .checkpoints import COMPLETE
    for field in ("resume", "init_from"):  # else found missing only after the engine is built
        folder = getattr(cfg, field)
        if folder and folder != "auto" and not (Path(folder) / COMPLETE).is_file():
            raise UserError(f"recipe '{cfg.name}': field '{field}': '{folder}' is not a complete checkpoint "
                            "folder (no COMPLETE marker); give <output_dir>/checkpoints/<phase>-<step>")
    if ds_config.get("hybrid_engine", {}).get("enabled"):
        family = cfg.model.tiny or _text_model_type(cfg.model.path)
        if family not in ("opt", "llama"):
            raise UserError(f"{ds_config['_source']}: field 'hybrid_engine.enabled': DeepSpeed's Hybrid Engine "
                            f"serves OPT and Llama decoders only (this model's is {family}); remove it")
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if cfg.model.quant == "8bit" and stage == 3:
        raise UserError(f"{ds_config['_source']}: ZeRO-3 cannot partition 8-bit bitsandbytes weights; use "
                        "model.quant=4bit (QLoRA) with ZeRO-3, or ZeRO-0/1/2 with 8-bit")
    validate(cfg)
    return cfg, ds_config


def check_annotation_files(cfg, ds_config: dict, world: int) -> None:
    """Read every annotation split now (cheap), so a malformed record is reported before any rank
    initialises torch.distributed; files of a synthetic set not generated yet are checked later."""
    from .annotations import read_annotations

    pending = cfg.synth_dir and not (Path(cfg.synth_dir) / "READY").is_file()
    if cfg.data.videos and not pending and not Path(cfg.data.videos).is_dir():
        raise UserError(f"recipe '{cfg.name}': field 'data.videos': folder '{cfg.data.videos}' not found")
    for split in ("train", "val", "test"):
        path = getattr(cfg.data, split)
        if not path or (pending and not Path(path).is_file()):
            continue
        clips = read_annotations(path, cfg.data.videos, fmt=cfg.data.format)
        if split == "train":
            check_global_batch(cfg, ds_config, len(clips), world)


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


def prepare_data(cfg, rank: int, ds_config: dict | None = None):
    """Generate the synthetic set once (rank 0), read the annotation splits, build the train set."""
    from .annotations import read_annotations
    from .data import VideoCaptionDataset

    if cfg.synth_dir and rank == 0:
        from .synth import make_synthetic_set

        make_synthetic_set(cfg.synth_dir, videos=cfg.synth_videos, seed=cfg.seed)
    dist.barrier()
    clips = {}
    for split in ("train", "val", "test"):
        path = getattr(cfg.data, split)
        clips[split] = read_annotations(path, cfg.data.videos, fmt=cfg.data.format) if path else []
    clips["sources"] = None
    if cfg.data.sources:  # the concatenation of the sources' clips; mixing.py draws from it by ratio
        from .mixing import read_sources

        sources = read_sources(cfg.data.sources, cfg.name)
        parts = [read_annotations(s.train, s.videos, fmt=s.format) for s in sources]
        for source, part in zip(sources, parts):
            if not part:
                raise UserError(f"{source.train}: no training clips in data source '{source.name}'")
        clips["train"] = [c for part in parts for c in part]
        clips["sources"] = (sources, [len(p) for p in parts])
    if not clips["train"] and (cfg.ce.steps or cfg.scst.steps):
        raise UserError(f"{cfg.data.train}: no training clips")
    if ds_config is not None:  # again: a synthetic set is only read here once it has been generated
        check_global_batch(cfg, ds_config, len(clips["train"]), dist.get_world_size())
    return clips, VideoCaptionDataset(clips["train"], cfg.data, train=True, seed=cfg.seed)


def prepare_model(cfg, ds_config: dict, rank: int, say):
    """Build (rank 0, once) the tiny model's folder, record the resolved config, build the model."""
    from .build import build_model, build_tiny_folder, count_parameters, input_size
    from .config import save_config

    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.model.tiny and not cfg.model.path:
        folder = out / "init_model"
        if rank == 0 and not (folder / "config.json").is_file():
            if not cfg.model.tokenizer:
                raise UserError(f"recipe '{cfg.name}': field 'model.tokenizer' is needed for model.tiny")
            build_tiny_folder(cfg.model.tiny, cfg.model.tokenizer, folder, image_size=cfg.data.image_size,
                              seed=cfg.seed)
        cfg.model = replace(cfg.model, path=str(folder))
    dist.barrier()
    # Decode at the size the ViT is fed (model.image_size, else the folder's); the train set holds cfg.data.
    cfg.data.image_size = input_size(cfg.model.path, cfg.model)
    if rank == 0:
        save_config(cfg, out / "config.yaml")
    model = build_model(cfg.model, cfg.lora, ds_config=ds_config)
    trainable, total = count_parameters(model)
    say(f"[model] {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.1f}%)")
    return model


def build_reward(cfg, train_clips):
    """CIDEr-D with document frequencies from the training corpus, cached next to the run."""
    from .reward import CiderD

    cache = Path(cfg.output_dir) / "cider_df.json"
    if cache.is_file():
        return CiderD.load(cache)
    reward = CiderD.from_corpus([c.captions for c in train_clips])
    if dist.get_rank() == 0:
        reward.save(cache)
    return reward


def _text_model_type(folder) -> str | None:
    """The LLM family of a Hugging Face BLIP-2 / InstructBLIP folder, read from its config.json."""
    import json

    try:
        return json.loads((Path(folder) / "config.json").read_text())["text_config"]["model_type"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
