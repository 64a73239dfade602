"""Decode a split across ranks, score it; `ds-videocap eval` and `ds-videocap caption`.

Each rank decodes a disjoint shard and rank 0 gathers them: nothing duplicated or dropped when the
clip count does not divide by the number of ranks.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from .annotations import VIDEO_EXTENSIONS, Clip, read_annotations
from .build import build_model, image_settings
from .checkpoints import COMPLETE, complete_checkpoints, read_full_state_dict
from .config import ModelCfg, RecipeCfg
from .data import VideoCaptionDataset, blank_batch, collate_clips, shard_indices
from .engine import gather_objects, init_distributed, rank_and_world
from .errors import UserError
from .export import save_hf_folder
from .metrics import score_captions, start_meteor, write_results
from .output import print_json
from .paths import follow_run_folder
from .recipe_io import load_saved_config
from .synth import attribute_accuracy
from .trainable import train_mode
from .words import HEAD_KEY as WORD_HEAD_KEY


def decode_kwargs(eval_cfg, greedy: bool = False) -> dict:
    return dict(num_beams=1 if greedy else eval_cfg.num_beams, max_new_tokens=eval_cfg.max_new_tokens,
                min_new_tokens=eval_cfg.min_new_tokens, length_penalty=eval_cfg.length_penalty,
                repetition_penalty=eval_cfg.repetition_penalty)


def decode_clips(model_context, clips, data_cfg, gen_kwargs: dict, batch_size: int,
                 device=None, dtype=None, progress: bool = False) -> tuple[dict, list]:
    """Captions for `clips` -> ({video_id: caption}, skipped) on every rank.

    `model_context` is a context manager yielding (model, synced_gpus): the engine's generation
    context in training, or a plain model wrapped by `plain_context`. Frames go to `device` as
    `dtype`, by default the ViT's own (so a model on a GPU, or loaded quantised onto one, gets its
    inputs there). `progress`: a bar on stderr (rank 0) for `eval` and `caption`, whose work can take
    hours.
    """
    rank, world = rank_and_world()
    shard = shard_indices(len(clips), rank, world)
    dataset = VideoCaptionDataset(clips, data_cfg, train=False, seed=0)
    subset = torch.utils.data.Subset(dataset, shard)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=collate_clips,
                                         num_workers=min(data_cfg.num_workers, max(1, len(shard) // batch_size)))
    # Under per-layer synced ZeRO-3 generation every rank must run the same number of generate calls.
    n_batches = -(-((len(clips) + world - 1) // world) // batch_size)
    captions, skipped, last = {}, [], None
    bar = tqdm(total=len(clips), desc="captioning", unit="video", file=sys.stderr,
               disable=not progress or rank != 0, dynamic_ncols=True)  # rank 0 counts for all ranks
    with model_context as (model, synced), bar:
        if device is None or dtype is None:  # asked only then: the synced-generation wrapper has no ViT to ask
            own_device, own_dtype = vit_device(model)
            device, dtype = device or own_device, dtype or own_dtype
        batches = iter(loader)
        for i in range(n_batches):
            bar.update(min(batch_size * world, bar.total - bar.n) if i else 0)  # the batches done so far
            batch = next(batches, None)
            if batch is not None:
                skipped.extend(batch["skipped"])
            real = batch is not None and batch["pixel_values"] is not None
            if real:
                last = batch
            if not real and not synced:
                continue
            if last is None:  # this rank has nothing at all to decode but must keep step
                last = blank_batch(data_cfg.frames, data_cfg.image_size)
            source = batch if real else last
            out = model.generate(source["pixel_values"].to(device, dtype), synced_gpus=synced, **gen_kwargs)
            if real:
                captions.update(zip(batch["video_ids"], model.decode(out)))
        bar.update(bar.total - bar.n)
    if world > 1:
        gathered = gather_objects((captions, skipped))
        captions = {k: v for part, _ in gathered for k, v in part.items()}
        skipped = [s for _, part in gathered for s in part]
    return captions, skipped


@contextlib.contextmanager
def plain_context(model):
    was = model.training
    model.eval()
    with torch.no_grad():
        yield model, False
    if was:
        train_mode(model)  # not .train(True): that would wake a frozen ViT too


def vit_device(model) -> tuple:
    """(device, dtype) of the captioner's ViT: where its input frames must go."""
    weight = model.hf.vision_model.embeddings.patch_embedding.weight
    return weight.device, weight.dtype


def choose_device(requested: str | None) -> str:
    """--device, checked; by default this rank's GPU when there is one (LOCAL_RANK under the
    launcher), else the CPU."""
    if requested is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested!r}: expected cpu, cuda or cuda:N")
    return str(device)


def score_split(captions: dict, clips) -> dict:
    """pycocoevalcap metrics (+ attribute accuracy when the clips carry synthetic attributes)."""
    refs = {c.video_id: c.captions for c in clips if c.video_id in captions}
    if not refs:
        raise UserError("no clip could be decoded: nothing to score (see the skipped videos)")
    scores = score_captions({k: captions[k] for k in refs}, refs)
    attributes = {c.video_id: c.attributes for c in clips if c.attributes and c.video_id in captions}
    if attributes:
        scores.update(attribute_accuracy({k: captions[k] for k in attributes}, attributes))
    scores["clips"] = len(clips)
    scores["decoded"] = len(refs)
    return scores


def model_overrides(args) -> dict:
    """The ModelCfg fields set by `--fusion`, `--qformer-text`, `--prompt` (those given only)."""
    values = {"fusion": getattr(args, "fusion", None), "qformer_text": getattr(args, "qformer_text", None),
              "prompt": getattr(args, "prompt", None)}
    return {k: v for k, v in values.items() if v is not None}


def load_captioner(checkpoint: str | Path, device: str | None = None, overrides: dict | None = None):
    """A run's checkpoint folder (or run folder) or a Hugging Face folder -> (model, recipe cfg), on
    `device` (None: the CPU; a quantised LLM stays where bitsandbytes loaded it). `overrides`
    (ModelCfg fields, e.g. from model_overrides) replace what the run's config.yaml or the folder give."""
    model, cfg = _load_captioner(checkpoint, overrides)
    if device is not None and getattr(model.hf, "hf_quantizer", None) is None:
        model.to(device)
    return model, cfg


def _load_captioner(checkpoint: str | Path, overrides: dict | None):
    folder = Path(checkpoint)
    if (folder / "checkpoints").is_dir():  # a run folder: its best checkpoint, else the last one
        summary = folder / "summary.json"
        best = json.loads(summary.read_text()).get("best_checkpoint") if summary.is_file() else None
        folders = complete_checkpoints(folder / "checkpoints")
        if not folders:
            raise UserError(f"{folder}: the run has no complete checkpoint")
        folder = Path(best) if best and Path(best).is_dir() else folders[-1]
    if (folder / "config.json").is_file():
        cfg = RecipeCfg(model=ModelCfg(path=str(folder), **(overrides or {})))
        model = build_model(cfg.model, cfg.lora)  # frames: the export's (videocap.json), when it says
        return model, cfg
    if (folder / COMPLETE).is_file():
        run_cfg = folder.parent.parent / "config.yaml"
        if not run_cfg.is_file():
            raise UserError(f"{folder}: no config.yaml in the run folder {folder.parent.parent}")
        cfg = load_saved_config(run_cfg)
        follow_run_folder(cfg, run_cfg.parent)  # a moved run folder still finds its init_model
        cfg.model = replace(cfg.model, **(overrides or {}))
        model = build_model(cfg.model, cfg.lora, frames=cfg.data.frames)
        # the word head (words.py) serves only training: the captioner is the same without it
        state = {k: v for k, v in read_full_state_dict(folder).items() if not k.startswith(WORD_HEAD_KEY)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"{folder}: checkpoint does not match the model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
        return model, cfg
    raise UserError(f"--checkpoint '{checkpoint}': expected a Hugging Face folder (config.json), a run "
                    f"folder (checkpoints/) or a checkpoint folder ({COMPLETE})")


def _eval_data_cfg(model, cfg, args):
    size, mean, std = image_settings(model)
    frames = args.frames or getattr(model, "frames", None) or cfg.data.frames
    return replace(cfg.data, image_size=size, frames=frames, videos=getattr(args, "videos", None),
                   image_mean=list(mean), image_std=list(std))


def _eval_cfg(cfg, args):
    eval_cfg = replace(cfg.eval, **{k: v for k, v in dict(
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        batch_size=args.batch_size).items() if v is not None})
    if eval_cfg.min_new_tokens > eval_cfg.max_new_tokens:  # generate() would ignore one of them
        raise UserError(f"--min-new-tokens ({eval_cfg.min_new_tokens}) must be <= --max-new-tokens "
                        f"({eval_cfg.max_new_tokens})")
    return eval_cfg


def _maybe_init_distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank_and_world()[1] == 1:
        init_distributed()


def eval_command(args) -> int:
    _maybe_init_distributed()
    model, cfg = load_captioner(args.checkpoint, choose_device(args.device), model_overrides(args))
    data_cfg, eval_cfg = _eval_data_cfg(model, cfg, args), _eval_cfg(cfg, args)
    clips = read_annotations(args.annotations, args.videos, fmt=args.format)
    if rank_and_world()[0] == 0:
        start_meteor()  # its JVM loads while the captions decode
    captions, skipped = decode_clips(plain_context(model), clips, data_cfg, decode_kwargs(eval_cfg),
                                     eval_cfg.batch_size, progress=True)
    if rank_and_world()[0] != 0:
        return 0
    if args.results:
        write_results(captions, args.results)
    scores = score_split(captions, clips)
    scores["skipped_videos"] = skipped
    if args.json:
        print_json(args, scores)
    else:
        out = getattr(args, "json_out", None) or sys.stdout  # the stdout main() kept aside for results
        for key, value in scores.items():
            if key != "skipped_videos":
                print(f"{key:>12}  {value:.4f}" if isinstance(value, float) else f"{key:>12}  {value}", file=out)
        for s in skipped:
            print(f"skipped {s['video']}: {s['reason']}", file=sys.stderr)
    return 0


def _expand_inputs(inputs) -> list[Path]:
    videos = []
    for item in map(Path, inputs):
        if item.is_dir():
            videos += sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        elif item.is_file():
            videos.append(item)
        else:
            raise UserError(f"caption: '{item}' is neither a video file nor a folder")
    if not videos:
        raise UserError(f"caption: no video files ({', '.join(VIDEO_EXTENSIONS)}) in {list(inputs)}")
    return videos


def caption_command(args) -> int:
    model, cfg = load_captioner(args.checkpoint, choose_device(args.device), model_overrides(args))
    data_cfg, eval_cfg = _eval_data_cfg(model, cfg, args), _eval_cfg(cfg, args)
    videos = _expand_inputs(args.inputs)
    clips = [Clip(video_id=str(i), video=str(v), captions=[], split=None) for i, v in enumerate(videos)]
    captions, skipped = decode_clips(plain_context(model), clips, data_cfg, decode_kwargs(eval_cfg),
                                     eval_cfg.batch_size, progress=True)
    rows = [{"video": str(v), "caption": captions[str(i)]} for i, v in enumerate(videos) if str(i) in captions]
    if args.json:
        print_json(args, rows, indent=1)
    else:
        out = getattr(args, "json_out", None) or sys.stdout  # the stdout main() kept aside for results
        for row in rows:
            print(f"{row['video']}\t{row['caption']}", file=out)
    for s in skipped:
        print(f"skipped {s['video']}: {s['reason']}", file=sys.stderr)
    return 0 if not skipped else 1


def export_command(args) -> int:
    """`ds-videocap export`: a run's checkpoint (any ZeRO stage, shards consolidated) or a Hugging
    Face folder -> a Hugging Face folder that transformers' own classes load."""
    model, _ = load_captioner(args.checkpoint)
    out = save_hf_folder(model, args.out, merge_lora=not args.keep_adapter)
    print(f"exported {args.checkpoint} -> {out}")
    return 0
