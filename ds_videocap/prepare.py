"""Run set-up after torch.distributed is up: the data, the model folder, the model, the reward.

Rank 0 does the one-off writes (the synthetic set, the tiny model's folder, config.yaml, the CIDEr
document-frequency cache) and the other ranks wait at a barrier before reading them.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from .annotations import read_annotations
from .build import build_model, build_tiny_folder, image_settings, input_size
from .captions import training_references
from .cooccur import cooccurrence_table
from .engine import barrier, rank_and_world
from .errors import UserError
from .mixing import read_sources
from .recipe_io import save_config
from .reward import CiderD
from .run_check import check_global_batch
from .synth import make_synthetic_set
from .trainable import count_parameters
from .vision_stage import run_vision_stage


def prepare_data(cfg, rank: int, ds_config: dict | None = None) -> dict:
    """Generate the synthetic set once (rank 0) and read the annotation splits:
    {"train", "val", "test": [Clip], "sources": (specs, sizes) or None}."""
    if cfg.synth_dir and rank == 0:
        make_synthetic_set(cfg.synth_dir, videos=cfg.synth_videos, seed=cfg.seed)
    barrier()
    clips = {}
    for split in ("train", "val", "test"):
        path = getattr(cfg.data, split)
        clips[split] = read_annotations(path, cfg.data.videos, fmt=cfg.data.format) if path else []
    clips["sources"] = None
    if cfg.data.sources:  # the concatenation of the sources' clips; mixing.py draws from it by ratio
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
        check_global_batch(cfg, ds_config, len(clips["train"]), rank_and_world()[1])
    return clips


def resolve_model_folder(cfg, rank: int):
    """The recipe with model.path set (the tiny model's folder is written once, by rank 0) and
    data.image_size set to the size the ViT is fed (model.image_size, else the folder's)."""
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.model.tiny and not cfg.model.path:
        folder = out / "init_model"
        if rank == 0 and not (folder / "config.json").is_file():
            if not cfg.model.tokenizer:
                raise UserError(f"recipe '{cfg.name}': field 'model.tokenizer' is needed for model.tiny")
            build_tiny_folder(cfg.model.tiny, cfg.model.tokenizer, folder, image_size=cfg.data.image_size,
                              seed=cfg.seed, dropout=cfg.model.tiny_dropout, **cfg.model.tiny_sizes)
        cfg = replace(cfg, model=replace(cfg.model, path=str(folder)))
    barrier()
    _, mean, std = image_settings(cfg.model.path)  # normalise as the folder's image processor does
    return replace(cfg, data=replace(cfg.data, image_size=input_size(cfg.model.path, cfg.model),
                                     image_mean=cfg.data.image_mean or list(mean),
                                     image_std=cfg.data.image_std or list(std)))


def prepare_model(cfg, ds_config: dict, rank: int, say):
    """-> (resolved recipe, model): the folder resolved (its ViT trained first when vision.steps is set),
    the model built, config.yaml written (rank 0)
    with what the folder family's defaults resolved to (fusion, qformer_text), so that the run folder
    says what was trained."""
    cfg = run_vision_stage(resolve_model_folder(cfg, rank), ds_config, rank, say)
    model = build_model(cfg.model, cfg.lora, ds_config=ds_config,
                        word_head_pool=cfg.ce.words_pool if cfg.ce.words_weight else None)
    cfg = replace(cfg, model=replace(cfg.model, fusion=model.fusion, qformer_text=model.qformer_text))
    if rank == 0:
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    trainable, total = count_parameters(model)
    say(f"[model] {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.1f}%)")
    return cfg, model


def attach_text_table(cfg, model, train_clips, say) -> None:
    """The contrastive term's "cooccur" text side (cooccur.py): its table, from the training references
    as the data pipeline normalises them, tokenised as the captions the term pools."""
    if not (cfg.ce.itc_weight and cfg.ce.itc_text_side == "cooccur" and cfg.ce.steps):
        return
    refs = [training_references(clip.captions, cfg.data.max_words) for clip in train_clips]
    ids = model.caption_ids([r for clip in refs for r in clip])  # one batched tokenisation of every reference
    per_clip, start = [], 0
    for clip in refs:
        per_clip.append(ids[start: start + len(clip)])
        start += len(clip)
    vocab = model.language_model.get_input_embeddings().num_embeddings
    model.text_table, spectrum = cooccurrence_table(per_clip, vocab, cfg.ce.itc_text_rank)
    say(f"[ce] co-occurrence text side: {cfg.ce.itc_text_rank} axes from {len(per_clip)} clips' references; "
        f"singular values {spectrum} (ce.itc_text_rank: where they flatten)")


def build_reward(cfg, train_clips) -> CiderD:
    """CIDEr-D with document frequencies from the training corpus, cached in the run folder.

    The cache's name carries a hash of the training references, so a run whose training data
    changed never reads another corpus's frequencies; rank 0 writes it atomically (a temporary file
    renamed into place) and the other ranks compute their own copy rather than read a partial file.
    """
    references = [c.captions for c in train_clips]
    key = hashlib.sha1(json.dumps(references).encode()).hexdigest()[:16]
    cache = Path(cfg.output_dir) / f"cider_df-{key}.json"
    if cache.is_file():
        return CiderD.load(cache)
    reward = CiderD.from_corpus(references)
    if rank_and_world()[0] == 0:
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        reward.save(tmp)
        tmp.replace(cache)
    return reward
